"""The roles x actions matrix, generated from the one table (cxr_core.auth.ACTIONS), under AppTest.

For every page and every role: through ``app.py`` the page is listed and shows its content, or is not
listed at all; run on its own (a hand-typed URL), the page shows its content or only the refusal.
For every export and every role: the download is offered, or refused in words (also when the table is
made stricter than the page, so the in-page check is exercised). And the blind gate per page: a logged-in
reader with a film pending in a blind session sees no score, heatmap or predicted class for it on the
review (and compare), agreement and dataset-audit pages, nor in their downloads.
"""

from __future__ import annotations

import itertools
import re

import pytest
from streamlit.testing.v1 import AppTest

from auth_helpers import login
from conftest import REPO
from cxr_core import auth, storage

TIMEOUT = 300
PAGES = [a for a in auth.ACTIONS if a.startswith("page:")]
EXPORTS = [a for a in auth.ACTIONS if a.startswith("export:")]
#: Each page's file and the title it shows first (its content).
TITLES = {
    "page:review": "Review X-rays", "page:models": "Models", "page:annotate": "Annotate X-rays",
    "page:agreement": "Heatmap agreement", "page:audit": "Dataset audit", "page:sessions": "Reading sessions",
    "page:users": "Users", "page:trail": "Audit trail",
}


def page_file(action: str) -> str:
    return f"pages/{action.split(':', 1)[1]}.py"


def refusal(role: str, action: str) -> str:
    """The message :func:`cxr_core.auth.require` gives ``role`` for ``action``."""
    with pytest.raises(auth.Forbidden) as info:
        auth.require(auth.User(0, f"{role} user", role), action)
    return str(info.value)


@pytest.fixture
def db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    return storage.session_factory(storage.make_engine(url))


def test_every_page_has_a_title_here():
    assert set(TITLES) == set(PAGES)


@pytest.mark.parametrize("action, role", list(itertools.product(PAGES, auth.ROLES)))
def test_a_page_through_the_app_is_listed_only_for_its_roles(db, action, role):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name=f"{role} user", role=role)
    at.run()
    assert not at.exception, [e.stack_trace for e in at.exception]
    if auth.can(role, action):
        at.switch_page(page_file(action)).run()
        assert not at.exception, [e.stack_trace for e in at.exception]
        assert at.title[0].value == TITLES[action]
        assert not [e.value for e in at.error if "may not" in e.value]
    else:
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(page_file(action))


@pytest.mark.parametrize("action, role", list(itertools.product(PAGES, auth.ROLES)))
def test_a_page_on_its_own_shows_content_or_only_the_refusal(db, action, role):
    at = AppTest.from_file(str(REPO / page_file(action)), default_timeout=TIMEOUT)
    login(at, name=f"{role} user", role=role)
    at.run()
    assert not at.exception, [e.stack_trace for e in at.exception]
    if auth.can(role, action):
        assert at.title[0].value == TITLES[action]
        assert not [e.value for e in at.error if "may not" in e.value]
    else:
        assert [e.value for e in at.error] == [refusal(role, action)]
        main = at.main  # (the sidebar says who is logged in)
        assert not main.title and not main.caption and not main.get("download_button") and not main.button


def test_nobody_logged_in_sees_only_the_login_form(db):
    from auth_helpers import make_user

    make_user(name="Admin A", role="admin")
    for action in PAGES:
        at = AppTest.from_file(str(REPO / page_file(action)), default_timeout=TIMEOUT).run()
        assert not at.exception
        assert [t.label for t in at.text_input] == ["User name", "Password"]
        assert TITLES[action] not in [t.value for t in at.title]


def roles_markdown() -> str:
    """The README's table, generated from ACTIONS."""
    lines = ["| may ... | " + " | ".join(auth.ROLES) + " |", "|---|" + "---|" * len(auth.ROLES)]
    for a in auth.ACTIONS:
        lines.append(f"| {auth.ACTION_WORDS[a]} (`{a}`) | "
                     + " | ".join("yes" if auth.can(r, a) else "–" for r in auth.ROLES) + " |")
    return "\n".join(lines)


def test_the_readme_table_matches_the_roles_table():
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- roles-table:[^>]*-->\n(.*?)\n<!-- /roles-table -->", readme, re.S)
    assert found, "README lacks the generated roles table"
    assert found.group(1) == roles_markdown()


# --- exports: offered or refused, for every role ----------------------------------------------------------

