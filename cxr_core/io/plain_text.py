"""Names typed by people (readers, sessions, files) inside Markdown a page renders, shown as typed.

Streamlit renders Markdown (links, images, emphasis, ``:red[...]`` colours, ``$...$`` formulas, HTML
entities) in titles, alerts and captions. A name is never trusted to be plain: :func:`md_escape`
backslash-escapes every character Markdown or Streamlit's own directives give a meaning to, so
``**Dr A**`` or ``[click](http://x)`` shows literally. Where a name stands alone, pages use ``st.text``.
"""

from __future__ import annotations

import re

#: CommonMark's escapable ASCII punctuation, plus Streamlit's ``:`` (directives) and ``$`` (LaTeX).
_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&\"'=^])")


def md_escape(text: object) -> str:
    """``text`` with every Markdown-active character backslash-escaped; new lines become spaces."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


__all__ = ["md_escape"]
