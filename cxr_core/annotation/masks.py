"""Canvas drawings to boolean masks at the X-ray's original resolution.

The expert draws on ``streamlit-drawable-canvas`` 0.13 (Fabric.js 7.4), which returns the
drawing as Fabric JSON in canvas pixels over a resized copy of the X-ray. This module turns
that JSON back into masks on the original pixel grid, from the shapes' geometry, never from
the canvas bitmap (which is small, anti-aliased, and for freehand shows only the pen stroke).

How Fabric 7 places an object (read from the 0.13.0 bundle, ``FabricObject`` /
``Polyline`` / ``Path`` / ``Circle`` / ``Ellipse`` / ``Rect``):

- Each object has local geometry centred on (0, 0): a Rect spans ``±width/2, ±height/2``; a
  Circle has ``radius``, an Ellipse ``rx, ry``; a Polygon's local points are
  ``points - pathOffset`` and a Path's commands are ``path - pathOffset``, where
  ``pathOffset`` is the centre of the points' bounding box (a Path's box is taken over its
  curves, treating ``Q`` as a cubic with both control points at the ``Q`` point, as Fabric
  does). ``pathOffset`` is not in the JSON; it is recomputed here the same way.
- Canvas point = ``centre + R(angle) @ diag(scaleX*flipX, scaleY*flipY) @ skewX @ skewY @ local``.
- ``left, top`` is the point named by ``originX, originY`` (``left|center|right``, ``top|
  center|bottom`` or a number in 0..1; Fabric 7 defaults to ``center``) on the object's box
  *including its stroke*: box = ``(width + strokeWidth) * scaleX`` (``strokeUniform``: the
  stroke is added after scaling). The centre is that point moved by ``-origin * box``,
  rotated by ``angle`` (degrees) about ``left, top``. So a Rect drawn with the rect tool
  (``originX/Y = left/top``, stroke width ``s``) has its filled area starting ``s/2`` right of
  and below ``left, top``; a polygon or freehand path (origin ``center``) sits exactly on its
  points.
- Freehand drawing gives a ``Path`` with ``fill: null`` and ``M``, ``Q``, ``L`` commands (a
  pen stroke); here it is closed and filled, with curves flattened to < 0.05 px error.
  The region is the shape's geometry; the stroke's width is not added to it.

Canvas x, y become image rows, columns in one place, :func:`_canvas_to_rowcol`, which
undoes the background fit (``(x - offset_x) / scale_x``) and, when the canvas showed a
resized copy, rescales from the fit's ``natural_width/height`` to the image's shape. A pixel
belongs to a region when its centre lies inside the shape (nonzero winding, or even-odd
when the object says ``fillRule: "evenodd"``), so an axis-aligned 30 x 40 rectangle on
whole pixels gives exactly 1200 pixels.

One module of about 520 lines by choice: Fabric's placement rules, the path parser and the scanline
fill must change together when the canvas's Fabric version does; split, they would need each other's
private geometry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_core.errors import CXRError

#: Fabric types that enclose an area (lower case; matched case-insensitively).
REGION_TYPES = ("rect", "labeledrect", "circle", "ellipse", "triangle", "polygon", "polyline", "path")
#: Region types with straight edges: their outline is a polygon (:func:`straight_outline`; COCO polygons).
STRAIGHT_KINDS = ("polygon", "polyline", "triangle", "rect", "labeledrect")
#: Fabric types the canvas can produce that enclose no area; skipped.
NON_REGION_TYPES = ("line", "itext", "text", "textbox")

_ORIGIN = {"left": -0.5, "top": -0.5, "center": 0.0, "bottom": 0.5, "right": 0.5}
_FLATTEN_TOL = 0.05  # max distance, in image pixels, between a curve and its polyline


class MaskError(CXRError):
    """Canvas JSON, image shape or background fit that cannot be rasterised."""


class UnsupportedShapeError(MaskError):
    """A canvas object of a type (or with a feature) this module does not rasterise."""


@dataclass(frozen=True)
class RegionMask:
    """One drawn region on the image's pixel grid.

    Attributes
    ----------
    index : int
        Position of the object in the canvas ``objects`` list.
    kind : str
        Fabric type, lower case (``"polygon"``, ``"path"``, ``"rect"``, ...).
    label : str or None
        Finding label: ``labels[index]`` if given, else the object's own ``label``.
    mask : (rows, cols) bool ndarray
    """

    index: int
    kind: str
    label: str | None
    mask: np.ndarray

    @property
    def area(self) -> int:
        """Number of pixels in the region."""
        return int(np.count_nonzero(self.mask))


def canvas_objects(objects_or_json: str | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """The list of Fabric objects from a JSON string, a ``{"objects": [...]}`` dict or a list.

    ``None`` (a canvas that has not sent anything yet) gives an empty list.
    """
    data: Any = objects_or_json
    if data is None:
        return []
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as err:
            raise MaskError(f"canvas JSON does not parse ({err}); expected Fabric JSON text") from None
    if isinstance(data, Mapping):
        data = data.get("objects", [])
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise MaskError(f"canvas objects are a {type(data).__name__}; expected a list of Fabric objects")
    for i, obj in enumerate(data):
        if not isinstance(obj, Mapping) or not isinstance(obj.get("type"), str):
            raise MaskError(f"canvas object {i} is {obj!r:.80}; expected a dict with a 'type' string")
    return [dict(obj) for obj in data]


def region_masks(
    objects_or_json: str | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    *,
    image_shape: tuple[int, int],
    background_fit: Mapping[str, float] | None = None,
    labels: Sequence[str | None] | None = None,
) -> list[RegionMask]:
    """One mask per drawn region, at the image's original resolution.

    Parameters
    ----------
    objects_or_json : str, dict or list
        Canvas ``json_data`` (or its ``objects``).
    image_shape : (rows, cols)
        Shape of the original X-ray.
    background_fit : dict or None
        The canvas's ``background_fit`` (``scale_x, scale_y, offset_x, offset_y`` and
        optionally ``natural_width, natural_height``). ``None``: canvas pixels are image pixels.
    labels : sequence or None
        Finding label per canvas object, aligned with ``objects`` (entries for skipped
        objects are ignored).

    Returns
    -------
    list of RegionMask
        In canvas order; lines and text are skipped.

    Raises
    ------
    MaskError
        Unparseable JSON, bad ``image_shape`` or ``background_fit``, ``labels`` of the wrong length.
    UnsupportedShapeError
        An object type outside :data:`REGION_TYPES` and :data:`NON_REGION_TYPES`.
    """
    objects = canvas_objects(objects_or_json)
    shape = _check_shape(image_shape)
    fit = _check_fit(background_fit)
    if labels is not None and len(labels) != len(objects):
        raise MaskError(f"got {len(labels)} labels for {len(objects)} canvas objects; expected one per object")
    out = []
    for i, obj in enumerate(objects):
        kind = obj["type"].lower()
        if kind in NON_REGION_TYPES:
            continue
        if kind not in REGION_TYPES:
            raise UnsupportedShapeError(
                f"canvas object {i} has type {obj['type']!r}; accepted: {', '.join(REGION_TYPES)} "
                f"(skipped: {', '.join(NON_REGION_TYPES)})"
            )
        label = labels[i] if labels is not None else obj.get("label") or None
        out.append(RegionMask(i, kind, label, _object_mask(obj, kind, shape, fit)))
    return out


def rasterize(
    objects_or_json: str | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    *,
    image_shape: tuple[int, int],
    background_fit: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Union of all drawn regions as a (rows, cols) bool mask at the original resolution.

    See :func:`region_masks` for the parameters.

    Examples
    --------
    >>> rect = {"type": "Rect", "left": 10, "top": 20, "width": 30, "height": 40,
    ...         "originX": "left", "originY": "top", "strokeWidth": 0}
    >>> int(rasterize([rect], image_shape=(100, 100)).sum())
    1200
    """
    mask = np.zeros(_check_shape(image_shape), dtype=bool)
    for region in region_masks(objects_or_json, image_shape=image_shape, background_fit=background_fit):
        mask |= region.mask
    return mask


