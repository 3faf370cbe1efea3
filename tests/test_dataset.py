"""Data folders and manifests to labelled records, and the patient-disjoint split."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from cxr_core.training.dataset import (
    Record,
    apply_split,
    check_patient_disjoint,
    class_weights,
    load_inputs,
    load_records,
    read_manifest,
    read_split_csv,
    scan_folder,
    split_by_patient,
    split_counts,
    write_split_csv,
)
from cxr_core.errors import DataError
from cxr_core.models.zoo import get_spec

REAL = sorted((FIXTURES / "cxr").glob("*.png"))


def _folder(root: Path, layout: dict[str, list[Path]]) -> Path:
    for rel, files in layout.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            (root / rel / f.name).write_bytes(f.read_bytes())
    return root


def test_split_folders_matched_case_insensitively_with_aliases(tmp_path):
    covid, normal, _, pneu = REAL
    _folder(tmp_path, {"train/covid": [covid], "train/NORMAL": [normal], "Val/Pneumonia": [pneu], "test/TB": [normal]})
    records = scan_folder(tmp_path)
    got = sorted((r.split, r.label, r.file.name) for r in records)
    assert got == [
        ("test", "Tuberculosis", normal.name),
        ("train", "COVID-19", covid.name),
        ("train", "Normal", normal.name),
        ("val", "Pneumonia", pneu.name),
    ]


def test_unsplit_class_folders_and_unknown_class_refused(tmp_path):
    _folder(tmp_path / "ok", {"covid-19": REAL[:1], "healthy": REAL[1:2]})
    assert {r.label for r in scan_folder(tmp_path / "ok")} == {"COVID-19", "Normal"}
    assert all(r.split == "" for r in scan_folder(tmp_path / "ok"))
    _folder(tmp_path / "bad", {"covid": REAL[:1], "effusion": REAL[1:2]})
    with pytest.raises(DataError, match="'effusion' matches none of the classes COVID-19, Normal"):
        scan_folder(tmp_path / "bad", classes=("COVID-19", "Normal"))


def test_manifest_with_patient_split_and_extra_columns(tmp_path):
    _folder(tmp_path, {"img": REAL})
    rows = [
        {"file": f"img/{REAL[0].name}", "label": "covid", "patient_id": "p1", "split": "train", "source": "hannover"},
        {"file": f"img/{REAL[1].name}", "label": "Normal", "patient_id": "", "split": "validation", "source": "k"},
    ]
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    recs = load_records(tmp_path / "m.csv")
    assert [(r.label, r.patient_id, r.split, r.source) for r in recs] == [
        ("COVID-19", "p1", "train", "hannover"),
        ("Normal", Path(REAL[1].name).stem, "val", "k"),  # no patient id: the image is its own patient
    ]
    assert recs[0].file == tmp_path / "img" / REAL[0].name
    (tmp_path / "m.csv").write_text(f"file,label\nimg/missing.png,covid\n")
    with pytest.raises(DataError, match="missing.png does not exist"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text(f"path,label\nimg/{REAL[0].name},covid\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['file'\]"):
        read_manifest(tmp_path / "m.csv")


def _records(spec: list[tuple[int, int]]) -> list[Record]:
    labels = ("COVID-19", "Normal", "Pneumonia")
    return [Record(Path(f"{i}.png"), labels[lab], f"p{pid}") for i, (pid, lab) in enumerate(spec)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2)), min_size=1, max_size=120),
    st.integers(0, 2**16),
)
def test_split_never_puts_a_patient_on_two_sides(spec, seed):
    out = split_by_patient(_records(spec), seed=seed)
    assert [r.file for r in out] == [r.file for r in _records(spec)]  # same records, same order
    sides: dict[str, set] = {}
    for r in out:
        sides.setdefault(r.patient_id, set()).add(r.split)
        assert r.split in ("train", "val", "test")
    assert all(len(s) == 1 for s in sides.values())
    check_patient_disjoint(out)  # and the checker agrees


def test_split_is_seeded_and_near_the_fractions():
    rng = np.random.default_rng(1)
    spec = [(p, p % 3) for p in range(300) for _ in range(rng.integers(1, 4))]
    a = split_by_patient(_records(spec), seed=5)
    assert [r.split for r in a] == [r.split for r in split_by_patient(_records(spec), seed=5)]
    assert [r.split for r in a] != [r.split for r in split_by_patient(_records(spec), seed=6)]
    counts = Counter(r.split for r in a)
    n = len(a)
    assert abs(counts["train"] / n - 0.7) < 0.03 and abs(counts["test"] / n - 0.15) < 0.03
    for label in ("COVID-19", "Normal", "Pneumonia"):  # stratified by class
        per = Counter(r.split for r in a if r.label == label)
        assert abs(per["test"] / sum(per.values()) - 0.15) < 0.05


def test_disjoint_check_names_the_shared_patient():
    recs = [Record(Path("a.png"), "Normal", "p7", "train"), Record(Path("b.png"), "Normal", "p7", "test")]
    with pytest.raises(DataError, match=r"1 patient\(s\) have images on two sides.*'p7' in \['test', 'train'\]"):
        check_patient_disjoint(recs)


def test_split_csv_round_trip_and_counts(tmp_path):
    recs = split_by_patient([Record(tmp_path / f"d/{i}.png", "Normal" if i % 2 else "COVID-19", f"p{i // 2}", "",
                                    {"source": "s"}) for i in range(20)], seed=0)
    write_split_csv(recs, tmp_path / "split.csv", root=tmp_path)
    saved = read_split_csv(tmp_path / "split.csv")
    assert set(saved) == {f"d/{i}.png" for i in range(20)}
    unsplit = [Record(r.file, r.label, r.patient_id) for r in recs]
    assert [r.split for r in apply_split(unsplit, saved, root=tmp_path)] == [r.split for r in recs]
    counts = split_counts(recs)
    assert sum(c["images"] for c in counts.values()) == 20
    assert counts["train"]["by_source"] == {"s": counts["train"]["images"]}


def test_class_weights_balance_counts():
    w = class_weights([0, 0, 0, 1], 3)
    assert w[0] * 3 == pytest.approx(w[1] * 1)  # weight x count equal across present classes
    assert w[2] == 0.0


def test_load_inputs_uses_the_inference_preprocessing():
    from cxr_core.io.imaging import load_xray
    from cxr_core.models.preprocess import prepare

    spec = get_spec("efficientnetv2b0").with_overrides(input_size=64)
    recs = [Record(REAL[0], "COVID-19", "a"), Record(REAL[3], "Pneumonia", "b")]
    x, y = load_inputs(recs, spec, ("COVID-19", "Normal", "Pneumonia"))
    assert x.shape == (2, 64, 64, 3) and y.tolist() == [0, 2]
    np.testing.assert_array_equal(x[1], prepare(load_xray(REAL[3]).pixels, spec))
    with pytest.raises(DataError, match=r"labels \['Pneumonia'\] are not among the model's classes"):
        load_inputs(recs, spec, ("COVID-19", "Normal"))
