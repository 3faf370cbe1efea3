"""DICOM through load_xray: bit depths, MONOCHROME1, LUTs, compression, de-identification, refusals."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr_core.io.dicom import is_dicom
from cxr_core.errors import CorruptImageError, ImageTooLargeError, ImageTooSmallError, MultiFrameError
from cxr_core.io.imaging import load_xray
from dicom_factory import IDENTIFYING, gradient, make_dicom, pydicom_file

NO_PYDICOM_DATA = "pydicom-data is not installed (dev requirement): the external test files are unavailable"


def external(name: str) -> bytes:
    """A file from the pydicom-data package, or skip the test with a clear reason."""
    data = pydicom_file(name)
    if data is None:
        pytest.skip(f"{NO_PYDICOM_DATA} ({name})")
    return data


def png16(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- bit depths, photometric interpretation ------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_stored_values_scale_by_bit_depth_and_monochrome1_inverts(bits, photometric):
    stored = gradient(bits=bits)
    xray = load_xray(make_dicom(stored, photometric=photometric, bits_stored=bits))
    expected = stored / (2**bits - 1)
    if photometric == "MONOCHROME1":
        expected = 1 - expected
    assert (xray.source_format, xray.bit_depth, xray.shape) == ("dicom", bits, stored.shape)
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6)


def test_monochrome1_dicom_and_png_of_inverted_pixels_load_identically():
    stored = gradient(bits=16, seed=3)
    dicom = load_xray(make_dicom(stored, photometric="MONOCHROME1"))
    png = load_xray(png16(65535 - stored.astype(np.int64)))
    np.testing.assert_array_equal(dicom.pixels, png.pixels)
    assert dicom.sha256 == png.sha256


def test_monochrome2_dicom_and_png_share_sha_and_differ_from_other_pixels():
    stored = gradient(bits=16, seed=4)
    dicom = load_xray(make_dicom(stored))
    assert dicom.sha256 == load_xray(png16(stored)).sha256
    assert dicom.sha256 != load_xray(make_dicom(stored, photometric="MONOCHROME1")).sha256


# --- modality LUT and VOI window -----------------------------------------------------------------


def at(stored: np.ndarray, pixels: np.ndarray, value: int) -> float:
    """The output pixel whose stored value is closest to ``value``."""
    index = np.argmin(np.abs(stored.astype(np.int64) - value))
    return float(pixels.flat[index])


def test_voi_window_maps_center_to_mid_gray_and_clips_outside():
    stored = gradient(bits=12)
    pixels = load_xray(make_dicom(stored, bits_stored=12, window=(2000, 400))).pixels
    assert pixels[stored < 1790].max() == 0.0 and pixels[stored > 2210].min() == 1.0
    assert at(stored, pixels, 2000) == pytest.approx(0.5, abs=0.01)
    inside = (stored > 1850) & (stored < 2150)
    order = np.argsort(stored[inside])
    assert np.all(np.diff(pixels[inside][order]) >= 0)  # monotonic within the window


def test_window_on_monochrome1_is_inverted_after_windowing():
    stored = gradient(bits=12)
    pixels = load_xray(make_dicom(stored, photometric="MONOCHROME1", bits_stored=12, window=(2000, 400))).pixels
    assert pixels[stored < 1790].min() == 1.0 and pixels[stored > 2210].max() == 0.0


def test_modality_lut_is_applied_before_the_window():
    stored = gradient(bits=12)
    # rescaled value = 2 * stored, so a window centred on 2000 centres on stored 1000
    pixels = load_xray(make_dicom(stored, bits_stored=12, rescale=(2.0, 0.0), window=(2000, 400))).pixels
    assert at(stored, pixels, 1000) == pytest.approx(0.5, abs=0.02)
    assert at(stored, pixels, 850) == 0.0 and at(stored, pixels, 1150) == 1.0


def test_first_of_several_windows_is_used():
    stored = gradient(bits=12)
    first = load_xray(make_dicom(stored, bits_stored=12, window=(2000, 400))).pixels
    several = make_dicom(
        stored, bits_stored=12, WindowCenter=[2000, 500], WindowWidth=[400, 100], VOILUTFunction="LINEAR"
    )
    np.testing.assert_array_equal(load_xray(several).pixels, first)


def test_rescaled_ct_is_min_max_scaled_and_warned_about():
    xray = load_xray(pydicom_file("CT_small.dcm"))  # signed, RescaleIntercept -1024, no window
    assert xray.pixels.min() == 0.0 and xray.pixels.max() == 1.0
    assert xray.metadata["modality"] == "CT"
    assert any("modality is CT, not a plain radiograph" in w for w in xray.warnings)


def test_radiograph_modality_has_no_warning_and_mr_has_one():
    assert load_xray(make_dicom(gradient())).warnings == ()
    mr = load_xray(make_dicom(gradient(), modality="MR"))
    assert mr.warnings == ("DICOM modality is MR, not a plain radiograph (CR/DX); results may be meaningless",)


# --- compressed transfer syntaxes ---------------------------------------------------------------


@pytest.mark.parametrize("compress", ["rle", "j2k"])
@pytest.mark.parametrize("bits", [8, 16])
def test_lossless_compression_decodes_to_the_uncompressed_pixels(compress, bits):
    stored = gradient(bits=bits, seed=bits)
    plain = load_xray(make_dicom(stored, photometric="MONOCHROME1", bits_stored=bits))
    packed_bytes = make_dicom(stored, photometric="MONOCHROME1", bits_stored=bits, compress=compress)
    syntax = pydicom.dcmread(io.BytesIO(packed_bytes)).file_meta.TransferSyntaxUID
    assert syntax.is_compressed
    packed = load_xray(packed_bytes)
    np.testing.assert_array_equal(packed.pixels, plain.pixels)
    assert packed.sha256 == plain.sha256


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_bundled_compressed_files_match_their_uncompressed_original(name):
    original = load_xray(pydicom_file("MR_small.dcm"))
    np.testing.assert_array_equal(load_xray(pydicom_file(name)).pixels, original.pixels)


def test_jpeg_lossless_process14_decodes():
    data = external("JPEG-LL.dcm")
    xray = load_xray(data)
    raw = pydicom.dcmread(io.BytesIO(data)).pixel_array.astype(np.float64)
    assert xray.shape == (1024, 256) and xray.pixels.std() > 0.01
    assert np.corrcoef(raw.ravel(), xray.pixels.ravel())[0, 1] > 0.999


def test_jpeg_baseline_colour_dicom_becomes_luminance():
    xray = load_xray(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"))
    assert xray.shape == (100, 100) and xray.was_color
    assert 0.0 <= xray.pixels.min() < xray.pixels.max() <= 1.0


# --- real CR radiographs (pydicom-data) ---------------------------------------------------------


@pytest.mark.parametrize(("stem", "view", "bits"), [("RG1", "PA", 15), ("RG3", "AP", 10)])
def test_real_cr_monochrome1_is_inverted_and_j2k_matches_uncompressed(stem, view, bits):
    plain_bytes = external(f"{stem}_UNCR.dcm")
    plain, j2k = load_xray(plain_bytes), load_xray(external(f"{stem}_J2KR.dcm"))
    np.testing.assert_array_equal(j2k.pixels, plain.pixels)
    assert plain.bit_depth == bits
    meta = plain.metadata
    assert (meta["modality"], meta["view_position"], meta["photometric_interpretation"]) == ("CR", view, "MONOCHROME1")
    raw = pydicom.dcmread(io.BytesIO(plain_bytes)).pixel_array[::7, ::7].astype(np.float64)
    # MONOCHROME1: high stored values are dark, so display brightness falls as raw values rise
    assert np.corrcoef(raw.ravel(), plain.pixels[::7, ::7].ravel())[0, 1] < -0.99
    assert f"CompressedSamples^{stem}" not in repr(meta)


def test_zero_pixel_spacing_is_not_reported():
    meta = load_xray(external("RG1_UNCR.dcm")).metadata  # its PixelSpacing is 0.000\0.000
    assert "pixel_spacing_mm" not in meta
    fallback = load_xray(make_dicom(gradient(), PixelSpacing=[0, 0], ImagerPixelSpacing=[0.15, 0.15])).metadata
    assert fallback["pixel_spacing_mm"] == [0.15, 0.15]


# --- de-identification ---------------------------------------------------------------------------


def test_metadata_keeps_technical_facts_only():
    xray = load_xray(make_dicom(gradient(64, 80), photometric="MONOCHROME1"))
    meta = xray.metadata
    assert meta["modality"] == "DX" and meta["view_position"] == "PA"
    assert meta["photometric_interpretation"] == "MONOCHROME1" and meta["manufacturer"] == "Acme Imaging"
    assert meta["pixel_spacing_mm"] == pytest.approx([0.139, 0.143])
    assert (meta["rows"], meta["columns"], meta["height"], meta["width"]) == (64, 80, 64, 80)
    text = repr(meta).lower()
    for keyword, value in IDENTIFYING.items():
        assert str(value).lower() not in text, keyword
    for fragment in ("patient", "date", "institution", "physician", "accession", "comment", "description", "uid"):
        assert not any(fragment in key.lower() for key in meta), fragment


# --- refusals ------------------------------------------------------------------------------------


def test_multi_frame_is_refused():
    with pytest.raises(MultiFrameError, match=r"DICOM has 2 frames; CXR Review reads single-frame radiographs only"):
        load_xray(make_dicom(np.stack([gradient(), gradient(seed=1)])))


def test_real_multi_frame_mri_is_refused():
    with pytest.raises(MultiFrameError, match=r"DICOM has 10 frames"):
        load_xray(external("emri_small.dcm"))


def test_garbage_after_a_valid_preamble_is_corrupt(recwarn):
    garbage = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    with pytest.raises(CorruptImageError, match=r"^DICOM data is truncated or damaged"):
        load_xray(bytes(128) + b"DICM" + garbage)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("compress", [None, "j2k"])
def test_truncated_dicom_is_corrupt_without_stray_warnings(compress, recwarn):
    data = make_dicom(gradient(), compress=compress)
    expected = r"DICOM (pixel data could not be decoded|data is truncated or damaged)"
    with pytest.raises(CorruptImageError, match=expected):
        load_xray(data[: len(data) - 200])
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_dicom_without_pixels_is_refused():
    with pytest.raises(CorruptImageError, match=r"DICOM file has no pixel data \(a report"):
        load_xray(pydicom_file("rtplan.dcm"))


def test_oversized_dicom_refused_from_its_header():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(gradient())))
    ds.Rows, ds.Columns = 10_000, 6_000  # pixel data left small: decoding it would fail differently
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(ImageTooLargeError, match=r"DICOM is 6000x10000 = 60,000,000 pixels; the limit is 50,000,000"):
        load_xray(buffer.getvalue())


def test_small_dicom_is_refused():
    with pytest.raises(ImageTooSmallError, match=r"image is 48x32 pixels"):
        load_xray(make_dicom(gradient(32, 48)))


def test_is_dicom_needs_the_dicm_marker():
    assert is_dicom(make_dicom(gradient()))
    assert not is_dicom(bytes(128) + b"DICX")
    assert not is_dicom(b"DICM")
