"""Heatmap to boolean mask, following CheXlocalize (Saporta et al., Nat. Mach. Intell. 2022).

The steps are those of CheXlocalize's ``heatmap_to_segmentation.py``: bilinear upsampling to the
X-ray's own size, per-image min-max normalisation, then Otsu on ``uint8(255 * map)`` (or a fixed
cut ``map > t``, or the top k% of pixels), then every contour filled so the mask has no holes.
Functions take one ``(H, W)`` map or a stack ``(N, H, W)`` and return the same layout; inputs are
never modified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from cxr_core.errors import CXRError

METHODS = ("otsu", "threshold", "top")
ACCEPTED = "'otsu', a number in [0, 1] such as '0.5', or 'top<k>%' such as 'top15%'"
_TOP = re.compile(r"^top\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*%?$")


class HeatmapError(CXRError):
    """A heatmap or mask array that cannot be binarised or scored."""


class ThresholdError(CXRError):
    """A binarisation method or parameter outside what is accepted."""


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class Threshold:
    """How a heatmap is binarised: stored with every score so numbers can be reproduced.

    Attributes
    ----------
    method : {"otsu", "threshold", "top"}
        Otsu's method (CheXlocalize's default), a fixed cut on the normalised map, or the
        top ``value`` percent of pixels.
    value : float or None
        None for Otsu; the cut in [0, 1] for ``"threshold"``; the percentage in (0, 100] for
        ``"top"``.

    Examples
    --------
    >>> str(Threshold.parse("top15%")), Threshold.parse("0.5")
    ('top15%', Threshold(method='threshold', value=0.5))
    """

    method: str = "otsu"
    value: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ThresholdError(f"binarisation method {self.method!r} unknown; accepted: {', '.join(METHODS)}")
        if self.method == "otsu":
            if self.value is not None:
                raise ThresholdError(f"Otsu takes no value; got {self.value!r}")
            return
        if self.value is None or not np.isfinite(self.value):
            raise ThresholdError(f"method {self.method!r} needs a finite value; got {self.value!r}")
        object.__setattr__(self, "value", float(self.value))
        if self.method == "threshold" and not 0.0 <= self.value <= 1.0:
            raise ThresholdError(
                f"fixed threshold must lie in [0, 1] (the map is min-max normalised); got {self.value!r}")
        if self.method == "top" and not 0.0 < self.value <= 100.0:
            raise ThresholdError(f"top-k percentage must lie in (0, 100]; got {self.value!r}")

    @classmethod
    def parse(cls, text: str | Threshold) -> Threshold:
        """Read ``"otsu"``, ``"0.5"`` or ``"top15%"`` (what the CLI and the stored scores use)."""
        if isinstance(text, Threshold):
            return text
        spec = str(text).strip().lower()
        if spec == "otsu":
            return cls("otsu")
        match = _TOP.match(spec)
        if match:
            return cls("top", float(match.group(1)))
        try:
            value = float(spec)
        except ValueError:
            raise ThresholdError(f"threshold {text!r} not understood; accepted: {ACCEPTED}") from None
        return cls("threshold", value)

    def __str__(self) -> str:
        if self.method == "otsu":
            return "otsu"
        if self.method == "threshold":
            return _fmt(self.value)
        return f"top{_fmt(self.value)}%"


def check_maps(heatmap: np.ndarray, what: str = "heatmap") -> np.ndarray:
    """``heatmap`` as an array, checked once: a non-empty (H, W) map or (N, H, W) stack of finite real numbers.

    Callers that score a whole stack check it here once, then pass ``checked=True`` to
    :func:`upsample` and :func:`normalize` for each slice.

    Raises
    ------
    HeatmapError
        Wrong shape, a non-numeric or boolean dtype, or NaN/infinite values; ``what`` names the input.
    """
    arr = np.asarray(heatmap)
    if arr.ndim not in (2, 3) or min(arr.shape, default=0) == 0:
        raise HeatmapError(f"{what} must be a non-empty (H, W) array or an (N, H, W) stack; got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise HeatmapError(f"{what} must hold real numbers; got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise HeatmapError(f"{what} holds NaN or infinite values; a heatmap must be finite everywhere")
    return arr


def upsample(heatmap: np.ndarray, shape: tuple[int, int], *, checked: bool = False) -> np.ndarray:
    """Resize a heatmap (or stack) bilinearly to ``shape = (rows, cols)``, as CheXlocalize does.

    ``cv2.INTER_LINEAR`` uses pixel-centre alignment, which is torch's ``bilinear`` with
    ``align_corners=False``. Maps are resized one per OpenCV call: resizing a stack as channels
    rounds differently with the channel count, and a map must score the same alone or in a batch.

    Parameters
    ----------
    heatmap : (h, w) or (N, h, w) ndarray
    shape : (rows, cols)
        The X-ray's original size.
    checked : bool
        ``heatmap`` already passed :func:`check_maps` and ``shape`` is two positive ints: skip the checks.

    Returns
    -------
    (rows, cols) or (N, rows, cols) float32 ndarray
        A new array, even when no resizing was needed.
    """
    rows, cols = (int(s) for s in shape)
    if rows < 1 or cols < 1:
        raise HeatmapError(f"target shape must be two positive sizes (rows, cols); got {tuple(shape)}")
    arr = (heatmap if checked else check_maps(heatmap)).astype(np.float32, copy=False)
    if arr.shape[-2:] == (rows, cols):
        return arr.copy()
    stack = arr.reshape(-1, *arr.shape[-2:])
    out = np.empty((stack.shape[0], rows, cols), np.float32)
    for src, dst in zip(stack, out):
        dst[...] = cv2.resize(src, (cols, rows), interpolation=cv2.INTER_LINEAR)  # cv2 takes (w, h)
    return out.reshape(*arr.shape[:-2], rows, cols)


def normalize(heatmap: np.ndarray, *, checked: bool = False) -> np.ndarray:
    """Min-max scale each map to [0, 1] in float32 (CheXlocalize: ``(m - min) / max(m - min)``); a new array.

    A constant map becomes all zeros (it localises nothing), never NaN. ``checked=True``: ``heatmap``
    already passed :func:`check_maps`.

    Examples
    --------
    >>> normalize(np.array([[2.0, 4.0], [6.0, 6.0]])).tolist()
    [[0.0, 0.5], [1.0, 1.0]]
    """
    out = (heatmap if checked else check_maps(heatmap)).astype(np.float32, copy=True)
    low = out.min(axis=(-2, -1), keepdims=True)
    span = out.max(axis=(-2, -1), keepdims=True) - low
    out -= low
    out /= np.where(span > 0, span, np.float32(1))
    return out


def to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """``uint8(255 * normalize(map))``, truncating as CheXlocalize's ``np.uint8`` does."""
    scaled = normalize(heatmap)
    scaled *= np.float32(255)
    return scaled.astype(np.uint8)


