"""Crop a film to its lung fields (the ``--crop-lungs`` preprocessing, issue 16), and put a heatmap back.

A model that only ever sees the lung fields' bounding box cannot read the corners, the border, the
burned-in markers or the body outline around the chest, where hospital and age leave their marks.
The box comes from a lung mask (an expert one, or :class:`cxr_core.models.lungs.LungEstimator`'s
estimate), grown by ``margin`` of its own height and width on each side and clipped to the film.
A film whose mask is (nearly) empty is not cropped, and :class:`LungCrop` says so: cropping to noise
would hide the film.

Heatmaps of a cropped input describe the crop; :func:`uncrop` places one back on the whole film (zero
outside the box) so overlays and the audit's region shares stay in the film's own coordinates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cxr_core.errors import DataError

#: Margin around the lung box, as a share of the box's height and width on each side.
MARGIN = 0.1
#: A mask covering less of the film than this is treated as no mask (the film is kept whole).
MIN_LUNG_SHARE = 0.02

Box = tuple[int, int, int, int]  # row0, col0, row1, col1 (end-exclusive), as the markers' boxes


@dataclass(frozen=True)
class LungCrop:
    """The cropped pixels, the box in the film's rows and columns, and whether a crop happened."""

    pixels: np.ndarray
    box: Box
    shape: tuple[int, int]
    cropped: bool
    reason: str = ""


def lung_box(lungs: np.ndarray, *, margin: float = MARGIN) -> Box | None:
    """Bounding box ``(row0, col0, row1, col1)`` of ``lungs`` grown by ``margin``, or None for a near-empty mask.

    Examples
    --------
    >>> m = np.zeros((100, 100), bool); m[20:80, 30:70] = True
    >>> lung_box(m, margin=0.1)
    (14, 26, 86, 74)
    """
    mask = np.asarray(lungs, bool)
    if mask.ndim != 2:
        raise DataError(f"a lung mask must be 2-D, got shape {mask.shape}")
    if margin < 0:
        raise DataError(f"the crop margin must be >= 0, got {margin}")
    if mask.mean() < MIN_LUNG_SHARE:
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dr, dc = int(round(margin * (r1 - r0))), int(round(margin * (c1 - c0)))
    h, w = mask.shape
    return (max(0, r0 - dr), max(0, c0 - dc), min(h, r1 + dr), min(w, c1 + dc))


def crop_to_lungs(pixels: np.ndarray, lungs: np.ndarray, *, margin: float = MARGIN) -> LungCrop:
    """``pixels`` cut to :func:`lung_box` of ``lungs`` (same shape required); the whole film when the mask is empty."""
    px = np.asarray(pixels)
    mask = np.asarray(lungs, bool)
    if mask.shape != px.shape[:2]:
        raise DataError(f"lung mask is {mask.shape[1]}x{mask.shape[0]} px but the film is "
                        f"{px.shape[1]}x{px.shape[0]} px")
    box = lung_box(mask, margin=margin)
    shape = (int(px.shape[0]), int(px.shape[1]))
    if box is None:
        return LungCrop(px, (0, 0, *shape), shape, False,
                        f"no lung fields found (under {MIN_LUNG_SHARE:.0%} of the film): the film is not cropped")
    r0, c0, r1, c1 = box
    return LungCrop(px[r0:r1, c0:c1], tuple(int(v) for v in box), shape, True)


def uncrop(heatmap: np.ndarray, crop: LungCrop) -> np.ndarray:
    """A heatmap computed on ``crop.pixels`` (any size) resized into the box of a zero map of the film's size."""
    import cv2

    r0, c0, r1, c1 = crop.box
    full = np.zeros(crop.shape, np.float32)
    full[r0:r1, c0:c1] = cv2.resize(np.asarray(heatmap, np.float32), (c1 - c0, r1 - r0), interpolation=cv2.INTER_LINEAR)
    return full


def crop_step(estimator, *, margin: float = MARGIN) -> Callable[[np.ndarray], np.ndarray]:
    """A :data:`cxr_core.models.preprocess.PixelStep` cropping each film to its estimated lung fields."""

    def step(pixels: np.ndarray) -> np.ndarray:
        (lungs,) = estimator.estimate([pixels])
        return crop_to_lungs(pixels, lungs, margin=margin).pixels

    return step


__all__ = ["MARGIN", "MIN_LUNG_SHARE", "LungCrop", "crop_step", "crop_to_lungs", "lung_box", "uncrop"]
