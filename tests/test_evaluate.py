"""Metrics against hand-computed values, bootstrap intervals, class matching and Table 2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_core.errors import DataError
from cxr_core.training.evaluate import (
    bootstrap_intervals,
    classification_metrics,
    evaluate_probabilities,
    match_classes,
    table2,
    table2_row,
)

CLASSES = ("COVID-19", "Normal", "Pneumonia")
# A fixed confusion (rows true, columns predicted):
#   COVID-19  [3, 1, 0]
#   Normal    [0, 2, 1]
#   Pneumonia [1, 0, 2]
PAIRS = [(0, 0)] * 3 + [(0, 1)] + [(1, 1)] * 2 + [(1, 2)] + [(2, 2)] * 2 + [(2, 0)]
Y = np.array([t for t, _ in PAIRS])
P = np.full((len(PAIRS), 3), 0.1)
for i, (_, pred) in enumerate(PAIRS):
    P[i, pred] = 0.8


def test_metrics_equal_hand_computed_values():
    m = classification_metrics(Y, P, CLASSES)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    # precision = diagonal / column sums, recall = diagonal / row sums
    prec = [3 / 4, 2 / 3, 2 / 3]
    rec = [3 / 4, 2 / 3, 2 / 3]
    f1 = [2 * p * r / (p + r) for p, r in zip(prec, rec)]
    for i, cls in enumerate(CLASSES):
        assert m["per_class"][cls]["precision"] == pytest.approx(prec[i])
        assert m["per_class"][cls]["recall"] == pytest.approx(rec[i])
        assert m["per_class"][cls]["f1"] == pytest.approx(f1[i])
    assert m["precision"] == pytest.approx(np.mean(prec))
    assert m["f1"] == pytest.approx(np.mean(f1))
    # cross-entropy: 7 images give 0.8 to the truth, 3 give 0.1
    assert m["loss"] == pytest.approx(-(7 * math.log(0.8) + 3 * math.log(0.1)) / 10)
    # one-vs-rest AUC of COVID-19 by counting pairs: positives score 0.8,0.8,0.8,0.1; negatives 0.1 x5, 0.8 (one)
    pos, neg = P[Y == 0, 0], P[Y != 0, 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert m["per_class"]["COVID-19"]["auc"] == pytest.approx(wins / (len(pos) * len(neg)))
    assert m["per_class"]["Normal"]["support"] == 3 and m["n"] == 10
    assert set(m["roc"]) == set(CLASSES) and m["roc"]["Normal"]["fpr"][0] == 0.0


def test_perfect_predictions_give_ones():
    y = np.array([0, 1, 2, 0])
    m = classification_metrics(y, np.eye(3)[y] * 0.98 + 0.01 / 1.5, CLASSES)
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0 and m["f1"] == 1.0


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded():
    m = evaluate_probabilities(Y, P, CLASSES, n_boot=300, seed=3)
    for key in ("accuracy", "loss", "auc", "f1", "recall", "precision"):
        low, high = m["ci95"][key]
        assert low <= m[key] <= high, key
        assert low < high, key  # 10 images: the interval is not degenerate
    for cls in CLASSES:
        low, high = m["ci95"]["per_class"][cls]["recall"]
        assert low <= m["per_class"][cls]["recall"] <= high
    again = bootstrap_intervals(Y, P, CLASSES, n_boot=300, seed=3)
    assert again["accuracy"] == pytest.approx(m["ci95"]["accuracy"], abs=1e-4)
    other = bootstrap_intervals(Y, P, CLASSES, n_boot=300, seed=4)
    assert other != again
    assert m["bootstrap"]["resamples"] == 300


def test_absent_class_auc_is_none_not_an_error():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    m = evaluate_probabilities(y, p, CLASSES, n_boot=50)
    assert m["per_class"]["Pneumonia"]["auc"] is None  # no positives: undefined, stored as null
    assert m["auc"] == 1.0  # macro over the classes present


def test_bad_shapes_are_refused():
    with pytest.raises(DataError, match=r"probabilities have shape \(10, 3\); expected \(N, 4\)"):
        classification_metrics(Y, P, CLASSES + ("Tuberculosis",))
    with pytest.raises(DataError, match="got 9 labels for 10 predictions"):
        classification_metrics(Y[:9], P, CLASSES)


def test_class_mismatch_refused_or_mapped():
    with pytest.raises(DataError, match=r"class\(es\) \['effusion', 'tb'\] that the model does not predict.*--map"):
        match_classes(["covid", "tb", "effusion", "NORMAL"], CLASSES)
    assert match_classes(["covid", "NORMAL"], CLASSES) == {"covid": "COVID-19", "NORMAL": "Normal"}
    assert match_classes(["sick", "ok"], CLASSES, {"Sick": "Pneumonia", "ok": "normal"}) == {
        "sick": "Pneumonia", "ok": "Normal"}


def test_table2_row_prints_percentages_with_intervals():
    m = evaluate_probabilities(Y, P, CLASSES, n_boot=100)
    row = table2_row("demo", m)
    assert row.startswith("demo | 70.00% [")
    assert f"{m['loss']:.4f} [" in row
    assert table2({"demo": m}).splitlines()[0] == "| model | accuracy | loss | AUC | F1 | recall | precision |"


def test_vectorised_resample_metrics_equal_scikit_learn():
    from cxr_core.training.evaluate import _scalars, replicate_scalars

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    p = rng.dirichlet([1, 1, 1], 40)
    p[:5] = p[5]  # ties in every class's scores
    idx = rng.integers(0, 40, (6, 40))
    idx[0, :] = np.where(y == 2)[0][0]  # a resample with a single class: AUC undefined, macro over 1 class
    counts = np.zeros((6, 40))
    np.add.at(counts, (np.arange(6)[:, None], idx), 1.0)
    fast = replicate_scalars(y, p, 3, counts)
    for b in range(6):
        slow = _scalars(y[idx[b]], p[idx[b]], 3)
        for key, value in slow.items():
            if np.isnan(value):
                assert np.isnan(fast[key][b]), (b, key)
            else:
                assert fast[key][b] == pytest.approx(value, abs=1e-9), (b, key)


# --- the `evaluate` command: prints by default, changes the model card only with --record ---------------------

CLI_NAME = "tiny-resnet-3class"
CLI_LABEL = {"covid": "COVID-19", "normal": "Normal", "pneumonia": "Pneumonia"}


def _digest(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def cli_model(tiny_registry, tmp_path, monkeypatch):
    """A copy of the 3-class tiny model in a registry of this test's own, and 10 real films in class folders."""
    import shutil

    from conftest import FIXTURES

    weights = tmp_path / "weights"
    shutil.copytree(tiny_registry / CLI_NAME, weights / CLI_NAME)
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(weights))
    data = tmp_path / "films"
    for film in sorted((FIXTURES / "cxr").glob("*.png")) + sorted((FIXTURES / "ood").glob("*.png")):
        folder = data / CLI_LABEL[film.name.split("_")[0]]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(film, folder / film.name)
    return weights / CLI_NAME, data


