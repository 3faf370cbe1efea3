"""Model-aware refusal: may this model score this input, or is it not a frontal chest X-ray?

:func:`screen` combines two kinds of evidence from :mod:`cxr_core.ood`:

- the pixel and DICOM-header checks (``image_checks``: colour, blank, noise, histogram, layout,
  modality, body part, view), which need no model;
- the model's own view of the input: its penultimate features (the ``pool`` or ``hidden_1`` output,
  whichever ``bench/bench_ood.py`` measured better) scored by a ``FeatureOOD`` detector fitted on
  the model's training split and thresholded on its validation split. The detector is stored beside
  the model as ``weights/<name>/ood.npz`` and described, with its SHA-256, in the card's ``ood`` entry.

A model without an ``ood`` entry is screened by the image checks alone. A refusal is a list of
sentences a reader can check; :func:`refusal_message` phrases it for the CLI and the app, and
:func:`override_record` logs an expert's decision to look at the scores anyway.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.errors import ChecksumError, CXRError, ModelError
from cxr_core.imaging import XRay
from cxr_core.ood import FeatureOOD, OODDecision, OODError, image_checks

DETECTOR_FILE = "ood.npz"
#: Layers tried for features, in order, when the card names none (zoo models have both).
FEATURE_LAYERS = ("pool", "hidden_1")
REFUSAL = "not analysed: this does not look like a frontal chest X-ray"
#: The detector ``calibrate`` and ``train`` fit, chosen by ``bench/bench_ood.py`` on the demo model.
DEFAULT_LAYER = "pool"
DEFAULT_METHOD = "knn"
DEFAULT_K = 1
DEFAULT_PERCENTILE = 99.0

log = logging.getLogger(__name__)
_FEATURE_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SCREENERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class ScreeningError(CXRError):
    """A detector or feature layer that cannot be used with this model."""


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
    """Penultimate features of [0, 1] grayscale images, prepared exactly as for prediction.

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
    from cxr_core.preprocess import prepare_batch

    fn = _feature_fn(model, spec.input_size, feature_layer(model, layer))
    out = [np.asarray(fn(prepare_batch(list(images[s:s + batch_size]), spec)), np.float32)
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def features_of_files(loaded, files: Sequence[Path | str], *, layer: str | None = None, chunk: int = 64) -> np.ndarray:
    """:func:`extract_features` of image files, decoded by :func:`cxr_core.imaging.load_xray` in chunks."""
    from cxr_core.imaging import load_xray

    out = [extract_features(loaded.model, loaded.spec, [load_xray(f).pixels for f in files[s:s + chunk]], layer=layer)
           for s in range(0, len(files), chunk)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# --- the detector beside the model ---------------------------------------------------------------

def fit_detector(train_features: np.ndarray, val_features: np.ndarray, *, method: str = "knn", k: int = 1,
                 percentile: float = 99.0, train_labels: np.ndarray | None = None) -> FeatureOOD:
    """Fit on training-split features, set the threshold on validation-split features.

    The validation films come from patients the model never trained on, like the films it will
    meet; a threshold set on training films would be too strict (the model has seen them).
    k-NN banks are stored as float16 (a quarter of the size) before the threshold is set, so the
    threshold matches the scores the saved detector gives.
    """
    det = FeatureOOD.fit(train_features, train_labels, method=method, k=k, holdout=0.0)
    if det.method == "knn":
        det.bank = det.bank.astype(np.float16)
    else:
        det.precision = det.precision.astype(np.float32)
        det.means = det.means.astype(np.float32)
    det.set_threshold(val_features, percentile)
    return det


def save_detector(folder: Path | str, detector: FeatureOOD, *, layer: str, **facts) -> dict:
    """Write ``folder/ood.npz``; returns the card's ``ood`` entry (summary, layer, file, SHA-256, ``facts``)."""
    from cxr_core.manifest import file_sha256

    path = Path(folder) / DETECTOR_FILE
    tmp = path.with_name("tmp-" + DETECTOR_FILE)
    detector.save(tmp)
    tmp.replace(path)
    return {**detector.summary(), "layer": layer, "file": DETECTOR_FILE, "sha256": file_sha256(path), **facts}


def fit_model_detector(loaded, train_files: Sequence[Path | str], val_files: Sequence[Path | str], *,
                       weights_dir: Path | str | None = None, layer: str | None = None, method: str = DEFAULT_METHOD,
                       k: int = DEFAULT_K, percentile: float = DEFAULT_PERCENTILE,
                       threshold_on: str = "val split") -> dict:
    """Fit the detector of a registered model on its training films, threshold it on its validation films.

    Writes ``weights/<name>/ood.npz`` and returns the card's ``ood`` entry (the caller writes the card).
    """
    from cxr_core.manifest import _weights_dir

    if not train_files or not val_files:
        raise ScreeningError(f"the OOD detector needs training and validation films, got {len(train_files)} "
                             f"and {len(val_files)}")
    names = {lyr.name for lyr in loaded.model.layers}
    layer = feature_layer(loaded.model, layer or (DEFAULT_LAYER if DEFAULT_LAYER in names else None))
    train = features_of_files(loaded, train_files, layer=layer)
    val = features_of_files(loaded, val_files, layer=layer)
    k = min(k, len(train))
    det = fit_detector(train, val, method=method, k=k, percentile=percentile)
    val_refused = float(np.mean(det.score(val) > det.threshold))
    return save_detector(_weights_dir(weights_dir) / loaded.name, det, layer=layer, fitted_on="train split",
                         n_fit=len(train), threshold_on=threshold_on, n_threshold=len(val),
                         val_refusal_rate=round(val_refused, 4))


def load_detector(loaded, weights_dir: Path | str | None = None) -> tuple[FeatureOOD | None, str | None]:
    """The detector named in ``loaded.card``'s ``ood`` entry and its layer; ``(None, None)`` when there is none.

    Raises
    ------
    ModelError
        The card names a detector whose file is missing or unreadable.
    ChecksumError
        The file differs from the one the card describes.
    """
    from cxr_core.manifest import _weights_dir, file_sha256

    entry = loaded.card.extra.get("ood")
    if not entry:
        return None, None
    path = _weights_dir(weights_dir) / loaded.name / entry.get("file", DETECTOR_FILE)
    if not path.is_file():
        raise ModelError(f"model {loaded.name!r}: its card names an OOD detector {path} that is missing; "
                         f"rerun `python -m cxr_core calibrate --model {loaded.name} --data DIR`")
    if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
        raise ChecksumError(f"model {loaded.name!r}: {path} does not match the SHA-256 in its card")
    try:
        return FeatureOOD.load(path), entry.get("layer")
    except OODError as exc:
        raise ModelError(f"model {loaded.name!r}: {exc}") from exc


# --- screening -----------------------------------------------------------------------------------

@dataclass(eq=False)
class Screener:
    """Image checks plus, when the model has one, its feature detector; keep one per loaded model."""

    model: object
    spec: object
    detector: FeatureOOD | None = None
    layer: str | None = None

    @classmethod
    def from_loaded(cls, loaded, weights_dir: Path | str | None = None) -> "Screener":
        detector, layer = load_detector(loaded, weights_dir)
        if detector is not None:
            layer = feature_layer(loaded.model, layer)
        return cls(loaded.model, loaded.spec, detector, layer)

    def screen(self, xrays: Sequence[XRay]) -> list[OODDecision]:
        """One decision per X-ray: every failed check's reason, and the feature score when there is a detector."""
        reasons = [image_checks(x.pixels, was_color=x.was_color, colorfulness=x.colorfulness, metadata=x.metadata)
                   for x in xrays]
        if self.detector is None or not xrays:
            return [OODDecision(not r, r) for r in reasons]
        feats = extract_features(self.model, self.spec, [x.pixels for x in xrays], layer=self.layer)
        return [self.detector.decide(f[None], r)[0] for f, r in zip(feats, reasons)]


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
    (False, 'strong colour (colourfulness 0.31 > 0.06): a photograph or figure, not a radiograph')
    """
    return screener(loaded, weights_dir).screen([xray])[0]


def refusal_message(decision: OODDecision) -> str:
    """``not analysed: this does not look like a frontal chest X-ray (reason; reason)``."""
    return f"{REFUSAL} ({'; '.join(decision.reasons) or 'no reason recorded'})"


def decision_record(decision: OODDecision) -> dict:
    """JSON-ready screening result for a prediction record."""
    return {"ok": decision.ok, "reasons": list(decision.reasons), "score": decision.score,
            "threshold": decision.threshold}


def override_record(decision: OODDecision, *, model: str, image: str, where: str, by: str | None = None) -> dict:
    """Log (WARNING, logger ``cxr_core.screening``) that an expert chose to see scores for a refused input.

    Returns the JSON-ready record to keep with the result: the refusal, who overrode it and where.
    """
    log.warning("expert override: %s scored %s although it was refused (%s); by %s via %s",
                model, image, "; ".join(decision.reasons), by or "unnamed user", where)
    return {**decision_record(decision), "overridden": True, "by": by, "where": where}


__all__ = ["DETECTOR_FILE", "FEATURE_LAYERS", "REFUSAL", "ScreeningError", "Screener", "decision_record",
           "extract_features", "feature_layer", "fit_detector", "load_detector", "override_record",
           "refusal_message", "save_detector", "screen", "screener"]
