"""An expert reads a five-film blind session in Chromium, in turn, and no mark is lost on the way.

The reported bug this guards against: after submitting film 1 and drawing on film 2 of a 3+-film
session, the film picker jumped back to film 1 and film 2's draft was overwritten with an empty
drawing. So this test reads five films as a reader does: polygon, rectangle, freehand and circle
marks spread over the films, each with its own finding; after every mark it checks that the picker
still shows the same film and that the stored draft holds every mark so far. It leaves film 2
unsubmitted with "Next film", reloads the page in the middle of film 3 (logs in again, picks film 3: marks restored),
goes back from film 4 ("Previous film", then the picker) to film 2 and submits it before film 4,
and changes the window level between two marks on film 5.

At the end every stored reading is measured against the shapes the mouse drew. Each shape's
expected region comes from the mouse positions alone (canvas CSS pixels; at zoom 1x the whole film
is "contain"-fitted in the canvas, whatever size the window gave it) and the tools' documented
geometry (a rectangle's or circle's outline runs half a stroke inside the drag's start), mapped to
full-film pixels; the stored mask (all marks) and each mark's region must match it: area within 2%,
centroid and bounding box within 2 px. Every film has exactly one reading (version 1), none empty.
The run time is printed (``-s``) for the issue's closing note.

Runs ``streamlit run app.py`` on a free port against a temporary SQLite database holding the
session (made with the library), and drives Debian's ``/usr/bin/chromium`` with Playwright.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from auth_helpers import browser_login, make_user
from browser import CanvasPen, chromium_page, screenshot_on_failure, settle, sole, streamlit_server
from conftest import FIXTURES, REPO
from cxr_core import annotation as ann
from cxr_core import storage
from cxr_core.annotation.masks import region_masks

pytestmark = [pytest.mark.browser, pytest.mark.timeout(1800)]

#: Five different real films; the 512-wide ones are letterboxed in the canvas, the 256 one is enlarged.
FILMS = [
    FIXTURES / "audit" / "hannover_21982772.png",  # 512 x 419
    FIXTURES / "cxr" / "normal_nih14_00029719_000.png",  # 256 x 256
    FIXTURES / "audit" / "hannover_4fed5061.png",  # 512 x 419
    FIXTURES / "audit" / "hannover_c0f74558.png",  # 512 x 502
    FIXTURES / "audit" / "hannover_61bc50d1.png",  # 512 x 419
]
N = len(FILMS)
READER = "Dr T"
SESSION = "Five films"
WAIT_MS = 180_000  # 2 shared cores: a rerun can take many seconds
STROKE = 3  # the page's outline width (ui.annotate.CANVAS_STROKE), in CSS pixels; checked on every stored mark
PICKER = "Film"  # the film picker's label; its options read "Film 2 of 5"


@dataclass
class Mark:
    """One shape as the mouse drew it: its tool, its finding, and where.

    ``where`` is given as fractions of the film's width and height; when drawn, ``points`` are the
    mouse positions it became (CSS pixels from the canvas's corner) and ``box`` the canvas's size.
    """

    kind: str  # "polygon", "rect", "circle" or "freehand"
    finding: str
    where: list[tuple[float, float]]
    points: list[tuple[float, float]] = field(default_factory=list)
    box: tuple[float, float] = (0.0, 0.0)

    @property
    def fabric_type(self) -> str:
        return {"freehand": "path"}.get(self.kind, self.kind)

    def circle(self) -> tuple[float, float, float]:
        """Centre and radius of a circle-tool drag, in CSS pixels.

        The tool puts the circle's left edge, stroke included, at the press and makes its diameter
        the drag's length, turned towards the release: so its outline (the stroke's middle) has
        radius ``length / 2`` and its centre is half a stroke further along the drag than the midpoint.
        """
        (x0, y0), (x1, y1) = self.points
        length = np.hypot(x1 - x0, y1 - y0)
        along = (length / 2 + STROKE / 2) / length
        return x0 + (x1 - x0) * along, y0 + (y1 - y0) * along, length / 2

    def rect(self) -> tuple[float, float, float, float]:
        """Left, top, right, bottom of a rectangle-tool drag's outline (the stroke's middle), in CSS pixels.

        The tool puts the rectangle's corner, stroke included, at the press: its outline starts half a stroke in.
        """
        (x0, y0), (x1, y1) = self.points
        left, top = min(x0, x1) + STROKE / 2, min(y0, y1) + STROKE / 2
        return left, top, left + abs(x1 - x0), top + abs(y1 - y0)

    @property
    def edge(self) -> tuple[float, float]:
        """A point on the shape's outline, where its stroke (in the finding's colour) is drawn."""
        if self.kind == "circle":
            cx, cy, r = self.circle()
            return cx, cy - r
        if self.kind == "rect":
            left, top, right, _ = self.rect()
            return (left + right) / 2, top
        (xa, ya), (xb, yb) = self.points[0], self.points[1]
        return (xa + xb) / 2, (ya + yb) / 2

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether canvas points (x, y) lie inside the drawn shape's outline."""
        if self.kind == "circle":
            cx, cy, r = self.circle()
            return (x - cx) ** 2 + (y - cy) ** 2 <= r**2
        if self.kind == "rect":
            left, top, right, bottom = self.rect()
            return (x >= left) & (x < right) & (y >= top) & (y < bottom)
        inside = np.zeros(x.shape, dtype=bool)  # even-odd ray casting over the closed outline
        poly = np.asarray(self.points, dtype=float)
        for (xa, ya), (xb, yb) in zip(poly, np.roll(poly, -1, axis=0)):
            if ya == yb:
                continue
            crosses = (ya > y) != (yb > y)
            inside ^= crosses & (x < xa + (y - ya) * (xb - xa) / (yb - ya))
        return inside


