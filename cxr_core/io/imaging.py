"""Decode and validate an uploaded X-ray into an :class:`XRay` record.

PNG (8/16-bit, grayscale, RGB, RGBA, palette), JPEG, TIFF and DICOM all end up as one float32
array in [0, 1] at the original resolution, bone bright, with only non-identifying metadata.

Memory (issue 15): the header's size is checked before any pixel is decoded, against ``max_pixels``
and against ``max_decode_bytes`` for what decoding holds at its peak (the decoder's samples plus the
float32 film); the conversion then runs a strip of rows at a time (:mod:`cxr_core.io.strips`), so an
accepted film costs at most about 10 times its 8-bit size (``bench/bench_decode_memory.py``).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_core.config import get_settings
from cxr_core.io.dicom import is_dicom, read_dicom
from cxr_core.io.strips import ColourStats, map_strips, strips_range
from cxr_core.errors import (
    CorruptImageError,
    EmptyFileError,
    ImageTooLargeError,
    ImageTooSmallError,
    ImageError,
    UnsupportedFormatError,
)

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}
ACCEPTED = "PNG, JPEG, TIFF or DICOM"
#: File name endings of the formats above, the one list every folder reader uses (a DICOM file may have none).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")


def is_image_name(path: str | Path, *, bare: bool = False) -> bool:
    """Whether a file's name ends like an X-ray CXR Review reads (:data:`IMAGE_SUFFIXES`, any case).

    Hidden files (a leading dot) never count. ``bare=True`` counts a name with no ending too, as
    DICOM files often come without one; the decoder then decides.
    """
    name = Path(path).name
    suffix = Path(name).suffix.lower()
    return not name.startswith(".") and (suffix in IMAGE_SUFFIXES or (bare and not suffix))
#: Bytes a pixel Pillow holds for a decoded image of each mode (any other mode: 4). The float32 film (4 bytes
#: a pixel) is made strip by strip next to it (:mod:`cxr_core.io.strips`), so the peak of a decode is the sum.
PILLOW_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
#: A file declaring more than this many pixels per byte of itself is a decompression bomb: real films,
#: even blank ones, never compress that far. Checked only above BOMB_MIN_PIXELS.
BOMB_PIXELS_PER_BYTE = 5000
BOMB_MIN_PIXELS = 4_000_000


@dataclass(frozen=True)
class XRay:
    """One radiograph as the rest of CXR Review sees it.

    Attributes
    ----------
    pixels : (H, W) float32 ndarray
        Values in [0, 1], original resolution, bone bright.
    source_format : str
        ``"png"``, ``"jpeg"``, ``"tiff"`` or ``"dicom"``.
    bit_depth : int
        Bits per sample of the source (8, 12, 16, ...).
    sha256 : str
        SHA-256 of the decoded float32 pixels: the image's identity, whatever file it came in.
    name : str or None
        File name given by the user, if any.
    metadata : dict
        Non-identifying facts only (modality, view, photometric interpretation, pixel spacing,
        size, manufacturer); never names, ids, dates, institutions or free text.
    warnings : tuple of str
        Odd-but-accepted things a reader should know (e.g. a CT modality).
    was_color : bool
        The source had colour channels that were converted to luminance.
    colorfulness : float
        Hasler-Suesstrunk colourfulness of the source's RGB (0 for grayscale); a colour photograph
        scores about 0.3, a radiograph 0. Used to refuse inputs that are not X-rays.
    """

    pixels: np.ndarray
    source_format: str
    bit_depth: int
    sha256: str
    name: str | None = None
    metadata: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    was_color: bool = False
    colorfulness: float = 0.0

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape  # type: ignore[return-value]


def pixel_sha256(pixels: np.ndarray) -> str:
    """SHA-256 of a float32 C-contiguous pixel array, with its shape mixed in."""
    arr = np.ascontiguousarray(pixels, dtype=np.float32)
    digest = hashlib.sha256(f"{arr.shape[0]}x{arr.shape[1]}:".encode())
    digest.update(memoryview(arr).cast("B"))  # the same bytes as arr.tobytes(), without copying the film
    return digest.hexdigest()


def sniff_format(data: bytes) -> str:
    """Return the format of ``data`` from its magic bytes, or raise :class:`UnsupportedFormatError`."""
    if not data:
        raise EmptyFileError("the file is empty (0 bytes); expected a " + ACCEPTED + " image")
    if is_dicom(data):  # first: a DICOM preamble may itself look like a TIFF header
        return "dicom"
    for magic, fmt in _MAGIC.items():
        if data.startswith(magic):
            return fmt
    head = data[:8]
    raise UnsupportedFormatError(f"not an image CXR Review can read (starts with {head!r}); expected {ACCEPTED}")


def _pil_strip(img, sl: slice) -> np.ndarray:
    """Rows ``sl`` of a loaded Pillow image as an array (a copy of those rows only)."""
    return np.asarray(img.crop((0, sl.start, img.width, sl.stop)))


def _pil_to_unit(img) -> tuple[np.ndarray, int, float]:
    """PIL image to (float32 [0, 1] luminance, bit depth, colourfulness). Alpha is composited on black.

    Converted strip by strip (:mod:`cxr_core.io.strips`): the peak is Pillow's image plus the float32 film.
    """
    mode = img.mode
    width, height = img.size
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # float32 division: bit-identical to float64 then float32
        return map_strips(height, width, lambda sl: _pil_strip(img, sl).astype(np.float32) / np.float32(65535.0)), \
            16, 0.0
    if mode == "L":  # the common grey film
        return map_strips(height, width, lambda sl: _pil_strip(img, sl).astype(np.float32) / np.float32(255.0)), 8, 0.0
    if mode == "1":
        return map_strips(height, width, lambda sl: _pil_strip(img, sl).astype(np.float64)), 1, 0.0
    if mode in ("I", "F"):
        def values(sl: slice) -> np.ndarray:
            arr = _pil_strip(img, sl).astype(np.float64)
            if mode == "F" and not np.isfinite(arr).all():  # else min/max are NaN and the image silently turns black
                raise CorruptImageError("decoded pixels contain NaN or infinity")
            return arr

        lo, hi = strips_range(height, width, values)
        if mode == "I" and hi <= 65535 and lo >= 0:
            return map_strips(height, width, lambda sl: values(sl) / 65535.0), 16, 0.0
        if hi <= lo:
            return np.zeros((height, width), np.float32), 32, 0.0
        return map_strips(height, width, lambda sl: (values(sl) - lo) / (hi - lo)), 32, 0.0
    if mode == "LA":
        def grey_alpha(sl: slice) -> np.ndarray:
            arr = _pil_strip(img, sl).astype(np.float64) / 255.0
            return arr[..., 0] * arr[..., 1]

        return map_strips(height, width, grey_alpha), 8, 0.0
    stats = ColourStats()

    def luminance(sl: slice) -> np.ndarray:  # palette, RGB, RGBA, CMYK...: as RGB(A), a strip at a time, float32
        part = img.crop((0, sl.start, width, sl.stop))
        raw = np.asarray(part if part.mode in ("RGB", "RGBA") else part.convert("RGBA"))
        rgb = raw[..., :3].astype(np.float32)
        rgb *= np.float32(1 / 255)
        if raw.shape[-1] == 4:  # alpha composited on black
            rgb *= raw[..., 3:4].astype(np.float32) * np.float32(1 / 255)
        stats.add(rgb)
        return rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)

    lum = map_strips(height, width, luminance)
    return lum, 8, stats.value()


def _png_is_16bit_colour(data: bytes) -> bool:
    """True for a PNG whose IHDR says 16 bits per sample in RGB or RGBA (Pillow reduces those to 8 bits)."""
    return data[12:16] == b"IHDR" and len(data) > 25 and data[24] == 16 and data[25] in (2, 6)


def _read_png16_colour(data: bytes) -> tuple[np.ndarray, int, float]:
    """Decode a 16-bit RGB(A) PNG at full precision with OpenCV; alpha composited on black."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3:
        raise CorruptImageError("PNG data is truncated or damaged (16-bit colour image could not be decoded)")
    stats = ColourStats()

    def luminance(sl: slice) -> np.ndarray:
        x = arr[sl].astype(np.float64) / 65535.0
        rgb = x[..., 2::-1][..., :3] if x.shape[-1] == 3 else x[..., [2, 1, 0]] * x[..., 3:4]
        stats.add(rgb)
        return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114

    lum = map_strips(arr.shape[0], arr.shape[1], luminance)
    return lum, 16, stats.value()


