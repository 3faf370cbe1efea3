"""Heatmap colours and blends for display and reports, always in RGB order.

OpenCV's colour maps come out in BGR; they are flipped to RGB once, in :func:`_lut`, so a hot
region renders red/yellow in every image this module returns (the classic mix-up paints it
blue). Heatmaps are expected min-max normalised within their image (see :mod:`cxr_core.explain.cam`):
the colours are relative to that image only.

The blend fades the colour out where the map is low (:func:`fade_alpha`), so the film is left
as it is outside the hot region rather than tinted all over. Downloads carry a footer band with
the legend and what made the map (:func:`with_legend`) and the same facts as PNG text chunks.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping

import cv2
import numpy as np

from cxr_core.explain.binarize import binarize
from cxr_core.errors import CXRError

COLORMAPS = ("turbo", "jet", "inferno", "viridis", "gray")
_CV2_MAPS = {"turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO,
             "viridis": cv2.COLORMAP_VIRIDIS}

#: Heatmap level at and below which the overlay adds no colour (see :func:`fade_alpha`).
FADE_LOW = 0.2
#: The legend's words: the ends of the colour bar, and what the colours are relative to.
LEGEND_LOW, LEGEND_HIGH, LEGEND_NOTE = "low", "high", "relative within this film"
#: Zoom factors the review page offers (1 is the whole film).
ZOOMS = (1, 2, 4)
_BAND_BG, _BAND_FG, _FADE_BG = (17, 17, 17), (235, 235, 235), 128


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


def fade_alpha(heatmap: np.ndarray, *, opacity: float = 0.4, low: float = FADE_LOW) -> np.ndarray:
    """Per-pixel weight of the colour in the blend: ``opacity * ramp(heatmap)``.

    ``ramp(h) = clip((h - low) / (1 - low), 0, 1)``: 0 up to ``low``, rising linearly to 1 at the
    map's maximum. Where the map is low the film is left exactly as it is; only the hot region
    is tinted, at most ``opacity`` strong.

    Parameters
    ----------
    heatmap : (H, W) ndarray, values in [0, 1]
    opacity : float in [0, 1], the weight at heatmap 1
    low : float in [0, 1), the level at and below which nothing is tinted

    Returns
    -------
    (H, W) float32 ndarray in [0, opacity]

    Examples
    --------
    >>> fade_alpha(np.array([[0.0, 0.2, 0.6, 1.0]]), opacity=0.5).round(3).tolist()
    [[0.0, 0.0, 0.25, 0.5]]
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise OverlayError(f"opacity must lie in [0, 1]; got {opacity!r}")
    if not 0.0 <= float(low) < 1.0:
        raise OverlayError(f"fade level must lie in [0, 1); got {low!r}")
    arr = _check_heatmap(heatmap).astype(np.float32)
    return (float(opacity) * np.clip((arr - float(low)) / (1.0 - float(low)), 0.0, 1.0)).astype(np.float32)


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


def outline_width(shape: tuple[int, ...]) -> int:
    """Default outline width in pixels: 3 at display size, growing with the film (1 px per 256 of its longest side).

    >>> outline_width((1024, 800)), outline_width((3000, 2500))
    (4, 12)
    """
    return max(3, round(max(shape[:2]) / 256))


