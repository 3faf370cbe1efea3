"""Convert a decoded film to float32 a few rows at a time, so decoding stays within issue 15's memory bound.

A decoder's output (Pillow's image, pydicom's array) is held once; each strip of rows goes through the
float64 arithmetic of the conversion (LUTs, luminance, alpha) into one preallocated float32 film. The
float64 temporaries are those of a strip (about 1/128 of the film), never of the whole film, so the peak
is the decoder's samples plus the float32 film: at most about 10 bytes a pixel, against the 30 to 90 of
converting the whole film at once. Results are bit-identical to the whole-film arithmetic: each pixel
goes through the same float64 operations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

#: A film is converted in about this many strips of rows ...
STRIPS = 128
#: ... each of at least this many pixels (small films: fewer, larger strips).
MIN_STRIP_PIXELS = 16_384


def row_strips(rows: int, cols: int) -> Iterator[slice]:
    """Slices of consecutive rows covering ``rows``, each about ``rows * cols / STRIPS`` pixels."""
    step = max(1, max(MIN_STRIP_PIXELS, rows * cols // STRIPS) // max(cols, 1))
    for r0 in range(0, rows, step):
        yield slice(r0, min(rows, r0 + step))


def map_strips(rows: int, cols: int, fn: Callable[[slice], np.ndarray]) -> np.ndarray:
    """A ``(rows, cols)`` float32 film whose rows ``sl`` are ``fn(sl)`` (any float array), strip by strip."""
    out = np.empty((rows, cols), np.float32)
    for sl in row_strips(rows, cols):
        out[sl] = fn(sl)
    return out


def strips_range(rows: int, cols: int, fn: Callable[[slice], np.ndarray]) -> tuple[float, float]:
    """``(min, max)`` of ``fn`` over all strips; NaN when any value is NaN (as ``ndarray.min`` gives)."""
    lows, highs = [], []
    for sl in row_strips(rows, cols):
        values = fn(sl)
        lows.append(values.min())
        highs.append(values.max())
    return float(np.min(lows)), float(np.max(highs))


@dataclass
class ColourStats:
    """Running sums giving :func:`cxr_core.safety.ood.colorfulness` of a film fed strip by strip.

    Hasler and Suesstrunk's measure: ``hypot(std(rg), std(yb)) + 0.3 * hypot(mean(rg), mean(yb))`` with
    ``rg = r - g`` and ``yb = (r + g) / 2 - b``, from sums and sums of squares (population deviation).
    Exactly 0 for a grey film (equal channels), like the whole-film function.
    """

    n: int = 0
    rg: float = 0.0
    rg2: float = 0.0
    yb: float = 0.0
    yb2: float = 0.0

    def add(self, rgb: np.ndarray) -> None:
        """Add an ``(..., 3)`` float RGB strip with values in [0, 1]."""
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        rg = r - g
        yb = r + g
        yb *= 0.5
        yb -= b
        self.n += rg.size
        self.rg += float(rg.sum(dtype=np.float64))
        self.rg2 += float(np.einsum("i,i->", rg.ravel(), rg.ravel(), dtype=np.float64))  # no squared copy; not
        self.yb += float(yb.sum(dtype=np.float64))  # np.dot, whose BLAS threads crawl on a busy machine
        self.yb2 += float(np.einsum("i,i->", yb.ravel(), yb.ravel(), dtype=np.float64))

    def value(self) -> float:
        if not self.n:
            return 0.0
        mean_rg, mean_yb = self.rg / self.n, self.yb / self.n
        std_rg = np.sqrt(max(0.0, self.rg2 / self.n - mean_rg**2))
        std_yb = np.sqrt(max(0.0, self.yb2 / self.n - mean_yb**2))
        return float(np.hypot(std_rg, std_yb) + 0.3 * np.hypot(mean_rg, mean_yb))


__all__ = ["ColourStats", "MIN_STRIP_PIXELS", "STRIPS", "map_strips", "row_strips", "strips_range"]
