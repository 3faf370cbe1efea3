"""Model-aware refusal: may this model score this input, or is it not a frontal chest X-ray?

:func:`screen` combines two kinds of evidence, from :mod:`cxr_core.safety.ood` and :mod:`cxr_core.safety.detector`:

- the pixel and DICOM-header checks (``image_findings``: colour, blank, noise, histogram, layout,
  modality, body part, view), which need no model;
- a feature detector (``FeatureOOD``, k-nearest-neighbour distance) fitted on the classifier's own
  training films and stored beside it as ``weights/<name>/ood.npz``, described with its SHA-256 in
  the card's ``ood`` entry. Its features are, by default, the bottleneck of the project's lung U-Net
  (:mod:`cxr_core.models.lungs`: mean and spread of each of its 64 channels): ``bench/bench_ood.py`` measured
  them against the classifier's own ``pool`` and ``hidden_1`` outputs on the demo model, and only
  they separate real films from photographs, crops, rotated and inverted films (AUROC 0.9998 versus
  at most 0.76). A classifier layer can still be chosen (``features="pool"``).

The threshold is the 99.5th percentile of the training films' scores under patient-grouped 5-fold
cross-fitting (each film scored against a bank without its own patient), so it describes films of
new patients, as the validation and test films are, without using them. With k = 1 ``bench/bench_ood.py``
measured 3 of 681 real films of held-out patients refused (0.44 %, 95 % CI 0.09-1.28 %; 520 films at
their stored size and 161 pediatric films restored to full-resolution wide shapes; all 3 adult ICU
COVID-19 films) and 332 of its 334 non-chest inputs refused together with the image checks.

A model without an ``ood`` entry is screened by the image checks alone. A refusal is a list of plain
sentences (``OODDecision.reasons``) with the measured figures beside them (``OODDecision.details``);
:func:`refusal_message` phrases it for the CLI, :func:`refusal_lines` for a page or report, and
:func:`override_record` logs an expert's decision to look at the scores anyway.

About 400 lines by choice: fitting a model's detector, storing it next to the model and applying it must
agree on one feature extractor and one threshold rule, so they stay in one module.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.errors import ChecksumError, CXRError, ModelError
from cxr_core.io.imaging import XRay
from cxr_core.safety.detector import DEFAULT_K, DEFAULT_METHOD, DEFAULT_PERCENTILE, FeatureOOD
from cxr_core.safety.ood import OODDecision, OODError, image_findings

DETECTOR_FILE = "ood.npz"
REFUSAL = "not analysed: this does not look like a frontal chest X-ray"
#: Feature source meaning the lung U-Net's bottleneck; any other source names a classifier layer.
LUNG_FEATURES = "lungseg"
LUNG_LAYER = "bottom_relu2"
#: Classifier layers tried, in order, when a classifier layer is wanted but none is named.
FEATURE_LAYERS = ("pool", "hidden_1")
#: The detector ``calibrate`` and ``train`` fit, chosen by ``bench/bench_ood.py`` on the demo model
#: (method, k and percentile live in :mod:`cxr_core.safety.detector`).
DEFAULT_FEATURES = LUNG_FEATURES
CV_FOLDS = 5

log = logging.getLogger(__name__)
_FEATURE_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SCREENERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LUNG: dict = {}


class ScreeningError(CXRError):
    """A detector or feature source that cannot be used with this model."""


# --- features ------------------------------------------------------------------------------------

def feature_layer(model, layer: str | None = None) -> str:
    """``layer`` if the model has it, else the first of :data:`FEATURE_LAYERS` it has.

    Raises
    ------
    ScreeningError
        The named layer is absent, or no layer was named and none of the defaults exists.
    """
    names = [lyr.name for lyr in model.layers]
    if layer is not None:
        if layer not in names:
            raise ScreeningError(f"model {model.name!r} has no layer {layer!r} to take features from; "
                                 f"its last layers are {', '.join(names[-6:])}")
        return layer
    for name in FEATURE_LAYERS:
        if name in names:
            return name
    raise ScreeningError(f"model {model.name!r} has none of the layers {', '.join(FEATURE_LAYERS)}; "
                         f"name the feature layer (its last layers are {', '.join(names[-6:])})")


def _feature_fn(model, input_size: int, layer: str):
    """A ``tf.function`` from network input to the flattened output of ``layer``, made once per model."""
    per_model = _FEATURE_FNS.setdefault(model, {})
    if layer not in per_model:
        import keras
        import tensorflow as tf

        sub = keras.Model(model.inputs, model.get_layer(layer).output)
        spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32)
        per_model[layer] = tf.function(lambda x: tf.reshape(sub(x, training=False), [tf.shape(x)[0], -1]),
                                       input_signature=[spec], reduce_retracing=True)
    return per_model[layer]


def extract_features(model, spec, images: Sequence[np.ndarray], *, layer: str | None = None,
                     batch_size: int = 16) -> np.ndarray:
    """A classifier layer's output for [0, 1] grayscale images, prepared exactly as for prediction.

    Parameters
    ----------
    model : keras.Model
    spec : ModelSpec
        Input size and preprocessing of ``model``.
    images : sequence of (H, W) ndarray
    layer : str, optional
        Layer to read (default: the first of :data:`FEATURE_LAYERS` the model has).

    Returns
    -------
    features : (N, D) float32 ndarray
    """
    from cxr_core.models.preprocess import prepare_batch

    fn = _feature_fn(model, spec.input_size, feature_layer(model, layer))
    out = [np.asarray(fn(prepare_batch(list(images[s:s + batch_size]), spec)), np.float32)
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def lung_model_sha256() -> str:
    """SHA-256 of the shipped lung U-Net file (a detector on its features is only valid with that file)."""
    from cxr_core.models.lungs import LUNG_MODEL_FILE, lungseg_dir
    from cxr_core.models.manifest import file_sha256

    path = lungseg_dir() / LUNG_MODEL_FILE
    if not path.is_file():
        raise ModelError(f"the lung model {path} is missing; the OOD detector reads its features")
    return file_sha256(path)


def _lung_fn():
    """The lung U-Net cut at its bottleneck, as a ``tf.function``; loaded once per process."""
    if "fn" not in _LUNG:
        import keras
        import tensorflow as tf

        from cxr_core.models.lungs import LungEstimator

        unet = LungEstimator.load().model
        sub = keras.Model(unet.inputs, unet.get_layer(LUNG_LAYER).output)
        size = int(unet.input_shape[1])
        spec = tf.TensorSpec([None, size, size, 1], tf.float32)
        _LUNG["size"] = size
        _LUNG["fn"] = tf.function(lambda x: sub(x, training=False), input_signature=[spec], reduce_retracing=True)
    return _LUNG["fn"], _LUNG["size"]


def lung_features(images: Sequence[np.ndarray], *, batch_size: int = 32) -> np.ndarray:
    """Mean and standard deviation of each bottleneck channel of the lung U-Net: (N, 128) float32.

    The U-Net was trained to outline both lungs, so its bottleneck describes where lung fields,
    mediastinum and diaphragm lie; photographs, crops, rotated and inverted films land far from
    real frontal films there.
    """
    from cxr_core.models.lungs import to_input

    fn, size = _lung_fn()
    out = []
    for s in range(0, len(images), batch_size):
        acts = np.asarray(fn(np.stack([to_input(p, size) for p in images[s:s + batch_size]])), np.float32)
        out.append(np.concatenate([acts.mean(axis=(1, 2)), acts.std(axis=(1, 2))], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def features_for(loaded, images: Sequence[np.ndarray], source: str = DEFAULT_FEATURES) -> np.ndarray:
    """Features of ``source``: :data:`LUNG_FEATURES` or a layer of ``loaded``'s classifier."""
    if source == LUNG_FEATURES:
        return lung_features(images)
    return extract_features(loaded.model, loaded.spec, images, layer=source)


