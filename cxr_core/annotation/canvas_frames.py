"""The canvas's frames: the full frame drawings are stored in, zoomed views of it, and the canvas size.

A :class:`View` shows part of the full frame magnified ``zoom`` times; :func:`to_view` and
:func:`from_view` move a drawing between the two frames, :func:`refit_drawing` and
:func:`rescale_drawing` between canvas sizes, all by one uniform scale and shift in Fabric's own
terms (see :mod:`cxr_core.annotation.canvas_view` for the full account). Re-exported by
:mod:`cxr_core.annotation.canvas_view`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_core.annotation import contain_fit
from cxr_core.annotation.masks import canvas_objects, fabric_number, fabric_origin
from cxr_core.errors import CXRError

#: Zoom factors offered.
ZOOMS = (1, 2, 4)
#: Named regions of the film (a 3 x 3 grid), as the centre of the view in film fractions (x, y).
REGIONS: dict[str, tuple[float, float]] = {
    f"{row} {col}" if (row, col) != ("middle", "centre") else "centre": (fx, fy)
    for row, fy in (("upper", 1 / 6), ("middle", 0.5), ("lower", 5 / 6))
    for col, fx in (("left", 1 / 6), ("centre", 0.5), ("right", 5 / 6))
}
class CanvasViewError(CXRError):
    """A view, canvas size, film or drawing that the viewer cannot use as given."""


# --- views -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """What the canvas shows: the film magnified ``zoom`` times around a centre point.

    Attributes
    ----------
    zoom : int
        One of :data:`ZOOMS`; 1 shows the whole film (the centre is then ignored).
    x, y : float
        Centre of the region shown, as fractions of the film's width and height (0, 0 is the
        film's top-left corner, 0.5, 0.5 its centre). The region is moved as little as needed
        to stay on the film (see :func:`view_transform`), so ``View(2, 0, 0)`` shows the upper
        left quarter. Fractions of the film, not of the canvas, so a view survives a resize.
    """

    zoom: int = 1
    x: float = 0.5
    y: float = 0.5

    def __post_init__(self) -> None:
        if self.zoom not in ZOOMS:
            raise CanvasViewError(f"zoom {self.zoom!r}; expected one of {', '.join(map(str, ZOOMS))}")
        for name, value in (("x", self.x), ("y", self.y)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise CanvasViewError(f"view centre {name}={value!r}; expected a fraction of the film in [0, 1]")

    @classmethod
    def at(cls, zoom: int, region: str = "centre") -> View:
        """The view of a named region (a key of :data:`REGIONS`, e.g. ``"upper left"``).

        Examples
        --------
        >>> View.at(2, "lower right")
        View(zoom=2, x=0.8333333333333334, y=0.8333333333333334)
        """
        try:
            x, y = REGIONS[region]
        except KeyError:
            raise CanvasViewError(f"region {region!r}; expected one of {', '.join(REGIONS)}") from None
        return cls(zoom, x, y)


@dataclass(frozen=True)
class ViewTransform:
    """Full frame to view frame: ``view = scale * full + (dx, dy)``; ``box`` is the region shown.

    ``box`` is ``(x0, y0, x1, y1)`` in full-frame canvas pixels.
    """

    scale: float
    dx: float
    dy: float
    box: tuple[float, float, float, float]


def _check_size(width: Any, height: Any) -> tuple[int, int]:
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (width, height))
    if not ok:
        raise CanvasViewError(f"canvas size {width!r} x {height!r}; expected two positive integers (CSS pixels)")
    return int(width), int(height)


def _check_film_shape(film_shape: Any) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in film_shape)
        ok = rows > 0 and cols > 0 and (rows, cols) == tuple(film_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CanvasViewError(f"film_shape={film_shape!r}; expected (rows, cols), two positive integers")
    return rows, cols


def frame_fit(film_shape: tuple[int, int], width: int, height: int) -> dict[str, float]:
    """The full frame's ``background_fit``: the film contain-fitted in a ``width x height`` canvas.

    Pass it to :func:`cxr_core.annotation.read_canvas` (with ``image_shape=film_shape``) for a
    full-frame drawing, and store it with the draft.
    """
    rows, cols = _check_film_shape(film_shape)
    width, height = _check_size(width, height)
    return contain_fit(cols, rows, width, height)


def view_transform(view: View, film_shape: tuple[int, int], width: int, height: int) -> ViewTransform:
    """Where ``view`` looks in the full frame of a ``width x height`` canvas, and the map there.

    The region shown is ``width/zoom x height/zoom`` full-frame pixels around the view's centre
    on the film. Along each axis it is then moved to lie on the film when the film is at
    least that long; otherwise it is centred on the film (it never leaves the canvas).
    """
    width, height = _check_size(width, height)
    fit = frame_fit(film_shape, width, height)
    k = float(view.zoom)
    if view.zoom == 1:
        return ViewTransform(1.0, 0.0, 0.0, (0.0, 0.0, float(width), float(height)))
    rows, cols = film_shape
    start = []
    for frac, lo, length, total in ((view.x, fit["offset_x"], cols * fit["scale_x"], width),
                                    (view.y, fit["offset_y"], rows * fit["scale_y"], height)):
        win = total / k
        if length >= win:
            a = min(max(lo + frac * length - win / 2, lo), lo + length - win)
        else:
            a = lo + length / 2 - win / 2
        start.append(min(max(a, 0.0), total - win))
    x0, y0 = start
    return ViewTransform(k, -k * x0, -k * y0, (x0, y0, x0 + width / k, y0 + height / k))


# --- moving drawings between frames ------------------------------------------------------------


def _num(obj: Mapping[str, Any], key: str, default: float) -> float:
    return fabric_number(obj, key, default, error=CanvasViewError)


def _origin(value: Any, axis: str) -> float:
    return fabric_origin(value, axis, error=CanvasViewError)


def _move_object(obj: Mapping[str, Any], k: float, dx: float, dy: float) -> dict:
    """One Fabric object with every point p moved to ``k * p + (dx, dy)``, its stroke as wide on screen.

    Fabric places ``left, top`` on the object's box including its stroke (:mod:`cxr_core.annotation.masks`):
    box = geometry + c, where the stroke's share c is ``(s, s)`` for ``strokeUniform`` and
    ``|scale @ skew| @ (s, s)`` otherwise. The geometry share scales with ``k``; with the stroke
    set to ``s`` (uniform) or ``s / k`` (scaled) c stays, so the anchor moves by
    ``k * anchor + d - (k - 1) * R(angle) @ (origin * c)`` and the centre lands on ``k * centre + d``.
    """
    out = copy.deepcopy(dict(obj))
    sx, sy = _num(obj, "scaleX", 1.0), _num(obj, "scaleY", 1.0)
    stroke = _num(obj, "strokeWidth", 1.0)
    uniform = bool(obj.get("strokeUniform"))
    if uniform:
        share = np.array([stroke, stroke])
    else:
        skx, sky = math.radians(_num(obj, "skewX", 0.0)), math.radians(_num(obj, "skewY", 0.0))
        fx = -1.0 if obj.get("flipX") else 1.0
        fy = -1.0 if obj.get("flipY") else 1.0
        if skx == 0.0 and sky == 0.0:
            share = np.array([stroke * sx, stroke * sy])
        else:
            lin = (np.diag([sx * fx, sy * fy]) @ np.array([[1.0, math.tan(skx)], [0.0, 1.0]])
                   @ np.array([[1.0, 0.0], [math.tan(sky), 1.0]]))
            share = np.abs(lin) @ np.array([stroke, stroke])
    origin = np.array([_origin(obj.get("originX", "center"), "X"), _origin(obj.get("originY", "center"), "Y")])
    theta = math.radians(_num(obj, "angle", 0.0))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    anchor = np.array([_num(obj, "left", 0.0), _num(obj, "top", 0.0)])
    moved = k * anchor + np.array([dx, dy]) - (k - 1) * (rot @ (origin * share))
    out["left"], out["top"] = float(moved[0]), float(moved[1])
    out["scaleX"], out["scaleY"] = k * sx, k * sy
    new_stroke = stroke if uniform else stroke / k
    if "strokeWidth" in obj or new_stroke != 1.0:
        out["strokeWidth"] = new_stroke
    return out


def transform_drawing(canvas_json: Any, scale: float, dx: float, dy: float) -> Any:
    """A copy of a canvas drawing with every point p of every object at ``scale * p + (dx, dy)``.

    Parameters
    ----------
    canvas_json : dict, list, str or None
        Canvas ``json_data`` (``{"version": .., "objects": [...]}``), a list of objects, Fabric
        JSON text, or None (no drawing); not changed.
    scale : float
        Uniform scale, > 0.
    dx, dy : float
        Shift in canvas pixels, after scaling.

    Returns
    -------
    dict or list
        A list for a list; otherwise the dict's other keys (``version``, ...) with moved ``objects``.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise CanvasViewError(f"scale {scale!r}; expected a finite number > 0")
    objects = [_move_object(obj, float(scale), float(dx), float(dy)) for obj in canvas_objects(canvas_json)]
    if isinstance(canvas_json, Sequence) and not isinstance(canvas_json, (str, bytes)):
        return objects
    rest = {k: v for k, v in canvas_json.items() if k != "objects"} if isinstance(canvas_json, Mapping) else {}
    return {**copy.deepcopy(rest), "objects": objects}


