"""Names inside rendered Markdown show as typed: no emphasis, link, image, HTML or Streamlit directive."""

from __future__ import annotations

import html as html_lib

import pytest
from markdown_it import MarkdownIt

from cxr_core.io.plain_text import md_escape

NAMES = [
    "**Dr A**", "[click me](http://evil.example)", "![x](http://evil.example/p.png)", "<b>bold</b>",
    "# heading", "- item", "`code`", "Dr_A_B", "a | b", "1. first", "&amp; entity", "~~gone~~",
]


@pytest.mark.parametrize("name", NAMES)
def test_commonmark_renders_an_escaped_name_as_its_own_text(name):
    html = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(md_escape(name))
    assert html.startswith("<p>") and html.endswith("</p>\n")  # one paragraph: no heading, list or table
    inner = html.removeprefix("<p>").removesuffix("</p>\n")
    for tag in ("<strong>", "<em>", "<a ", "<img", "<h1>", "<li>", "<code>", "<s>", "<del>", "<b>"):
        assert tag not in inner
    assert html_lib.unescape(inner) == name


def test_streamlit_directives_and_formulas_are_escaped():
    assert md_escape(":red[alarm] $x^2$ :material/home:") == r"\:red\[alarm\] \$x\^2\$ \:material/home\:"
    assert md_escape("two\nlines") == "two lines"
