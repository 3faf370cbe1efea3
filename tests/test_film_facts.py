"""What the review page states about a film, its batch row and the registry, as cxr_core computes it (no Streamlit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import FIXTURES
from cxr_core.io.film_facts import film_label, image_facts
from cxr_core.io.imaging import load_xray
from cxr_core.models.manifest import MISMATCH, READY, ModelCard, ModelEntry
from cxr_core.models.status import checksum_line, missing_architectures
from cxr_core.models.summary import SummaryRow, plain_text
from cxr_core.models.zoo import SPECS
from dicom_factory import IDENTIFYING, make_dicom

CHEST = "covid_hannover_b343e657.png"


def test_film_label_is_the_pixel_hash_never_the_file_name():
    xray = load_xray(FIXTURES / "cxr" / CHEST)
    assert film_label(xray.sha256) == "film-" + xray.sha256[:8]
    assert "hannover" not in film_label(xray.sha256)


def test_image_facts_of_a_png_and_of_a_dicom_without_identifying_values():
    xray = load_xray(FIXTURES / "cxr" / CHEST)
    facts = dict(image_facts(xray, CHEST, "NIH, CC0"))
    h, w = xray.shape
    assert facts["File"] == CHEST and facts["Format"] == "PNG" and facts["Size"] == f"{w} x {h} pixels"
    assert facts["Source"] == "NIH, CC0" and facts["Image SHA-256"] == xray.sha256[:16] + "..."
    assert "Modality" not in facts

    pixels = (np.arange(96 * 80, dtype=np.uint16).reshape(96, 80) * 7) % 4096
    dcm = load_xray(make_dicom(pixels, bits_stored=12, PixelSpacing=[0.2, 0.25], ViewPosition="PA"), "x.dcm")
    rows = image_facts(dcm, "x.dcm")
    facts = dict(rows)
    assert facts["Format"] == "DICOM" and facts["Modality"] == "DX" and facts["View"] == "PA"
    assert facts["Pixel spacing"] == "0.2 x 0.25 mm" and "Source" not in facts
    shown = " ".join(v for _, v in rows)
    assert not [v for v in IDENTIFYING.values() if str(v) in shown]


def test_summary_row_and_plain_text():
    assert plain_text("**tiny is a demonstration model** (demo).") == "tiny is a demonstration model (demo)."
    row = SummaryRow(film="film-0123abcd", name="a.png", top_class="Normal", score=0.4567, warnings=("w1", "w2"))
    assert row.page_row()["Score (%)"] == 45.7 and row.page_row()["Warning details"] == "w1 | w2"
    assert row.csv_row("m")["top_score_percent"] == "45.7" and "a.png" not in row.csv_row("m").values()
    refused = SummaryRow(film="film-1", name="b.png", refused="yes", reason="not a chest film")
    assert refused.csv_row("m")["top_score_percent"] == "" and refused.page_row()["Score (%)"] is None


def _entry(arch: str, status: str = READY, message: str = "") -> ModelEntry:
    card = ModelCard(name=f"m-{arch}", architecture=arch, classes=["Normal", "Pneumonia"], input_size=64,
                     preprocessing=SPECS[arch].preprocessing, last_conv_layer=SPECS[arch].last_conv_layer,
                     sha256="ab" * 32)
    return ModelEntry(card.name, Path("weights") / card.name, status, card, message)


def test_registry_sentences():
    ready, broken = _entry("resnet50"), _entry("efficientnetv2b0", MISMATCH, "model.keras changed")
    ok, line = checksum_line(ready)
    assert ok and "ab" * 8 in line
    ok, line = checksum_line(broken)
    assert not ok and line.startswith("Checksum mismatch: model.keras changed.") and "cannot be used" in line
    missing = dict(missing_architectures([ready, broken]))  # a broken model does not count as installed
    assert SPECS["resnet50"].display_name not in missing and SPECS["efficientnetv2b0"].display_name in missing
    assert len(missing) == len(SPECS) - 1 and all("import-model" in how for how in missing.values())
