"""HTML reports from Jinja2 templates with autoescaping, so a name or file name is always text, never markup.

Every HTML page CXR Review writes comes from ``cxr_core/templates/*.html.j2`` through
:func:`render`: values are escaped unless a template marks them safe (only markup the code
itself built from escaped parts, e.g. inline PNG data URIs), and a missing value is an error
rather than an empty string.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Any


def number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; an en dash when it is missing or not finite (an undefined metric)."""
    if value is None or not math.isfinite(value):
        return "\u2013"
    return f"{value:.{digits}f}"


def finite(value: Any) -> bool:
    """True for a number that is neither missing nor NaN nor infinite (a metric that is defined)."""
    return isinstance(value, numbers.Real) and math.isfinite(value)


def duration(seconds: float | None) -> str:
    """A time span as a reader says it: ``"42 s"`` under two minutes, else ``"2.5 min"``; an en dash when untimed."""
    if seconds is None or not math.isfinite(seconds):
        return "\u2013"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@lru_cache(maxsize=1)
def environment():
    """The one Jinja2 environment: package templates, autoescape always on, undefined values refused.

    Filters ``number`` and ``duration`` format numbers in the template, not in Python; the test
    ``finite`` (``{% if x is finite %}``) tells a defined metric from NaN or None.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cxr_core", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(number=number, duration=duration)
    env.tests.update(finite=finite)
    return env


def render(name: str, **context: Any) -> str:
    """Render template ``name`` (e.g. ``"audit_report.html.j2"``) with ``context``; every value autoescaped."""
    return environment().get_template(name).render(**context)