def to_view(canvas_json: Any, view: View, width: int, height: int, *, film_shape: tuple[int, int]) -> Any:
    """A full-frame drawing as it is drawn in ``view`` (for the zoomed canvas's ``initial_drawing``)."""
    t = view_transform(view, film_shape, width, height)
    return transform_drawing(canvas_json, t.scale, t.dx, t.dy)


def from_view(canvas_json: Any, view: View, width: int, height: int, *, film_shape: tuple[int, int]) -> Any:
    """A drawing made in ``view`` back in the full frame (to store, and to measure with :func:`frame_fit`)."""
    t = view_transform(view, film_shape, width, height)
    return transform_drawing(canvas_json, 1 / t.scale, -t.dx / t.scale, -t.dy / t.scale)


def refit_drawing(canvas_json: Any, old_fit: Mapping[str, float], new_fit: Mapping[str, float], *,
                  film_shape: tuple[int, int] | None = None) -> Any:
    """A drawing made over one fit of a film moved onto another fit of the same film.

    For a draft stored with one canvas size (its stored ``background_fit``) shown on a canvas
    of another size (``frame_fit`` of the new size). Both fits need ``natural_width`` and
    ``natural_height`` (the canvas and :func:`frame_fit` give them) or, as in
    :mod:`cxr_core.annotation.masks`, a fit without them is of the film itself at ``film_shape``. The fits
    may describe the film at different resolutions (a resized copy), its shape the same to 1%.
    The scale is taken so the film's width maps onto the new width, and the film's centre
    maps onto the new centre.
    """
    geo = []
    for name, fit in (("old_fit", old_fit), ("new_fit", new_fit)):
        if isinstance(fit, Mapping) and film_shape is not None and "natural_width" not in fit:
            rows, cols = _check_film_shape(film_shape)
            fit = {**fit, "natural_width": cols, "natural_height": rows}
        try:
            vals = [float(fit[key]) for key in ("scale_x", "scale_y", "offset_x", "offset_y",
                                                "natural_width", "natural_height")]
        except (TypeError, KeyError, ValueError):
            raise CanvasViewError(f"{name}={fit!r:.120}; expected a background_fit with scale_x/y, offset_x/y "
                                  "and natural_width/height") from None
        if not all(math.isfinite(v) for v in vals) or min(vals[0], vals[1], vals[4], vals[5]) <= 0:
            raise CanvasViewError(f"{name}={fit!r:.120}; expected finite values, positive scales and sizes")
        sx, sy, ox, oy, nw, nh = vals
        geo.append((nw * sx, nh * sy, ox + nw * sx / 2, oy + nh * sy / 2))
    (w0, h0, cx0, cy0), (w1, h1, cx1, cy1) = geo
    if abs((w1 / h1) / (w0 / h0) - 1) > 0.01:
        raise CanvasViewError(f"the fits show films of aspect {w0 / h0:.4f} and {w1 / h1:.4f}; expected the same film")
    k = w1 / w0
    return transform_drawing(canvas_json, k, cx1 - k * cx0, cy1 - k * cy0)


