"""Arrays to compact bytes and back, for the annotation database.

- X-ray pixels: grayscale PNG, 8-bit or 16-bit (lossless for the stored bit depth).
- Masks: 1-bit PNG (a 3000 x 3000 mask with one region is ~3 KB).
- Heatmaps: ``np.savez_compressed`` of float16 (values in [0, 1] keep ~3 significant digits).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage

from cxr_core.errors import CXRError


class CodecError(CXRError):
    """An array that cannot be stored, or stored bytes that do not decode."""


def _check_2d(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2 or 0 in arr.shape:
        raise CodecError(f"{what} has shape {arr.shape}; expected a non-empty 2-D (rows, cols) array")
    return arr


def encode_pixels(pixels: np.ndarray, *, bit_depth: int = 16) -> bytes:
    """Grayscale PNG of an X-ray.

    Parameters
    ----------
    pixels : (H, W) ndarray
        float in [0, 1] (as in :class:`cxr_core.io.imaging.XRay`), or uint8 / uint16 stored as is.
    bit_depth : {8, 16}
        Bits per sample for float input.
    """
    arr = _check_2d(pixels, "pixels")
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        out = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if bit_depth not in (8, 16):
            raise CodecError(f"bit_depth={bit_depth}; expected 8 or 16")
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise CodecError(
                f"float pixels span [{np.nanmin(arr)}, {np.nanmax(arr)}]; expected finite values in [0, 1]"
            )
        top = 255 if bit_depth == 8 else 65535
        out = np.rint(arr * top).astype(np.uint8 if bit_depth == 8 else np.uint16)
    else:
        raise CodecError(f"pixels of dtype {arr.dtype}; expected float in [0, 1], uint8 or uint16")
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(out)).save(buf, format="PNG")
    return buf.getvalue()


def decode_pixels(data: bytes) -> np.ndarray:
    """(H, W) float32 in [0, 1] from :func:`encode_pixels` bytes."""
    try:
        arr = np.asarray(PILImage.open(io.BytesIO(data)))
    except Exception as err:  # PIL raises several unrelated types for bad bytes
        raise CodecError(f"stored image bytes do not decode as PNG ({err})") from None
    top = 65535.0 if arr.dtype == np.uint16 or arr.max(initial=0) > 255 else 255.0
    return (arr.astype(np.float32) / top).astype(np.float32)


def encode_mask(mask: np.ndarray) -> bytes:
    """1-bit PNG of a boolean mask."""
    arr = _check_2d(mask, "mask")
    if arr.dtype != bool:
        raise CodecError(f"mask of dtype {arr.dtype}; expected bool")
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """(H, W) bool mask from :func:`encode_mask` bytes."""
    try:
        return np.asarray(PILImage.open(io.BytesIO(data)).convert("1"), dtype=bool).copy()
    except Exception as err:
        raise CodecError(f"stored mask bytes do not decode as PNG ({err})") from None


def encode_heatmap(heatmap: np.ndarray, *, dtype: type = np.float16) -> bytes:
    """Compressed ``.npz`` of a float heatmap (float16 by default, float32 on request)."""
    arr = _check_2d(heatmap, "heatmap")
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise CodecError(f"heatmap of dtype {arr.dtype}; expected finite floats")
    if np.dtype(dtype) not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise CodecError(f"heatmap dtype {dtype}; expected float16 or float32")
    buf = io.BytesIO()
    np.savez_compressed(buf, heatmap=arr.astype(dtype))
    return buf.getvalue()


def decode_heatmap(data: bytes) -> np.ndarray:
    """(H, W) float32 heatmap from :func:`encode_heatmap` bytes."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return npz["heatmap"].astype(np.float32)
    except Exception as err:
        raise CodecError(f"stored heatmap bytes do not decode as .npz ({err})") from None
