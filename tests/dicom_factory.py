"""Build small DICOM files in memory for tests (pydicom 3), so no fixture file is committed.

``make_dicom(arr, ...)`` returns the bytes of a Part 10 file (preamble + ``DICM``) holding
``arr`` as a single-frame (or, with a 3-D array, multi-frame) radiograph. Identifying
attributes (patient name and id, dates, institution, free text) are filled in on purpose so
tests can check that none of them reaches ``XRay.metadata``.
"""

from __future__ import annotations

import io

import numpy as np
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

#: Identifying values written into every generated file; none may appear in an XRay's metadata.
IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientID": "SYN-PID-4711",
    "PatientBirthDate": "19700101",
    "StudyDate": "20240229",
    "SeriesDate": "20240229",
    "AcquisitionDate": "20240229",
    "ContentDate": "20240229",
    "InstitutionName": "St Elsewhere General Hospital",
    "InstitutionAddress": "1 Hospital Road, Springfield",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC998877",
    "StudyDescription": "CHEST PA free text about Jane",
    "ImageComments": "patient coughing, see Dr House",
}

#: Non-identifying values the reader must keep.
KEPT = {
    "Modality": "DX",
    "ViewPosition": "PA",
    "Manufacturer": "Acme Imaging",
    "PixelSpacing": [0.139, 0.143],
}

COMPRESSIONS = {"rle": RLELossless, "j2k": JPEG2000Lossless}


def make_dicom(
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    modality: str = "DX",
    compress: str | None = None,
    **attributes,
) -> bytes:
    """Bytes of a DX file holding ``arr`` (uint8 or uint16; 3-D for several frames).

    Parameters
    ----------
    arr : (H, W) or (F, H, W) uint8/uint16 ndarray
        Stored pixel values.
    photometric : ``"MONOCHROME1"`` (bright = low values) or ``"MONOCHROME2"``.
    bits_stored : defaults to the dtype's size.
    window : (center, width) of one VOI window, written with ``VOILUTFunction = LINEAR``.
    rescale : (slope, intercept) of a modality LUT.
    modality : the Modality attribute (``"DX"``, ``"CT"``, ...).
    compress : ``"rle"`` or ``"j2k"`` (lossless), via ``ds.compress``.
    attributes : any other DICOM keywords to set (``NumberOfFrames`` is set from the array).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    for keyword, value in {**IDENTIFYING, **KEPT}.items():
        setattr(ds, keyword, value)
    ds.Modality = modality
    ds.set_pixel_data(arr, photometric_interpretation=photometric, bits_stored=bits_stored or arr.dtype.itemsize * 8)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
        ds.VOILUTFunction = "LINEAR"
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = float(rescale[0]), float(rescale[1])
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if compress is not None:
        ds.compress(COMPRESSIONS[compress])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pydicom_file(name: str) -> bytes | None:
    """Bytes of a pydicom test file (bundled, or from ``pydicom-data`` if installed), else None."""
    path = get_testdata_file(name, download=False)
    return None if path is None else open(path, "rb").read()


def gradient(h: int = 64, w: int = 80, *, bits: int = 16, seed: int = 0) -> np.ndarray:
    """An (h, w) unsigned ramp covering most of the ``bits`` range plus a little noise."""
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    ramp = np.linspace(0.05, 0.95, w)[None, :] * np.linspace(0.6, 1.0, h)[:, None]
    noisy = ramp * top + rng.integers(0, max(2, top // 64), size=(h, w))
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.clip(noisy, 0, top).astype(dtype)