def edge_mask(region: np.ndarray, *, width: int) -> np.ndarray:
    """The inner ring, ``width`` pixels wide, of a boolean region (nothing is drawn along the array's border)."""
    arr = np.asarray(region)
    if arr.ndim != 2:
        raise OverlayError(f"outline region must be an (H, W) mask; got shape {arr.shape}")
    if int(width) < 1:
        raise OverlayError(f"outline width must be at least 1 pixel; got {width}")
    width = int(width)
    inner = cv2.erode(arr.astype(np.uint8), np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    return (arr > 0) & (inner == 0)


def outline_mask(heatmap: np.ndarray, *, width: int | None = None) -> np.ndarray:
    """Edge pixels of the Otsu-binarised region (:func:`cxr_core.explain.binarize.binarize`, filled contours).

    Parameters
    ----------
    heatmap : (H, W) ndarray, values in [0, 1]
    width : int, optional
        Line width in pixels, drawn inside the region; default :func:`outline_width`, so the line
        stays visible when a large film is shown small.

    Returns
    -------
    (H, W) bool ndarray
        Empty for a constant map (no region).
    """
    arr = _check_heatmap(heatmap)
    region = binarize(arr, method="otsu")
    return edge_mask(region, width=outline_width(arr.shape) if width is None else width)


def overlay(pixels: np.ndarray, heatmap: np.ndarray, *, colormap: str = "turbo", opacity: float = 0.4,
            outline: bool | np.ndarray = False, outline_color: tuple[int, int, int] = (255, 255, 255),
            outline_px: int | None = None, low: float = FADE_LOW) -> np.ndarray:
    """Blend a coloured heatmap over the X-ray, fading out where the map is low.

    Each pixel is ``(1 - a) * image + a * colour`` with ``a = fade_alpha(heatmap, opacity, low)``:
    pixels whose map is at or below ``low`` keep the film's grey exactly.

    Parameters
    ----------
    pixels : (H, W) float ndarray in [0, 1] (an ``XRay.pixels``), or uint8 (H, W) / (H, W, 3) RGB
    heatmap : (H, W) ndarray in [0, 1], the same rows and columns as ``pixels``
    colormap : one of :data:`COLORMAPS`
    opacity : float in [0, 1]; 0 shows the X-ray alone, 1 the full colour where the map peaks
    outline : bool or (H, W) bool ndarray
        True draws the edge of the map's Otsu region in ``outline_color``; a mask draws that
        region's edge instead (e.g. the whole map's Otsu region, cropped for a zoom).
    outline_px : line width, default :func:`outline_width` of the image
    low : see :func:`fade_alpha`

    Returns
    -------
    (H, W, 3) uint8 ndarray, RGB
    """
    alpha = fade_alpha(heatmap, opacity=opacity, low=low)
    image = _gray_rgb(pixels)
    colours = colorize(heatmap, colormap=colormap)
    if image.shape[:2] != colours.shape[:2]:
        raise OverlayError(f"heatmap shape {colours.shape[:2]} differs from the image's {image.shape[:2]}; "
                           "upsample the map to the X-ray's size first")
    a = alpha[..., None]
    out = np.rint((1.0 - a) * image + a * colours.astype(np.float32)).astype(np.uint8)
    if outline is not False and outline is not None:
        width = outline_width(image.shape) if outline_px is None else outline_px
        if isinstance(outline, np.ndarray):
            if outline.shape != image.shape[:2]:
                raise OverlayError(f"outline region shape {outline.shape} differs from the image's {image.shape[:2]}")
            edge = edge_mask(outline, width=width)
        else:
            edge = outline_mask(heatmap, width=width)
        out[edge] = np.asarray(outline_color, np.uint8)
    return out


def zoom_window(zoom: int, centre: tuple[float, float] = (0.5, 0.5)) -> tuple[float, float, float, float]:
    """``(top, bottom, left, right)`` fractions of a 1/``zoom`` window centred as near ``centre`` as fits.

    ``centre`` is (row, column) as fractions of the height and width; the window is moved inside
    the image rather than cut at its edge.

    >>> zoom_window(2, (0.0, 0.5))
    (0.0, 0.5, 0.25, 0.75)
    """
    if zoom not in ZOOMS:
        raise OverlayError(f"zoom must be one of {', '.join(map(str, ZOOMS))}; got {zoom!r}")
    row, col = (float(c) for c in centre)
    if not (0.0 <= row <= 1.0 and 0.0 <= col <= 1.0):
        raise OverlayError(f"zoom centre must be (row, column) fractions in [0, 1]; got {centre!r}")
    half = 0.5 / zoom
    top = min(max(row - half, 0.0), 1.0 - 2 * half)
    left = min(max(col - half, 0.0), 1.0 - 2 * half)
    return top, top + 2 * half, left, left + 2 * half


def _crop(arr: np.ndarray, window: tuple[float, float, float, float]) -> np.ndarray:
    h, w = arr.shape[:2]
    top, bottom, left, right = window
    r0, r1 = round(top * h), max(round(top * h) + 1, round(bottom * h))
    c0, c1 = round(left * w), max(round(left * w) + 1, round(right * w))
    return arr[r0:r1, c0:c1]


def fit_within(arr: np.ndarray, max_side: int) -> np.ndarray:
    """``arr`` (grey or RGB) shrunk with area averaging so its longer side is at most ``max_side``; never enlarged."""
    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return arr
    return cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def zoom_view(pixels: np.ndarray, heatmap: np.ndarray | None = None, *, zoom: int = 1,
              centre: tuple[float, float] = (0.5, 0.5), max_side: int = 1024, colormap: str = "turbo",
              opacity: float = 0.4, outline: bool = False, low: float = FADE_LOW) -> np.ndarray:
    """A 1/``zoom`` window of the film at its own resolution (at most ``max_side``), the heatmap blended in.

    The window is cut from the full-size ``pixels`` so zooming shows real detail. ``heatmap`` may
    be at any size (e.g. the display-size map): the same window of it is resized to the crop, and
    the outline is the edge of the *whole* map's Otsu region, so zooming never moves it.

    Returns
    -------
    (h, w) uint8 grey without a heatmap, else (h, w, 3) uint8 RGB
    """
    film = np.asarray(pixels)
    if film.ndim != 2:
        raise OverlayError(f"zoom needs a grey (H, W) film; got shape {film.shape}")
    window = zoom_window(zoom, centre)
    crop = _gray_rgb(_crop(film, window))[..., 0]  # crop first: a full-size film is never copied whole
    grey = np.rint(fit_within(crop, max_side)).astype(np.uint8)
    if heatmap is None:
        return grey
    heat = _check_heatmap(heatmap).astype(np.float32)
    size = (grey.shape[1], grey.shape[0])
    heat_crop = np.clip(cv2.resize(_crop(heat, window), size, interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    region: bool | np.ndarray = False
    if outline:
        whole = binarize(heat, method="otsu").astype(np.uint8)
        region = cv2.resize(_crop(whole, window), size, interpolation=cv2.INTER_NEAREST) > 0
    return overlay(grey, heat_crop, colormap=colormap, opacity=opacity, outline=region, low=low)


def legend_image(*, colormap: str = "turbo", width: int = 256, height: int = 40, faded: bool = False,
                 low: float = FADE_LOW) -> np.ndarray:
    """A horizontal colour bar, low (left) to high (right): "relative importance within this film".

    With ``faded`` the bar is blended over mid-grey the way :func:`overlay` blends (full opacity),
    so its low end shows what the film shows there: no tint.

    Returns
    -------
    (height, width, 3) uint8 ndarray, RGB
    """
    if width < 2 or height < 1:
        raise OverlayError(f"legend needs width >= 2 and height >= 1; got {width} x {height}")
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, int(width), dtype=np.float32), (int(height), int(width)))
    if faded:
        return overlay(np.full(ramp.shape, _FADE_BG, np.uint8), ramp, colormap=colormap, opacity=1.0, low=low)
    return colorize(ramp, colormap=colormap)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def legend_band(width: int, *, colormap: str = "turbo", caption: str = "", low: float = FADE_LOW) -> np.ndarray:
    """A dark footer band for a downloaded overlay: the faded colour bar between "low" and "high",
    "relative within this film" under it, and ``caption`` (e.g. "model · method · target class") below.

    Text is sized to the band's width (about 1/60 of it, at least 10 px), so a full-size film's
    footer stays readable.

    Returns
    -------
    (h, width, 3) uint8 ndarray, RGB, ``h`` about 6.5 text heights
    """
    from PIL import Image, ImageDraw

    width = int(width)
    if width < 32:
        raise OverlayError(f"a legend band needs a film at least 32 pixels wide; got {width}")
    size = max(10, round(width / 60))
    pad = max(4, size // 2)
    font = _font(size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    while size > 10 and max(draw.textlength(t, font=font) for t in (caption, LEGEND_NOTE)) > width - 2 * pad:
        size -= 1
        font = _font(size)
    label_w = max(draw.textlength(t, font=font) for t in (LEGEND_LOW, LEGEND_HIGH))
    bar_left, bar_right = round(2 * pad + label_w), round(width - 2 * pad - label_w)
    line = round(size * 1.3)
    height = pad + line + line + (line if caption else 0) + pad
    band = Image.new("RGB", (width, height), _BAND_BG)
    draw = ImageDraw.Draw(band)
    bar_top = pad + (line - size) // 2
    if bar_right - bar_left >= 2:
        bar = legend_image(colormap=colormap, width=bar_right - bar_left, height=size, faded=True, low=low)
        band.paste(Image.fromarray(bar), (bar_left, bar_top))
    middle = pad + line // 2
    draw.text((pad, middle), LEGEND_LOW, fill=_BAND_FG, font=font, anchor="lm")
    draw.text((width - pad, middle), LEGEND_HIGH, fill=_BAND_FG, font=font, anchor="rm")
    draw.text(((bar_left + bar_right) // 2, pad + line + line // 2), LEGEND_NOTE, fill=_BAND_FG, font=font,
              anchor="mm")
    if caption:
        draw.text((pad, pad + 2 * line + line // 2), caption, fill=_BAND_FG, font=font, anchor="lm")
    return np.asarray(band)


def with_legend(rgb: np.ndarray, *, colormap: str = "turbo", caption: str = "", low: float = FADE_LOW) -> np.ndarray:
    """``rgb`` (an overlay) with :func:`legend_band` added below it, as one (H + band, W, 3) uint8 image."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise OverlayError(f"the legend goes under an (H, W, 3) uint8 RGB image; got shape {arr.shape}, "
                           f"dtype {arr.dtype}")
    return np.vstack([arr, legend_band(arr.shape[1], colormap=colormap, caption=caption, low=low)])


#: JPEG quality of pictures shown on a page (downloads stay full-size PNGs, :func:`to_png_bytes`).
JPEG_QUALITY = 92


def to_jpeg_bytes(rgb: np.ndarray, *, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an (H, W, 3) RGB or (H, W) grey uint8 image as JPEG: smaller and faster to send than PNG."""
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise OverlayError(f"JPEG export needs uint8 (H, W) or (H, W, 3); got shape {arr.shape}, dtype {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to_png_bytes(rgb: np.ndarray, *, text: Mapping[str, str] | None = None) -> bytes:
    """Encode an (H, W, 3) RGB or (H, W) grey uint8 image as PNG (Pillow keeps RGB order).

    ``text`` becomes PNG text chunks (``tEXt``, or ``iTXt`` beyond Latin-1), so what made an
    overlay travels with the file: ``Image.open(...).text`` reads them back.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise OverlayError(f"PNG export needs uint8 (H, W) or (H, W, 3); got shape {arr.shape}, dtype {arr.dtype}")
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(str(key), str(value))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