def features_of_files(loaded, files: Sequence[Path | str], source: str = DEFAULT_FEATURES, *,
                      chunk: int = 64) -> np.ndarray:
    """:func:`features_for` of image files, decoded by :func:`cxr_core.io.imaging.load_xray` in chunks."""
    from cxr_core.io.imaging import load_xray

    out = [features_for(loaded, [load_xray(f).pixels for f in files[s:s + chunk]], source)
           for s in range(0, len(files), chunk)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# --- fitting -------------------------------------------------------------------------------------

def grouped_cv_scores(features: np.ndarray, groups: Sequence | None = None, *, method: str = DEFAULT_METHOD,
                      k: int = DEFAULT_K, folds: int = CV_FOLDS, seed: int = 0) -> np.ndarray:
    """Each row's score from a detector fitted without its group (patient): what a new patient would score.

    Groups are dealt into ``folds`` folds (fewer when there are fewer groups); ``groups=None`` makes
    each row its own group.
    """
    f = np.asarray(features, dtype=np.float64)
    g = np.arange(len(f)) if groups is None else np.asarray(groups)
    if g.shape != (len(f),):
        raise ScreeningError(f"groups must have one entry per feature row ({len(f)}), got shape {g.shape}")
    unique = np.unique(g)
    folds = min(folds, len(unique))
    if folds < 2:
        raise ScreeningError(f"cross-fitting needs films of at least 2 patients, got {len(unique)}")
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(unique), np.arange(len(unique)) % folds))
    fold = np.array([fold_of[x] for x in g])
    scores = np.empty(len(f))
    for i in range(folds):
        fit = fold != i
        if method == "knn" and fit.sum() < k:
            raise ScreeningError(f"k={k} needs at least {k} training films outside each fold, got {fit.sum()}")
        scores[~fit] = FeatureOOD.fit(f[fit], method=method, k=k, holdout=0.0).score(f[~fit])
    return scores


