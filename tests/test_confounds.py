"""Confounds and subgroups: the shortcut probe, Cramér's V, the flag rule, subgroup metrics, audit JSON and page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import recall_score, roc_auc_score
from streamlit.testing.v1 import AppTest

from auth_helpers import login
from conftest import REPO
from cxr_core.audit import AuditReport, ImageAudit, from_json, to_json
from cxr_core.audit.confounds import ASSOCIATION, PROBE_AUROC, cramers_v, find_confounds, probe_auroc
from cxr_core.audit.subgroups import subgroup_columns, subgroup_metrics
from cxr_core.stats import percentile_interval, resample_counts

CLASSES = ["COVID-19", "Normal"]


def shortcut_set(seed: int = 0):
    """60 patients x 2 films. Within the training mix source == label (COVID-19 from 'adult', Normal from
    'child'); 8 Normal patients come from 'adult' and the model calls them COVID-19. The features encode the
    source; ``coin`` is a column independent of everything."""
    rng = np.random.default_rng(seed)
    labels, source, coin, patients = [], [], [], []
    for p in range(60):
        label = "COVID-19" if p < 30 else "Normal"
        src = "adult" if (label == "COVID-19" or p >= 52) else "child"
        side = "heads" if rng.random() < 0.5 else "tails"
        for _ in range(2):
            labels.append(label), source.append(src), coin.append(side), patients.append(f"p{p}")
    source_arr = np.array(source)
    feats = rng.normal(size=(len(labels), 16))
    feats[:, 0] += 3.0 * (source_arr == "adult")  # the model "knows" the film is an adult's
    p_covid = np.where(source_arr == "adult", 0.9, 0.1)  # ... and calls every adult film COVID-19
    probs = np.column_stack([p_covid, 1 - p_covid])
    y = np.array([CLASSES.index(lbl) for lbl in labels])
    return feats, labels, y, probs, {"source": source, "coin": coin}, patients


def test_a_column_that_stands_in_for_the_label_is_flagged_and_an_independent_one_is_not():
    feats, labels, y, probs, columns, patients = shortcut_set()
    subgroups = subgroup_metrics(y, probs, CLASSES, columns, patients=patients, n_boot=200)
    found = {c.column: c for c in find_confounds(feats, labels, columns, subgroups, CLASSES, patients=patients)}
    source, coin = found["source"], found["coin"]
    assert source.flagged and source.feature_auroc > PROBE_AUROC and source.label_association > ASSOCIATION
    assert source.accuracy_gap == pytest.approx(1.0)  # Normal: child films all right, adult ones all wrong
    assert "within Normal, accuracy is 100% for source = child (44/44) but 0% for adult (0/16)" in source.evidence
    assert not coin.flagged and coin.feature_auroc < 0.7 and coin.label_association < 0.3
    assert [c.column for c in find_confounds(feats, labels, columns, subgroups, CLASSES, patients=patients)] == [
        "source", "coin"]  # flagged first


def test_no_flag_when_the_features_do_not_encode_the_column():
    feats, labels, y, probs, columns, patients = shortcut_set()
    feats[:, 0] = np.random.default_rng(1).normal(size=len(feats))  # the source signal removed from the features
    subgroups = subgroup_metrics(y, probs, CLASSES, columns, patients=patients, n_boot=100)
    source = next(c for c in find_confounds(feats, labels, columns, subgroups, CLASSES, patients=patients)
                  if c.column == "source")
    assert source.feature_auroc < 0.7 and not source.flagged
    assert source.label_association > ASSOCIATION  # the other two signs are still there


def test_cramers_v_matches_its_definition():
    a = ["x"] * 30 + ["y"] * 20
    b = ["1"] * 25 + ["2"] * 5 + ["1"] * 4 + ["2"] * 16
    table = np.array([[25, 5], [4, 16]], float)
    expected = table.sum() * np.outer(table.sum(1), table.sum(0)) / table.sum() ** 2
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert cramers_v(a, b) == pytest.approx(np.sqrt(chi2 / table.sum()))
    assert cramers_v(["x"] * 4, ["1", "2", "1", "2"]) is None


def test_subgroup_metrics_match_scikit_learn_and_their_intervals_resample_patients():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0])
    probs = np.array([.9, .8, .3, .2, .4, .7, .6, .45, .1, .35, .8, .9])
    probs = np.column_stack([probs, 1 - probs])
    site = ["a"] * 6 + ["b"] * 6
    patients = [f"p{i // 2}" for i in range(12)]
    out = subgroup_metrics(y, probs, CLASSES, {"site": site}, patients=patients, n_boot=300, seed=3)
    pred = probs.argmax(1)
    for value, idx in (("a", np.arange(6)), ("b", np.arange(6, 12))):
        for c, cls in enumerate(CLASSES):
            m = out["site"][value][cls]
            mask = y[idx] == c
            assert m["n"] == mask.sum() and m["correct"] == (pred[idx][mask] == c).sum()
            recall = recall_score(y[idx], pred[idx], labels=[c], average=None)[0]
            assert m["accuracy"] == pytest.approx(recall, abs=1e-4)
            assert m["auc"] == pytest.approx(roc_auc_score(y[idx] == c, probs[idx, c]), abs=1e-4)
            assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
    # the interval of site a / COVID-19's accuracy, by hand: the same patient resamples, recall per resample
    idx, reps = np.arange(6), []
    for w in resample_counts(6, n_boot=300, seed=3, clusters=np.array(patients)[:6]):
        for row in w:
            pos = row * (y[idx] == 0)
            if pos.sum() > 0:
                reps.append((pos * (pred[idx] == 0)).sum() / pos.sum())
    assert out["site"]["a"]["COVID-19"]["accuracy_ci95"] == pytest.approx(list(percentile_interval(reps)), abs=1e-4)


def test_the_probe_keeps_a_patients_films_in_one_fold():
    """Films of a patient share one feature vector and the column is random per patient: a probe that let a
    patient's films into both training and test folds would recognise the patient (AUROC near 1)."""
    rng = np.random.default_rng(0)
    n_patients, films = 40, 3
    faces = rng.normal(size=(n_patients, 60))
    values = rng.choice(["u", "v"], size=n_patients)
    x = np.repeat(faces, films, axis=0) + rng.normal(scale=0.01, size=(n_patients * films, 60))
    v = np.repeat(values, films)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], films)
    grouped, info = probe_auroc(x, v, patients)
    leaky, _ = probe_auroc(x, v, [f"f{i}" for i in range(len(v))])
    assert leaky > 0.9  # what a film-level split gives: the test would catch a probe that ignored patients
    assert grouped < 0.75 and info["folds"] == 5 and info["n"] == len(v)


