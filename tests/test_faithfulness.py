"""Deletion and insertion curves (RISE): a heatmap on the region a model uses must give a low deletion AUC
and a high insertion AUC; one pointing elsewhere the opposite."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.errors import CXRError
from cxr_core.explain.faithfulness import blurred, perturbation_curves, pixel_order

SIDE = 32
REGION = (slice(0, 12), slice(0, 12))  # the only place the model looks


def texture_films(n: int) -> np.ndarray:
    """Fine random texture everywhere: blurring it away is what the model notices."""
    return np.random.default_rng(0).uniform(0, 1, (n, SIDE, SIDE)).astype(np.float32)


def region_model(films: np.ndarray) -> np.ndarray:
    """Probability of class 1 rises with the texture (standard deviation) inside REGION only."""
    texture = np.array([f[REGION].std() for f in films])
    p1 = 1.0 / (1.0 + np.exp(-60.0 * (texture - 0.22)))
    return np.stack([1.0 - p1, p1], axis=1)


def heat_on(region) -> np.ndarray:
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    heat = np.zeros((SIDE, SIDE), np.float32)
    heat[region] = 1.0
    return heat + 0.01 * (yy + xx) / SIDE  # a gentle slope so the order is not all ties


def curves(heat, mode, steps=8):
    films = texture_films(4)
    return perturbation_curves(region_model, films, np.stack([heat] * 4), np.ones(4, int), mode=mode, steps=steps)


def test_deletion_is_low_when_the_heatmap_points_at_what_the_model_uses():
    on, off = curves(heat_on(REGION), "deletion"), curves(heat_on((slice(20, 32), slice(20, 32))), "deletion")
    assert on.scores[:, 0] == pytest.approx(off.scores[:, 0]) and on.scores[0, 0] > 0.9  # same intact films
    assert on.auc.mean() < 0.25 < 0.75 < off.auc.mean()
    assert on.fractions.tolist() == pytest.approx([k / 8 for k in range(9)])
    assert np.all(on.scores[:, -1] < 0.05) and np.all(off.scores[:, -1] < 0.05)  # every pixel blurred either way


def test_insertion_is_high_when_the_heatmap_points_at_what_the_model_uses():
    on, off = curves(heat_on(REGION), "insertion"), curves(heat_on((slice(20, 32), slice(20, 32))), "insertion")
    assert on.scores[:, 0] == pytest.approx(off.scores[:, 0]) and on.scores[0, 0] < 0.05  # all blurred at the start
    assert off.auc.mean() < 0.25 < 0.75 < on.auc.mean()


def test_auc_is_the_trapezoid_area_over_the_fraction_of_pixels():
    got = curves(heat_on(REGION), "deletion", steps=4)
    by_hand = [sum((s[k] + s[k + 1]) / 2 * 0.25 for k in range(4)) for s in got.scores]
    assert got.auc == pytest.approx(by_hand)


def test_ties_are_broken_by_a_seed_and_the_highest_pixels_come_first():
    heat = np.zeros((4, 4))
    heat[1, 2] = 5.0
    order = pixel_order(heat, seed=1)
    assert order[0] == 6 and sorted(order) == list(range(16))
    assert np.array_equal(order, pixel_order(heat, seed=1)) and not np.array_equal(order, pixel_order(heat, seed=2))


def test_blur_keeps_the_mean_and_removes_texture():
    film = texture_films(1)[0]
    soft = blurred(film)
    assert soft.shape == film.shape and abs(soft.mean() - film.mean()) < 0.02 and soft.std() < film.std() / 2


def test_bad_arguments_are_refused():
    films = texture_films(2)
    with pytest.raises(CXRError, match="deletion' or 'insertion"):
        perturbation_curves(region_model, films, films, np.ones(2, int), mode="both")
    with pytest.raises(CXRError, match="do not match"):
        perturbation_curves(region_model, films, films[:, :10], np.ones(2, int), mode="deletion")


def test_mean_substrate_flattens_the_film():
    films = texture_films(2)
    mean = perturbation_curves(region_model, films, films, np.ones(2, int), mode="insertion", steps=2,
                               substrate="mean")
    assert np.all(mean.scores[:, 0] < 0.01) and np.all(mean.scores[:, -1] > 0.9)
    with pytest.raises(CXRError, match="substrate must be one of blur, mean"):
        perturbation_curves(region_model, films, films, np.ones(2, int), mode="insertion", substrate="zero")