# --- Fabric geometry -------------------------------------------------------------------------


def fabric_number(obj: Mapping[str, Any], key: str, default: float, *, error: type[Exception] = None) -> float:
    """A Fabric object's numeric field (``default`` when absent or null); anything else raises ``error``."""
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise (error or MaskError)(f"canvas {obj.get('type')} has {key}={value!r}; expected a finite number")
    return float(value)


def fabric_origin(value: Any, axis: str, *, error: type[Exception] = None) -> float:
    """Fabric's originX/originY as an offset from the object's centre, in units of its size (-0.5..0.5)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) - 0.5
    if isinstance(value, str) and value in _ORIGIN:
        return _ORIGIN[value]
    raise (error or MaskError)(
        f"origin{axis}={value!r}; expected left|center|right, top|center|bottom or a number in 0..1")


_num, _origin = fabric_number, fabric_origin


def _object_affine(obj: Mapping[str, Any], width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
    """Fabric's ``calcOwnMatrix`` as (2x2 linear part, centre) mapping local to canvas x, y."""
    sx, sy = _num(obj, "scaleX", 1.0), _num(obj, "scaleY", 1.0)
    skx, sky = math.radians(_num(obj, "skewX", 0.0)), math.radians(_num(obj, "skewY", 0.0))
    fx = -1.0 if obj.get("flipX") else 1.0
    fy = -1.0 if obj.get("flipY") else 1.0
    theta = math.radians(_num(obj, "angle", 0.0))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    scale_skew = (
        np.diag([sx * fx, sy * fy])
        @ np.array([[1.0, math.tan(skx)], [0.0, 1.0]])
        @ np.array([[1.0, 0.0], [math.tan(sky), 1.0]])
    )
    # Box used to place left/top (_getTransformedDimensions): stroke before or after scaling.
    stroke = _num(obj, "strokeWidth", 1.0)
    pre, post = (0.0, stroke) if obj.get("strokeUniform") else (stroke, 0.0)
    bw, bh = width + pre, height + pre
    if skx == 0.0 and sky == 0.0:
        box = np.array([bw * sx, bh * sy])
    else:
        corners = scale_skew @ np.array([[-bw, bw, -bw, bw], [-bh, -bh, bh, bh]]) / 2
        box = np.ptp(corners, axis=1)
    box = box + post
    anchor = np.array([_num(obj, "left", 0.0), _num(obj, "top", 0.0)])
    shift = -np.array([_origin(obj.get("originX", "center"), "X"), _origin(obj.get("originY", "center"), "Y")]) * box
    centre = anchor + rot @ shift
    return rot @ scale_skew, centre


