"""What the app states about a film itself, before any model: its name in exports and its facts panel.

Pure functions of an :class:`cxr_core.io.imaging.XRay`; the review page shows them, its summary
CSV names films with :func:`film_label`.
"""

from __future__ import annotations

from cxr_core.io.imaging import XRay

#: DICOM metadata shown in the facts panel, as (``XRay.metadata`` key, label); none of them identifies a patient.
DICOM_FIELDS = (
    ("modality", "Modality"), ("view_position", "View"), ("body_part", "Body part"),
    ("photometric_interpretation", "Photometric interpretation"), ("manufacturer", "Manufacturer"),
)


def film_label(sha256: str) -> str:
    """A film's name in exports: ``film-`` and the first 8 hex digits of its pixel SHA-256.

    Never the file name: upload names often carry a patient's name or record number.
    """
    return f"film-{sha256[:8]}"


def image_facts(xray: XRay, name: str, attribution: str = "") -> list[tuple[str, str]]:
    """(label, value) rows for the image panel; DICOM files add their kept, non-identifying metadata.

    ``name`` is the file name as shown on the page; ``attribution`` credits a bundled sample's source.
    """
    meta = xray.metadata
    rows = [("File", name), ("Format", xray.source_format.upper()),
            ("Size", f"{meta.get('width')} x {meta.get('height')} pixels"), ("Bit depth", str(xray.bit_depth))]
    for key, label in DICOM_FIELDS:
        if meta.get(key):
            rows.append((label, str(meta[key])))
    if meta.get("pixel_spacing_mm"):
        rows.append(("Pixel spacing", " x ".join(f"{v:g}" for v in meta["pixel_spacing_mm"]) + " mm"))
    rows.append(("Image SHA-256", xray.sha256[:16] + "..."))
    if attribution:
        rows.append(("Source", attribution))
    return rows
