"""The audit's HTML page: a hostile model, class or file name is shown as text, never run as markup."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np

from cxr_core.audit import AuditReport, Flagged, ImageAudit, thumbnail, to_json
from cxr_core.audit.report import render_html

SCRIPT = "<script>alert('x')</script>"
IMG = '"><img src=x onerror=alert(1)>'
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "caption", "tr", "th",
                "td", "div", "span", "figure", "img", "figcaption", "br", "ul", "li"}


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def hostile_audit() -> dict:
    rng = np.random.default_rng(0)
    classes = [f"COVID{SCRIPT}", "Normal"]
    images = []
    for i in range(8):
        cls = classes[i % 2]
        out = float(np.clip(rng.normal(0.8 if i % 2 else 0.2, 0.05), 0, 1))
        shares = {"border": 0.1, "top_left": 0.0, "top_right": 0.0, "bottom_left": 0.0, "bottom_right": 0.0,
                  "markers": 0.05, "outside_lungs": out}
        images.append(ImageAudit(f"/data/{IMG}_{i}.png", cls, f"p{i}", cls, 0.9, shares,
                                 {**{k: 0.1 for k in shares}, "outside_lungs": 0.65}, [], "estimate"))
    pixels = np.full((40, 40), 0.4, np.float32)
    heat = np.zeros((40, 40), np.float32)
    heat[:10, :10] = 1
    lungs = np.zeros((40, 40), bool)
    lungs[10:30, 8:32] = True
    flagged = [Flagged(f"/data/{IMG}.png", "Normal", f"Normal{IMG}", 0.9, 0.65, "", thumbnail(pixels, heat, lungs, []))]
    report = AuditReport(f"model{SCRIPT}", classes, images, flagged, {"mask_markers": False, "shortcut_margin": 0.15})
    data = json.loads(json.dumps(to_json(report, n_boot=50)))
    data["failures"] = [{"file": f"/x/{IMG}.dcm", "error": f"bad {SCRIPT}"}]
    return data


def test_hostile_names_are_escaped_and_only_the_reports_own_tags_remain():
    html = render_html(hostile_audit())
    parser = Tags()
    parser.feed(html)
    tags = {t for t, _ in parser.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    for tag, attrs in parser.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    # the names are still there, as text
    assert "model&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert html.count("<img ") == 1  # the one flagged thumbnail, nothing injected


def test_report_keeps_its_sections_and_figures():
    data = hostile_audit()
    html = render_html(data)
    assert "<h2>Shortcut check</h2>" in html and "not diagnoses" in html
    assert html.count("<table>") == 2  # by predicted class and by true class
    assert f"{data['n_images']} images audited, 1 unreadable" in html
    assert "Unreadable files" in html