def test_the_probe_leaves_out_values_with_a_single_patient():
    rng = np.random.default_rng(0)
    v = ["a"] * 10 + ["b"] * 10 + ["c"]
    auc, info = probe_auroc(rng.normal(size=(21, 4)), v, [f"p{i}" for i in range(21)])
    assert info["left_out"] == ["c"] and info["values"] == ["a", "b"] and info["n"] == 20 and auc is not None


def test_subgroup_columns_skip_identifiers_free_text_and_duplicates():
    rows = [{"source": s, "hospital": h, "age_group": a, "license": "CC BY", "notes": f"n{i}", "view": "PA"}
            for i, (s, h, a) in enumerate([("x", "X", "adult"), ("x", "X", "child"), ("y", "Y", "adult"),
                                           ("y", "Y", "child"), ("y", "Y", "adult"), ("x", "X", "adult")])]
    assert subgroup_columns(rows) == ["source", "age_group"]  # hospital names the same films as source
    assert subgroup_columns(rows, wanted=["view"]) == ["view"]
    with pytest.raises(Exception, match="not in the manifest"):
        subgroup_columns(rows, wanted=["sex"])


def report_with_confound() -> dict:
    feats, labels, y, probs, columns, patients = shortcut_set()
    subgroups = subgroup_metrics(y, probs, CLASSES, columns, patients=patients, n_boot=100)
    found = find_confounds(feats, labels, columns, subgroups, CLASSES, patients=patients)
    from dataclasses import asdict

    images = []
    for i, (label, p) in enumerate(zip(labels, probs)):
        shares = {"border": 0.1, "top_left": 0.0, "top_right": 0.0, "bottom_left": 0.0, "bottom_right": 0.0,
                  "markers": 0.0, "outside_lungs": 0.6}
        images.append(ImageAudit(f"/data/f{i}.png", label, patients[i], CLASSES[int(p.argmax())], float(p.max()),
                                 shares, {**{k: 0.1 for k in shares}, "outside_lungs": 0.62}, [], "estimate",
                                 sha256=f"sha{i}"))
    report = AuditReport("demo", CLASSES, images, [], {"mask_markers": False, "shortcut_margin": 0.15},
                         subgroups=subgroups, confounds=[asdict(c) for c in found],
                         confound_films=[im.sha256 for im in images])
    return json.loads(json.dumps(to_json(report, n_boot=100)))


def test_audit_json_carries_subgroups_and_confounds_and_drops_them_when_a_film_leaves():
    data = report_with_confound()
    assert set(data["subgroups"]) == {"source", "coin"}
    assert data["subgroups"]["source"]["adult"]["Normal"]["n"] == 16
    assert [c["column"] for c in data["confounds"]] == ["source", "coin"] and data["confounds"][0]["flagged"]
    assert {"column", "feature_auroc", "label_association", "flagged", "evidence"} <= set(data["confounds"][0])
    report = from_json(data)
    assert to_json(report, n_boot=100)["confounds"] == data["confounds"]
    report.images = report.images[1:]  # e.g. a film read blind: the subgroup figures counted it
    kept = to_json(report, n_boot=100)
    assert kept["subgroups"] == {} and kept["confounds"] == []