def fit_detector(train_features: np.ndarray, groups: Sequence | None = None, *, method: str = DEFAULT_METHOD,
                 k: int = DEFAULT_K, percentile: float = DEFAULT_PERCENTILE, folds: int = CV_FOLDS) -> FeatureOOD:
    """Fit on training films; threshold = ``percentile`` of their patient-grouped cross-fitted scores.

    A threshold from the training films' own scores would be too strict (each film is its own
    nearest neighbour); cross-fitting by patient scores every film as a new patient's, using every
    training film, so no validation film is spent on it. k-NN banks are stored as float16 (a
    quarter of the size; scores move by about 1e-3).

    Parameters
    ----------
    train_features : (N, D) ndarray
    groups : (N,) sequence, optional
        Patient of each row (default: each row its own patient).
    method : {"knn", "mahalanobis"}
    k : int
        Neighbour whose distance is the k-NN score.
    percentile : float
        About ``100 - percentile`` % of new patients' films are refused.
    """
    if not 0 < percentile <= 100:
        raise ScreeningError(f"percentile must be in (0, 100], got {percentile}")
    cv = grouped_cv_scores(train_features, groups, method=method, k=k, folds=folds)
    det = FeatureOOD.fit(train_features, method=method, k=k, holdout=0.0)
    if det.method == "knn":
        det.bank = det.bank.astype(np.float16)
    else:
        det.precision = det.precision.astype(np.float32)
        det.means = det.means.astype(np.float32)
    det.threshold = float(np.percentile(cv, percentile))
    det.percentile = float(percentile)
    return det