def rescale_drawing(canvas_json: Any, old_w: int, old_h: int, new_w: int, new_h: int, *,
                    film_shape: tuple[int, int]) -> Any:
    """A full-frame drawing on an ``old_w x old_h`` canvas moved to a ``new_w x new_h`` one (same film)."""
    return refit_drawing(canvas_json, frame_fit(film_shape, old_w, old_h), frame_fit(film_shape, new_w, new_h))


# --- canvas size -------------------------------------------------------------------------------


def canvas_size(available_width: int, available_height: int, film_aspect: float, *,
                min_side: int = 320, max_side: int = 1400) -> tuple[int, int]:
    """The largest canvas with the film's aspect that fits the space, in whole CSS pixels.

    Parameters
    ----------
    available_width, available_height : int
        Space for the canvas in CSS pixels (e.g. the column's width, and the window's height
        below the canvas's top, less a margin).
    film_aspect : float
        Film width / height (``cols / rows``). The canvas takes this shape, so the film fills it.
    min_side, max_side : int, keyword-only
        Neither side exceeds ``max_side``; the shorter side is at least ``min_side`` even when
        that overflows the space (a usable canvas comes first).

    Returns
    -------
    (width, height) : tuple of int
        Store drawings with this size and :func:`frame_fit` of it.

    Examples
    --------
    >>> canvas_size(1200, 700, 512 / 419)
    (855, 700)
    """
    for name, value in (("available_width", available_width), ("available_height", available_height),
                        ("min_side", min_side), ("max_side", max_side)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise CanvasViewError(f"{name}={value!r}; expected an integer number of CSS pixels")
    if isinstance(film_aspect, bool) or not isinstance(film_aspect, (int, float)) or not (
            math.isfinite(film_aspect) and film_aspect > 0):
        raise CanvasViewError(f"film_aspect={film_aspect!r}; expected width / height > 0")
    if not 0 < min_side <= max_side:
        raise CanvasViewError(f"min_side={min_side}, max_side={max_side}; expected 0 < min_side <= max_side")
    w = min(max(available_width, 1), max(available_height, 1) * film_aspect, max_side, max_side * film_aspect)
    h = w / film_aspect
    short = min(w, h)
    if short < min_side:
        w, h = w * min_side / short, h * min_side / short
    return max(1, int(math.floor(w + 1e-6))), max(1, int(math.floor(h + 1e-6)))
