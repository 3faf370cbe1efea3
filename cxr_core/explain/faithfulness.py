"""Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018): does a heatmap point at what the model uses?

Pixels are taken in decreasing heatmap order in ``steps`` equal steps. **Deletion** replaces them, step
by step, with a blurred copy of the film (or its mean value); **insertion** starts from the blurred
film (or a flat one) and puts the original pixels back. After each step the model's probability of
the explained class is recorded; the area under that curve over the fraction of pixels (trapezoid
rule) is the score. A faithful heatmap
gives a *low* deletion AUC (the score falls as soon as the marked pixels go) and a *high* insertion
AUC (the score comes back as soon as they return). Both are read next to the same curves for the
random-heatmap baseline: a method is only informative where it beats it.

Everything happens on the film as the network sees it (resized to its input side, markers masked
when the model was trained that way): perturbing the [0, 1] pixels there and then scaling is the same
as perturbing the network input, because the scaling is per pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from cxr_core.errors import CXRError
from cxr_core.models.preprocess import resize, scale, to_rgb
from cxr_core.models.zoo import ModelSpec

#: Default number of steps (the curves have ``steps + 1`` points, fractions 0, 1/steps, ..., 1).
STEPS = 16
#: RISE blurs with an 11-pixel Gaussian kernel of sigma 5 at 224 px; the kernel scales with the input side.
RISE_SIDE, RISE_KERNEL, RISE_SIGMA = 224, 11, 5.0

#: ``probs(films) -> (n, classes)``: the model's probabilities for (n, S, S) films in [0, 1].
ProbFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Curves:
    """Deletion or insertion curves for n films.

    Attributes
    ----------
    mode : {"deletion", "insertion"}
    fractions : (steps + 1,) ndarray, the share of pixels removed (deletion) or restored (insertion).
    scores : (n, steps + 1) ndarray, the probability of each film's explained class at each step.
    auc : (n,) ndarray, the trapezoid area under each film's curve (in [0, 1]).
    """

    mode: str
    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray


def network_pixels(pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The (S, S) film in [0, 1] the network sees, before its scaling: :func:`~cxr_core.models.preprocess.prepare`'s steps."""
    if spec.mask_markers:
        from cxr_core.safety.markers import mask_markers

        pixels = mask_markers(pixels)
    if getattr(spec, "crop_lungs", False):  # a lung-crop model sees (and is explained on) its crop
        from cxr_core.models.preprocess import lung_crop_of

        pixels = lung_crop_of(np.asarray(pixels, np.float32)).pixels
    return resize(np.asarray(pixels, np.float32), spec.input_size).astype(np.float32)


def blurred(film: np.ndarray) -> np.ndarray:
    """RISE's substrate: the film under a Gaussian blur (11 px, sigma 5 at 224 px, scaled to the film's side)."""
    side = film.shape[0]
    k = max(3, int(round(RISE_KERNEL * side / RISE_SIDE)) | 1)
    return cv2.GaussianBlur(np.asarray(film, np.float32), (k, k), RISE_SIGMA * side / RISE_SIDE,
                            borderType=cv2.BORDER_REFLECT_101)


#: What removed pixels become (deletion) and what insertion starts from.
SUBSTRATES = ("blur", "mean")


def substrate_of(film: np.ndarray, substrate: str = "blur") -> np.ndarray:
    """The film with nothing to see: :func:`blurred` (RISE), or every pixel at the film's mean ("mean")."""
    if substrate == "blur":
        return blurred(film)
    if substrate == "mean":
        return np.full_like(np.asarray(film, np.float32), float(np.mean(film)))
    raise CXRError(f"substrate must be one of {', '.join(SUBSTRATES)}; got {substrate!r}")


def pixel_order(heatmap: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices in decreasing heatmap order; ties (e.g. zeros after the ReLU) in a seeded random order."""
    heat = np.asarray(heatmap, np.float64).ravel()
    tiebreak = np.random.default_rng(seed).permutation(heat.size)
    return np.lexsort((tiebreak, -heat))


def model_probabilities(model, spec: ModelSpec, batch_size: int = 32) -> ProbFn:
    """A :data:`ProbFn` for a Keras model: scale the films as ``spec`` says and return its raw softmax."""
    def probs(films: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(films), batch_size):
            chunk = np.asarray(films[start:start + batch_size], np.float32)
            x = np.stack([scale(to_rgb(f) * 255.0, spec.preprocessing) for f in chunk]).astype(np.float32)
            out.append(np.asarray(model(x, training=False), np.float64))
        return np.concatenate(out) if out else np.zeros((0, 0))
    return probs


def perturbation_curves(probs: ProbFn, films: np.ndarray, heatmaps: np.ndarray, targets: np.ndarray, *,
                        mode: str, steps: int = STEPS, substrate: str = "blur", seed: int = 0) -> Curves:
    """Deletion or insertion curves for each film, its heatmap and its explained class.

    Parameters
    ----------
    probs : the model, as ``(m, S, S) films -> (m, classes) probabilities``.
    films : (n, S, S) ndarray in [0, 1], as the network sees them (:func:`network_pixels`).
    heatmaps : (n, S, S) ndarray, any real values; only their order matters.
    targets : (n,) int ndarray, the class each heatmap explains.
    mode : "deletion" (replace pixels with the substrate's) or "insertion" (start from the substrate).
    steps : number of equal steps from no pixel to every pixel.
    substrate : "blur" (RISE's blurred film) or "mean" (the film's mean value), see :func:`substrate_of`.
    seed : orders tied heatmap values (film i uses ``seed + i``).

    Returns
    -------
    Curves
    """
    if mode not in ("deletion", "insertion"):
        raise CXRError(f"mode must be 'deletion' or 'insertion'; got {mode!r}")
    if substrate not in SUBSTRATES:
        raise CXRError(f"substrate must be one of {', '.join(SUBSTRATES)}; got {substrate!r}")
    if steps < 1:
        raise CXRError(f"steps must be at least 1; got {steps}")
    films = np.asarray(films, np.float32)
    heatmaps = np.asarray(heatmaps)
    if films.ndim != 3 or heatmaps.shape != films.shape or len(targets) != len(films):
        raise CXRError(f"films {films.shape}, heatmaps {heatmaps.shape} and {len(targets)} targets do not match; "
                       "expected (n, S, S) twice and n targets")
    n, rows, cols = films.shape
    total = rows * cols
    counts = np.round(np.linspace(0, total, steps + 1)).astype(int)
    scores = np.empty((n, steps + 1))
    for i in range(n):
        film, empty = films[i].ravel(), substrate_of(films[i], substrate).ravel()
        start, end = (film, empty) if mode == "deletion" else (empty, film)
        order = pixel_order(heatmaps[i], seed + i)
        batch = np.empty((steps + 1, total), np.float32)
        for k, count in enumerate(counts):
            batch[k] = start
            batch[k, order[:count]] = end[order[:count]]
        scores[i] = probs(batch.reshape(steps + 1, rows, cols))[:, int(targets[i])]
    fractions = counts / total
    return Curves(mode, fractions, scores, np.trapezoid(scores, fractions, axis=1))