def save_detector(folder: Path | str, detector: FeatureOOD, *, features: str, **facts) -> dict:
    """Write ``folder/ood.npz``; returns the card's ``ood`` entry (summary, features, file, SHA-256, ``facts``)."""
    from cxr_core.models.manifest import file_sha256

    path = Path(folder) / DETECTOR_FILE
    tmp = path.with_name("tmp-" + DETECTOR_FILE)
    detector.save(tmp)
    tmp.replace(path)
    entry = {**detector.summary(), "features": features, "file": DETECTOR_FILE, "sha256": file_sha256(path)}
    if features == LUNG_FEATURES:
        entry["lung_model_sha256"] = lung_model_sha256()
    return {**entry, **facts}


def fit_model_detector(loaded, train_files: Sequence[Path | str], groups: Sequence | None = None, *,
                       val_files: Sequence[Path | str] = (), weights_dir: Path | str | None = None,
                       features: str = DEFAULT_FEATURES, method: str = DEFAULT_METHOD, k: int = DEFAULT_K,
                       percentile: float = DEFAULT_PERCENTILE) -> dict:
    """Fit the detector of a registered model on its training films and store it beside the model.

    ``groups`` gives each training film's patient; ``val_files``, when given, only measure the
    share of held-out real films the detector refuses (``val_refusal_rate``). Writes
    ``weights/<name>/ood.npz`` and returns the card's ``ood`` entry (the caller writes the card).
    """
    from cxr_core.models.manifest import registry_dir

    if features != LUNG_FEATURES:
        features = feature_layer(loaded.model, features)
    if len(train_files) < 2:
        raise ScreeningError(f"the OOD detector needs training films, got {len(train_files)}")
    train = features_of_files(loaded, train_files, features)
    det = fit_detector(train, groups, method=method, k=min(k, len(train) - 1), percentile=percentile)
    facts = {"fitted_on": "train split", "n_fit": len(train),
             "threshold_rule": f"{percentile:g}th percentile of patient-grouped {CV_FOLDS}-fold cross-fitted "
                               "scores of the training films"}
    if len(val_files):
        val = features_of_files(loaded, val_files, features)
        facts.update(n_val=len(val), val_refusal_rate=round(float(np.mean(det.score(val) > det.threshold)), 4))
    return save_detector(registry_dir(weights_dir) / loaded.name, det, features=features, **facts)


def load_detector(loaded, weights_dir: Path | str | None = None) -> tuple[FeatureOOD | None, str | None]:
    """The detector named in ``loaded.card``'s ``ood`` entry and its feature source; ``(None, None)`` if none.

    Raises
    ------
    ModelError
        The card names a detector whose file is missing or unreadable.
    ChecksumError
        The file, or the lung model whose features it reads, differs from the one the card describes.
    """
    from cxr_core.models.manifest import file_sha256, registry_dir

    entry = loaded.card.extra.get("ood")
    if not entry:
        return None, None
    path = registry_dir(weights_dir) / loaded.name / entry.get("file", DETECTOR_FILE)
    if not path.is_file():
        raise ModelError(f"model {loaded.name!r}: its card names an OOD detector {path} that is missing; "
                         f"rerun `python -m cxr_core calibrate --model {loaded.name} --data DIR`")
    if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
        raise ChecksumError(f"model {loaded.name!r}: {path} does not match the SHA-256 in its card")
    source = entry.get("features", DEFAULT_FEATURES)
    if source == LUNG_FEATURES and entry.get("lung_model_sha256") not in (None, lung_model_sha256()):
        raise ChecksumError(f"model {loaded.name!r}: its OOD detector was fitted on another lung model's features; "
                            f"rerun `python -m cxr_core calibrate --model {loaded.name} --data DIR`")
    try:
        return FeatureOOD.load(path), source
    except OODError as exc:
        raise ModelError(f"model {loaded.name!r}: {exc}") from exc


# --- screening -----------------------------------------------------------------------------------

