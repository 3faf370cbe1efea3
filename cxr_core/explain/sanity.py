"""Sanity checks for heatmaps (Adebayo et al., NeurIPS 2018) and their faithfulness (Petsiuk et al., 2018).

A heatmap that does not change when the model's learned weights are replaced by random ones cannot
be explaining what the model learnt; the paper shows that some popular methods behave like an edge
detector. Two randomisations are run on a **copy** of the model (the loaded model is never touched):

* **cascading**: re-initialise the layers from the top (logits) down, one block more per step,
  cumulatively, so the last step is a fully random network;
* **independent**: re-initialise one block at a time, the rest keeping their learned weights.

Each layer is re-initialised by its own initializers (Glorot, He, ones/zeros for batch norm ...),
seeded. At each step the maps of the randomised copy are compared with the original maps of the
same films by Spearman rank correlation and SSIM (Wang et al. 2004), as in the paper's Figure 2,
with a mean and a bootstrap 95% interval over films.

**Verdict** (:data:`THRESHOLD`): a method passes when, after the full cascade, the mean absolute
Spearman correlation and the upper end of its 95% interval are both below 0.5; it fails when the
mean is at or above 0.5; in between it is inconclusive (too few films or too much spread). See
:data:`THRESHOLD_REASON` for why.

The record (``sanity --json FILE``, ``--record`` -> ``weights/NAME/sanity.json``), schema ``cxr-sanity/1``::

    model, model_sha256, data, films[], n_films, predicted{class: n}, seconds
    settings{heatmap_side, faithfulness_steps, n_boot, seed, substrate, probability, target, blocks[]}
    threshold{measure, value, rule, why}
    methods{gradcam|gradcam++: {verdict: pass|fail|inconclusive, reason, films_compared, films_left_out,
        cascade[row], independent[row], faithfulness{deletion|insertion: {auc, fractions[], mean_curve[]}}}}
    random_baseline{faithfulness{...as above}}
    row = {step, block, layers[], spearman, spearman_abs, ssim, blank_maps}; spearman, spearman_abs, ssim and
    auc are {mean, ci95: [lo, hi]} over films

One module of about 430 lines by choice: the randomisation, the comparison and the verdict are one study,
read top to bottom; the record's schema above is its table of contents.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxr_core.explain.binarize import normalize, upsample
from cxr_core.errors import CXRError
from cxr_core.explain.faithfulness import STEPS, model_probabilities, network_pixels, perturbation_curves
from cxr_core.models.zoo import ModelSpec

SCHEMA = "cxr-sanity/1"
METHODS = ("gradcam", "gradcam++")
#: Where ``sanity --record`` keeps the last run, next to the model's card.
RECORD_FILE = "sanity.json"
#: Mean |Spearman rho| after the full cascade below which a method passes.
THRESHOLD = 0.5
THRESHOLD_REASON = (
    "Adebayo et al. (2018) set no numeric cut-off: they judge the curves, in which the methods they call "
    "sensitive to the model (gradients, Grad-CAM) fall towards zero rank correlation as the layers are "
    "randomised, while those that fail (Guided Backprop, Guided Grad-CAM) stay close to the original maps, "
    "like an edge detector. 0.5 is half-way between the same ranking (1) and an unrelated one (0); the mean "
    "over films and the upper end of its 95% bootstrap interval must both be below it, so that a few films "
    "cannot pass by chance."
)
SUBSTRATE_TEXT = {"blur": "Gaussian blur (RISE: 11 px, sigma 5 at 224 px, scaled to the input side)",
                  "mean": "the film's mean value"}
#: Name prefixes that group a base's layers into blocks (ResNet, EfficientNet, VGG, Xception); else the layer name.
BLOCK_PATTERN = re.compile(r"^(conv\d+_block\d+|block\d+[a-z]?|stem|top|conv\d+)(?=_|$)")

#: ``explain() -> (n, S, S)`` maps of the films from the model copy's current weights.
Explainer = Callable[[], np.ndarray]


class SanityError(CXRError):
    """The sanity check cannot run on this model or these films (the message says why)."""


# --- similarity measures ------------------------------------------------------------------------

def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' pixels (``scipy.stats.spearmanr``, ties ranked by their mean).

    A constant map has no ranking to share: its correlation with anything is taken as 0, never NaN.
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise SanityError(f"maps differ in size: {np.shape(a)} and {np.shape(b)}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity of two (H, W) maps (Wang et al. 2004), as ``skimage``'s with Gaussian weights.

    Gaussian window of ``sigma`` 1.5 truncated at 3.5 sigma (11 x 11), K1 = 0.01, K2 = 0.03, population
    (co)variances, reflected borders, and the mean taken away from a border as wide as the window's
    radius: ``skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True,
    use_sample_covariance=False)``, which the tests check. Both maps must be at least 11 x 11.
    """
    from scipy.ndimage import gaussian_filter

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    truncate = 3.5
    pad = int(truncate * sigma + 0.5)
    if x.shape != y.shape or x.ndim != 2 or min(x.shape) < 2 * pad + 1:
        raise SanityError(f"SSIM needs two (H, W) maps of the same size, at least {2 * pad + 1} pixels a side; "
                          f"got {x.shape} and {y.shape}")

    def blur(img):
        return gaussian_filter(img, sigma, mode="reflect", truncate=truncate)

    ux, uy = blur(x), blur(y)
    vx, vy, vxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return float(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean())


