"""DICOM to a display-ready array: modality LUT, VOI LUT, MONOCHROME1, de-identified metadata.

The one DICOM reader of the project. Compressed transfer syntaxes decode through pydicom's
pixel handlers (pylibjpeg for JPEG, JPEG-LS and JPEG 2000; RLE natively).
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cxr_core.errors import CorruptImageError, ImageError, ImageTooLargeError, MultiFrameError
from cxr_core.io.strips import ColourStats, map_strips, row_strips, strips_range

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


def _number(ds, keyword: str, default: float | None = None) -> float | None:
    """The first value of a numeric header field, or ``default`` when absent; a damaged value is an error."""
    if keyword not in ds:
        return default
    try:
        value = ds[keyword].value
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
        if value is None or value == "":
            return default
        number = float(value)
    except Exception as exc:  # pydicom raises ValueError, TypeError, struct.error... for a damaged element
        raise CorruptImageError(f"DICOM header field {keyword} is not a number ({exc}); the file is damaged") from exc
    return number


def _count(ds, keyword: str, default: int) -> int:
    """A whole-number header field (Rows, Columns, NumberOfFrames...), checked."""
    value = _number(ds, keyword, default)
    if value is None or not np.isfinite(value) or value != int(value) or value < 0:
        raise CorruptImageError(f"DICOM header field {keyword} is {value!r}; expected a whole number")
    return int(value)


def _check_modality_lut(ds) -> None:
    """Refuse a rescale that would turn every pixel into the same value (slope 0, NaN, infinity)."""
    slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
    if not np.isfinite(slope) or not np.isfinite(intercept) or slope == 0:
        raise CorruptImageError(
            f"DICOM rescale (RescaleSlope {slope}, RescaleIntercept {intercept}) would make every pixel the "
            "same value; the file's header is damaged"
        )


def _clean_voi(ds, notes: list[str]) -> None:
    """Drop VOI settings that cannot be applied, with a note, so the film is shown with its full range.

    A window of width < 1 (LINEAR) or <= 0 (LINEAR_EXACT, SIGMOID), a non-numeric window, an
    unknown VOI LUT function (read as LINEAR, PS3.3 C.11.2.1.3's default) and a VOI LUT table that
    cannot be applied are all recoverable: the pixels are still the radiograph.
    """
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        notes.append(f"DICOM VOI LUT function {function!r} is unknown; the window is applied as LINEAR")
        ds.VOILUTFunction = "LINEAR"
        function = "LINEAR"
    if "WindowCenter" in ds or "WindowWidth" in ds:
        try:
            center, width = _number(ds, "WindowCenter"), _number(ds, "WindowWidth")
        except CorruptImageError:
            center = width = None
        lowest = 1.0 if function == "LINEAR" else 0.0
        if center is None or width is None or not np.isfinite(center) or not np.isfinite(width) or width < lowest or width <= 0:
            notes.append(f"DICOM display window (centre {center}, width {width}) is invalid and was ignored; "
                         "the film is shown with its full range")
            for keyword in ("WindowCenter", "WindowWidth"):
                if keyword in ds:
                    del ds[keyword]


def _window_output_range(ds) -> tuple[float, float]:
    """The range a VOI window maps into, as pydicom's ``apply_windowing`` defines it (PS3.3 C.11.2)."""
    bits = _count(ds, "BitsStored", _count(ds, "BitsAllocated", 8))
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, 2.0**bits - 1
    else:
        lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    slope, intercept = _number(ds, "RescaleSlope"), _number(ds, "RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return min(lo, hi), max(lo, hi)


def _to_unit_range(ds, source: Callable[[slice], np.ndarray], shape: tuple[int, int], notes: list[str], *,
                   invert: bool = False) -> np.ndarray:
    """Apply the modality LUT and the first VOI window, scale to [0, 1] (inverted for MONOCHROME1): float32.

    With a window, its output range maps to [0, 1]. Without one, unsigned data with no rescale
    is divided by its stored-bits maximum, so the same pixels saved as PNG load identically;
    anything else (rescaled CT values, a VOI LUT table) is min-max scaled. A VOI LUT table that
    cannot be applied is ignored with a note; a modality LUT that cannot be applied is an error.
    ``source(rows)`` gives the stored values of a strip of rows: the film is converted strip by strip
    (:mod:`cxr_core.io.strips`), in float64 per strip, so no float64 copy of the whole film is made.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits = _count(ds, "BitsStored", _count(ds, "BitsAllocated", 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    _check_modality_lut(ds)
    _clean_voi(ds, notes)
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    has_rescale = _number(ds, "RescaleSlope", 1.0) != 1 or _number(ds, "RescaleIntercept", 0.0) != 0
    rows, cols = shape

    def modality(sl: slice) -> np.ndarray:
        try:
            return apply_modality_lut(source(sl), ds).astype(np.float64)
        except Exception as exc:  # an empty or inconsistent Modality LUT table
            raise CorruptImageError(f"DICOM modality LUT could not be applied ({type(exc).__name__}: {exc})") from exc

    def voi(sl: slice) -> np.ndarray:
        return apply_voi_lut(modality(sl), ds, index=0).astype(np.float64)

    def unit(values: Callable[[slice], np.ndarray], scale: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        def strip(sl: slice) -> np.ndarray:
            out = scale(values(sl))
            if not np.isfinite(out).all():
                raise CorruptImageError("DICOM pixel values are not finite after the modality and VOI LUTs")
            return 1.0 - out if invert else out
        return map_strips(rows, cols, strip)

    def minmax(values: Callable[[slice], np.ndarray]) -> np.ndarray:
        lo, hi = strips_range(rows, cols, values)
        if not hi > lo:  # one value everywhere (or NaN, as the whole-film min and max would give): all zeros
            return unit(lambda sl: np.zeros((sl.stop - sl.start, cols)), lambda v: v)
        return unit(values, lambda v: (v - lo) / (hi - lo))

    if ds.get("VOILUTSequence"):
        try:
            return minmax(voi)
        except CorruptImageError:
            raise
        except Exception as exc:  # a VOI LUT with bad descriptors: fall back to the window, or the full range
            notes.append(f"DICOM VOI LUT table could not be applied ({type(exc).__name__}) and was ignored")
            del ds["VOILUTSequence"]
    if has_window:
        lo, hi = _window_output_range(ds)
        if hi > lo:
            return unit(voi, lambda v: np.clip((v - lo) / (hi - lo), 0.0, 1.0))
        return minmax(voi)
    if not signed and not has_rescale and not ds.get("ModalityLUTSequence"):
        return unit(modality, lambda v: np.clip(v / (2**bits - 1), 0.0, 1.0))
    return minmax(modality)


def read_dicom(data: bytes, *, max_pixels: int, max_bytes: int | None = None) -> DicomImage:
    """Decode one single-frame DICOM into a :class:`DicomImage`.

    The header is checked before any pixel is decoded: size (``max_pixels``) and the bytes decoding
    holds at its peak (Rows x Columns x (samples x bytes per sample, twice for a compressed transfer
    syntax, + 4 for the float32 film); at most ``max_bytes``, default 8 bytes a pixel of ``max_pixels``).
    The LUTs and the luminance of colour films are applied a strip of rows at a time. Anything a damaged file makes
    pydicom raise ends as a :class:`CorruptImageError` naming the problem.

    Raises
    ------
    CorruptImageError
        Unreadable header or pixel data, a damaged header field, or a transfer syntax no
        installed handler decodes.
    MultiFrameError
        More than one frame.
    ImageTooLargeError
        More than ``max_pixels`` pixels or ``max_bytes`` decoded bytes (checked from the header).
    """
    try:
        return _read_dicom(data, max_pixels=max_pixels, max_bytes=max_bytes or 8 * max_pixels)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError("DICOM pixel data is too large to decode in the memory available") from exc
    except Exception as exc:  # the last net: a malformed element pydicom trips over while reading it lazily
        raise CorruptImageError(f"DICOM data is damaged and could not be read ({type(exc).__name__}: {exc})") from exc


def _read_dicom(data: bytes, *, max_pixels: int, max_bytes: int) -> DicomImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns (to stderr) on a truncated file; handled below
            ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, zlib.error) as exc:
        raise CorruptImageError(f"DICOM header could not be read ({exc}); the file is truncated or damaged") from exc
    if "PixelData" not in ds:
        if "Rows" in ds or "SOPClassUID" not in ds:  # an image header without its pixels, or no real header
            raise CorruptImageError("DICOM data is truncated or damaged: no readable pixel data after the header")
        raise CorruptImageError("DICOM file has no pixel data (a report or structured document, not an image)")
    frames = _count(ds, "NumberOfFrames", 1) or 1
    if frames > 1:
        raise MultiFrameError(f"DICOM has {frames} frames; CXR Review reads single-frame radiographs only")
    rows, cols = _count(ds, "Rows", 0), _count(ds, "Columns", 0)
    if rows * cols > max_pixels:
        raise ImageTooLargeError(f"DICOM is {cols}x{rows} = {rows * cols:,} pixels; the limit is {max_pixels:,}")
    samples = _count(ds, "SamplesPerPixel", 1) or 1
    bits_allocated = _count(ds, "BitsAllocated", 16) or 16
    if samples not in (1, 3, 4) or bits_allocated > 64:
        raise CorruptImageError(f"DICOM declares {samples} samples of {bits_allocated} bits per pixel; "
                                "expected 1 (grey) or 3 (colour) samples of at most 32 bits")
    try:  # compressed (or unknown): the decoder's buffer and its array; uncompressed: a view on the pixel bytes
        copies = 2 if ds.file_meta.TransferSyntaxUID.is_compressed else 1
    except Exception:  # no file meta, or a transfer syntax pydicom does not know
        copies = 2
    working = rows * cols * (samples * -(-bits_allocated // 8) * copies + 4)  # the stored samples + float32 film
    if working > max_bytes:
        raise ImageTooLargeError(
            f"DICOM declares {cols}x{rows} pixels of {samples} samples ({bits_allocated} bits): decoding would take "
            f"{working / 2**20:,.0f} MB, over the limit of {max_bytes / 2**20:,.0f} MB"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array_options(view_only=True)  # uncompressed data: a view on the pixel bytes, not a copy
            raw = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError, ValueError, OSError... for bad or unsupported data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise CorruptImageError(f"DICOM pixel data could not be decoded (transfer syntax {name}): {exc}") from exc
    notes: list[str] = []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    was_color = raw.ndim == 3
    colour = 0.0
    if raw.ndim not in (2, 3):
        raise CorruptImageError(f"DICOM pixel data decoded to shape {raw.shape}; expected one 2-D film")
    if was_color:  # luminance and colourfulness strip by strip: no float64 copy of the three channels
        top = max(float(raw.max()), 1.0)
        stats = ColourStats()
        for sl in row_strips(raw.shape[0], raw.shape[1]):
            stats.add(raw[sl].astype(np.float64) / top)
        colour = stats.value()
        photometric = "RGB"

        def source(sl: slice) -> np.ndarray:
            return _luminance(raw[sl].astype(np.float64))
    else:
        def source(sl: slice) -> np.ndarray:
            return raw[sl]
    pixels = _to_unit_range(ds, source, raw.shape[:2], notes, invert=photometric == "MONOCHROME1")
    modality = str(ds.get("Modality", "")).upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        notes.append(f"DICOM modality is {modality}, not a plain radiograph (CR/DX); results may be meaningless")
    bits = _count(ds, "BitsStored", 8)
    return DicomImage(pixels, bits, _metadata(ds), tuple(notes), was_color, colour)