@dataclass(eq=False)
class Screener:
    """Image checks plus, when the model has one, its feature detector; keep one per loaded model."""

    loaded: object
    detector: FeatureOOD | None = None
    features: str | None = None

    @classmethod
    def from_loaded(cls, loaded, weights_dir: Path | str | None = None) -> "Screener":
        detector, source = load_detector(loaded, weights_dir)
        if detector is not None and source != LUNG_FEATURES:
            source = feature_layer(loaded.model, source)
        return cls(loaded, detector, source)

    def screen(self, xrays: Sequence[XRay]) -> list[OODDecision]:
        """One decision per X-ray: every failed check's reason, and the feature score when there is a detector."""
        found = [image_findings(x.pixels, was_color=x.was_color, colorfulness=x.colorfulness, metadata=x.metadata)
                 for x in xrays]
        if self.detector is None or not xrays:
            return [OODDecision.of(f) for f in found]
        feats = features_for(self.loaded, [x.pixels for x in xrays], self.features)
        return [self.detector.decide(v[None], findings=f)[0] for v, f in zip(feats, found)]


def screener(loaded, weights_dir: Path | str | None = None) -> Screener:
    """The :class:`Screener` of a loaded model, made once per Keras model object."""
    found = _SCREENERS.get(loaded.model)
    if found is None:
        found = _SCREENERS[loaded.model] = Screener.from_loaded(loaded, weights_dir)
    return found


def screen(loaded, xray: XRay, *, weights_dir: Path | str | None = None) -> OODDecision:
    """Whether ``loaded`` may score ``xray``: ``ok`` False with reasons when it does not look like a chest film.

    Examples
    --------
    >>> decision = screen(loaded, load_xray("holiday.jpg"))  # doctest: +SKIP
    >>> decision.ok, decision.reasons[0]  # doctest: +SKIP
    (False, 'This is a colour picture (a photograph or a figure), not an X-ray.')
    >>> decision.details[0]  # doctest: +SKIP
    'colourfulness 0.31, limit 0.06'
    """
    return screener(loaded, weights_dir).screen([xray])[0]


def refusal_lines(decision: OODDecision) -> list[tuple[str, str]]:
    """``(reason, details)`` per refusal reason, for a page or a report (details may be empty)."""
    details = list(decision.details) + [""] * (len(decision.reasons) - len(decision.details))
    return list(zip(decision.reasons, details))


def refusal_message(decision: OODDecision) -> str:
    """``not analysed: this does not look like a frontal chest X-ray (reason [figures]; ...)``."""
    parts = [f"{r} [{d}]" if d else r for r, d in refusal_lines(decision)]
    return f"{REFUSAL} ({'; '.join(parts) or 'no reason recorded'})"


def decision_record(decision: OODDecision) -> dict:
    """JSON-ready screening result for a prediction record (``details`` parallel to ``reasons``)."""
    return {"ok": decision.ok, "reasons": list(decision.reasons), "details": [d for _, d in refusal_lines(decision)],
            "checks": list(decision.checks), "score": decision.score, "threshold": decision.threshold}


def override_record(decision: OODDecision, *, model: str, image: str, where: str, by: str | None = None) -> dict:
    """Log (WARNING, logger ``cxr_core.safety.screening``) that an expert chose to see scores for a refused input.

    Returns the JSON-ready record to keep with the result: the refusal, who overrode it and where.
    """
    log.warning("expert override: %s scored %s although it was refused (%s); by %s via %s",
                model, image, "; ".join(decision.reasons), by or "unnamed user", where)
    return {**decision_record(decision), "overridden": True, "by": by, "where": where}


__all__ = ["DEFAULT_K", "DEFAULT_METHOD", "DEFAULT_PERCENTILE", "DETECTOR_FILE", "FEATURE_LAYERS", "LUNG_FEATURES",
           "REFUSAL", "ScreeningError", "Screener", "refusal_lines",
           "decision_record", "extract_features", "feature_layer", "features_for", "fit_detector",
           "fit_model_detector", "grouped_cv_scores", "load_detector", "lung_features", "override_record",
           "refusal_message", "save_detector", "screen", "screener"]