def test_the_html_report_puts_a_flagged_confound_first():
    from cxr_core.audit.report import render_html

    html = render_html(report_with_confound())
    assert "Possible confound: source" in html
    assert html.index("Confounds and subgroups") < html.index("Shortcut check")
    assert "Cramér" in html and "<td>adult</td><td>Normal</td><td>16</td><td>0</td>" in html


def test_the_audit_page_shows_a_flagged_confound_first():
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    login(at, name="Researcher C", role="researcher")
    at.session_state["audit_report"] = report_with_confound()
    at.switch_page("pages/audit.py").run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value.replace("\\", "") for e in at.error]  # shown Markdown-escaped (column values are data)
    assert errors and errors[0].startswith("Possible confound: source")
    assert "AUROC" in errors[0]
    tables = [d.value for d in at.dataframe]
    probe = next(t for t in tables if "feature AUROC" in t.columns)
    assert list(probe["column"]) == ["source", "coin"] and list(probe["flagged"]) == ["yes", "no"]
    subgroups = next(t for t in tables if "accuracy (95% CI)" in t.columns)
    row = subgroups[(subgroups["value"] == "adult") & (subgroups["class"] == "Normal")].iloc[0]
    assert row["films"] == 16 and row["correct"] == 0


def source_manifest(tmp_path) -> Path:
    """The 8 audit fixture films as a manifest with a ``source`` column (6 hannover COVID-19, 2 other Normal)."""
    fix = Path(__file__).parent / "fixtures" / "audit"
    rows = ["file,label,patient_id,source"]
    for i, png in enumerate(sorted(p for p in fix.glob("*.png") if "_lungs" not in p.name)):
        hannover = png.name.startswith("hannover")
        rows.append(f"{png},{'covid' if hannover else 'normal'},p{i},{'hannover' if hannover else 'other'}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_cli_audit_adds_subgroups_and_confounds_from_the_manifest(use_registry, tmp_path, capsys):
    from cxr_core.cli import main

    fix = Path(__file__).parent / "fixtures" / "audit"
    manifest = source_manifest(tmp_path)
    js = tmp_path / "audit.json"
    code = main(["audit", "--model", "tiny-effnet", "--data", str(manifest), "--lung-masks", str(fix),
                 "--json", str(js), "--batch-size", "4"])
    assert code == 0, capsys.readouterr().err
    data = json.loads(js.read_text())
    assert list(data["subgroups"]) == ["source"]
    assert data["subgroups"]["source"]["hannover"]["COVID-19"]["n"] == 6
    assert data["subgroups"]["source"]["other"]["Normal"]["n"] == 2
    (c,) = data["confounds"]
    assert c["column"] == "source" and c["label_association"] == pytest.approx(1.0)
    assert c["probe"]["n"] == 8 and c["feature_auroc"] is not None


def test_cli_evaluate_reports_subgroups_and_confounds(use_registry, tmp_path, capsys):
    from cxr_core.cli import main

    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--model", "tiny-effnet", "--data", str(source_manifest(tmp_path)), "--n-boot", "50",
                 "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(out.read_text())
    assert result["subgroups"]["source"]["other"]["Normal"]["n"] == 2
    assert result["confounds"][0]["column"] == "source" and result["confounds"][0]["probe"]["n"] == 8
    assert "subgroup column source: feature AUROC" in captured.out
    code = main(["evaluate", "--model", "tiny-effnet", "--data", str(source_manifest(tmp_path)), "--n-boot", "50",
                 "--json", str(out), "--subgroups", "none"])
    assert code == 0 and "subgroups" not in json.loads(out.read_text())


def test_the_accuracy_gap_prefers_large_groups_and_calls_small_ones_anecdotes():
    from cxr_core.audit.confounds import _gap

    def m(correct, n):
        return {"n": n, "correct": correct, "accuracy": correct / n}

    per_value = {"a": {"Normal": m(1, 1), "COVID-19": m(40, 40)}, "b": {"Normal": m(0, 1), "COVID-19": m(20, 40)},
                 "c": {"Normal": m(18, 20)}}
    gap, line = _gap("site", per_value, CLASSES)
    assert gap == pytest.approx(0.5) and line == (
        "within COVID-19, accuracy is 100% for site = a (40/40) but 50% for b (20/40)")  # not Normal's 1/1 vs 0/1
    gap, line = _gap("site", {"a": {"Normal": m(1, 1)}, "b": {"Normal": m(0, 2)}}, CLASSES)
    assert gap == 1.0 and line.endswith("(a group under 5 films: an anecdote, not an estimate)")
