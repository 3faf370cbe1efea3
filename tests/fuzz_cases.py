"""Hostile and damaged files for the decoder fuzz suite (``tests/test_fuzz.py``, ``bench/bench_fuzz.py``).

Seeds are small valid files of every kind the loader reads: PNG (8/16-bit grey, RGB, RGBA,
palette), JPEG, TIFF, and DICOM in each transfer syntax pydicom's bundled test files and our
factory provide (little/big endian, implicit/explicit VR, RLE, JPEG baseline/lossless, JPEG-LS,
JPEG 2000), cut from a real chest film where we make them. Each case is one mutation of a seed:

- ``flip``: 1-16 random bit flips;   ``overwrite``: a run of random bytes;
- ``truncate``: cut at a random length;   ``splice``: bytes inserted or deleted mid-file;
- ``header``: a DICOM header field set to a damaged value (window width 0 or negative, text in
  numeric fields, unknown VOI LUT function, empty Modality LUT, bad VOI LUT descriptors, NaN or 0
  rescale slope, huge Rows/Columns, odd frame counts, unknown transfer syntax);
- ``huge``: a PNG/JPEG/TIFF header declaring an enormous image over a tiny body.

Everything is generated from a seed, so a failing case is reproduced by its (family, index).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FAMILIES = ("flip", "overwrite", "truncate", "splice", "header", "huge")

#: pydicom's bundled single-frame test files, one per transfer syntax / photometric family.
PYDICOM_SEEDS = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb.dcm", "SC_rgb_rle.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm", "SC_ybr_full_uncompressed.dcm",
    "SC_rgb_16bit.dcm", "SC_rgb_expb_16bit.dcm",
)


@dataclass(frozen=True)
class Case:
    """One fuzz input: where it came from and its bytes."""

    family: str
    seed: str
    index: int
    data: bytes

    @property
    def label(self) -> str:
        return f"{self.family}#{self.index} of {self.seed}"


def _film(side: int = 96) -> np.ndarray:
    """A real chest film (bundled fixture) reduced to ``side`` pixels, as uint8."""
    from PIL import Image

    with Image.open(HERE / "fixtures" / "cxr" / "covid_hannover_b343e657.png") as img:
        return np.asarray(img.convert("L").resize((side, side - 16)))


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def raster_seeds() -> dict[str, bytes]:
    """Small PNG/JPEG/TIFF seeds of a real film in the modes uploads come in."""
    import cv2

    film = _film()
    rgb = np.stack([film, film, np.roll(film, 3, axis=1)], axis=-1)
    seeds = {
        "png-L": _encode(film, "PNG"),
        "png-RGB": _encode(rgb, "PNG"),
        "png-RGBA": _encode(rgb, "PNG", "RGBA"),
        "png-P": _encode(rgb, "PNG", "P"),
        "png-I16": _encode((film.astype(np.uint16) * 257), "PNG"),
        "jpeg": _encode(film, "JPEG"),
        "tiff": _encode(film, "TIFF"),
    }
    ok, png16 = cv2.imencode(".png", (rgb.astype(np.uint16) * 257)[..., ::-1])
    seeds["png-RGB16"] = png16.tobytes()
    return seeds


def dicom_seeds() -> dict[str, bytes]:
    """Small DICOM seeds: our factory (uncompressed 8/16-bit, MONOCHROME1, window, rescale, RLE, J2K) and pydicom's."""
    from dicom_factory import make_dicom, pydicom_file

    film = _film(80)
    seeds = {
        "dcm-16": make_dicom(film.astype(np.uint16) * 257),
        "dcm-8": make_dicom(film),
        "dcm-mono1": make_dicom(255 - film, photometric="MONOCHROME1"),
        "dcm-window": make_dicom(film.astype(np.uint16) * 16, bits_stored=12, window=(2048, 4096)),
        "dcm-rescale": make_dicom(film.astype(np.uint16), rescale=(2.0, -100.0)),
        "dcm-rle": make_dicom(film, compress="rle"),
        "dcm-j2k": make_dicom(film, compress="j2k"),
    }
    for name in PYDICOM_SEEDS:
        data = pydicom_file(name)
        if data is not None:
            seeds[name] = data
    return seeds


def seeds() -> dict[str, bytes]:
    return {**raster_seeds(), **dicom_seeds()}


