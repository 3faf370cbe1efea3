"""load_xray for PNG, JPEG and TIFF; format sniffing; pixel identity; every bad-input error."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from cxr_core.errors import (
    CorruptImageError,
    EmptyFileError,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedFormatError,
)
from cxr_core.io.imaging import XRay, load_xray, pixel_sha256, sniff_format
from dicom_factory import make_dicom

from conftest import FIXTURES, smooth_image


def encode(image, fmt: str = "PNG", **options) -> bytes:
    """Bytes of a PIL image (or an array turned into one) saved as ``fmt``."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def first_row(values, shape=(64, 64), dtype=np.uint8) -> np.ndarray:
    """A zero image of ``shape`` (64 px: the smallest accepted) whose first pixels are ``values``."""
    arr = np.zeros(shape, dtype)
    arr[0, : len(values)] = values
    return arr


def png_with_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` 8-bit gray pixels, with the given IDAT payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if Pillow starts decoding pixel data."""

    def refuse(self):
        raise AssertionError("pixel data was decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- PNG, JPEG, TIFF decode to exact values -------------------------------------------------------


def test_png_8bit_gray_is_divided_by_255():
    xray = load_xray(encode(first_row([0, 1, 128, 255])))
    assert isinstance(xray, XRay)
    assert (xray.source_format, xray.bit_depth, xray.was_color, xray.pixels.dtype) == ("png", 8, False, np.float32)
    np.testing.assert_array_equal(xray.pixels[0, :4], np.float32([0, 1, 128, 255]) / np.float32(255))
    assert xray.shape == (64, 64) and xray.pixels[1:].max() == 0


def test_png_16bit_gray_keeps_full_precision():
    xray = load_xray(encode(first_row([0, 1, 32768, 65535], dtype=np.uint16)))
    assert xray.bit_depth == 16
    np.testing.assert_allclose(xray.pixels[0, :4], [0, 1 / 65535, 32768 / 65535, 1], rtol=1e-6, atol=0)
    assert xray.pixels[0, 1] > 0  # a 1-in-65535 step survives (an 8-bit path would round it to 0)


def test_png_rgb_becomes_luminance():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[0, :4] = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (100, 100, 100)]
    xray = load_xray(encode(rgb))
    np.testing.assert_allclose(xray.pixels[0, :4], [0.299, 0.587, 0.114, 100 / 255], atol=1e-6)
    assert xray.was_color and xray.bit_depth == 8


def test_png_rgb_of_gray_content_equals_grayscale_png():
    gray = (smooth_image(64, 80) * 255).astype(np.uint8)
    as_rgb = load_xray(encode(np.repeat(gray[..., None], 3, axis=-1)))
    as_gray = load_xray(encode(gray))
    assert not as_rgb.was_color
    np.testing.assert_allclose(as_rgb.pixels, as_gray.pixels, atol=1e-6)


def test_png_rgba_alpha_is_composited_on_black():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, :4] = [(255, 255, 255, 128), (255, 255, 255, 0), (200, 200, 200, 255), (255, 0, 0, 51)]
    xray = load_xray(encode(rgba))
    np.testing.assert_allclose(xray.pixels[0, :4], [128 / 255, 0.0, 200 / 255, 0.299 * 51 / 255], atol=1e-6)


def test_png_gray_with_alpha_is_composited_on_black():
    la = np.zeros((64, 64, 2), np.uint8)
    la[..., 1] = 255
    la[0, :2] = [(200, 128), (200, 255)]
    xray = load_xray(encode(Image.fromarray(la, "LA")))
    np.testing.assert_allclose(xray.pixels[0, :2], [200 / 255 * 128 / 255, 200 / 255], atol=1e-6)


def test_png_palette_maps_through_palette_and_transparency():
    image = Image.fromarray(first_row([0, 1, 2, 3]), "P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255, 51, 51, 51] + [0] * (252 * 3))
    opaque = load_xray(encode(image))
    np.testing.assert_allclose(opaque.pixels[0, :4], [0.0, 0.299, 0.114, 0.2], atol=1e-6)
    transparent = load_xray(encode(image, transparency=3))  # index 3 transparent -> black
    np.testing.assert_allclose(transparent.pixels[0, :4], [0.0, 0.299, 0.114, 0.0], atol=1e-6)


def test_jpeg_gray_and_colour_decode_close_to_source():
    gray = load_xray(encode(np.full((64, 64), 128, np.uint8), "JPEG", quality=95))
    assert (gray.source_format, gray.bit_depth, gray.was_color) == ("jpeg", 8, False)
    np.testing.assert_allclose(gray.pixels, 128 / 255, atol=2 / 255)
    colour = load_xray(encode(np.full((64, 64, 3), (200, 40, 40), np.uint8), "JPEG", quality=95))
    assert colour.was_color
    np.testing.assert_allclose(colour.pixels, (0.299 * 200 + 0.587 * 40 + 0.114 * 40) / 255, atol=3 / 255)


@pytest.mark.parametrize(
    ("dtype", "values", "scale", "options"),
    [
        (np.uint8, [0, 1, 128, 255], 255, {}),
        (np.uint8, [0, 1, 128, 255], 255, {"compression": "tiff_lzw"}),
        (np.uint16, [0, 1, 32768, 65535], 65535, {}),
    ],
)
def test_tiff_decodes_exactly(dtype, values, scale, options):
    xray = load_xray(encode(first_row(values, dtype=dtype), "TIFF", **options))
    assert xray.source_format == "tiff" and xray.bit_depth == (8 if scale == 255 else 16)
    np.testing.assert_allclose(xray.pixels[0, :4], np.array(values) / scale, rtol=1e-6)


def test_real_fixture_from_path_names_itself_and_records_size():
    path = FIXTURES / "cxr" / "covid_hannover_b343e657.png"
    xray = load_xray(path)
    assert xray.name == path.name
    assert xray.shape == (419, 512)
    assert (xray.metadata["height"], xray.metadata["width"]) == (419, 512)
    assert 0.0 <= xray.pixels.min() < 0.2 and 0.8 < xray.pixels.max() <= 1.0
    assert load_xray(path.read_bytes(), name="upload.png").name == "upload.png"
    assert load_xray(path.read_bytes()).name is None


# --- identity ------------------------------------------------------------------------------------


def test_same_pixels_in_png_tiff_and_dicom_have_one_sha():
    arr = (smooth_image(70, 90) * 255).astype(np.uint8)
    shas = {load_xray(data).sha256 for data in (encode(arr), encode(arr, "TIFF"), make_dicom(arr, bits_stored=8))}
    assert len(shas) == 1
    assert shas == {pixel_sha256(arr / np.float32(255))}


def test_different_pixels_or_shape_give_different_sha():
    arr = (smooth_image(70, 90) * 255).astype(np.uint8)
    changed = arr.copy()
    changed[35, 45] ^= 1
    assert load_xray(encode(arr)).sha256 != load_xray(encode(changed)).sha256
    flat = np.zeros(64 * 128, np.float32)
    assert pixel_sha256(flat.reshape(64, 128)) != pixel_sha256(flat.reshape(128, 64))


# --- format sniffing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(8), "png"),
        (b"\xff\xd8\xff\xe0" + bytes(8), "jpeg"),
        (b"II*\x00" + bytes(8), "tiff"),
        (b"MM\x00*" + bytes(8), "tiff"),
        (b"II*\x00" + bytes(124) + b"DICM" + bytes(8), "dicom"),  # a preamble that looks like TIFF is DICOM
    ],
)
def test_sniff_format_reads_magic_bytes(head, expected):
    assert sniff_format(head) == expected


# --- bad input -----------------------------------------------------------------------------------


def test_empty_file_is_refused(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFileError, match=r"empty \(0 bytes\); expected a PNG, JPEG, TIFF or DICOM"):
        load_xray(empty)


def test_text_file_is_not_an_image():
    expected = r"not an image .*starts with b'patient:'.*PNG, JPEG, TIFF or DICOM"
    with pytest.raises(UnsupportedFormatError, match=expected):
        load_xray(b"patient: nobody\nfinding: none\n" * 20)


def test_zip_file_is_not_an_image():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("scan.png", encode(first_row([1])))
    with pytest.raises(UnsupportedFormatError, match=r"not an image .*b'PK\\x03\\x04"):
        load_xray(buffer.getvalue())


def test_missing_path_is_reported():
    with pytest.raises(CorruptImageError, match=r"cannot read .*nowhere\.png"):
        load_xray("/nonexistent/nowhere.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_corrupt(fmt):
    noise = np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)
    data = encode(noise, fmt)
    with pytest.raises(CorruptImageError, match=rf"^{fmt} data is truncated or damaged: image file is truncated"):
        load_xray(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_header_only_file_is_corrupt(fmt):
    data = encode(first_row([1]), fmt)
    with pytest.raises(CorruptImageError, match=rf"^{fmt} data (could not be decoded|is truncated or damaged)"):
        load_xray(data[:20])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_tiff_with_nan_or_infinity_is_refused(bad):
    floats = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    floats[3, 3] = bad
    with pytest.raises(CorruptImageError, match="decoded pixels contain NaN or infinity"):
        load_xray(encode(Image.fromarray(floats, "F"), "TIFF"))


def test_float_tiff_is_min_max_scaled():
    floats = np.full((64, 64), -3.0, np.float32)
    floats[0, :3] = [-1.0, 1.0, 5.0]
    xray = load_xray(encode(Image.fromarray(floats, "F"), "TIFF"))
    assert xray.bit_depth == 32
    np.testing.assert_allclose(xray.pixels[0, :4], [0.25, 0.5, 1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize(("height", "width"), [(63, 200), (200, 63), (10, 10)])
def test_image_under_64_pixels_a_side_is_too_small(height, width):
    expected = rf"image is {width}x{height} pixels; .*at least 64 pixels on each side"
    with pytest.raises(ImageTooSmallError, match=expected):
        load_xray(encode(np.zeros((height, width), np.uint8)))


def test_image_of_exactly_64_pixels_is_accepted():
    assert load_xray(encode(np.zeros((64, 64), np.uint8))).shape == (64, 64)


def test_over_50_megapixels_refused_from_the_header(no_decoding):
    with pytest.raises(ImageTooLargeError, match=r"30000x1700 = 51,000,000 pixels; the limit is 50,000,000"):
        load_xray(png_with_header(30_000, 1_700))


def test_small_file_of_64_megapixels_refused_before_decoding(no_decoding):
    data = png_with_header(8_000, 8_000, idat=zlib.compress(bytes(8_001 * 8_000), 9))  # valid, all black
    assert len(data) < 100_000
    with pytest.raises(ImageTooLargeError, match=r"8000x8000 = 64,000,000 pixels"):
        load_xray(data)


def test_jpeg_claiming_a_huge_frame_refused_before_decoding(no_decoding):
    data = bytearray(encode(first_row([1]), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 1_700, 30_000)  # height, width
    with pytest.raises(ImageTooLargeError, match=r"30000x1700 = 51,000,000 pixels"):
        load_xray(bytes(data))


def test_decompression_bomb_is_refused(no_decoding):
    with pytest.raises(ImageTooLargeError, match=r"decompression bomb: .*200000000 pixels"):
        load_xray(png_with_header(20_000, 10_000))


def test_png_16bit_rgb_keeps_full_precision_luminance():
    """Pillow reduces 16-bit colour PNGs to 8 bits; they must load at 16-bit precision."""
    import cv2

    rgb = np.zeros((80, 90, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 40000, 1001, 65535  # R, G, B (cv2 writes BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    xray = load_xray(buf.tobytes())
    expected = (40000 * 0.299 + 1001 * 0.587 + 65535 * 0.114) / 65535
    assert xray.bit_depth == 16 and xray.was_color
    assert xray.pixels[0, 0] == pytest.approx(expected, abs=1e-6)  # 8-bit decoding would be ~1e-3 off


def test_png_16bit_rgba_alpha_composited_on_black():
    import cv2

    rgba = np.zeros((70, 70, 4), np.uint16)
    rgba[..., :3], rgba[..., 3] = 65535, 16384
    ok, buf = cv2.imencode(".png", rgba)
    assert ok
    assert load_xray(buf.tobytes()).pixels[5, 5] == pytest.approx(16384 / 65535, abs=1e-6)


def test_colorfulness_is_zero_for_gray_and_high_for_a_colour_picture():
    gray = np.full((80, 80, 3), 120, np.uint8)
    colour = np.zeros((80, 80, 3), np.uint8)
    colour[:, :40] = (220, 30, 30)
    colour[:, 40:] = (30, 200, 40)
    as_png = []
    for arr in (gray, colour):
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, format="PNG")
        as_png.append(load_xray(buf.getvalue()))
    assert as_png[0].colorfulness == 0.0 and not as_png[0].was_color
    assert as_png[1].colorfulness > 0.3 and as_png[1].was_color