def _cubic_bounds(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> np.ndarray:
    """Extreme points of a cubic Bezier (Fabric's ``getBoundsOfCurve``), as (k, 2)."""
    ts = [0.0, 1.0]
    for d in range(2):
        a = -3 * p0[d] + 9 * p1[d] - 9 * p2[d] + 3 * p3[d]
        b = 6 * p0[d] - 12 * p1[d] + 6 * p2[d]
        c = 3 * p1[d] - 3 * p0[d]
        if abs(a) < 1e-12:
            if abs(b) >= 1e-12:
                ts.append(-c / b)
            continue
        disc = b * b - 4 * c * a
        if disc >= 0:
            ts += [(-b + math.sqrt(disc)) / (2 * a), (-b - math.sqrt(disc)) / (2 * a)]
    t = np.array([x for x in ts if 0 <= x <= 1])[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _path_segments(obj: Mapping[str, Any]) -> tuple[list[list[tuple[str, np.ndarray]]], np.ndarray]:
    """Parse Fabric's simplified path (absolute M, L, Q, C, Z) into subpaths and its pathOffset.

    Each subpath is a list of ``(command, control points)``; the first is ``("M", start)``.
    """
    path = obj.get("path")
    if not isinstance(path, Sequence) or isinstance(path, str):
        raise MaskError(f"canvas Path has path={path!r:.60}; expected a list of commands like ['M', x, y]")
    arity = {"M": 2, "L": 2, "Q": 4, "C": 6, "Z": 0}
    subpaths: list[list[tuple[str, np.ndarray]]] = []
    bounds: list[np.ndarray] = []
    cur = start = np.zeros(2)
    for cmd in path:
        op = cmd[0] if isinstance(cmd, Sequence) and cmd else None
        if op not in arity or len(cmd) != arity[op] + 1:
            raise UnsupportedShapeError(
                f"path command {cmd!r:.40}; accepted: absolute M x y, L x y, Q x1 y1 x y, C x1 y1 x2 y2 x y, Z"
            )
        pts = np.asarray(cmd[1:], dtype=float).reshape(-1, 2)
        if op == "M":
            subpaths.append([("M", pts)])
            cur = start = pts[0]
            continue
        if not subpaths:
            subpaths.append([("M", cur[None])])
        if op == "Z":
            cur = start
            continue
        subpaths[-1].append((op, pts))
        if op == "L":
            bounds += [cur[None], pts]
        elif op == "Q":  # Fabric bounds a Q as a cubic with both controls at the Q point
            bounds.append(_cubic_bounds(cur, pts[0], pts[0], pts[1]))
        else:
            bounds.append(_cubic_bounds(cur, pts[0], pts[1], pts[2]))
        cur = pts[-1]
    allb = np.concatenate(bounds) if bounds else np.zeros((1, 2))
    offset = (allb.min(axis=0) + allb.max(axis=0)) / 2
    return subpaths, offset


def _flatten(subpath: list[tuple[str, np.ndarray]], to_rc) -> np.ndarray:
    """A subpath's outline in image (row, col) coordinates, curves flattened."""
    pts = [to_rc(subpath[0][1])]
    for op, ctrl in subpath[1:]:
        p = to_rc(ctrl)
        if op == "L":
            pts.append(p)
            continue
        nodes = np.concatenate([pts[-1][-1:], p])  # the curve's control polygon, mapped
        second = np.abs(nodes[:-2] - 2 * nodes[1:-1] + nodes[2:]).max() if len(nodes) > 2 else 0.0
        n = int(min(1000, max(2, math.ceil(math.sqrt(0.75 * second / _FLATTEN_TOL)))))
        t = np.linspace(0, 1, n + 1)[1:, None]
        if op == "Q":
            a, b, c = nodes
            pts.append((1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c)
        else:
            a, b, c, d = nodes
            pts.append((1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t**2 * c + t**3 * d)
    return np.concatenate(pts)


def _object_mask(obj: Mapping[str, Any], kind: str, shape: tuple[int, int], fit: dict[str, float]) -> np.ndarray:
    if obj.get("exactBoundingBox"):
        raise UnsupportedShapeError(
            f"canvas {obj['type']} uses exactBoundingBox=true; only Fabric's default false is supported"
        )
    evenodd = obj.get("fillRule") == "evenodd"
    if kind in ("circle", "ellipse"):
        if kind == "circle":
            start, end = _num(obj, "startAngle", 0.0), _num(obj, "endAngle", 360.0)
            if (end - start) % 360 != 0:
                raise UnsupportedShapeError(
                    f"canvas Circle is an arc ({start} to {end} degrees); only full circles are supported"
                )
            rx = ry = _num(obj, "radius", 0.0)
        else:
            rx, ry = _num(obj, "rx", 0.0), _num(obj, "ry", 0.0)
        lin, centre = _object_affine(obj, 2 * rx, 2 * ry)
        return _fill_ellipse(lin, centre, rx, ry, shape, fit)
    if kind == "path":
        subpaths, offset = _path_segments(obj)
        lin, centre = _object_affine(obj, _num(obj, "width", 0.0), _num(obj, "height", 0.0))
        def to_rowcol(points: np.ndarray) -> np.ndarray:
            return _canvas_to_rowcol((points - offset) @ lin.T + centre, fit, shape)

        rings = [_flatten(sp, to_rowcol) for sp in subpaths]
        return _fill_rings(rings, shape, evenodd)
    return _fill_rings([_straight_rowcol(obj, kind, shape, fit)], shape, evenodd)


def straight_outline(obj: Mapping[str, Any], kind: str, image_shape: tuple[int, int],
                     background_fit: Mapping[str, float] | None = None) -> np.ndarray:
    """The image (row, col) vertices of a straight-edged region, exactly those :func:`region_masks` fills.

    Parameters
    ----------
    obj : one Fabric object of a kind in :data:`STRAIGHT_KINDS`.
    kind : its lower-case type (``RegionMask.kind``).
    image_shape : (rows, cols) of the original image.
    background_fit : the canvas's ``background_fit`` (None: canvas pixels are image pixels).

    Returns
    -------
    (k, 2) float ndarray
        Continuous (row, col) with pixel edges at integers; empty for a polygon without points.
    """
    if kind not in STRAIGHT_KINDS:
        raise UnsupportedShapeError(f"a {kind!r} has no straight outline; accepted: {', '.join(STRAIGHT_KINDS)}")
    return _straight_rowcol(obj, kind, _check_shape(image_shape), _check_fit(background_fit))


def _straight_rowcol(obj: Mapping[str, Any], kind: str, shape: tuple[int, int], fit: dict[str, float]) -> np.ndarray:
    w, h = _num(obj, "width", 0.0), _num(obj, "height", 0.0)
    if kind in ("polygon", "polyline"):
        raw = obj.get("points") or []
        try:
            local = np.array([[float(p["x"]), float(p["y"])] for p in raw]).reshape(-1, 2)
        except (TypeError, KeyError, ValueError):
            raise MaskError(
                f"canvas {obj['type']} points {raw!r:.60}; expected a list of {{'x': .., 'y': ..}}"
            ) from None
        if len(local) == 0:
            return np.zeros((0, 2))
        local = local - (local.min(axis=0) + local.max(axis=0)) / 2  # minus pathOffset
    elif kind == "triangle":
        local = np.array([[-w / 2, h / 2], [0.0, -h / 2], [w / 2, h / 2]])
    else:  # rect, labeledrect (rx/ry rounding is not drawn by the canvas and is ignored)
        local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    lin, centre = _object_affine(obj, w, h)
    return _canvas_to_rowcol(local @ lin.T + centre, fit, shape)


# --- canvas to image grid --------------------------------------------------------------------


def _check_shape(image_shape: Any) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in image_shape)
        ok = rows > 0 and cols > 0 and (rows, cols) == tuple(image_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise MaskError(f"image_shape={image_shape!r}; expected (rows, cols), two positive integers")
    return rows, cols


def _check_fit(fit: Mapping[str, float] | None) -> dict[str, float]:
    if fit is None:
        return {"scale_x": 1.0, "scale_y": 1.0, "offset_x": 0.0, "offset_y": 0.0}
    if not isinstance(fit, Mapping):
        raise MaskError(f"background_fit is a {type(fit).__name__}; expected the canvas's background_fit dict")
    out = {}
    for key in ("scale_x", "scale_y", "offset_x", "offset_y", "natural_width", "natural_height"):
        value = fit.get(key)
        if value is None and key.startswith("natural"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MaskError(f"background_fit[{key!r}]={value!r}; expected a finite number")
        if (key.startswith("scale") or key.startswith("natural")) and value <= 0:
            raise MaskError(f"background_fit[{key!r}]={value!r}; expected > 0")
        out[key] = float(value)
    return out


def _canvas_to_rowcol(xy: np.ndarray, fit: dict[str, float], shape: tuple[int, int]) -> np.ndarray:
    """Canvas (x, y) points to continuous image (row, col); pixel (r, c) has centre (r+.5, c+.5).

    The only place canvas x/y becomes rows/columns: undo the background fit, then rescale from
    the picture the canvas showed (``natural_*``) to the original image if they differ.
    """
    rows, cols = shape
    kx = cols / fit["natural_width"] if "natural_width" in fit else 1.0
    ky = rows / fit["natural_height"] if "natural_height" in fit else 1.0
    col = (xy[:, 0] - fit["offset_x"]) / fit["scale_x"] * kx
    row = (xy[:, 1] - fit["offset_y"]) / fit["scale_y"] * ky
    return np.stack([row, col], axis=1)


def _fill_rings(rings: list[np.ndarray], shape: tuple[int, int], evenodd: bool) -> np.ndarray:
    """Scanline fill of closed (row, col) rings, sampling pixel centres.

    Every edge that crosses a row centre ``r + 0.5`` (half-open in rows, so shared vertices
    count once) adds a crossing with its direction; spans between crossings whose running
    winding number is nonzero (or odd) are filled from ``ceil(c0 - 0.5)`` to ``ceil(c1 - 0.5)``.
    """
    rows, cols = shape
    mask = np.zeros(shape, dtype=bool)
    rings = [r for r in rings if len(r) >= 3]
    if not rings:
        return mask
    a = np.concatenate(rings)
    b = np.concatenate([np.roll(r, -1, axis=0) for r in rings])
    keep = a[:, 0] != b[:, 0]
    a, b = a[keep], b[keep]
    lo, hi = np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 0], b[:, 0])
    first = np.clip(np.ceil(lo - 0.5), 0, rows).astype(np.int64)
    stop = np.clip(np.ceil(hi - 0.5), 0, rows).astype(np.int64)
    counts = np.maximum(stop - first, 0)
    if counts.sum() == 0:
        return mask
    edge = np.repeat(np.arange(len(a)), counts)
    row = first[edge] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    ya, yb, xa, xb = a[edge, 0], b[edge, 0], a[edge, 1], b[edge, 1]
    col = xa + (row + 0.5 - ya) * (xb - xa) / (yb - ya)
    winding_step = np.where(yb > ya, 1, -1)
    order = np.lexsort((col, row))
    row, col, winding_step = row[order], col[order], winding_step[order]
    # running winding per row: cumulative sum, restarted at each row's first crossing
    csum = np.cumsum(winding_step)
    row_start = np.r_[True, row[1:] != row[:-1]]
    base = np.maximum.accumulate(np.where(row_start, np.arange(len(row)), 0))
    winding = csum - csum[base] + winding_step[base]
    inside = (winding % 2 == 1) if evenodd else (winding != 0)
    span = inside[:-1] & (row[1:] == row[:-1])
    r = row[:-1][span]
    c0 = np.clip(np.ceil(col[:-1][span] - 0.5), 0, cols).astype(np.int64)
    c1 = np.clip(np.ceil(col[1:][span] - 0.5), 0, cols).astype(np.int64)
    diff = np.zeros((rows, cols + 1), dtype=np.int32)
    np.add.at(diff, (r, c0), 1)
    np.add.at(diff, (r, c1), -1)
    return np.cumsum(diff, axis=1)[:, :cols] > 0


def _fill_ellipse(
    lin: np.ndarray, centre: np.ndarray, rx: float, ry: float, shape: tuple[int, int], fit: dict[str, float]
) -> np.ndarray:
    """Pixels whose centre maps back inside the unit-scaled local ellipse."""
    mask = np.zeros(shape, dtype=bool)
    if rx <= 0 or ry <= 0:
        return mask
    # local (x, y) -> image (row, col) is affine; build it from three mapped points
    probe = _canvas_to_rowcol(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]) @ lin.T + centre, fit, shape)
    origin = probe[0]
    m = np.stack([probe[1] - origin, probe[2] - origin], axis=1) @ np.diag([rx, ry])  # unit circle -> (row, col)
    if abs(np.linalg.det(m)) < 1e-12:
        return mask
    half = np.sqrt((m**2).sum(axis=1))  # half extent along row and col
    r0 = int(np.clip(np.ceil(origin[0] - half[0] - 0.5), 0, shape[0]))
    r1 = int(np.clip(np.floor(origin[0] + half[0] - 0.5) + 1, 0, shape[0]))
    c0 = int(np.clip(np.ceil(origin[1] - half[1] - 0.5), 0, shape[1]))
    c1 = int(np.clip(np.floor(origin[1] + half[1] - 0.5) + 1, 0, shape[1]))
    if r1 <= r0 or c1 <= c0:
        return mask
    rr, cc = np.mgrid[r0:r1, c0:c1]
    d = np.stack([rr.ravel() + 0.5 - origin[0], cc.ravel() + 0.5 - origin[1]])
    u = np.linalg.solve(m, d)
    mask[r0:r1, c0:c1] = ((u**2).sum(axis=0) <= 1.0).reshape(rr.shape)
    return mask