def test_evaluate_prints_and_writes_json_but_leaves_the_card_byte_identical(cli_model, tmp_path, capsys):
    import json

    from cxr_core.cli import main

    folder, data = cli_model
    before = _digest(folder)
    assert main(["evaluate", "--model", CLI_NAME, "--data", str(data), "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    assert f"{CLI_NAME} on {data} (all, 10 images)" in out and f"{CLI_NAME} | " in out
    assert "not recorded: the model's card is unchanged" in out
    assert _digest(folder) == before

    assert main(["evaluate", "--model", CLI_NAME, "--data", str(data), "--n-boot", "20", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"] == "all" and printed["metrics"]["n"] == 10
    target = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", CLI_NAME, "--data", str(data), "--n-boot", "20", "--json", str(target)]) == 0
    assert f"metrics written to {target}" in capsys.readouterr().out
    assert json.loads(target.read_text()) == printed  # same seed, same numbers
    assert _digest(folder) == before


def test_evaluate_with_record_adds_the_block_to_the_card(cli_model, capsys):
    import json

    from cxr_core.cli import main
    from cxr_core.models.manifest import read_card

    folder, data = cli_model
    card_before = read_card(folder)
    assert main(["evaluate", "--model", CLI_NAME, "--data", str(data), "--n-boot", "20", "--json", "--record"]) == 0
    printed = json.loads(capsys.readouterr().out)
    card = read_card(folder)
    assert card.metrics == {**card_before.metrics, f"{data.name}/all": printed["metrics"]}
    assert card.sha256 == card_before.sha256 and card.classes == card_before.classes


def test_evaluate_refuses_record_with_no_save_and_changes_nothing(cli_model, capsys):
    from cxr_core.cli import main

    folder, data = cli_model
    before = _digest(folder)
    assert main(["evaluate", "--model", CLI_NAME, "--data", str(data), "--record", "--no-save"]) == 2
    assert "--record and --no-save contradict each other" in capsys.readouterr().err
    assert _digest(folder) == before