# --- mutations --------------------------------------------------------------------------------------------------


def flip(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for pos in rng.integers(0, len(out), size=int(rng.integers(1, 17))):
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def overwrite(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    start = int(rng.integers(0, len(out)))
    run = rng.integers(0, 256, size=int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
    out[start:start + len(run)] = run
    return bytes(out[: len(data)])


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def splice(data: bytes, rng: np.random.Generator) -> bytes:
    pos = int(rng.integers(0, len(data)))
    if rng.random() < 0.5:
        return data[:pos] + rng.integers(0, 256, size=int(rng.integers(1, 33)), dtype=np.uint8).tobytes() + data[pos:]
    return data[:pos] + data[pos + int(rng.integers(1, 33)):]


def _dicom_edit(data: bytes, edit: Callable) -> bytes:
    """Re-encode a DICOM after ``edit(ds)``; values written as raw bytes so damaged ones survive the writer."""
    import pydicom

    if getattr(edit, "on_bytes", False):
        return edit(data)
    ds = pydicom.dcmread(io.BytesIO(data))
    edit(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _raw(keyword: str, vr: str, value: bytes) -> Callable:
    def edit(ds) -> None:
        from pydicom.datadict import tag_for_keyword
        from pydicom.dataelem import RawDataElement
        from pydicom.tag import Tag

        tag = Tag(tag_for_keyword(keyword))
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return edit


def _set(**values) -> Callable:
    def edit(ds) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)
    return edit


def _lut(sequence: str, descriptor: list[int], table: bytes, **extra) -> Callable:
    def edit(ds) -> None:
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        item = Dataset()
        item.LUTDescriptor = descriptor
        item.LUTData = table
        for keyword, value in extra.items():
            setattr(item, keyword, value)
        setattr(ds, sequence, Sequence([item]))
    return edit


def _syntax(uid: str) -> Callable:
    """Rewrite the file meta's transfer syntax in the bytes (the pixel data stays as it was encoded)."""
    def edit(data: bytes) -> bytes:
        import pydicom

        old = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)
        pad = lambda u: u.encode() + (b"\0" if len(u) % 2 else b"")  # noqa: E731
        before = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(pad(old))) + pad(old)
        after = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(pad(uid))) + pad(uid)
        return data.replace(before, after, 1)
    edit.on_bytes = True  # type: ignore[attr-defined]
    return edit


def _odd_length_ul(data: bytes) -> bytes:
    """Rows (0028,0010) re-declared as a UL of 3 bytes: an odd length no UL can have."""
    at = data.find(b"\x28\x00\x10\x00US\x02\x00")
    if at < 0:
        return data
    value = data[at + 8:at + 10]
    return data[:at] + b"\x28\x00\x10\x00UL\x03\x00" + value + b"\x00" + data[at + 10:]


_odd_length_ul.on_bytes = True  # type: ignore[attr-defined]