def otsu_threshold(heatmap: np.ndarray) -> np.ndarray | float:
    """Otsu's cut on the normalised [0, 1] scale: pixels with ``uint8(255 * map) > 255 * t`` are kept.

    OpenCV's ``THRESH_OTSU`` picks the level (the same call CheXlocalize makes). Returns a float
    for one map and a ``(N,)`` array for a stack.
    """
    u8 = to_uint8(heatmap)
    levels = np.array([cv2.threshold(im, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0]
                       for im in u8.reshape(-1, *u8.shape[-2:])]) / 255.0
    return float(levels[0]) if u8.ndim == 2 else levels


def fill_contours(mask: np.ndarray) -> np.ndarray:
    """Fill every contour of a boolean mask (or stack), dropping isolated single pixels.

    CheXlocalize traces contours with ``RETR_TREE`` and draws each one as a filled polygon,
    skipping one-point contours. Every inner contour lies inside an outer one, so the union is
    the filled outer contours: we draw those (``RETR_EXTERNAL``) in one call, which gives the
    same pixels (checked against a polygon-by-polygon reimplementation in the tests).
    """
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3):
        raise HeatmapError(f"mask must be (H, W) or (N, H, W); got shape {arr.shape}")
    src = arr.astype(np.uint8).reshape(-1, *arr.shape[-2:])
    out = np.zeros_like(src)
    for im, dst in zip(src, out):
        contours = cv2.findContours(im, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        contours = [c for c in contours if len(c) > 1]
        if contours:
            cv2.drawContours(dst, contours, -1, 1, thickness=cv2.FILLED)
    return out.reshape(arr.shape).astype(bool)


def _top_percent(norm: np.ndarray, percent: float) -> np.ndarray:
    """Exactly ``round(percent% of pixels)`` per map: the highest, ties cut in row-major order."""
    flat = norm.reshape(norm.shape[0], -1)
    n = flat.shape[1]
    count = min(n, int(np.floor(percent / 100.0 * n + 0.5)))
    if count == 0:
        return np.zeros(norm.shape, bool)
    kth = np.partition(flat, n - count, axis=1)[:, n - count][:, None]
    keep = flat > kth
    need = count - keep.sum(axis=1, keepdims=True)
    ties = flat == kth
    keep |= ties & (np.cumsum(ties, axis=1) <= need)
    return keep.reshape(norm.shape)


def binarize(heatmap: np.ndarray, *, method: str = "otsu", value: float | None = None,
             fill: bool = True) -> np.ndarray:
    """Turn a heatmap (or stack) into a boolean mask the way CheXlocalize does.

    Parameters
    ----------
    heatmap : (H, W) or (N, H, W) ndarray
        Any real map at the X-ray's size (see :func:`upsample`); it is min-max normalised first.
    method : {"otsu", "threshold", "top"}, keyword-only
        ``"otsu"``: OpenCV Otsu on ``uint8(255 * map)``; ``"threshold"``: ``map > value``;
        ``"top"``: the ``value`` percent highest pixels (exact count, ties in row-major order).
    value : float, optional
        The cut in [0, 1] or the percentage in (0, 100]; None for Otsu.
    fill : bool, keyword-only
        Fill contours afterwards (:func:`fill_contours`). CheXlocalize fills on its Otsu path only;
        we fill for every method by default so the three are comparable.

    Returns
    -------
    ndarray of bool, same shape as ``heatmap``
        A constant map gives an empty mask for every method.

    Raises
    ------
    HeatmapError
        Not a finite 2-D map or 3-D stack.
    ThresholdError
        Unknown method or a value out of range.

    Examples
    --------
    >>> h = np.zeros((5, 5)); h[1:4, 1:4] = 1.0; h[2, 2] = 0.0
    >>> int(binarize(h).sum())  # the 3x3 ring, its hole filled
    9
    """
    spec = Threshold(method, value)
    return binarize_normalized(normalize(heatmap), spec, fill=fill)


def binarize_normalized(norm: np.ndarray, threshold: Threshold | str = "otsu", *, fill: bool = True) -> np.ndarray:
    """:func:`binarize` for maps already through :func:`normalize` (saves a pass on large stacks).

    ``norm`` must be min-max normalised per map (values in [0, 1], max 1 unless constant).
    """
    spec = Threshold.parse(threshold)
    norm = np.asarray(norm, np.float32)
    stack = norm.reshape(-1, *norm.shape[-2:])
    constant = stack.max(axis=(1, 2)) == 0
    if spec.method == "otsu":
        u8 = (stack * np.float32(255)).astype(np.uint8)
        mask = np.stack([cv2.threshold(im, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[1] > 0 for im in u8])
    elif spec.method == "threshold":
        mask = stack > np.float32(spec.value)
    else:
        mask = _top_percent(stack, spec.value)
    mask[constant] = False
    if fill:
        mask = fill_contours(mask)
    return mask.reshape(norm.shape)