#: Each export's page, and the keys of the download buttons it covers there.
EXPORT_BUTTONS = {
    "export:trail": ("page:trail", ["trail_csv"]),
    "export:audit": ("page:audit", ["audit_json", "audit_html"]),
    "export:agreement": ("page:agreement", ["agreement_times_csv", "agreement_export_csv", "agreement_export_coco"]),
    "export:session_report": ("page:agreement", ["agreement_export_json", "agreement_export_html"]),
}


def test_every_export_has_its_buttons_here():
    assert set(EXPORT_BUTTONS) == set(EXPORTS)


def download_keys(at: AppTest) -> set[str]:
    return {b.proto.id.rsplit("-", 1)[-1] for b in at.get("download_button")}


def open_export_page(action: str, role: str, db_url: str | None = None) -> AppTest:
    """The page of ``action`` (opened on its own, as a typed URL would) with something to download on it."""
    from test_page_audit import saved_audit

    page, _ = EXPORT_BUTTONS[action]
    at = AppTest.from_file(str(REPO / page_file(page)), default_timeout=TIMEOUT)
    login(at, name=f"{role} user", role=role)
    if page == "page:audit":
        at.session_state["audit_report"] = saved_audit()
    if page == "page:agreement":
        at.session_state["agreement_allow_ood"] = True  # the study's synthetic films are refused otherwise
    at.run()
    assert not at.exception, [e.stack_trace for e in at.exception]
    return at


@pytest.fixture(scope="module")
def agreement_study(tiny_registry, tmp_path_factory) -> str:
    """test_page_agreement's study with its tiny-effnet heatmaps computed: something to export."""
    from test_page_agreement import study_with_heatmaps

    return study_with_heatmaps(tiny_registry, tmp_path_factory.mktemp("matrix-agreement"))


@pytest.fixture
def export_db(request, tmp_path, monkeypatch):
    """The database an export's page needs: the agreement study, or an empty one."""
    action = request.node.callspec.params["action"]
    if EXPORT_BUTTONS[action][0] == "page:agreement":
        url = request.getfixturevalue("agreement_study")
        request.getfixturevalue("use_registry")
    else:
        url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    if EXPORT_BUTTONS[action][0] == "page:trail":
        factory = storage.session_factory(storage.make_engine(url))
        with factory.begin() as s:
            auth.record(s, "someone", "login")
    return url


@pytest.mark.parametrize("stricter", [False, True], ids=["table", "table-made-stricter"])
@pytest.mark.parametrize("action, role", list(itertools.product(EXPORTS, auth.ROLES)))
def test_an_export_is_offered_or_refused_in_words(export_db, action, role, stricter, monkeypatch):
    page, keys = EXPORT_BUTTONS[action]
    if stricter:  # admin only: a role that may open the page now meets the in-page refusal
        monkeypatch.setitem(auth.ACTIONS, action, frozenset({"admin"}))
    at = open_export_page(action, role)
    if not auth.can(role, page):
        assert [e.value for e in at.error] == [refusal(role, page)] and not at.get("download_button")
        return
    shown = download_keys(at)
    if auth.can(role, action):
        assert set(keys) <= shown, shown
    else:
        assert not set(keys) & shown, shown
        words = auth.ACTION_WORDS[action]
        assert f"Your role ({role}) may not {words}." in [c.value for c in at.caption]


def test_a_download_is_recorded_in_the_trail(db):
    from test_page_audit import saved_audit

    at = AppTest.from_file(str(REPO / "pages" / "audit.py"), default_timeout=TIMEOUT)
    login(at, name="Res", role="researcher")
    at.session_state["audit_report"] = saved_audit()
    at.run()
    next(b for b in at.get("download_button") if b.proto.label == "Download HTML report").click().run()
    assert not at.exception
    with db() as s:
        exports = [(e.who, e.detail) for e in auth.events(s, action="export")]
    assert exports == [("Res", "audit.html: dataset audit of demo, 12 films")]


# --- the blind gate, per page, for the logged-in reader ----------------------------------------------------

CHEST = "covid_hannover_b343e657.png"


@pytest.fixture
def blind(tmp_path, monkeypatch, use_registry):
    """Dr P (admin, so every page opens) has CHEST pending in the blind session "Blind 1"; Dr Q reads nothing."""
    from conftest import FIXTURES
    from cxr_core import annotation as ann

    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    factory = storage.session_factory(storage.make_engine(url))
    images = ann.read_uploads([(CHEST, (FIXTURES / "cxr" / CHEST).read_bytes())])
    with factory.begin() as s:
        p = auth.create_user(s, "Dr P", "admin", "correct horse battery staple")
        auth.create_user(s, "Dr Q", "admin", "correct horse battery staple")
        ann.create_session_from_xrays(s, name="Blind 1", images=images, reader_ids=[p.id], created_by=p.id)
    return factory, images.xrays[0].sha256, (FIXTURES / "cxr" / CHEST).read_bytes()


