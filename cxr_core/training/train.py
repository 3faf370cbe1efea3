"""Fine-tuning (or training from scratch) a zoo architecture into a registry model with its card.

:func:`train` takes labelled :class:`~cxr_core.training.dataset.Record` s and a :class:`TrainConfig`, decodes
every image once through :mod:`cxr_core.io.imaging` and :mod:`cxr_core.models.preprocess` (the inference
path), feeds a ``tf.data`` pipeline with light chest-film augmentation (small rotation, shift, zoom,
contrast; no horizontal flip, which would move the heart), weights classes for imbalance, stops
early and restores the best epoch, then saves ``weights/<name>/`` with ``split.csv`` and a card
holding the test metrics (computed by :mod:`cxr_core.training.evaluate` on the reloaded model, as the
``evaluate`` command will). :func:`after_training` is the calibration hook.

About 430 lines by choice: the recipe, the pipeline and the card it writes are read together; the
dataset, evaluation and tuning already live in their own modules.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cxr_core.training.dataset import (
    Record,
    by_split,
    check_patient_disjoint,
    class_weights,
    known_classes,
    load_inputs,
    split_by_patient,
    split_counts,
    write_split_csv,
)
from cxr_core.errors import DataError
from cxr_core.models.zoo import HeadSpec, ModelSpec, get_spec, trainable_layers

SPLIT_FILE = "split.csv"
#: The most one image's group weight may be under ``balance_by`` (2 films of a source must not weigh like 100).
MAX_GROUP_WEIGHT = 8.0


@dataclass
class TrainConfig:
    """How to train. ``weights``: ``"imagenet"``, a no-top weights file, or ``None`` (from scratch).

    ``trainable_layers``: N last base layers, :data:`~cxr_core.models.zoo.ALL_LAYERS`, or ``None`` (the
    zoo's for ``arch``). When training from scratch with every layer trainable, BatchNorm layers are trained too.
    """

    arch: str
    name: str
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    trainable_layers: int | str | None = None
    weights: str | None = "imagenet"
    input_size: int | None = None
    seed: int = 0
    classes: tuple[str, ...] | None = None
    hidden_units: tuple[int, ...] | None = None
    activation: str | None = None
    augment: bool = True
    rotation_deg: float = 5.0
    shift: float = 0.05
    zoom: float = 0.08
    contrast: float = 0.15
    early_stopping_patience: int = 3
    lr_patience: int = 2
    lr_factor: float = 0.5
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    progress: bool = False
    n_boot: int = 1000
    max_minutes: float | None = None
    tune_trials: int = 0
    mask_markers: bool = False
    crop_lungs: bool = False
    #: A manifest column (e.g. ``"source"``): within each class, every value of it gets the same total weight
    #: (capped at :data:`MAX_GROUP_WEIGHT` per image), so a minority source is not drowned by the majority one.
    balance_by: str = ""

    def spec(self) -> ModelSpec:
        base = get_spec(self.arch)
        head = base.head
        if self.hidden_units is not None or self.activation is not None:
            head = HeadSpec(**{**asdict(head), **{k: v for k, v in (
                ("hidden_units", tuple(self.hidden_units) if self.hidden_units is not None else None),
                ("activation", self.activation)) if v is not None}})
        return base.with_overrides(input_size=self.input_size, head=head, mask_markers=self.mask_markers or None,
                                   crop_lungs=self.crop_lungs or None)


@dataclass
class TrainResult:
    """What :func:`train` made: the registered model, its training history and the wall time."""

    loaded: object
    history: dict
    seconds: float
    records: list[Record] = field(default_factory=list)


def prepare_split(records: Sequence[Record], config: TrainConfig, log: Callable[[str], None] = print) -> list[Record]:
    """Records with train/val(/test) sides: kept when given, else split by patient (seeded)."""
    records = list(records)
    sides = {r.split for r in records}
    if "" in sides:
        if sides != {""}:
            raise DataError(f"some images have a split and some do not (splits seen: {sorted(sides)})")
        records = split_by_patient(records, config.split_fractions, seed=config.seed)
        log(f"split by patient (seed {config.seed}): " + ", ".join(
            f"{s} {len(v)}" for s, v in by_split(records).items()))
    elif "val" not in sides:
        train = [r for r in records if r.split == "train"]
        carved = {r.file: r.split for r in split_by_patient(train, (0.85, 0.15, 0.0), seed=config.seed)}
        records = [r if r.split != "train" else type(r)(r.file, r.label, r.patient_id, carved[r.file], r.extra)
                   for r in records]
        log("no val split given: 15% of the training patients held out for validation")
    check_patient_disjoint(records)
    if not any(r.split == "train" for r in records):
        raise DataError("no training images")
    return records


def _augmenter(config: TrainConfig):
    """A function (images, labels) -> (images, labels) applying light, chest-film-safe augmentation."""
    import keras
    import tensorflow as tf

    geometric = keras.Sequential([
        keras.layers.RandomRotation(config.rotation_deg / 360.0, fill_mode="nearest", seed=config.seed),
        keras.layers.RandomTranslation(config.shift, config.shift, fill_mode="nearest", seed=config.seed + 1),
        keras.layers.RandomZoom(config.zoom, fill_mode="nearest", seed=config.seed + 2),
    ], name="augment")
    c = float(config.contrast)

    def augment(x, y):
        x = geometric(x, training=True)
        # Contrast about each image's channel mean: affine, so it commutes with every preprocessing mode.
        factor = tf.random.uniform([tf.shape(x)[0], 1, 1, 1], 1.0 - c, 1.0 + c)
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        return mean + (x - mean) * factor, y

    return augment


def make_dataset(x: np.ndarray, y: np.ndarray, config: TrainConfig, *, training: bool,
                 weights: np.ndarray | None = None):
    """A ``tf.data`` pipeline over prepared inputs: shuffled and augmented when ``training``.

    ``weights``: per-image sample weights, yielded as the third element of each batch.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y) if weights is None else (x, y, np.asarray(weights, np.float32)))
    if training:
        ds = ds.shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size)
    if training and config.augment:
        augment = _augmenter(config)
        ds = ds.map(augment if weights is None else (lambda a, b, w: (*augment(a, b), w)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def group_weights(labels: Sequence[int], groups: Sequence[str], n_classes: int,
                  cap: float = MAX_GROUP_WEIGHT) -> np.ndarray:
    """Per-image weights: balanced classes, and within a class each group (source) the same total weight.

    A group's factor ``n_class / (k_groups * n_group)`` is capped at ``cap`` and the factors are rescaled
    so each class keeps its balanced total; the result's mean over images is 1 when every class is present.
    """
    labels = np.asarray(labels, dtype=int)
    groups = np.asarray([str(g) for g in groups])
    cw = class_weights(labels, n_classes)
    out = np.zeros(len(labels), np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        values, counts = np.unique(groups[idx], return_counts=True)
        factor = {v: min(cap, len(idx) / (len(values) * n)) for v, n in zip(values, counts)}
        raw = np.array([factor[g] for g in groups[idx]])
        out[idx] = raw * len(idx) / raw.sum() * cw[int(c)]
    return out


def trainable_layers_of(config: TrainConfig) -> int | str:
    """The fine-tuning depth ``config`` trains with: its own, else the zoo's for its architecture."""
    return trainable_layers(config.trainable_layers if config.trainable_layers is not None
                            else get_spec(config.arch).trainable_base_layers)


def mirrored_strategy():
    """``MirroredStrategy`` over every GPU when there are several, else None (one device needs none)."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy() if len(gpus()) > 1 else None


def strategy():
    """:func:`mirrored_strategy` when there are several GPUs, else TensorFlow's default strategy."""
    import tensorflow as tf

    several = mirrored_strategy()
    return several if several is not None else tf.distribute.get_strategy()


def build_for_training(config: TrainConfig, classes: Sequence[str], spec: ModelSpec, *,
                       lr: float | None = None, trainable_layers: int | str | None = None):
    """Build and compile the model (inside the current distribution strategy's scope).

    ``trainable_layers`` overrides ``config.trainable_layers`` when given (the tuner's trial depth).
    """
    import keras

    from cxr_core.models.zoo import ALL_LAYERS, build_model

    trainable = trainable_layers_of(config) if trainable_layers is None else trainable_layers
    model = build_model(config.arch, list(classes), config.weights, input_size=spec.input_size, head=spec.head,
                        trainable_base_layers=trainable)
    if config.weights is None and trainable == ALL_LAYERS:
        for layer in model.layers:  # from scratch: BatchNorm must learn its statistics too
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(lr or config.lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class EpochLog:
    """Keras callback factory printing one line per epoch (loss, accuracy, val, learning rate, seconds)."""

    @staticmethod
    def make(total: int, log: Callable[[str], None]):
        import keras

        class _EpochLog(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.monotonic()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                log(f"epoch {epoch + 1}/{total}  loss {logs.get('loss', float('nan')):.4f}  "
                    f"acc {logs.get('accuracy', float('nan')):.3f}  val_loss {logs.get('val_loss', float('nan')):.4f}  "
                    f"val_acc {logs.get('val_accuracy', float('nan')):.3f}  lr {lr:.1e}  {time.monotonic() - self._t:.0f} s")

        return _EpochLog()


def _time_budget(minutes: float, log: Callable[[str], None]):
    """A callback that stops training after the epoch that passes ``minutes`` of fitting."""
    import keras

    class _TimeBudget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            if time.monotonic() - self._start > minutes * 60:
                log(f"time budget of {minutes:g} min reached after epoch {epoch + 1}; keeping the best epoch")
                self.model.stop_training = True

    return _TimeBudget()


def callbacks(config: TrainConfig, log: Callable[[str], None]) -> list:
    """EarlyStopping (best weights restored at the end), ReduceLROnPlateau, the epoch log, a time budget."""
    import keras

    budget = [_time_budget(config.max_minutes, log)] if config.max_minutes else []
    return budget + [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.lr_factor, patience=config.lr_patience,
                                          min_lr=1e-6),
        EpochLog.make(config.epochs, log),
    ]


def fit(config: TrainConfig, classes: Sequence[str], data: dict, log: Callable[[str], None] = print,
        model=None, groups: Sequence[str] | None = None):
    """Train on prepared arrays ``data = {"train": (x, y), "val": (x, y)}``; returns (model, history dict).

    ``groups``: each training image's ``config.balance_by`` value; with them, :func:`group_weights` replace
    the plain class weights.
    """
    import keras

    keras.utils.set_random_seed(config.seed)
    spec = config.spec()
    if model is None:
        with strategy().scope():
            model = build_for_training(config, classes, spec)
    x_train, y_train = data["train"]
    per_image = group_weights(y_train, groups, len(classes)) if config.balance_by and groups is not None else None
    weights = None if per_image is not None else class_weights(y_train, len(classes))
    history = model.fit(
        make_dataset(x_train, y_train, config, training=True, weights=per_image),
        validation_data=make_dataset(*data["val"], config, training=False),
        epochs=config.epochs, class_weight=weights, callbacks=callbacks(config, log),
        verbose=1 if config.progress else 0,
    )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _device() -> str:
    import os

    found = gpus()
    return f"{len(found)} GPU(s)" if found else f"CPU only ({os.cpu_count()} cores)"


def gpus() -> list:
    """The GPUs TensorFlow sees (logical devices)."""
    import tensorflow as tf

    return tf.config.list_logical_devices("GPU")


def _base_card(config: TrainConfig, classes: Sequence[str], spec: ModelSpec, records: list[Record],
               history: dict, seconds: float, card_fields: dict):
    from cxr_core.models.manifest import ModelCard

    epochs_run = len(history.get("loss", []))
    best = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else epochs_run
    training = {
        "recipe": {
            "weights": "ImageNet" if config.weights == "imagenet" else (
                "none (trained from scratch)" if config.weights is None else f"file {Path(config.weights).name}"),
            "trainable_base_layers": trainable_layers_of(config),
            "epochs_max": config.epochs, "epochs_run": epochs_run, "best_epoch": best,
            "batch_size": config.batch_size, "learning_rate": config.lr, "optimizer": "Adam",
            "loss": "sparse categorical cross-entropy, balanced class weights" + (
                f"; within each class every {config.balance_by} weighted equally (per-image factor capped at "
                f"{MAX_GROUP_WEIGHT:g})" if config.balance_by else ""),
            "crop_lungs": bool(config.crop_lungs), "balance_by": config.balance_by or None,
            "augmentation": (f"rotation ±{config.rotation_deg}°, shift ±{config.shift:.0%}, zoom ±{config.zoom:.0%}, "
                             f"contrast ±{config.contrast:.0%}; no flip") if config.augment else "none",
            "callbacks": f"EarlyStopping(val_loss, patience {config.early_stopping_patience}, best weights restored), "
                         f"ReduceLROnPlateau(val_loss, factor {config.lr_factor}, patience {config.lr_patience})",
            "seed": config.seed, "input_size": spec.input_size, "device": _device(),
            "time_budget_minutes": config.max_minutes, "training_seconds": round(seconds, 1),
        },
        "split": {"by": "patient_id", "file": SPLIT_FILE, "counts": split_counts(records)},
        "history": {k: [round(v, 5) for v in vals] for k, vals in history.items()},
    }
    fields = dict(card_fields)
    training.update(fields.pop("training_data", {}))
    return ModelCard(
        name=config.name, architecture=spec.arch, classes=list(classes), input_size=spec.input_size,
        preprocessing=spec.preprocessing, last_conv_layer=spec.last_conv_layer, mask_markers=spec.mask_markers,
        crop_lungs=spec.crop_lungs, head={**asdict(spec.head), "hidden_units": list(spec.head.hidden_units)},
        training_data=training, **fields,
    )


def after_training(loaded, val_data: tuple[np.ndarray, np.ndarray],
                   test_data: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Calibration hook: fit a temperature on the validation split, report it on the test split.

    ``val_data`` and ``test_data`` are ``(probabilities, labels)`` of the registered model. Returns the
    ``card.calibration`` dict: ``temperature``, ECE/Brier/NLL before and after scaling on the test split
    (on the validation split when there is no test split); empty when :mod:`cxr_core.models.calibration` is absent.
    """
    try:
        from cxr_core.models import calibration
    except ImportError:
        return {}
    val_p, val_y = val_data
    temperature = calibration.fit_temperature(calibration.logits_from_probabilities(val_p), val_y)
    report_p, report_y = test_data if test_data is not None and len(test_data[1]) else val_data
    report = calibration.calibration_report(calibration.logits_from_probabilities(report_p), report_y,
                                            temperature=temperature)
    return {**report.to_dict(), "fitted_on": "val split",
            "reported_on": "test split" if report_y is not val_y else "val split"}


def train(
    records: Sequence[Record],
    config: TrainConfig,
    *,
    weights_dir: Path | str | None = None,
    data_root: Path | str | None = None,
    card_fields: dict | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train, register ``weights/<name>/`` (model, card, split.csv) and evaluate on the test split.

    Parameters
    ----------
    records : labelled images; split by patient here when they carry no split.
    config : the recipe.
    weights_dir : the registry (default: the configured one).
    data_root : paths in ``split.csv`` are written relative to it (so a split can be re-applied elsewhere).
    card_fields : extra :class:`~cxr_core.models.manifest.ModelCard` fields (licences, notes, demo, intended_use, ...).
    """
    from cxr_core.training.evaluate import evaluate_model
    from cxr_core.models.manifest import load_model, model_folder, save_model, write_card
    from cxr_core.models.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()
    started = time.monotonic()
    classes = tuple(config.classes) if config.classes else known_classes([r.label for r in records])
    records = prepare_split(records, config, log)
    spec = config.spec()
    sides = by_split(records)
    log(f"decoding {len(records)} images at {spec.input_size} px"
        + (" (each cropped to its estimated lung fields)" if spec.crop_lungs else "") + " ...")
    data = {s: load_inputs(sides[s], spec, classes) for s in ("train", "val") if s in sides}
    log(f"training {spec.display_name} on {len(sides['train'])} images, validating on {len(sides['val'])}; "
        f"classes {', '.join(classes)}")
    tuning = None
    if config.tune_trials:
        from cxr_core.training.tuning import tune

        model, history, tuning = tune(config, classes, data, log)
        hp = tuning["hyperparameters"]
        config = TrainConfig(**{**asdict(config), "hidden_units": (hp["hidden_units"],), "activation": hp["activation"],
                                "lr": hp["lr"], "trainable_layers": trainable_layers(hp["trainable_layers"])})
        spec = config.spec()
    else:
        groups = [r.extra.get(config.balance_by, "") for r in sides["train"]] if config.balance_by else None
        model, history = fit(config, classes, data, log, groups=groups)
    seconds = time.monotonic() - started
    card = _base_card(config, classes, spec, records, history, seconds, card_fields or {})
    if tuning:
        card.training_data["tuning"] = tuning
    save_model(inference_copy(model), card, weights_dir)
    folder = model_folder(config.name, weights_dir)
    write_split_csv(records, folder / SPLIT_FILE, root=data_root)
    loaded = load_model(config.name, weights_dir)
    card = loaded.card
    test = sides.get("test", [])
    if test:
        card.metrics = {"test": evaluate_model(loaded, test, n_boot=config.n_boot, seed=config.seed)}
        log(f"test ({len(test)} images): accuracy {card.metrics['test']['accuracy']:.3f}, "
            f"macro AUC {card.metrics['test']['auc'] if card.metrics['test']['auc'] is not None else float('nan'):.3f}")
    from cxr_core.training.evaluate import predict_records

    val_probs = predict_records(loaded, sides["val"])
    test_pair = (predict_records(loaded, test), data_labels(test, classes)) if test else None
    try:
        card.calibration = after_training(loaded, (val_probs, data["val"][1]), test_pair)
    except Exception as exc:  # calibration is optional; never lose a trained model to it
        log(f"calibration skipped: {exc}")
    try:  # the detector that refuses inputs unlike the training films (cxr_core.safety.screening)
        from cxr_core.safety.screening import fit_model_detector

        card.extra["ood"] = fit_model_detector(loaded, [r.file for r in sides["train"]],
                                               [r.patient_id for r in sides["train"]],
                                               val_files=[r.file for r in sides["val"]], weights_dir=weights_dir)
        log(f"OOD detector: refuses {card.extra['ood']['val_refusal_rate']:.1%} of the validation films")
    except Exception as exc:  # like calibration: optional, never lose a trained model to it
        log(f"OOD detector skipped: {exc}")
    write_card(folder, card)
    return TrainResult(load_model(config.name, weights_dir), history, seconds, records)


def inference_copy(model):
    """The same network and weights without optimizer state (a third of the file size for Adam)."""
    import keras

    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    return clean


def data_labels(records: Sequence[Record], classes: Sequence[str]) -> np.ndarray:
    """Class indices of records."""
    return np.array([list(classes).index(r.label) for r in records], dtype=np.int64)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


__all__ = ["TrainConfig", "TrainResult", "train", "fit", "group_weights", "MAX_GROUP_WEIGHT", "prepare_split",
           "make_dataset", "after_training",
           "inference_copy", "SPLIT_FILE"]
