"""The annotation canvas as a viewer: its size in the window, zoom on a region, invert, and the heatmap over marks.

Frames
------
Drawings are stored in one frame, the **full frame**: a canvas of ``width x height`` CSS pixels
with the whole film drawn "contain"-fitted in it (:func:`frame_fit`, the same geometry as
:func:`cxr_core.annotation.contain_fit` of the film's own size). Drafts and submissions keep
that frame (``canvas_width``, ``canvas_height``, ``background_fit=frame_fit(...)``), and
:func:`cxr_core.annotation.read_canvas` measures them with that fit.

A :class:`View` shows part of the full frame magnified ``zoom`` times in the same canvas: a
**view frame** point is ``k * full + (dx, dy)`` (:func:`view_transform`). The picture behind a
zoomed canvas is :func:`view_picture`, exactly ``width x height`` (times ``pixel_ratio``), so
the browser's own ``background_fit`` is the identity and is not used: before storing or
measuring, a drawing made in a view is brought back with :func:`from_view`; a stored drawing
is shown in a view with :func:`to_view`.

Both move every Fabric object by the same uniform scale and shift, in Fabric's own terms:
``left, top`` move, ``scaleX, scaleY`` multiply by ``k``; angle, skew, flips, points, path,
width, height and radius stay. The stroke keeps its width on screen (a 3 px pen stays 3 px at
4x), and ``left, top`` absorb the stroke's share of the box Fabric places them on (see
:mod:`cxr_core.annotation.masks`), so every point of every shape maps exactly and the masks
:mod:`cxr_core.annotation.masks` draws are unchanged. :func:`refit_drawing` and :func:`rescale_drawing`
use the same move when the canvas size changes between sessions (another window).

Heatmaps fade to transparent where they are low (:func:`heat_alpha`), so the film is tinted
only where the model's evidence is; :func:`view_picture` draws one over the window/levelled
film at the view's resolution, and the reader's marks are drawn on top by the canvas.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image

from cxr_core.annotation import window_level
from cxr_core.annotation.canvas_frames import (  # noqa: F401  (re-exported: one import path for the viewer)
    REGIONS,
    ZOOMS,
    CanvasViewError,
    View,
    ViewTransform,
    canvas_size,
    frame_fit,
    from_view,
    refit_drawing,
    rescale_drawing,
    to_view,
    transform_drawing,
    view_transform,
)
from cxr_core.explain.overlay import COLORMAPS, colorize

#: Heatmap values at or below this are fully transparent (see :func:`heat_alpha`).
HEAT_FLOOR = 0.2


# --- pictures ----------------------------------------------------------------------------------


def _film_float(film: Any) -> np.ndarray:
    """(H, W) or (H, W, 3) film, uint8 or float in [0, 1], as float32 in [0, 1]."""
    arr = np.asarray(film)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or min(arr.shape[:2]) == 0:
        raise CanvasViewError(f"film of shape {arr.shape}; expected (rows, cols) grey or (rows, cols, 3) RGB")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255
    if not np.issubdtype(arr.dtype, np.floating):
        raise CanvasViewError(f"film of dtype {arr.dtype}; expected uint8 or float in [0, 1]")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise CanvasViewError("film values outside [0, 1] or not finite; expected float in [0, 1] or uint8")
    return arr.astype(np.float32, copy=False)


def _check_heatmap(heatmap: Any) -> np.ndarray:
    arr = np.asarray(heatmap)
    if arr.ndim != 2 or min(arr.shape) == 0 or not (
            np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CanvasViewError(f"heatmap of shape {arr.shape}, dtype {arr.dtype}; expected a (rows, cols) real array")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise CanvasViewError("heatmap values outside [0, 1] or not finite; expected values in [0, 1]")
    return arr.astype(np.float32)


def _check_opacity(opacity: Any) -> float:
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
        raise CanvasViewError(f"opacity {opacity!r}; expected a number in [0, 1]")
    return float(opacity)


def _check_colormap(colormap: Any) -> str:
    if colormap not in COLORMAPS:
        raise CanvasViewError(f"colour map {colormap!r}; expected one of {', '.join(COLORMAPS)}")
    return colormap


def heat_alpha(heatmap: np.ndarray, *, opacity: float) -> np.ndarray:
    """Per-pixel opacity of a heatmap: 0 at or below :data:`HEAT_FLOOR`, rising linearly to ``opacity`` at 1.

    Examples
    --------
    >>> (10 * heat_alpha(np.array([[0.1, 0.2, 0.6, 1.0]]), opacity=0.8)).round().tolist()
    [[0.0, 0.0, 4.0, 8.0]]
    """
    heat = _check_heatmap(heatmap)
    return _check_opacity(opacity) * np.clip((heat - HEAT_FLOOR) / (1 - HEAT_FLOOR), 0, 1)


def _blend(base: np.ndarray, heat: np.ndarray, opacity: float, colormap: str) -> np.ndarray:
    """(H, W, 3) float32 0..255 base with a same-size [0, 1] heatmap blended by :func:`heat_alpha`."""
    heat = np.clip(heat, 0, 1)
    alpha = heat_alpha(heat, opacity=opacity)[..., None]
    return base * (1 - alpha) + colorize(heat, colormap=colormap).astype(np.float32) * alpha


def _rgb255(film01: np.ndarray) -> np.ndarray:
    return np.repeat(film01[..., None] * 255, 3, axis=2) if film01.ndim == 2 else film01 * 255


def heatmap_over(film: np.ndarray, heatmap: np.ndarray, *, opacity: float = 0.5,
                 colormap: str = "turbo") -> np.ndarray:
    """The film with a heatmap over it, see-through where the heatmap is low (:func:`heat_alpha`).

    Parameters
    ----------
    film : (rows, cols) or (rows, cols, 3) ndarray
        Grey or RGB, uint8 or float in [0, 1]; not changed.
    heatmap : (h, w) ndarray
        Values in [0, 1], any size (resized to the film, bilinear).
    opacity : float, keyword-only
        Opacity where the heatmap is 1.
    colormap : str, keyword-only
        One of :data:`cxr_core.explain.overlay.COLORMAPS`.

    Returns
    -------
    (rows, cols, 3) uint8 ndarray, RGB
        Equal to the film wherever the heatmap is at or below :data:`HEAT_FLOOR`.
    """
    base = _rgb255(_film_float(film))
    heat = _check_heatmap(heatmap)
    opacity, colormap = _check_opacity(opacity), _check_colormap(colormap)
    rows, cols = base.shape[:2]
    if heat.shape != (rows, cols):
        shrink = heat.shape[0] > rows and heat.shape[1] > cols
        heat = cv2.resize(heat, (cols, rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.clip(np.rint(_blend(base, heat, opacity, colormap)), 0, 255).astype(np.uint8)


def _warp(src: np.ndarray, ax: float, bx: float, ay: float, by: float, size: tuple[int, int]) -> np.ndarray:
    """Sample ``src`` at index ``(ax * i + bx, ay * j + by)`` for output column i, row j (bilinear).

    When the output is smaller than the source (``ax`` or ``ay`` > 1) the source is first shrunk
    by area averaging, so a large film is not aliased.
    """
    rows, cols = src.shape[:2]
    if ax > 1 or ay > 1:
        new_c, new_r = max(1, round(cols / max(ax, 1))), max(1, round(rows / max(ay, 1)))
        src = cv2.resize(src, (new_c, new_r), interpolation=cv2.INTER_AREA)
        fc, fr = new_c / cols, new_r / rows  # index c -> (c + 0.5) * f - 0.5
        ax, bx, ay, by = ax * fc, (bx + 0.5) * fc - 0.5, ay * fr, (by + 0.5) * fr - 0.5
    matrix = np.array([[ax, 0.0, bx], [0.0, ay, by]])
    return cv2.warpAffine(src, matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def view_picture(film: np.ndarray, view: View, width: int, height: int, *, level: float = 0.5,
                 window: float = 1.0, invert: bool = False, heatmap: np.ndarray | None = None,
                 opacity: float = 0.5, colormap: str = "turbo", pixel_ratio: float = 1.0) -> Image.Image:
    """The picture behind the canvas in ``view``: the film, window/levelled, cropped and magnified.

    Rendered from ``film`` at the resolution the view needs (pass the full-resolution film, so
    4x is sharp): the film contain-fitted into the ``width x height`` full frame, the view's
    region cut out and scaled to the whole canvas. Bars around the film are black.

    Parameters
    ----------
    film : (rows, cols) or (rows, cols, 3) ndarray
        Grey or RGB, uint8 or float in [0, 1]; not changed.
    view : View
    width, height : int
        Canvas size in CSS pixels (the full frame's size).
    level, window : float, keyword-only
        Display window (:func:`cxr_core.annotation.window_level`), on the film only.
    invert : bool, keyword-only
        Show the film negative (after window/level; the bars stay black).
    heatmap : (h, w) ndarray or None, keyword-only
        Values in [0, 1] over the whole film, any size; drawn over the film with
        :func:`heat_alpha` (neither window/levelled nor inverted).
    opacity, colormap : keyword-only
        Of the heatmap, as in :func:`heatmap_over`.
    pixel_ratio : float, keyword-only
        Output pixels per CSS pixel (the browser's ``devicePixelRatio`` for a sharp screen).

    Returns
    -------
    PIL.Image.Image
        ``round(width * pixel_ratio) x round(height * pixel_ratio)``; mode ``"L"`` for a grey
        film without heatmap, else ``"RGB"``.
    """
    pixels = _film_float(film)
    if isinstance(pixel_ratio, bool) or not isinstance(pixel_ratio, (int, float)) or not 0.25 <= pixel_ratio <= 4:
        raise CanvasViewError(f"pixel_ratio {pixel_ratio!r}; expected a number in [0.25, 4]")
    heat = None if heatmap is None else _check_heatmap(heatmap)
    opacity, colormap = _check_opacity(opacity), _check_colormap(colormap)
    rows, cols = pixels.shape[:2]
    t = view_transform(view, (rows, cols), width, height)
    fit = frame_fit((rows, cols), width, height)
    out_w, out_h = max(1, round(width * pixel_ratio)), max(1, round(height * pixel_ratio))
    rx, ry = out_w / width, out_h / height
    # output index i (centre i + .5) -> view x = (i + .5) / r -> full x = (x - dx) / k -> film u = (x - ox) / s
    ax = 1 / (rx * t.scale * fit["scale_x"])
    bx = ((0.5 / rx - t.dx) / t.scale - fit["offset_x"]) / fit["scale_x"] - 0.5
    ay = 1 / (ry * t.scale * fit["scale_y"])
    by = ((0.5 / ry - t.dy) / t.scale - fit["offset_y"]) / fit["scale_y"] - 0.5
    shown = _warp(pixels, ax, bx, ay, by, (out_w, out_h))
    grey = window_level(shown, level=level, window=window)
    if invert:
        grey = 255 - grey
    u = ax * np.arange(out_w) + bx + 0.5  # film x of each output column's centre
    v = ay * np.arange(out_h) + by + 0.5
    on_film = ((v >= 0) & (v < rows))[:, None] & ((u >= 0) & (u < cols))[None, :]
    if heat is None:
        grey[~on_film] = 0
        return Image.fromarray(grey, "L" if grey.ndim == 2 else "RGB")
    hr, hc = heat.shape
    fx, fy = hc / cols, hr / rows
    heat_view = _warp(heat, ax * fx, (bx + 0.5) * fx - 0.5, ay * fy, (by + 0.5) * fy - 0.5, (out_w, out_h))
    rgb = _blend(_rgb255(grey.astype(np.float32) / 255), heat_view, opacity, colormap)
    rgb[~on_film] = 0
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


__all__ = [
    "HEAT_FLOOR", "REGIONS", "ZOOMS", "CanvasViewError", "View", "ViewTransform", "canvas_size", "frame_fit",
    "from_view", "heat_alpha", "heatmap_over", "refit_drawing", "rescale_drawing", "to_view", "transform_drawing",
    "view_picture", "view_transform",
]
