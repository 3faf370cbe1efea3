"""Heatmap colours and blends for display and reports, always in RGB order.

OpenCV's colour maps come out in BGR; they are flipped to RGB once, in :func:`_lut`, so a hot
region renders red/yellow in every image this module returns (the classic mix-up paints it
blue). Heatmaps are expected min-max normalised within their image (see :mod:`cxr_core.cam`):
the colours are relative to that image only.
"""

from __future__ import annotations

import functools
import io

import cv2
import numpy as np

from cxr_core.binarize import binarize
from cxr_core.errors import CXRError

COLORMAPS = ("turbo", "jet", "inferno", "viridis", "gray")
_CV2_MAPS = {"turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO,
             "viridis": cv2.COLORMAP_VIRIDIS}


class OverlayError(CXRError):
    """A heatmap, image or display option that cannot be rendered."""


@functools.lru_cache(maxsize=None)
def _lut(colormap: str) -> np.ndarray:
    """(256, 3) uint8 RGB table for ``colormap``."""
    if colormap not in COLORMAPS:
        raise OverlayError(f"colour map {colormap!r} unknown; expected one of {', '.join(COLORMAPS)}")
    levels = np.arange(256, dtype=np.uint8)
    if colormap == "gray":
        table = np.repeat(levels[:, None], 3, axis=1)
    else:
        table = cv2.applyColorMap(levels[:, None], _CV2_MAPS[colormap])[:, 0, ::-1]  # BGR -> RGB
    table = np.ascontiguousarray(table)
    table.setflags(write=False)
    return table


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    arr = np.asarray(heatmap)
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise OverlayError(f"heatmap must be a non-empty (H, W) array; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise OverlayError(f"heatmap must hold real numbers; got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise OverlayError("heatmap holds NaN or infinite values")
    if arr.min() < 0 or arr.max() > 1:
        raise OverlayError(f"heatmap values must lie in [0, 1]; got {arr.min():.3g}..{arr.max():.3g}")
    return arr


def colorize(heatmap: np.ndarray, *, colormap: str = "turbo") -> np.ndarray:
    """Colour a [0, 1] heatmap: 0 is the map's low end (dark blue for turbo), 1 its high end (red).

    Parameters
    ----------
    heatmap : (H, W) ndarray, values in [0, 1]
    colormap : one of :data:`COLORMAPS`, keyword-only

    Returns
    -------
    (H, W, 3) uint8 ndarray, RGB

    Examples
    --------
    >>> colorize(np.array([[0.0, 1.0]]), colormap="jet")[0].tolist()
    [[0, 0, 128], [128, 0, 0]]
    """
    levels = np.rint(_check_heatmap(heatmap).astype(np.float32) * 255).astype(np.uint8)
    return _lut(colormap)[levels]


def _gray_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W) [0, 1] float or uint8 grey, or (H, W, 3) uint8 RGB, to (H, W, 3) float32 in 0..255."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8 and arr.ndim in (2, 3):
        rgb = arr.astype(np.float32)
    elif arr.ndim == 2 and np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise OverlayError("float pixels must be finite and lie in [0, 1] (an XRay's .pixels)")
        rgb = arr.astype(np.float32) * 255
    else:
        raise OverlayError(f"pixels must be (H, W) floats in [0, 1] or uint8 (H, W) / (H, W, 3); "
                           f"got shape {arr.shape}, dtype {arr.dtype}")
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    if rgb.shape[-1] != 3:
        raise OverlayError(f"colour pixels must have 3 channels (RGB); got shape {arr.shape}")
    return rgb


def outline_mask(heatmap: np.ndarray, *, width: int | None = None) -> np.ndarray:
    """Edge pixels of the Otsu-binarised region (:func:`cxr_core.binarize.binarize`, filled contours).

    Parameters
    ----------
    heatmap : (H, W) ndarray, values in [0, 1]
    width : int, optional
        Line width in pixels, drawn inside the region; default ``max(1, min(H, W) // 256)`` so the
        line stays visible when a large film is shown small.

    Returns
    -------
    (H, W) bool ndarray
        Empty for a constant map (no region).
    """
    arr = _check_heatmap(heatmap)
    width = max(1, min(arr.shape) // 256) if width is None else int(width)
    if width < 1:
        raise OverlayError(f"outline width must be at least 1 pixel; got {width}")
    region = binarize(arr, method="otsu").astype(np.uint8)
    inner = cv2.erode(region, np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    return (region > 0) & (inner == 0)


def overlay(pixels: np.ndarray, heatmap: np.ndarray, *, colormap: str = "turbo", opacity: float = 0.4,
            outline: bool = False, outline_color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Blend a coloured heatmap over the X-ray: ``(1 - opacity) * image + opacity * colour``.

    Parameters
    ----------
    pixels : (H, W) float ndarray in [0, 1] (an ``XRay.pixels``), or uint8 (H, W) / (H, W, 3) RGB
    heatmap : (H, W) ndarray in [0, 1], the same rows and columns as ``pixels``
    colormap : one of :data:`COLORMAPS`
    opacity : float in [0, 1]; 0 shows the X-ray alone, 1 the colours alone
    outline : draw the edge of the Otsu region (:func:`outline_mask`) in ``outline_color``

    Returns
    -------
    (H, W, 3) uint8 ndarray, RGB
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise OverlayError(f"opacity must lie in [0, 1]; got {opacity!r}")
    image = _gray_rgb(pixels)
    colours = colorize(heatmap, colormap=colormap)
    if image.shape[:2] != colours.shape[:2]:
        raise OverlayError(f"heatmap shape {colours.shape[:2]} differs from the image's {image.shape[:2]}; "
                           "upsample the map to the X-ray's size first")
    out = np.rint((1.0 - opacity) * image + opacity * colours.astype(np.float32)).astype(np.uint8)
    if outline:
        out[outline_mask(heatmap)] = np.asarray(outline_color, np.uint8)
    return out


def legend_image(*, colormap: str = "turbo", width: int = 256, height: int = 40) -> np.ndarray:
    """A horizontal colour bar, low (left) to high (right), for reports: "relative importance within this image".

    Returns
    -------
    (height, width, 3) uint8 ndarray, RGB
    """
    if width < 2 or height < 1:
        raise OverlayError(f"legend needs width >= 2 and height >= 1; got {width} x {height}")
    ramp = np.linspace(0.0, 1.0, int(width), dtype=np.float32)
    return colorize(np.broadcast_to(ramp, (int(height), int(width))), colormap=colormap)


def to_png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) RGB or (H, W) grey uint8 image as PNG (Pillow keeps RGB order)."""
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise OverlayError(f"PNG export needs uint8 (H, W) or (H, W, 3); got shape {arr.shape}, dtype {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()