@dataclass
class Film:
    """What the reader drew and answered on one film of their queue."""

    position: int  # 0-based place in the reader's order
    sha: str
    shape: tuple[int, int]
    marks: list[Mark] = field(default_factory=list)
    diagnosis: str = ""
    confidence: int = 0


def ellipse(u: float, v: float, ru: float, rv: float, n: int) -> list[tuple[float, float]]:
    """``n`` points round an ellipse (fractions of the film), back to the first: a freehand outline."""
    t = np.linspace(0, 2 * np.pi, n + 1)
    return [(float(u + ru * np.cos(a)), float(v + rv * np.sin(a))) for a in t]


def expected_mask(mark: Mark, shape: tuple[int, int]) -> np.ndarray:
    """The film pixels whose centres fall inside ``mark`` as drawn.

    At zoom 1x the whole film is shown "contain"-fitted in the canvas (one scale, centred), so a
    film pixel centre maps to the canvas's CSS pixels through the contain fit of the canvas's size
    when the mark was drawn.
    """
    rows, cols = shape
    fit = ann.contain_fit(cols, rows, *mark.box)
    r, c = np.mgrid[0:rows, 0:cols] + 0.5
    return mark.inside(c * fit["scale_x"] + fit["offset_x"], r * fit["scale_y"] + fit["offset_y"])


def assert_same_region(got: np.ndarray, want: np.ndarray, what: str) -> str:
    """Area within 2%, centroid and bounding box within 2 px; returns how far off each was."""
    assert want.sum() > 500, f"{what}: the drawn shape is too small to measure"
    assert got.sum() == pytest.approx(want.sum(), rel=0.02), f"{what}: area {got.sum()} px, drawn {want.sum()} px"
    gr, gc = np.nonzero(got)
    wr, wc = np.nonzero(want)
    assert abs(gr.mean() - wr.mean()) <= 2 and abs(gc.mean() - wc.mean()) <= 2, (
        f"{what}: centroid {(gr.mean(), gc.mean())}, drawn {(wr.mean(), wc.mean())}")
    got_box = np.array([gr.min(), gr.max(), gc.min(), gc.max()])
    want_box = np.array([wr.min(), wr.max(), wc.min(), wc.max()])
    assert np.abs(got_box - want_box).max() <= 2, f"{what}: bounding box {got_box}, drawn {want_box}"
    shift = np.hypot(gr.mean() - wr.mean(), gc.mean() - wc.mean())
    return (f"area {got.sum() / want.sum() - 1:+.2%}, centroid {shift:.2f} px, "
            f"box {np.abs(got_box - want_box).max()} px")


def open_annotate(page, base: str) -> None:
    """A new browser session: the login form, then the Annotate page from the sidebar."""
    page.goto(base)
    browser_login(page, READER)
    page.get_by_role("link", name="Annotate (experts)").click()


