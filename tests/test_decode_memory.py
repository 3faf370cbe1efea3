"""Decoding stays within issue 15's memory bound: peak extra memory <= about 10x the film's 8-bit size.

Measured with ``tracemalloc`` (Python and NumPy allocations, which is where the whole-film float64 copies
of colour conversion and the DICOM LUTs used to be: 78x to 88x). A memory bound, not a timing: it holds on
any machine. ``bench/bench_decode_memory.py`` measures the resident high-water mark as well.
"""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from cxr_core.errors import ImageTooLargeError
from cxr_core.io.imaging import load_xray
from dicom_factory import make_dicom

from conftest import smooth_image

SIDE = 1500
BOUND = 10.0


def _png(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _colour(side: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(side + channels)
    ramp = np.linspace(20, 230, side, dtype=np.float32)
    arr = np.empty((side, side, channels), np.uint8)
    arr[..., 0] = ramp[None, :]
    arr[..., 1] = ramp[:, None]
    arr[..., 2] = rng.integers(0, 256, (side, side), dtype=np.uint8)
    if channels == 4:
        arr[..., 3] = 200
    return arr


def _rgb_dicom(side: int) -> bytes:
    from pydicom.uid import SecondaryCaptureImageStorage

    data = make_dicom(np.zeros((8, 8), np.uint8))  # the factory's identifying header, then RGB pixels
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(_colour(side, 3), photometric_interpretation="RGB", bits_stored=8)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _peak_ratio(data: bytes, warm: bytes) -> tuple[float, object]:
    """Peak traced bytes of ``load_xray(data)`` over the film's rows x columns (after a warm-up decode)."""
    load_xray(warm)  # imports and decoder set-up are not the film's cost
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        xray = load_xray(data)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak / (xray.shape[0] * xray.shape[1]), xray


@pytest.mark.parametrize("channels", [3, 4])
def test_colour_png_decodes_within_ten_times_its_8bit_size(channels):
    ratio, xray = _peak_ratio(_png(_colour(SIDE, channels)), _png(_colour(64, channels)))
    assert xray.shape == (SIDE, SIDE) and xray.was_color
    assert ratio <= BOUND, f"decoding a {SIDE}x{SIDE} colour PNG took {ratio:.1f}x its 8-bit size"


def test_rgb_dicom_decodes_within_ten_times_its_8bit_size():
    ratio, xray = _peak_ratio(_rgb_dicom(SIDE), _rgb_dicom(64))
    assert xray.shape == (SIDE, SIDE) and xray.was_color and xray.colorfulness > 0.1
    assert ratio <= BOUND, f"decoding a {SIDE}x{SIDE} RGB DICOM took {ratio:.1f}x its 8-bit size"


@pytest.mark.parametrize("kind", ["plain", "window", "rescale", "rle"])
def test_16bit_dicom_decodes_within_ten_times_its_8bit_size(kind):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 4096, (SIDE, SIDE), dtype=np.uint16)
    smooth = (smooth_image(600, 600) * 4095).astype(np.uint16)  # RLE compresses a film, not noise
    arr = smooth if kind == "rle" else noise
    options = {"plain": {}, "window": {"window": (2048, 1000)}, "rescale": {"rescale": (2.0, -1024.0)},
               "rle": {"compress": "rle"}}[kind]
    small = make_dicom(arr[:64, :64], bits_stored=12, **options)
    data = make_dicom(arr, bits_stored=12, **options)  # 600x600 for RLE: pydicom's encoder is slow
    ratio, xray = _peak_ratio(data, small)
    assert 0.0 <= xray.pixels.min() < xray.pixels.max() <= 1.0
    assert ratio <= BOUND, f"decoding a {kind} 16-bit DICOM took {ratio:.1f}x its 8-bit size"


def test_colour_png_decoded_in_strips_matches_whole_film_arithmetic():
    """The strip-wise conversion gives the luminance and colourfulness of the whole-film formulas."""
    from cxr_core.safety.ood import colorfulness

    arr = _colour(300, 4)
    xray = load_xray(_png(arr))
    rgb = arr[..., :3] / 255.0 * (arr[..., 3:4] / 255.0)
    expected = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)
    assert xray.colorfulness == pytest.approx(colorfulness(rgb), rel=1e-4)


def test_dicom_over_the_memory_budget_is_refused_from_its_header():
    """A 7000x7000 RGB RLE DICOM of a few bytes: refused before decoding, naming the size and the limit."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((8, 8), np.uint8))))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows = ds.Columns = 7000
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match=r"7000x7000 pixels of 3 samples .* decoding would take "
                                                     r"[\d,]+ MB, over the limit of [\d,]+ MB"):
            load_xray(buffer.getvalue())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # refused from the header: nothing film-sized was allocated
