"""The sample films have one home: CXR_DATA_DIR/samples when it lists some, else the bundled ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cxr_core.config import REPO_ROOT, get_settings
from cxr_core.io.samples import SAMPLES_JSON, list_samples, sample_entries, samples_dir

FIXTURES = Path(__file__).parent / "fixtures"


def test_data_dir_samples_are_used_when_they_are_listed_else_the_bundled_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    bundled = REPO_ROOT / "data" / "samples"
    assert samples_dir() == bundled == get_settings().samples_dir  # nothing listed under CXR_DATA_DIR
    own = tmp_path / "samples"
    own.mkdir()
    film = next((FIXTURES / "cxr").glob("*.png"))
    shutil.copy(film, own / "mine.png")
    (own / SAMPLES_JSON).write_text(json.dumps([{"file": "mine.png", "label": "Normal"},
                                                {"file": "gone.png", "label": "COVID-19"}]))
    assert samples_dir() == own
    assert list_samples() == [{"file": "mine.png", "label": "Normal"}]  # a listed film that is missing is left out
    entries, why = sample_entries(own, ["gone.png"])
    assert entries == [{"file": "gone.png", "label": "COVID-19"}] and why == ""  # the reader says it is missing


def test_a_missing_or_broken_list_gives_no_samples_and_says_why(tmp_path):
    assert list_samples(tmp_path) == []
    assert sample_entries(tmp_path) == ([], f"no bundled samples are installed ({tmp_path / SAMPLES_JSON})")
    (tmp_path / SAMPLES_JSON).write_text("{not json")
    assert list_samples(tmp_path) == [] and sample_entries(tmp_path)[0] == []
    (tmp_path / SAMPLES_JSON).write_text(json.dumps([{"file": "a.png"}, "junk", {"label": "no file"}]))
    assert sample_entries(tmp_path) == ([{"file": "a.png"}], "")
    assert sample_entries(tmp_path, []) == ([], "no sample chosen")