@pytest.fixture
def study(tmp_path):
    """A fresh database holding one blind session of five films for one reader, made with the library."""
    url = f"sqlite:///{tmp_path / 'annotations.db'}"
    factory = storage.session_factory(storage.make_engine(url))
    images = ann.read_uploads([(p.name, p.read_bytes()) for p in FILMS])
    assert not images.errors and len(images.xrays) == N
    with factory.begin() as s:
        admin = storage.add_reader(s, "Admin", "admin").id
        reader = storage.add_reader(s, READER, "sme").id
        session = ann.create_session_from_xrays(s, name=SESSION, images=images, reader_ids=[reader], created_by=admin,
                                                seed=12)  # the reader's own (shuffled) order, the same every run
        queue = storage.reader_queue(s, session.id, reader)
        shapes = {x.sha256: x.shape for x in images.xrays}
        films = [Film(e.position, e.image_sha, shapes[e.image_sha]) for e in queue.entries]
        ids = (session.id, reader)
    make_user(url, "Admin", "admin")  # an administrator with a password: the login form, not the first-run one
    make_user(url, READER, "sme")  # a password, so the reader can log in
    assert len({f.sha for f in films}) == N, "the five films must be five different images"
    env = {"CXR_DATABASE_URL": url, "CXR_DATA_DIR": str(tmp_path / "data"),
           "CXR_WEIGHTS_DIR": str(tmp_path / "weights")}
    return env, factory, ids, films