#: Damaged DICOM header fields, each one of the defects reported in issue 15 (and a few more).
HEADER_EDITS: tuple[tuple[str, Callable], ...] = (
    ("window width 0", _set(WindowCenter=100.0, WindowWidth=0.0)),
    ("window width negative", _set(WindowCenter=100.0, WindowWidth=-5.0)),
    ("window centre text", _raw("WindowCenter", "DS", b"abc ")),
    ("window width text", _raw("WindowWidth", "DS", b"wide")),
    ("sigmoid width 0", _set(WindowCenter=100.0, WindowWidth=0.0, VOILUTFunction="SIGMOID")),
    ("linear exact width 0", _set(WindowCenter=100.0, WindowWidth=0.0, VOILUTFunction="LINEAR_EXACT")),
    ("unknown VOI function", _set(WindowCenter=100.0, WindowWidth=50.0, VOILUTFunction="BANANA")),
    ("frames text", _raw("NumberOfFrames", "IS", b"ab")),
    ("frames negative", _raw("NumberOfFrames", "IS", b"-3")),
    ("rescale slope text", _raw("RescaleSlope", "DS", b"xyz ")),
    ("rescale slope NaN", _raw("RescaleSlope", "DS", b"NaN ")),
    ("rescale slope 0", _set(RescaleSlope=0.0, RescaleIntercept=0.0)),
    ("rescale intercept inf", _raw("RescaleIntercept", "DS", b"inf ")),
    ("empty modality LUT", _lut("ModalityLUTSequence", [0, 0, 16], b"", ModalityLUTType="HU")),
    ("short VOI LUT", _lut("VOILUTSequence", [3, 0, 16], b"\x01\x00\x02\x00")),
    ("40-bit VOI LUT", _lut("VOILUTSequence", [4, 0, 40], b"\x01\x00\x02\x00\x03\x00\x04\x00")),
    ("rows huge", _raw("Rows", "US", b"\xff\xff")),
    ("rows and columns huge", lambda ds: (_raw("Rows", "US", b"\xff\xff")(ds), _raw("Columns", "US", b"\xff\xff")(ds))),
    ("rows 0", _raw("Rows", "US", b"\x00\x00")),
    ("bits allocated 7", _raw("BitsAllocated", "US", b"\x07\x00")),
    ("bits stored 0", _raw("BitsStored", "US", b"\x00\x00")),
    ("samples 2", _raw("SamplesPerPixel", "US", b"\x02\x00")),
    ("odd-length UL", _odd_length_ul),
    ("unknown VR", _raw("ImageComments", "ZZ", b"hello")),
    ("photometric unknown", _set(PhotometricInterpretation="PURPLE")),
    ("pixel representation 7", _raw("PixelRepresentation", "US", b"\x07\x00")),
    ("deflate syntax", _syntax("1.2.840.10008.1.2.1.99")),
    ("unknown syntax", _syntax("1.2.3.4.5.6")),
    ("JPEG syntax over raw pixels", _syntax("1.2.840.10008.1.2.4.50")),
    ("big endian syntax over little", _syntax("1.2.840.10008.1.2.2")),
)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def huge_png(width: int, height: int, colour_type: int = 6, depth: int = 8) -> bytes:
    """A valid-looking PNG declaring ``width`` x ``height`` over a few bytes of (deflated zero) data."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def huge_jpeg(seed_jpeg: bytes, width: int, height: int) -> bytes:
    """The seed JPEG with its SOF frame header rewritten to declare ``width`` x ``height``."""
    out = bytearray(seed_jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = out.find(marker)
        if at > 0:
            out[at + 5:at + 9] = struct.pack(">HH", height, width)
            return bytes(out)
    return bytes(out)


def huge_tiff(width: int, height: int) -> bytes:
    """A little-endian TIFF whose tags declare ``width`` x ``height`` 8-bit grey over an 8-byte strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 8)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 16) + b"\0" * 8 + ifd


def huge(seeds_: dict[str, bytes], rng: np.random.Generator) -> tuple[str, bytes]:
    side = int(rng.choice([7000, 20_000, 30_000, 65_535]))
    other = int(rng.choice([64, 7000, 30_000, 65_535]))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return "png-header", huge_png(side, other, int(rng.choice([0, 2, 4, 6])), int(rng.choice([8, 16])))
    if kind == 1:
        return "jpeg-header", huge_jpeg(seeds_["jpeg"], side, other)
    return "tiff-header", huge_tiff(side, other)


MUTATORS = {"flip": flip, "overwrite": overwrite, "truncate": truncate, "splice": splice}


def cases(n: int, *, seed: int = 0, families: tuple[str, ...] = FAMILIES) -> Iterator[Case]:
    """``n`` cases cycling over ``families`` and seeds, reproducible from ``seed``."""
    all_seeds = seeds()
    dicoms = {k: v for k, v in all_seeds.items() if k.startswith("dcm") or k.endswith(".dcm")}
    names = sorted(all_seeds)
    rng = np.random.default_rng(seed)
    for i in range(n):
        family = families[i % len(families)]
        if family == "huge":
            name, data = huge(all_seeds, rng)
        elif family == "header":
            name = sorted(dicoms)[int(rng.integers(0, len(dicoms)))]
            what, edit = HEADER_EDITS[(i // len(families)) % len(HEADER_EDITS)]
            try:
                data = _dicom_edit(dicoms[name], edit)
            except Exception:  # the writer refused this edit on this seed: damage the bytes instead
                data = flip(dicoms[name], rng)
            name = f"{name} ({what})"
        else:
            name = names[int(rng.integers(0, len(names)))]
            data = MUTATORS[family](all_seeds[name], rng)
        yield Case(family, name, i, data)