def edge_maps(films: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of each film, min-max scaled: the paper's model-free "edge detector" control."""
    import cv2

    out = []
    for film in np.asarray(films, np.float32):
        gx, gy = cv2.Sobel(film, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(film, cv2.CV_32F, 0, 1, ksize=3)
        out.append(np.hypot(gx, gy))
    return normalize(np.stack(out))


# --- randomising a copy of the model ---------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """A group of layers randomised together (one row of the cascade)."""

    name: str
    layers: tuple


def _flat_layers(model) -> list:
    import keras

    out = []
    for layer in model.layers:
        out.extend(_flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def _initializer(layer, variable):
    """The layer's own initializer for ``variable`` (``kernel`` -> ``kernel_initializer`` ...), or None."""
    name = variable.name.split("/")[-1].split(":")[0]
    for attr in (f"{name}_initializer", f"{name.removesuffix('_kernel')}_initializer", "depthwise_initializer"):
        if attr == "depthwise_initializer" and name != "kernel":
            continue
        init = getattr(layer, attr, None)
        if init is not None and callable(init):
            return init
    return None


def randomisable(layer) -> list:
    """``(variable, initializer)`` for each of the layer's weights that has an initializer of its own.

    Weights without one (a Normalization layer's adapted mean and variance) are preprocessing, not
    learning, and stay as they are.
    """
    pairs = []
    for v in layer.weights:
        init = _initializer(layer, v)
        if init is not None:
            pairs.append((v, init))
    return pairs


def blocks_top_down(model) -> list[Block]:
    """The model's randomisable layers, grouped into blocks by name, from the output down to the input."""
    blocks: list[Block] = []
    for layer in reversed(_flat_layers(model)):
        if not randomisable(layer):
            continue
        match = BLOCK_PATTERN.match(layer.name)
        key = match.group(1) if match else layer.name
        if blocks and blocks[-1].name == key:
            blocks[-1] = Block(key, blocks[-1].layers + (layer,))
        else:
            blocks.append(Block(key, (layer,)))
    if not blocks:
        raise SanityError(f"model {model.name!r} has no layer with weights to randomise")
    return blocks


class RandomisedCopy:
    """A clone of a Keras model whose blocks can be re-initialised and restored; the original is never changed."""

    def __init__(self, model, *, seed: int = 0):
        import keras

        try:
            self.model = keras.models.clone_model(model)
            self.model.set_weights(model.get_weights())
        except Exception as exc:  # Keras raises many types for models it cannot clone
            raise SanityError(f"cannot copy model {model.name!r} to randomise it: {exc}") from exc
        self.seed = int(seed)
        self.blocks = blocks_top_down(self.model)
        self._saved = {id(v): np.array(v.numpy())
                       for b in self.blocks for lyr in b.layers for v, _ in randomisable(lyr)}

    def randomise(self, block: Block) -> None:
        """Re-initialise the block's weights with their own initializers, seeded by seed and weight path."""
        for layer in block.layers:
            for v, init in randomisable(layer):
                cfg = init.get_config()
                if "seed" in cfg:
                    cfg["seed"] = (self.seed * 1_000_003 + zlib.crc32(v.path.encode())) % (2 ** 31)
                fresh = type(init).from_config(cfg)
                v.assign(np.asarray(fresh(tuple(v.shape), dtype=v.dtype)))

    def restore(self, blocks: Sequence[Block] | None = None) -> None:
        """Put the learned weights back (of ``blocks``, or of every block)."""
        for block in self.blocks if blocks is None else blocks:
            for layer in block.layers:
                for v, _ in randomisable(layer):
                    v.assign(self._saved[id(v)])


# --- the study ----------------------------------------------------------------------------------

def mean_ci(values: Sequence[float], *, n_boot: int, seed: int) -> dict:
    """``{"mean", "ci95": [lo, hi]}`` of the finite values (percentile bootstrap over films); None when empty."""
    from cxr_core.stats import bootstrap_ci

    mean, lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    if not np.isfinite(mean):
        return {"mean": None, "ci95": [None, None]}
    return {"mean": float(mean), "ci95": [float(lo), float(hi)]}


def compare(original: np.ndarray, randomised: np.ndarray, *, n_boot: int, seed: int) -> dict:
    """Spearman (signed and absolute) and SSIM between each film's original and randomised map."""
    rho = np.array([spearman(a, b) for a, b in zip(original, randomised)])
    sim = np.array([ssim(a, b) for a, b in zip(original, randomised)])
    return {
        "spearman": mean_ci(rho, n_boot=n_boot, seed=seed),
        "spearman_abs": mean_ci(np.abs(rho), n_boot=n_boot, seed=seed),
        "ssim": mean_ci(sim, n_boot=n_boot, seed=seed),
        "blank_maps": int(sum(np.ptp(m) == 0 for m in randomised)),
    }


def randomisation_study(copy: RandomisedCopy, explain: Explainer, *, independent: bool = True,
                        n_boot: int = 1000, seed: int = 0) -> dict:
    """Cascading (and independent) randomisation of ``copy``, comparing ``explain()``'s maps with the originals.

    Films whose original map is blank (constant) have no ranking to compare and are left out
    (``films_left_out``). The copy's learned weights are restored at the end.

    Returns
    -------
    dict
        ``{"films_compared", "films_left_out", "cascade": [row, ...], "independent": [row, ...]}``; a row is
        ``{"step", "block", "layers", "spearman", "spearman_abs", "ssim", "blank_maps"}`` where each measure
        is ``{"mean", "ci95"}``.
    """
    copy.restore()
    original = np.asarray(explain())
    keep = np.array([np.ptp(m) > 0 for m in original])
    if not keep.any():
        raise SanityError("every film's original map is blank: the method finds no evidence to compare")
    original = original[keep]

    def row(step: int, block: Block) -> dict:
        maps = np.asarray(explain())[keep]
        return {"step": step, "block": block.name, "layers": [lyr.name for lyr in block.layers],
                **compare(original, maps, n_boot=n_boot, seed=seed)}

    result = {"films_compared": int(keep.sum()), "films_left_out": int((~keep).sum()), "cascade": [],
              "independent": []}
    try:
        for step, block in enumerate(copy.blocks, start=1):
            copy.randomise(block)
            result["cascade"].append(row(step, block))
        copy.restore()
        if independent:
            for step, block in enumerate(copy.blocks, start=1):
                copy.randomise(block)
                result["independent"].append(row(step, block))
                copy.restore([block])
    finally:
        copy.restore()
    return result


def verdict(cascade: Sequence[dict], threshold: float = THRESHOLD) -> dict:
    """Pass, fail or inconclusive from the last cascade row's mean |Spearman| and its 95% interval."""
    last = cascade[-1]["spearman_abs"]
    mean, hi = last["mean"], last["ci95"][1]
    if mean is None:
        return {"verdict": "inconclusive", "reason": "no film could be compared"}
    detail = f"mean |Spearman rho| after full randomisation {mean:.3f} (95% CI up to {hi:.3f}), threshold {threshold}"
    if mean >= threshold:
        return {"verdict": "fail",
                "reason": f"{detail}: the maps of a random network rank pixels much as the trained model's do"}
    if hi < threshold:
        return {"verdict": "pass", "reason": f"{detail}: the maps depend on the learned weights"}
    return {"verdict": "inconclusive", "reason": f"{detail}: below on average, but the interval reaches it"}


def cam_explainer(engine, films: np.ndarray, targets: np.ndarray, method: str) -> Explainer:
    """Maps of ``method`` for (n, S, S) films, each explaining its own target class, at S x S in [0, 1]."""
    side = films.shape[1]

    def explain() -> np.ndarray:
        maps = np.zeros(films.shape, np.float32)
        for target in np.unique(targets):
            idx = np.flatnonzero(targets == target)
            for i, res in zip(idx, engine.run_arrays(list(films[idx]), method=method, target=int(target))):
                if not res.all_zero:
                    maps[i] = normalize(upsample(res.grid, (side, side)))
        return maps
    return explain


def faithfulness_summary(curves, *, n_boot: int, seed: int) -> dict:
    """AUC (mean and 95% interval over films) and the mean curve of one set of :class:`Curves`."""
    return {"auc": mean_ci(curves.auc, n_boot=n_boot, seed=seed),
            "fractions": [round(float(f), 6) for f in curves.fractions],
            "mean_curve": [float(v) for v in curves.scores.mean(axis=0)]}


def run_sanity(model, spec: ModelSpec, classes: Sequence[str], films: Sequence[np.ndarray], *,
               methods: Sequence[str] = METHODS, independent: bool = True, steps: int = STEPS,
               substrate: str = "blur", n_boot: int = 1000, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> dict:
    """Randomisation checks and deletion/insertion curves for one model on some films.

    Parameters
    ----------
    model : the loaded Keras model (read, never modified: randomisation works on a clone).
    spec : its :class:`~cxr_core.models.zoo.ModelSpec`.
    classes : its classes, in output order.
    films : (H, W) [0, 1] pixel arrays; each is explained for the class the model gives it.
    methods : CAM methods to check (of :data:`METHODS`).
    independent : also randomise one block at a time (the cascade always runs).
    steps, substrate : deletion/insertion settings (:func:`~cxr_core.explain.faithfulness.perturbation_curves`).
    n_boot, seed : bootstrap resamples; the seed of re-initialisation, tie order and bootstrap.
    progress : called with a short line as each stage starts.

    Returns
    -------
    dict
        JSON-ready: ``settings``, ``threshold``, ``predicted`` (class counts), ``methods`` (per method:
        ``verdict``, ``reason``, ``cascade``, ``independent``, ``faithfulness``), ``random_baseline``
        (its ``faithfulness``) and ``seconds``.
    """
    from cxr_core.explain.cam import CamEngine, CamUnavailableError

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SanityError(f"method {', '.join(unknown) or '(none)'} cannot be checked; expected {', '.join(METHODS)}")
    if substrate not in SUBSTRATE_TEXT:
        raise SanityError(f"substrate must be one of {', '.join(SUBSTRATE_TEXT)}; got {substrate!r}")
    if not films:
        raise SanityError("no films to run the checks on")
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    net = np.stack([network_pixels(np.asarray(f, np.float32), spec) for f in films])
    flat_spec = replace(spec, mask_markers=False, crop_lungs=False)  # the films are already as the network sees them
    copy = RandomisedCopy(model, seed=seed)
    try:
        engine = CamEngine.from_model(copy.model, flat_spec, classes)
    except CamUnavailableError as exc:
        raise SanityError(str(exc)) from exc
    first = engine.run_arrays(list(net), method=methods[0])
    targets = np.array([r.target_index for r in first])
    probs = model_probabilities(model, flat_spec)
    result: dict = {
        "schema": SCHEMA,
        "settings": {"heatmap_side": int(spec.input_size), "faithfulness_steps": int(steps), "n_boot": int(n_boot),
                     "seed": int(seed), "substrate": SUBSTRATE_TEXT.get(substrate, substrate),
                     "probability": "the model's own softmax (no temperature scaling)",
                     "target": "each film's top class on the original model",
                     "blocks": [b.name for b in copy.blocks]},
        "threshold": {"measure": "mean |Spearman rho| after the full cascade", "value": THRESHOLD,
                      "rule": "pass: mean and 95% upper bound below; fail: mean at or above; else inconclusive",
                      "why": THRESHOLD_REASON},
        "n_films": len(films),
        "predicted": {c: int((targets == i).sum()) for i, c in enumerate(classes) if (targets == i).any()},
        "methods": {},
    }

    def faithfulness(heat: np.ndarray) -> dict:
        curves = {mode: perturbation_curves(probs, net, heat, targets, mode=mode, steps=steps, substrate=substrate,
                                            seed=seed) for mode in ("deletion", "insertion")}
        return {mode: faithfulness_summary(c, n_boot=n_boot, seed=seed) for mode, c in curves.items()}

    for method in methods:
        say(f"{method}: randomising {len(copy.blocks)} blocks")
        explain = cam_explainer(engine, net, targets, method)
        study = randomisation_study(copy, explain, independent=independent, n_boot=n_boot, seed=seed)
        say(f"{method}: deletion and insertion")
        result["methods"][method] = {**verdict(study["cascade"]), **study, "faithfulness": faithfulness(explain())}
    say("random baseline: deletion and insertion")
    result["random_baseline"] = {"faithfulness": faithfulness(cam_explainer(engine, net, targets, "random")())}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def read_record(folder: Path | str) -> dict | None:
    """The last recorded run in ``folder/sanity.json``; None when there is none.

    Raises
    ------
    SanityError
        The file exists but is not a sanity record (unreadable, not JSON, another schema).
    """
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SanityError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or not isinstance(record.get("methods"), dict):
        raise SanityError(f"{path} is not a sanity record of schema {SCHEMA}")
    return record