def test_five_film_blind_session_keeps_every_mark(study, tmp_path):
    started = time.monotonic()
    env, factory, (session_id, reader_id), films = study
    shots = Path(os.environ.get("CXR_SCREENSHOTS", tmp_path))
    reading = dict(reader_id=reader_id, session_id=session_id)

    def wait_for(what: str, check, timeout: float = WAIT_MS / 1000):
        """Poll ``check(s)`` until it returns something truthy; fail saying what was awaited and what was seen."""
        deadline = time.monotonic() + timeout
        while True:
            with factory.begin() as s:
                value = check(s)
            if value:
                return value
            if time.monotonic() > deadline:
                with factory.begin() as s:
                    seen = {f"film {f.position + 1}": draft_kinds(s, f) for f in films}
                pytest.fail(f"timed out waiting for {what}; the picker shows {picker_text()!r}; drafts: {seen}")
            time.sleep(0.3)

    def draft_kinds(s, film: Film) -> list[str] | None:
        draft = storage.get_draft(s, image_sha=film.sha, **reading)
        return None if draft is None else [o["type"].lower() for o in draft.canvas_json.get("objects", [])]

    def picker_text() -> str:
        return sole(page.get_by_role("combobox", name=PICKER, exact=True)).input_value()

    def film_shown() -> int:
        """The 1-based film the picker shows."""
        value = picker_text()
        found = re.search(rf"Film (\d+) of {N}", value)
        assert found, f"the film picker shows {value!r}"
        return int(found.group(1))

    def press(button: str) -> None:
        sole(page.get_by_role("button", name=button)).click()
        settle(page)

    def choose_film(number: int) -> None:
        sole(page.get_by_role("combobox", name=PICKER, exact=True)).click()
        page.get_by_role("option", name=re.compile(rf"^Film {number} of {N}$")).click()
        settle(page)
        assert film_shown() == number

    def draw(film: Film, mark: Mark) -> None:
        """Choose the tool and finding, draw the mark, and wait until the draft holds it (and every earlier one)."""
        tool = next(name for name, mode in ann.TOOLS.items() if mode == {"freehand": "freedraw"}.get(mark.kind,
                                                                                                     mark.kind))
        sole(page.get_by_test_id("stRadio").filter(has_text="Drawing tool")).get_by_text(tool, exact=True).click()
        settle(page)
        finding = sole(page.get_by_role("combobox", name="Finding for the next mark"))
        if finding.input_value() != mark.finding:
            finding.click()
            page.get_by_role("option", name=mark.finding, exact=True).click()
            settle(page)  # the canvas gets the new tool and colour from the rerun
        assert film_shown() == film.position + 1, f"the picker left film {film.position + 1} before a mark was drawn"
        pen = CanvasPen(page)
        box = pen.box()
        mark.box = (box["width"], box["height"])
        rows, cols = film.shape
        fit = ann.contain_fit(cols, rows, *mark.box)  # at 1x the whole film is shown, "contain"-fitted
        aim = [(fit["offset_x"] + u * cols * fit["scale_x"], fit["offset_y"] + v * rows * fit["scale_y"])
               for u, v in mark.where]
        if mark.kind == "polygon":
            mark.points = pen.polygon(aim)
        elif mark.kind == "freehand":
            mark.points = pen.freehand(aim)
        else:
            mark.points = pen.drag(*aim)
        film.marks.append(mark)
        want = [m.fabric_type for m in film.marks]
        wait_for(f"film {film.position + 1}'s draft to hold {want}", lambda s: draft_kinds(s, film) == want)
        settle(page)
        # Still the same film, and the draft still holds every mark after the rerun (the reported bug).
        assert film_shown() == film.position + 1
        with factory.begin() as s:
            assert draft_kinds(s, film) == want

    def assert_marks_shown(film: Film) -> None:
        """Every mark of ``film`` is drawn on the canvas, each in its finding's colour."""
        pen = CanvasPen(page)
        deadline = time.monotonic() + 60
        for mark in film.marks:
            colour = tuple(int(ann.finding_color(mark.finding)[i:i + 2], 16) for i in (1, 3, 5))
            while not pen.shows_colour(mark.edge, colour):
                assert time.monotonic() < deadline, f"film {film.position + 1}: its {mark.kind} is not drawn"
                time.sleep(0.5)

    def submit(film: Film, diagnosis: str, confidence: int, then: int | None) -> None:
        """Answer and submit ``film``; the film numbered ``then`` (1-based) opens next."""
        film.diagnosis, film.confidence = diagnosis, confidence
        answers = sole(page.get_by_test_id("stRadio").filter(has_text="Your diagnosis"))
        answers.get_by_text(diagnosis, exact=True).click()
        certainty = sole(page.get_by_test_id("stRadio").filter(has_text="Your confidence"))
        certainty.get_by_text(re.compile(rf"^{confidence}\b")).click()
        settle(page)
        sole(page.get_by_role("button", name="Submit reading")).click()
        wait_for(f"film {film.position + 1} to be submitted",
                 lambda s: storage.latest_annotation(s, image_sha=film.sha, **reading))
        settle(page)
        if then is not None:
            assert film_shown() == then, f"after submitting film {film.position + 1}, film {then} should open"

    f1, f2, f3, f4, f5 = films
    with streamlit_server(REPO / "app.py", env=env, log_dir=tmp_path) as base, \
            chromium_page({"width": 1400, "height": 1300}) as page, \
            screenshot_on_failure(page, shots / "reading_session_failure.png"):
        page.set_default_timeout(WAIT_MS)
        open_annotate(page, base)  # who reads is the login, never a picker or the URL
        page.get_by_role("combobox", name=PICKER, exact=True).wait_for()
        CanvasPen(page).box()
        settle(page)
        assert film_shown() == 1

        # Film 1: a polygon and a rectangle, then submit; film 2 opens.
        draw(f1, Mark("polygon", "consolidation", [(0.2, 0.2), (0.48, 0.22), (0.42, 0.55), (0.22, 0.5)]))
        draw(f1, Mark("rect", "effusion", [(0.58, 0.6), (0.85, 0.85)]))
        submit(f1, "Pneumonia", 4, then=2)

        # Film 2, where the bug bit: a freehand region and a circle; leave it with "Next film" unsubmitted.
        draw(f2, Mark("freehand", "ground-glass opacity", ellipse(0.33, 0.37, 0.15, 0.12, 48)))
        draw(f2, Mark("circle", "nodule/mass", [(0.6, 0.65), (0.8, 0.75)]))
        press("Next film")
        assert film_shown() == 3

        # Film 3: a rectangle, a reload in the middle (a new browser session: the login again, then the first film
        # still to read, film 2; back on film 3 the draft brings its rectangle back), a polygon, submit.
        draw(f3, Mark("rect", "other", [(0.25, 0.25), (0.5, 0.45)]))
        open_annotate(page, base)
        page.get_by_role("combobox", name=PICKER, exact=True).wait_for()
        CanvasPen(page).box()
        settle(page)
        assert film_shown() == 2, "after logging in again, the reader's first film still to read opens"
        choose_film(3)
        assert_marks_shown(f3)
        draw(f3, Mark("polygon", "effusion", [(0.55, 0.55), (0.8, 0.58), (0.7, 0.8)]))
        submit(f3, "COVID-19", 3, then=4)  # the next film still to read

        # Film 4: a circle; back past film 3 (submitted, its marks shown) to film 2 (its marks still there),
        # submit film 2; film 4 opens again, with its circle.
        draw(f4, Mark("circle", "consolidation", [(0.3, 0.33), (0.55, 0.43)]))
        press("Previous film")
        assert film_shown() == 3
        assert_marks_shown(f3)
        choose_film(2)
        assert_marks_shown(f2)
        with factory.begin() as s:
            assert draft_kinds(s, f2) == ["path", "circle"]
        submit(f2, "Normal", 2, then=4)
        assert_marks_shown(f4)
        submit(f4, "Pneumonia", 5, then=5)

        # Film 5: a freehand region and a rectangle, submit: the session is read.
        draw(f5, Mark("freehand", "other", ellipse(0.67, 0.33, 0.13, 0.15, 60)))
        level = sole(page.get_by_test_id("stSlider").filter(has_text="Level (brightness)")).get_by_role("slider")
        level.focus()
        for _ in range(3):
            page.keyboard.press("ArrowLeft")  # a brighter film: the display changes, the marks stay
        settle(page)
        assert film_shown() == 5
        assert_marks_shown(f5)
        with factory.begin() as s:
            assert draft_kinds(s, f5) == ["path"]
        draw(f5, Mark("rect", "consolidation", [(0.22, 0.6), (0.47, 0.85)]))
        submit(f5, "COVID-19", 4, then=None)
        page.screenshot(path=str(shots / "reading_session_done.png"), full_page=True)

    # Every film: one reading, version 1, never empty, every mark where the mouse drew it.
    with factory.begin() as s:
        saved = {a.image_sha: a for a in storage.latest_annotations(s, **reading)}
        assert storage.reader_queue(s, session_id, reader_id).progress_text == f"{N} of {N} done"
        histories = {f.sha: len(storage.annotation_history(s, image_sha=f.sha, **reading)) for f in films}
        drafts = {f.sha: storage.get_draft(s, image_sha=f.sha, **reading) for f in films}
        masks = {sha: storage.annotation_mask(a) for sha, a in saved.items()}
        rows = {sha: (a.version, a.diagnosis, a.confidence, a.regions, a.canvas_json, a.background_fit, a.mask_area,
                      a.canvas_width, a.canvas_height) for sha, a in saved.items()}
    assert set(saved) == {f.sha for f in films}
    assert histories == {f.sha: 1 for f in films}, "no reading was revised, so each has one version"
    assert all(d is None for d in drafts.values()), "a submitted film keeps no draft"
    for film in films:
        what = f"film {film.position + 1}"
        version, diagnosis, confidence, regions, canvas_json, fit, area, width, height = rows[film.sha]
        assert {m.box for m in film.marks} == {(width, height)}, f"{what}: the canvas's CSS size is its stored size"
        assert (version, diagnosis, confidence) == (1, film.diagnosis, film.confidence), what
        assert [(r["type"], r["label"]) for r in regions] == [(m.fabric_type, m.finding) for m in film.marks], what
        assert area > 0 and masks[film.sha].shape == film.shape, what
        assert fit is not None, f"{what}: the canvas's background fit was not stored"
        wants = [expected_mask(m, film.shape) for m in film.marks]
        assert [o.get("strokeWidth") for o in canvas_json["objects"]] == [STROKE] * len(film.marks), what
        drawn = region_masks(canvas_json, image_shape=film.shape, background_fit=fit)
        for mark, want, got, region in zip(film.marks, wants, drawn, regions):
            assert region["area_px"] == got.area
            assert_same_region(got.mask, want, f"{what}, its {mark.kind}")
        off = assert_same_region(masks[film.sha], np.logical_or.reduce(wants), f"{what}, all marks")
        assert area == masks[film.sha].sum()
        print(f"{what}, {film.shape[1]} x {film.shape[0]} on a {width} x {height} canvas "
              f"({', '.join(m.kind for m in film.marks)}): stored mask vs drawn: {off}")
    print(f"\nfive-film reading session in Chromium: {time.monotonic() - started:.0f} s")
