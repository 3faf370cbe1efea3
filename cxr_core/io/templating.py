"""HTML reports from Jinja2 templates with autoescaping, so a name or file name is always text, never markup.

Every HTML page CXR Review writes comes from ``cxr_core/templates/*.html.j2`` through
:func:`render`: values are escaped unless a template marks them safe (only markup the code
itself built from escaped parts, e.g. inline PNG data URIs), and a missing value is an error
rather than an empty string.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def environment():
    """The one Jinja2 environment: package templates, autoescape always on, undefined values refused."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("cxr_core", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(name: str, **context: Any) -> str:
    """Render template ``name`` (e.g. ``"audit_report.html.j2"``) with ``context``; every value autoescaped."""
    return environment().get_template(name).render(**context)
