"""DICOM to a display-ready array: modality LUT, VOI LUT, MONOCHROME1, de-identified metadata.

The one DICOM reader of the project. Compressed transfer syntaxes decode through pydicom's
pixel handlers (pylibjpeg for JPEG, JPEG-LS and JPEG 2000; RLE natively).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np

from cxr_core.errors import CorruptImageError, ImageTooLargeError, MultiFrameError

#: Modalities that are plain projection radiographs.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "PX"})

#: The only attributes kept from a DICOM header: none identifies a patient, a date or a place.
KEPT_ATTRIBUTES = {
    "Modality": "modality",
    "ViewPosition": "view_position",
    "PhotometricInterpretation": "photometric_interpretation",
    "BodyPartExamined": "body_part",
    "Manufacturer": "manufacturer",
}


@dataclass(frozen=True)
class DicomImage:
    """Decoded pixels in [0, 1] (bone bright), bit depth, kept metadata and warnings."""

    pixels: np.ndarray
    bit_depth: int
    metadata: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    was_color: bool = False
    colorfulness: float = 0.0


def is_dicom(data: bytes) -> bool:
    """True for a Part 10 file (``DICM`` after the 128-byte preamble)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _metadata(ds) -> dict:
    meta: dict = {}
    for keyword, key in KEPT_ATTRIBUTES.items():
        value = ds.get(keyword)
        if value not in (None, ""):
            meta[key] = str(value)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):  # a 0\\0 spacing means "unknown", not 0 mm
        try:
            spacing = [float(v) for v in ds.get(keyword) or ()]
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and min(spacing) > 0:
            meta["pixel_spacing_mm"] = spacing
            break
    meta["rows"], meta["columns"] = int(ds.Rows), int(ds.Columns)
    return meta


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _window_output_range(ds) -> tuple[float, float]:
    """The range a VOI window maps into, as pydicom's ``apply_windowing`` defines it (PS3.3 C.11.2)."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, 2.0**bits - 1
    else:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def _to_unit_range(ds, raw: np.ndarray) -> np.ndarray:
    """Apply the modality LUT and the first VOI window, then scale to [0, 1].

    With a window, its output range maps to [0, 1]. Without one, unsigned data with no rescale
    is divided by its stored-bits maximum, so the same pixels saved as PNG load identically;
    anything else (rescaled CT values, a VOI LUT table) is min-max scaled.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    has_voi_lut = bool(ds.get("VOILUTSequence"))
    has_rescale = float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0
    values = apply_modality_lut(raw, ds).astype(np.float64)
    if has_window or has_voi_lut:
        values = apply_voi_lut(values, ds, index=0).astype(np.float64)
        if has_window and not has_voi_lut:
            lo, hi = _window_output_range(ds)
            return np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    elif not signed and not has_rescale and not ds.get("ModalityLUTSequence"):
        return np.clip(values / (2**bits - 1), 0.0, 1.0)
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def read_dicom(data: bytes, *, max_pixels: int) -> DicomImage:
    """Decode one single-frame DICOM into a :class:`DicomImage`.

    Raises
    ------
    CorruptImageError
        Unreadable header or pixel data, or a transfer syntax no installed handler decodes.
    MultiFrameError
        More than one frame.
    ImageTooLargeError
        More than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns (to stderr) on a truncated file; handled below
            ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptImageError(f"DICOM header could not be read ({exc}); the file is truncated or damaged") from exc
    if "PixelData" not in ds:
        if "Rows" in ds or "SOPClassUID" not in ds:  # an image header without its pixels, or no real header
            raise CorruptImageError("DICOM data is truncated or damaged: no readable pixel data after the header")
        raise CorruptImageError("DICOM file has no pixel data (a report or structured document, not an image)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MultiFrameError(f"DICOM has {frames} frames; CXR Review reads single-frame radiographs only")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise ImageTooLargeError(f"DICOM is {cols}x{rows} = {rows * cols:,} pixels; the limit is {max_pixels:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError, ValueError, OSError... for bad or unsupported data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise CorruptImageError(f"DICOM pixel data could not be decoded (transfer syntax {name}): {exc}") from exc
    notes: list[str] = []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    was_color = raw.ndim == 3
    colour = 0.0
    if was_color:
        from cxr_core.ood import colorfulness

        rgb = raw.astype(np.float64)
        colour = colorfulness(rgb / max(float(rgb.max()), 1.0))
        raw = _luminance(rgb)
        photometric = "RGB"
    pixels = _to_unit_range(ds, raw)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        notes.append(f"DICOM modality is {modality}, not a plain radiograph (CR/DX); results may be meaningless")
    bits = int(ds.get("BitsStored", 8))
    return DicomImage(pixels.astype(np.float32), bits, _metadata(ds), tuple(notes), was_color, colour)
