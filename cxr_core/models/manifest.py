"""The weights registry: ``weights/<name>/model.keras`` plus ``card.json``, checked by SHA-256.

Listing reads cards and hashes files but never loads TensorFlow; loading verifies the checksum and
that the model's output matches the card's classes. Nothing is cached here (the app caches).
"""

from __future__ import annotations

import re

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cxr_core.config import get_settings
from cxr_core.errors import ChecksumError, ModelError, ModelNotFoundError
from cxr_core.models.zoo import OUTPUT_KINDS, PREPROCESSING_MODES, SPECS, HeadSpec, ModelSpec, get_spec

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
READY, MISSING, MISMATCH, UNREADABLE = "ready", "missing file", "checksum mismatch", "unreadable card"


@dataclass
class ModelCard:
    """What a registered model is, what it was trained on, how well it did, and its checksum."""

    name: str
    architecture: str
    classes: list[str]
    input_size: int
    preprocessing: str
    last_conv_layer: str
    sha256: str = ""
    format_version: int = FORMAT_VERSION
    base_name: str = ""
    head: dict = field(default_factory=dict)
    training_data: dict = field(default_factory=dict)
    licences: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    intended_use: str = "research review of chest X-ray classifiers; model scores are not diagnoses"
    demo: bool = False
    mask_markers: bool = False
    outputs: str = "probabilities"  # what the imported file's last layer gave (zoo.OUTPUT_KINDS)
    crop_lungs: bool = False  # cropped to the estimated lung fields before the network (absent in old cards: False)
    notes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and k != "extra"}
        extra = {**data.get("extra", {}), **{k: v for k, v in data.items() if k not in known}}
        card = cls(**kwargs, extra=extra)
        card.classes = list(card.classes)
        return card

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data

    def spec(self) -> ModelSpec:
        """The :class:`ModelSpec` this model runs with: the zoo's, overridden by the card."""
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ModelError(f"card of {self.name} has preprocessing {self.preprocessing!r}; expected one of {PREPROCESSING_MODES}")
        if self.outputs not in OUTPUT_KINDS:
            raise ModelError(f"card of {self.name} has outputs {self.outputs!r}; "
                             f"expected one of {', '.join(OUTPUT_KINDS)}")
        base = get_spec(self.architecture) if self.architecture.lower() in SPECS else ModelSpec(
            self.architecture, self.architecture, "", self.input_size, self.preprocessing, self.last_conv_layer
        )
        head = HeadSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.head.items()}) if self.head else None
        return base.with_overrides(
            input_size=self.input_size, preprocessing=self.preprocessing, last_conv_layer=self.last_conv_layer,
            base_name=self.base_name or None, head=head, mask_markers=self.mask_markers or None,
            outputs=self.outputs, crop_lungs=bool(self.crop_lungs) or None,
        )


@dataclass(frozen=True)
class ModelEntry:
    """One folder of the registry and whether it can be used."""

    name: str
    folder: Path
    status: str
    card: ModelCard | None
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.status == READY


@dataclass(frozen=True)
class LoadedModel:
    """A verified Keras model with its card and spec."""

    model: Any
    card: ModelCard
    spec: ModelSpec

    @property
    def name(self) -> str:
        return self.card.name


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime) so listing stays cheap."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_MEMO:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_MEMO[key] = digest.hexdigest()
    return _HASH_MEMO[key]