def model_output(at: AppTest) -> list[str]:
    """Every element that would show a model's output: score charts, heatmap pictures, score lines."""
    charts = [f"chart {c.proto.id}" for c in at.get("plotly_chart")]
    pictures = [c for img in at.get("image") for c in img.captions if "grad-cam" in c.lower() or "heatmap" in c]
    lines = [m.value for m in at.markdown if m.value.startswith("Top model score")]
    return charts + pictures + lines


def as_user(name: str, page: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    login(at, name=name, role="admin")
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.stack_trace for e in at.exception]
    return at


def shown_events(factory, who: str) -> list[str]:
    with factory() as s:
        return [e.film_sha for e in auth.events(s, who=who, action="model_output_shown")]


def test_review_and_compare_hide_a_pending_film_from_its_reader_only(blind):
    factory, sha, data = blind
    control = as_user("Dr Q", "pages/review.py")
    control.file_uploader(key="review_uploads").set_value([(CHEST, data, "image/png")]).run()
    control.toggle(key="review_compare").set_value(True).run()
    assert model_output(control)  # the gate lets Dr Q see it...
    control.run()
    assert shown_events(factory, "Dr Q").count(sha) >= 1
    before = len(shown_events(factory, "Dr Q"))
    control.run()  # ...and a rerun records nothing new (once per film, page and output)
    assert len(shown_events(factory, "Dr Q")) == before

    at = as_user("Dr P", "pages/review.py")
    at.file_uploader(key="review_uploads").set_value([(CHEST, data, "image/png")]).run()
    at.toggle(key="review_compare").set_value(True).run()
    assert not at.exception
    assert model_output(at) == [] and not at.get("download_button")
    assert sum("pending in your blind session(s) 'Blind 1'" in i.value for i in at.info) == 2  # film and compare
    assert shown_events(factory, "Dr P") == []


def test_the_dataset_audit_hides_predicted_classes_of_a_pending_film(blind, monkeypatch):
    from test_page_audit import saved_audit

    factory, sha, _ = blind
    audit = saved_audit()
    audit["images"][1]["sha256"] = sha  # /data/Normal_1.png is the pending film; the flagged thumbnail too
    audit["flagged"][0]["sha256"] = sha
    for i, im in enumerate(audit["images"]):
        im["sha256"] = im["sha256"] or f"{i:064x}"

    def page(name: str) -> AppTest:
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
        login(at, name=name, role="admin")
        at.session_state["audit_report"] = audit
        at.run()
        at.switch_page("pages/audit.py").run()
        assert not at.exception, [e.stack_trace for e in at.exception]
        return at

    control = page("Dr Q")
    assert control.header[0].value.endswith(": 12 images") and len(control.get("image")) == 1

    at = page("Dr P")
    assert at.header[0].value.endswith(": 11 images")
    assert any("1 film(s) of this audit are left out" in i.value for i in at.info)
    every = next(e for e in at.expander if e.label == "Every image").dataframe[0].value
    assert "Normal_1.png" not in set(every["file"]) and len(every) == 11
    assert not at.get("image") and not [c for c in at.caption if "Normal_1.png" in c.value]
    with factory() as s:
        shown = {e.film_sha for e in auth.events(s, who="Dr P", action="model_output_shown")}
    assert sha not in shown and len(shown) == 11


def test_the_agreement_page_and_its_reports_leave_out_a_pending_film(agreement_study, use_registry, monkeypatch):
    """In test_page_agreement's study, img2 is still pending for Dr B in "Blind 2"."""
    monkeypatch.setenv("CXR_DATABASE_URL", agreement_study)
    at = AppTest.from_file(str(REPO / "pages" / "agreement.py"), default_timeout=TIMEOUT)
    login(at, name="Dr B", role="admin")
    at.session_state["agreement_allow_ood"] = True
    at.run()
    assert not at.exception, [e.stack_trace for e in at.exception]
    assert any("pending in your own blind readings" in i.value for i in at.info)
    captions = [c for img in at.get("image") for c in img.captions]
    assert captions and not [c for c in captions if c.startswith("img2.png")]
    from cxr_core.agreement import session_scores as ss

    with storage.session_factory(storage.make_engine(agreement_study))() as s:
        (img2,) = ss.hidden_for(s, "Dr B")
        shown = {e.film_sha for e in auth.events(s, who="Dr B", action="model_output_shown")}
    assert shown and img2 not in shown  # what the page scored, and so what its reports hold, leaves img2 out
