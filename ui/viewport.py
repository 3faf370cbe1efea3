"""The browser window's size and where a spot of the page sits in it, for sizing the annotation canvas.

A Streamlit Components v2 component (``st.components.v2.component``, inline JavaScript, no
iframe) that draws nothing: a zero-height probe. It reports ``window.innerWidth/innerHeight``,
the probe's own width (the width of the column it sits in) and its top in the page as if the
page were scrolled to the top, and reports again when the window or the column is resized.

Use it just above the canvas::

    vp = viewport("annotate_viewport")
    if vp is not None:
        width, height = canvas_size(*vp.space_below(), film_aspect)  # cxr_core.annotation.canvas_view
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

#: Space kept under the canvas by :meth:`Viewport.space_below`: the gap between Streamlit elements (1rem)
#: between the probe and the canvas, and a margin at the bottom of the window.
BOTTOM_MARGIN = 40

_HTML = '<div class="cxr-viewport-probe"></div>'
_CSS = ".cxr-viewport-probe { width: 100%; height: 0; margin: 0; padding: 0; overflow: hidden; }"
# Measures once the layout settles (150 ms after a change), sends only what differs from what
# Python already holds (data.known), so a report never loops into another rerun. Streamlit may call
# the function again for the same element; the previous listeners are removed first.
_JS = """
export default function (component) {
  const { parentElement, setStateValue, data } = component;
  const probe = parentElement.querySelector('.cxr-viewport-probe') || parentElement;
  if (typeof parentElement.__cxrViewportStop === 'function') parentElement.__cxrViewportStop();
  let last = data && data.known ? data.known : null;
  const same = (a, b) => !!a && !!b && Object.keys(b).every((k) => Number(a[k]) === Number(b[k]));
  let timer = null;
  const scrolled = () => {  // how far every scrolling ancestor (and the window) is scrolled
    let total = window.scrollY || 0;
    for (let el = probe.parentElement; el; el = el.parentElement) total += el.scrollTop || 0;
    return total;
  };
  const measure = () => {
    const box = probe.getBoundingClientRect();
    const value = {
      width: Math.round(window.innerWidth), height: Math.round(window.innerHeight),
      top: Math.round(box.top + scrolled()), element_width: Math.round(box.width),
      pixel_ratio: window.devicePixelRatio || 1,
    };
    if (!same(last, value)) { last = value; setStateValue('viewport', value); }
  };
  const soon = () => { clearTimeout(timer); timer = setTimeout(measure, 150); };
  window.addEventListener('resize', soon);
  const observer = new ResizeObserver(soon);
  observer.observe(probe);
  observer.observe(document.body);
  soon();
  const stop = () => { window.removeEventListener('resize', soon); observer.disconnect(); clearTimeout(timer); };
  parentElement.__cxrViewportStop = stop;
  return stop;
}
"""

_probe = st.components.v2.component("cxr_review.viewport", html=_HTML, css=_CSS, js=_JS, isolate_styles=False)


@dataclass(frozen=True)
class Viewport:
    """What the browser reported, in CSS pixels.

    Attributes
    ----------
    width, height : int
        ``window.innerWidth``, ``window.innerHeight``.
    top : int
        The probe's top in the page, as if scrolled to the top (its distance from the window's top then).
    element_width : int
        The probe's width: the width of the column the probe was placed in.
    pixel_ratio : float
        ``window.devicePixelRatio`` (for :func:`cxr_core.annotation.canvas_view.view_picture`'s ``pixel_ratio``).
    """

    width: int
    height: int
    top: int
    element_width: int
    pixel_ratio: float = 1.0

    def space_below(self, margin: int = BOTTOM_MARGIN) -> tuple[int, int]:
        """(width, height) left for an element placed right below the probe, for it to end above the fold."""
        return self.element_width, max(0, self.height - self.top - margin)


def _parse(value: object) -> Viewport | None:
    if not isinstance(value, dict):
        return None
    try:
        return Viewport(int(value["width"]), int(value["height"]), int(value["top"]), int(value["element_width"]),
                        float(value.get("pixel_ratio") or 1.0))
    except (KeyError, TypeError, ValueError):
        return None


def viewport(key: str) -> Viewport | None:
    """Place the (invisible) probe here and return what the browser last reported; None until it has.

    The first run of a page returns None (the browser has not measured yet); the report that
    follows reruns the script. ``key`` must be unique on the page.
    """
    memo = f"{key}__last"
    known = st.session_state.get(memo)
    result = _probe(key=key, data={"known": known}, height="content", on_viewport_change=lambda: None)
    value = _parse(result.get("viewport"))
    if value is None:  # not measured yet, or the element was remounted after Streamlit forgot its state
        return _parse(known)
    st.session_state[memo] = dict(result["viewport"])
    return value
