"""Decode and validate an uploaded X-ray into an :class:`XRay` record.

PNG (8/16-bit, grayscale, RGB, RGBA, palette), JPEG, TIFF and DICOM all end up as one float32
array in [0, 1] at the original resolution, bone bright, with only non-identifying metadata.
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
from cxr_core.safety.ood import colorfulness
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
#: Pillow modes decoded straight to float32 (5 bytes a pixel at the peak); others go through float64 RGB(A).
GREY_MODES = frozenset({"L", "I;16", "I;16B", "I;16L", "I;16N"})
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


def _pil_to_unit(img) -> tuple[np.ndarray, int, float]:
    """PIL image to (float [0, 1] luminance, bit depth, colourfulness). Alpha is composited on black."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # float32 division: bit-identical to float64 then float32
        arr = np.asarray(img).astype(np.float32)
        arr /= np.float32(65535.0)
        return arr, 16, 0.0
    if mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        if arr.max() <= 65535 and arr.min() >= 0:
            return arr / 65535.0, 16, 0.0
        lo, hi = arr.min(), arr.max()
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr), 32, 0.0
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():  # else min/max are NaN and the image silently turns black
            raise CorruptImageError("decoded pixels contain NaN or infinity")
        lo, hi = arr.min(), arr.max()
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr), 32, 0.0
    if mode == "1":
        return np.asarray(img, dtype=np.float64), 1, 0.0
    if mode == "L":  # the common grey film: 5 bytes a pixel at the peak (uint8 source + float32 result)
        arr = np.asarray(img).astype(np.float32)
        arr /= np.float32(255.0)
        return arr, 8, 0.0
    if mode == "LA":
        arr = np.asarray(img, dtype=np.float64) / 255.0
        return arr[..., 0] * arr[..., 1], 8, 0.0
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:4]
    lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return lum, 8, colorfulness(rgb)


def _png_is_16bit_colour(data: bytes) -> bool:
    """True for a PNG whose IHDR says 16 bits per sample in RGB or RGBA (Pillow reduces those to 8 bits)."""
    return data[12:16] == b"IHDR" and len(data) > 25 and data[24] == 16 and data[25] in (2, 6)


def _read_png16_colour(data: bytes) -> tuple[np.ndarray, int, float]:
    """Decode a 16-bit RGB(A) PNG at full precision with OpenCV; alpha composited on black."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3:
        raise CorruptImageError("PNG data is truncated or damaged (16-bit colour image could not be decoded)")
    x = arr.astype(np.float64) / 65535.0
    rgb = x[..., 2::-1][..., :3] if x.shape[-1] == 3 else x[..., [2, 1, 0]] * x[..., 3:4]
    lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return lum, 16, colorfulness(rgb)


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
            working = width * height * (5 if img.mode in GREY_MODES else 8 * bands)  # peak bytes while converting
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
    if not np.isfinite(pixels).all():
        raise CorruptImageError("decoded pixels contain NaN or infinity")
    metadata = {**metadata, "height": height, "width": width}
    return XRay(pixels, fmt, bits, pixel_sha256(pixels), name, metadata, notes, colour > 0.0, colour)
