"""Consensus masks: majority vote's tie rule and binary STAPLE's estimates on cases with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cxr_core.annotation.consensus import ConsensusError, majority_vote, staple


def disc(shape=(40, 48), centre=(20, 24), radius=10) -> np.ndarray:
    rr, cc = np.mgrid[:shape[0], :shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def log_likelihood(d: np.ndarray, sens, spec, prior: float) -> float:
    """Brute-force marginal log-likelihood of the decisions (R, N): sum over both truths of every pixel."""
    total = 0.0
    for i in range(d.shape[1]):
        per_truth = []
        for truth in (0, 1):
            prob = prior if truth else 1 - prior
            for j in range(d.shape[0]):
                if truth:
                    prob *= sens[j] if d[j, i] else 1 - sens[j]
                else:
                    prob *= 1 - spec[j] if d[j, i] else spec[j]
            per_truth.append(prob)
        total += np.log(sum(per_truth))
    return total


def test_majority_is_strictly_more_than_half_and_a_tie_is_left_out():
    a, b, c = np.zeros((3, 2, 3), bool)
    a[0, :2] = True
    b[0, 1:] = True
    c[1, 0] = True
    np.testing.assert_array_equal(majority_vote([a, b, c]), [[False, True, False], [False, False, False]])
    # two readers: 1 of 2 is a tie, not a majority, so the consensus is the intersection
    np.testing.assert_array_equal(majority_vote(np.stack([a, b])), a & b)
    np.testing.assert_array_equal(majority_vote([a, b, c, c]), np.zeros((2, 3), bool))  # 2 of 4 everywhere at most
    np.testing.assert_array_equal(majority_vote([a]), a)


def test_bad_input_names_what_was_got():
    with pytest.raises(ConsensusError, match="share its size"):
        majority_vote([np.zeros((4, 4), bool), np.zeros((4, 5), bool)])
    with pytest.raises(ConsensusError, match="readers, rows, cols"):
        staple(np.zeros((4, 4), bool))
    with pytest.raises(ConsensusError, match="readers, rows, cols"):
        majority_vote(np.zeros((0, 4, 4), bool))
    with pytest.raises(ConsensusError, match="prior=1.5"):
        staple(np.zeros((2, 4, 4), bool), prior=1.5)


def test_identical_readers_give_their_mask_with_perfect_performance():
    truth = disc()
    result = staple(np.stack([truth] * 4))
    np.testing.assert_array_equal(result.mask(), truth)
    assert result.converged and result.iterations <= 5
    np.testing.assert_allclose(result.sensitivity, 1.0, atol=1e-9)
    np.testing.assert_allclose(result.specificity, 1.0, atol=1e-9)
    prob, sens, spec = result  # unpacks as the brief's triple
    assert prob.shape == truth.shape and sens.shape == spec.shape == (4,)


def test_a_reader_marking_at_random_gets_low_performance_and_is_outvoted():
    rng = np.random.default_rng(0)
    truth = disc()
    good = []
    for k in range(3):  # good readers: the disc with a few boundary pixels flipped each
        m = truth.copy()
        flip = rng.random(truth.shape) < 0.02
        good.append(m ^ flip)
    noise = rng.random(truth.shape) < 0.5
    result = staple(np.stack([*good, noise]))
    assert result.sensitivity[:3].min() > 0.95 and result.specificity[:3].min() > 0.95
    assert result.sensitivity[3] < 0.65 and result.specificity[3] < 0.65  # about 0.5: chance
    assert (result.mask() == truth).mean() > 0.99  # the noise is out-voted
    assert (majority_vote(np.stack([*good, noise])) == truth).mean() > 0.99


def test_staple_is_a_fixed_point_and_a_local_maximum_of_the_brute_force_likelihood():
    rng = np.random.default_rng(3)
    truth = rng.random((3, 5)) < 0.4
    d = np.stack([truth ^ (rng.random(truth.shape) < e) for e in (0.05, 0.15, 0.3)])
    prior = 0.4
    result = staple(d, prior=prior, tol=1e-12, max_iter=5000)
    flat = d.reshape(3, -1)
    sens, spec = result.sensitivity, result.specificity
    # E-step by enumeration: P(truth=1 | decisions) with the returned performance
    for i, pixel in enumerate(np.ndindex(truth.shape)):
        like = {}
        for t in (0, 1):
            prob = prior if t else 1 - prior
            for j in range(3):
                hit = flat[j, i]
                prob *= (sens[j] if hit else 1 - sens[j]) if t else (1 - spec[j] if hit else spec[j])
            like[t] = prob
        assert result.probability[pixel] == pytest.approx(like[1] / (like[0] + like[1]), abs=1e-6)
    # EM climbs the marginal likelihood: no small step of any parameter does better
    best = log_likelihood(flat, sens, spec, prior)
    for j, which, step in itertools.product(range(3), ("sens", "spec"), (-0.01, 0.01)):
        s2, q2 = sens.copy(), spec.copy()
        (s2 if which == "sens" else q2)[j] = np.clip((s2 if which == "sens" else q2)[j] + step, 1e-9, 1 - 1e-9)
        assert log_likelihood(flat, s2, q2, prior) <= best + 1e-9


def test_empty_and_full_masks_are_handled():
    empty = staple(np.zeros((3, 6, 6), bool))
    assert not empty.mask().any() and empty.converged
    np.testing.assert_allclose(empty.specificity, 1.0)
    full = staple(np.ones((2, 6, 6), bool))
    assert full.mask().all()
    np.testing.assert_allclose(full.sensitivity, 1.0)