def _read_raster(data: bytes, fmt: str, max_pixels: int, max_bytes: int) -> tuple[np.ndarray, int, float]:
    """Decode PNG/JPEG/TIFF after checking the header's size against the pixel and memory limits."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
                )
            bands = len(img.getbands())
            if width * height > BOMB_MIN_PIXELS and width * height > BOMB_PIXELS_PER_BYTE * len(data):
                raise ImageTooLargeError(
                    f"image declares {width}x{height} pixels in only {len(data):,} bytes: a decompression bomb, "
                    "not a radiograph"
                )
            if fmt == "png" and _png_is_16bit_colour(data):  # OpenCV's 16-bit samples, then the float32 film
                working = width * height * (2 * (4 if data[25] == 6 else 3) + 4)
            else:
                working = width * height * (PILLOW_BYTES.get(img.mode, 4) + 4)
            if working > max_bytes:
                raise ImageTooLargeError(
                    f"image is {width}x{height} pixels with {bands} channels: decoding would take "
                    f"{working / 2**20:,.0f} MB, over the limit of {max_bytes / 2**20:,.0f} MB; "
                    "save it as a grayscale image or at a smaller size"
                )
            if fmt == "png" and _png_is_16bit_colour(data):
                return _read_png16_colour(data)
            img.load()
            return _pil_to_unit(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:  # Pillow's message names a BytesIO object, not the problem
        raise CorruptImageError(f"{fmt.upper()} data could not be decoded: the header is damaged or "
                                "not what its first bytes claim") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"{fmt.upper()} data is truncated or damaged: {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLargeError(f"{fmt.upper()} image is too large to decode in the memory available") from exc
    except Exception as exc:  # the last net: a damaged file that makes a decoder fail in another way
        raise CorruptImageError(f"{fmt.upper()} data is damaged ({type(exc).__name__}: {exc})") from exc


def load_xray(source: str | Path | bytes, name: str | None = None) -> XRay:
    """Read a file path or raw bytes into an :class:`XRay`.

    Parameters
    ----------
    source : path or bytes
        The file, or its content (an upload).
    name : str, optional
        A display name; defaults to the file name of a path.

    Raises
    ------
    EmptyFileError, UnsupportedFormatError, CorruptImageError, ImageTooLargeError,
    ImageTooSmallError, MultiFrameError
        Each with a one-line message saying what was got and what is accepted.
    """
    settings = get_settings()
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CorruptImageError(f"cannot read {path}: {exc.strerror or exc}") from exc
        name = name or path.name
    else:
        data = bytes(source)
    fmt = sniff_format(data)
    notes: tuple[str, ...] = ()
    metadata: dict = {}
    if fmt == "dicom":
        dcm = read_dicom(data, max_pixels=settings.max_pixels, max_bytes=settings.max_decode_bytes)
        pixels, bits, colour, metadata, notes = dcm.pixels, dcm.bit_depth, dcm.colorfulness, dcm.metadata, dcm.warnings
    else:
        pixels, bits, colour = _read_raster(data, fmt, settings.max_pixels, settings.max_decode_bytes)
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise CorruptImageError(f"decoded image has shape {pixels.shape}; expected a 2-D grayscale radiograph")
    height, width = pixels.shape
    if min(height, width) < settings.min_side:
        raise ImageTooSmallError(
            f"image is {width}x{height} pixels; a chest X-ray must be at least {settings.min_side} pixels on each side"
        )
    if not np.isfinite(pixels.sum(dtype=np.float64)):  # any NaN or infinity makes the sum so, with no film-size mask
        raise CorruptImageError("decoded pixels contain NaN or infinity")
    metadata = {**metadata, "height": height, "width": width}
    return XRay(pixels, fmt, bits, pixel_sha256(pixels), name, metadata, notes, colour > 0.0, colour)