#: A model name is one folder inside the weights folder: letters, digits, '.', '_', '-', not starting with '.'.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_model_name(name: str) -> str:
    """``name`` if it can only mean a folder inside the weights folder (no ``/``, ``..`` or other path tricks)."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or ".." in name:
        raise ModelError(f"model name {name!r} is not allowed; use letters, digits, '.', '_' and '-' "
                         "(e.g. demo-efficientnetv2b0)")
    return name


def registry_dir(folder: Path | str | None = None) -> Path:
    """The registry folder: ``folder`` when given, else ``CXR_WEIGHTS_DIR`` (:mod:`cxr_core.config`)."""
    return Path(folder) if folder is not None else get_settings().weights_dir


def model_folder(name: str, folder: Path | str | None = None) -> Path:
    """``<registry>/<name>``, the one folder of model ``name`` (its name checked: it cannot leave the registry)."""
    return registry_dir(folder) / check_model_name(name)



def read_card(folder: Path) -> ModelCard:
    """Parse ``folder/card.json``; raises :class:`ModelError` when it is unreadable."""
    try:
        data = json.loads((folder / CARD_FILE).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return ModelCard.from_dict(data)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"model card {folder / CARD_FILE} is unreadable: {exc}") from exc


def write_card(folder: Path, card: ModelCard) -> None:
    """Write the card atomically (a crash never leaves half a card)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CARD_FILE + ".tmp")
    tmp.write_text(json.dumps(card.to_dict(), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, folder / CARD_FILE)


def check_entry(folder: Path) -> ModelEntry:
    """Status of one registry folder, without loading the model."""
    name = folder.name
    try:
        card = read_card(folder)
    except ModelError as exc:
        return ModelEntry(name, folder, UNREADABLE, None, str(exc))
    model_file = folder / MODEL_FILE
    if not model_file.is_file():
        return ModelEntry(name, folder, MISSING, card, f"{model_file} is missing")
    if file_sha256(model_file) != card.sha256:
        return ModelEntry(name, folder, MISMATCH, card, f"{model_file} does not match the SHA-256 in its card")
    return ModelEntry(name, folder, READY, card)


def list_models(weights_dir: Path | str | None = None) -> list[ModelEntry]:
    """Every folder of the registry with a card or a model file, sorted by name (demo models first)."""
    root = registry_dir(weights_dir)
    if not root.is_dir():
        return []
    entries = [
        check_entry(d) for d in sorted(root.iterdir())
        if d.is_dir() and ((d / CARD_FILE).exists() or (d / MODEL_FILE).exists())
    ]
    return sorted(entries, key=lambda e: (not (e.card and e.card.demo), e.name))


def save_model(model, card: ModelCard, weights_dir: Path | str | None = None) -> ModelEntry:
    """Save ``model`` under ``weights/<card.name>/`` and write its card with the file's checksum."""
    folder = model_folder(card.name, weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ("tmp-" + MODEL_FILE)
    model.save(tmp)
    os.replace(tmp, folder / MODEL_FILE)
    card.sha256 = file_sha256(folder / MODEL_FILE)
    write_card(folder, card)
    return check_entry(folder)


def load_model(name: str, weights_dir: Path | str | None = None) -> LoadedModel:
    """Load a registered model after verifying its checksum and its output size.

    Raises
    ------
    ModelNotFoundError
        No such entry, or its model file is missing.
    ChecksumError
        The file is not the one the card describes.
    ModelError
        Unreadable card or model, or outputs that do not match the card's classes.
    """
    folder = model_folder(name, weights_dir)
    if not folder.is_dir():
        known = ", ".join(e.name for e in list_models(weights_dir)) or "none"
        raise ModelNotFoundError(f"no registered model named {name!r} in {folder.parent} (registered: {known})")
    entry = check_entry(folder)
    if entry.status == MISSING:
        raise ModelNotFoundError(f"model {name!r}: {entry.message}")
    if entry.status == MISMATCH:
        raise ChecksumError(f"model {name!r}: {entry.message}; re-download it or re-register it")
    if entry.status != READY or entry.card is None:
        raise ModelError(f"model {name!r}: {entry.message}")
    model = _load_keras(folder / MODEL_FILE)
    _check_outputs(model, entry.card.classes, name)
    return LoadedModel(model, entry.card, entry.card.spec())


def _load_keras(path: Path):
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file
        raise ModelError(f"could not load {path}: {exc}") from exc


def _check_outputs(model, classes: list[str], name: str) -> None:
    out = model.output_shape
    if isinstance(out, list) or len(out) != 2 or out[-1] != len(classes):
        raise ModelError(
            f"model {name!r} outputs shape {out}, but its card lists {len(classes)} classes ({', '.join(classes)})"
        )


def find_last_conv_layer(model) -> str:
    """Name of the last non-pooling layer with a 4-D output, looking inside a nested base if there is one.

    Pooling layers are skipped: Grad-CAM reads the last convolutional feature map, as keras.io does.
    """
    import keras

    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            return find_last_conv_layer(layer)
        if "Pooling" in type(layer).__name__:
            continue
        shape = getattr(layer, "output", None)
        if shape is not None and len(getattr(shape, "shape", ())) == 4:
            return layer.name
    raise ModelError(f"model {model.name!r} has no layer with a 4-D (feature map) output to use for Grad-CAM")


def has_layer(model, layer_name: str) -> bool:
    """True when ``layer_name`` is a layer of the model or of a nested base inside it."""
    import keras

    for layer in model.layers:
        if layer.name == layer_name or (isinstance(layer, keras.Model) and has_layer(layer, layer_name)):
            return True
    return False


def import_model(
    file: Path | str,
    name: str,
    arch: str,
    classes: list[str],
    *,
    last_conv_layer: str | None = None,
    preprocessing: str | None = None,
    outputs: str | None = None,
    replace: bool = False,
    weights_dir: Path | str | None = None,
    **card_fields: Any,
) -> LoadedModel:
    """Register a ``.keras`` model trained elsewhere (flat or with a nested base).

    Checks that it loads, takes a square 3-channel image and has the named (or a detected) last
    convolutional layer. Its last layer may give probabilities, logits or one sigmoid unit
    (:mod:`cxr_core.models.model_outputs`; detected from the layer, or ``outputs`` when given); the registered
    model always returns probabilities of ``len(classes)`` that sum to 1, and the card records ``outputs``.
    A model already registered under ``name`` is overwritten only with ``replace=True``.
    """
    import numpy as np

    from cxr_core.models.model_outputs import detect_outputs, output_layer, probability_model

    path = Path(file)
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} does not exist")
    original = _load_keras(path)
    shape = original.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
        raise ModelError(f"model input shape is {shape}; CXR Review needs a square 3-channel image input (None, S, S, 3)")
    detected = detect_outputs(original)
    kind = outputs or detected
    final = output_layer(original)[0]
    if kind is None:
        raise ModelError(f"cannot tell what its last layer {final.name!r} ({type(final).__name__}) gives; pass "
                         f"--outputs {'|'.join(OUTPUT_KINDS)}")
    if outputs and detected == "probabilities" and outputs != detected:
        raise ModelError(f"--outputs {outputs}, but its last layer {final.name!r} applies a softmax: "
                         "its outputs are probabilities already")
    if kind == "sigmoid" and len(classes) != 2:
        raise ModelError(f"a single sigmoid unit gives two classes (1 - p, then p); got {len(classes)}: "
                         f"{', '.join(classes)}")
    model = probability_model(original, kind)
    _check_outputs(model, list(classes), name)
    zoo_spec = get_spec(arch) if arch.lower() in SPECS else None
    layer = last_conv_layer or (zoo_spec.last_conv_layer if zoo_spec and has_layer(model, zoo_spec.last_conv_layer) else None)
    layer = layer or find_last_conv_layer(model)
    if not has_layer(model, layer):
        raise ModelError(f"model has no layer named {layer!r} (for --last-conv-layer)")
    mode = preprocessing or (zoo_spec.preprocessing if zoo_spec else "unit")
    probs = np.asarray(model(np.zeros((1, shape[1], shape[2], 3), np.float32), training=False))
    if not np.isfinite(probs).all() or abs(float(probs.sum()) - 1.0) > 1e-3 or probs.min() < 0:
        raise ModelError(f"model output sums to {float(probs.sum()):.4f}, not 1: it must end in a softmax over the "
                         "classes (or pass --outputs logits)")
    base_name = next((lyr.name for lyr in model.layers if hasattr(lyr, "layers") and has_layer(lyr, layer)), "")
    card = ModelCard(
        name=name, architecture=zoo_spec.arch if zoo_spec else arch, classes=list(classes), input_size=int(shape[1]),
        preprocessing=mode, last_conv_layer=layer, base_name=base_name, outputs=kind, **card_fields,
    )
    if kind != "probabilities":
        card.notes = [*card.notes, _OUTPUT_NOTES[kind].format(layer=final.name, file=path.name,
                                                              sha=file_sha256(path))]
    folder = model_folder(name, weights_dir)
    if not replace and ((folder / CARD_FILE).exists() or (folder / MODEL_FILE).exists()):
        raise ModelError(f"a model named {name!r} is already registered in {folder}; choose another name, "
                         "or replace it (--replace)")
    folder.mkdir(parents=True, exist_ok=True)
    if model is original:  # the user's file, byte for byte
        import shutil

        shutil.copyfile(path, folder / MODEL_FILE)
    else:
        tmp = folder / ("tmp-" + MODEL_FILE)
        model.save(tmp)
        os.replace(tmp, folder / MODEL_FILE)
    card.sha256 = file_sha256(folder / MODEL_FILE)
    write_card(folder, card)
    return load_model(name, weights_dir)


_OUTPUT_NOTES = {
    "logits": "imported from {file} (SHA-256 {sha}), whose last layer {layer!r} gives logits: a softmax layer was "
              "appended, and Grad-CAM differentiates the logits",
    "sigmoid": "imported from {file} (SHA-256 {sha}), whose last layer {layer!r} is one sigmoid unit: it became a "
               "two-class softmax (1 - p, p) over the same logit z; Grad-CAM explains class 1 by z and class 0 by -z",
}
