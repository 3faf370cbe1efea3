"""The one bootstrap: coverage of a known mean, clustering, seeding, and every caller on one convention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_core import stats
from cxr_core.stats import (
    BootstrapError,
    bootstrap,
    bootstrap_ci,
    percentile_interval,
    replicate_means,
    resample_counts,
)


def test_percentile_interval_is_numpy_linear_percentiles_of_finite_replicates():
    assert percentile_interval(np.arange(101.0), 0.9) == (5.0, 95.0)
    reps = np.random.default_rng(0).normal(size=999)
    assert percentile_interval(reps) == tuple(np.percentile(reps, [2.5, 97.5], method="linear"))
    assert percentile_interval(np.append(reps, [np.nan, np.inf])) == percentile_interval(reps)
    assert all(math.isnan(v) for v in percentile_interval([np.nan, np.nan]))


def test_counts_draw_n_items_per_resample_and_whole_clusters_together():
    counts = np.concatenate(list(resample_counts(7, n_boot=50, seed=1)))
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    clusters = np.array(["a", "a", "a", "b", "c"])
    counts = np.concatenate(list(resample_counts(5, n_boot=200, seed=1, clusters=clusters)))
    assert (counts[:, 0] == counts[:, 1]).all() and (counts[:, 1] == counts[:, 2]).all()  # a's films move together
    assert set((counts[:, [0, 3, 4]].sum(axis=1)).astype(int)) <= {3}  # three clusters drawn per resample
    # Singleton clusters are the plain bootstrap, draw for draw.
    plain = np.concatenate(list(resample_counts(5, n_boot=20, seed=2)))
    single = np.concatenate(list(resample_counts(5, n_boot=20, seed=2, clusters=list("vwxyz"))))
    assert (plain == single).all()


def test_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    hits = 0
    trials = 300
    for t in range(trials):
        sample = rng.normal(loc=2.0, scale=1.0, size=40)
        _, lo, hi = bootstrap_ci(sample, n_boot=400, seed=t)
        hits += lo <= 2.0 <= hi
    # Percentile intervals at n = 40 run a little narrow; a broken one (no resampling, wrong tails)
    # covers far less or always.
    assert 0.88 <= hits / trials <= 0.985


def test_clustered_interval_is_wider_when_a_patients_films_are_alike():
    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(15), 8)  # 15 patients, 8 films each
    values = rng.normal(0.0, 1.0, 15)[patients] + rng.normal(0.0, 0.05, patients.size)
    mean, lo, hi = bootstrap_ci(values, seed=0)
    c_mean, c_lo, c_hi = bootstrap_ci(values, seed=0, clusters=patients)
    assert c_mean == mean  # the point estimate is the image mean either way
    assert lo <= mean <= hi and c_lo <= mean <= c_hi
    assert (c_hi - c_lo) > 2 * (hi - lo)  # ~sqrt(8) wider: 15 patients' evidence, not 120 films'
    # Independent films (one per patient): clustering changes nothing.
    independent = rng.normal(size=60)
    assert bootstrap_ci(independent, seed=0) == bootstrap_ci(independent, seed=0, clusters=np.arange(60))


def test_same_seed_same_interval_other_seed_other_interval():
    values = np.random.default_rng(9).uniform(size=30)
    assert bootstrap_ci(values, seed=4) == bootstrap_ci(values, seed=4)
    assert bootstrap_ci(values, seed=4) != bootstrap_ci(values, seed=5)
    assert bootstrap_ci(np.append(values, np.nan), seed=4) == bootstrap_ci(values, seed=4)  # NaN dropped
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan]))
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))


def test_bad_requests_are_refused_with_the_values_named():
    with pytest.raises(BootstrapError, match="n_boot=0"):
        bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(BootstrapError, match="level=1.5"):
        percentile_interval([1.0], 1.5)
    with pytest.raises(BootstrapError, match="3 values, 2 labels"):
        bootstrap_ci([1.0, 2.0, 3.0], clusters=["a", "b"])


# --- every caller on the one convention ---------------------------------------------------------

def test_agreement_and_sanity_means_are_the_stats_bootstrap():
    from cxr_core import agreement
    from cxr_core.explain.sanity import mean_ci

    assert agreement.bootstrap_ci is stats.bootstrap_ci
    values = np.random.default_rng(3).uniform(size=25)
    mean, lo, hi = bootstrap_ci(values, n_boot=300, seed=7)
    assert mean_ci(values, n_boot=300, seed=7) == {"mean": mean, "ci95": [lo, hi]}


def test_evaluation_intervals_are_percentiles_of_resampled_accuracy():
    from cxr_core.training.evaluate import bootstrap_intervals

    y = np.array([0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 0])
    probs = np.full((len(y), 2), 0.2)
    pred = np.array([0, 1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1])
    probs[np.arange(len(y)), pred] = 0.8
    out = bootstrap_intervals(y, probs, ("a", "b"), n_boot=300, seed=11)
    correct = (pred == y).astype(float)
    by_hand = bootstrap(lambda w: w @ correct / w.sum(axis=1), len(y), n_boot=300, seed=11)
    assert out["accuracy"] == pytest.approx(list(percentile_interval(by_hand)))


def test_kappa_interval_is_percentiles_of_scikit_learn_kappa_on_the_same_resamples():
    from sklearn.metrics import cohen_kappa_score

    from cxr_core.agreement import diagnosis_agreement

    expert, model = list("aabbcabcab"), list("abbbcabcaa")
    d = diagnosis_agreement(expert, model, n_boot=60, seed=2)
    kappas = []
    for w in np.concatenate(list(resample_counts(len(expert), n_boot=60, seed=2))):
        idx = np.repeat(np.arange(len(expert)), w.astype(int))
        e, m = [expert[i] for i in idx], [model[i] for i in idx]
        chance_one = len(set(e) | set(m)) == 1
        kappas.append(np.nan if chance_one else cohen_kappa_score(e, m, labels=["a", "b", "c"]))
    assert (d.kappa_lo, d.kappa_hi) == pytest.approx(percentile_interval(kappas))


def test_audit_shares_use_the_clustered_bootstrap():
    from cxr_core.audit import ImageAudit
    from cxr_core.audit.stats import summarise

    rng = np.random.default_rng(0)
    shares = rng.uniform(0.2, 0.6, 24)
    patients = [f"p{i // 3}" for i in range(24)]
    images = [ImageAudit(f"{i}.png", "Normal", patients[i], "Normal", 0.9, {"outside_lungs": float(v)},
                         {"outside_lungs": 0.5}, [], "expert") for i, v in enumerate(shares)]
    region = summarise(images, regions=("outside_lungs",), n_boot=300, seed=8)["Normal"]["regions"]["outside_lungs"]
    mean, lo, hi = bootstrap_ci(shares, clusters=patients, n_boot=300, seed=8)
    assert (region["mean"], region["low"], region["high"]) == pytest.approx((mean, lo, hi))


def test_replicate_means_of_one_stream_differ_between_calls():
    gen = np.random.default_rng(0)
    values = np.arange(10.0)
    first, second = replicate_means(values, n_boot=50, seed=gen), replicate_means(values, n_boot=50, seed=gen)
    assert not np.array_equal(first, second)  # a Generator is consumed, not re-seeded
