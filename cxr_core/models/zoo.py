"""The model zoo: one :class:`ModelSpec` per architecture, the single place for its facts.

Class names, input sizes, preprocessing modes, last convolutional layers and the study's
classification heads live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cxr_core.errors import CXRError, ModelError, WeightsUnavailableError

#: The study's four classes, in output order.
DEFAULT_CLASSES: tuple[str, ...] = ("COVID-19", "Normal", "Pneumonia", "Tuberculosis")

#: Folder or label spellings accepted for each class (matched case-insensitively).
CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "COVID-19": ("covid", "covid19", "covid-19", "covid_19", "sars-cov-2"),
    "Normal": ("normal", "no finding", "no_finding", "healthy"),
    "Pneumonia": ("pneumonia", "viral pneumonia", "bacterial pneumonia"),
    "Tuberculosis": ("tuberculosis", "tb"),
}

#: Preprocessing modes: what the network expects after the X-ray is scaled to 0..255 RGB.
PREPROCESSING_MODES = ("caffe", "tf", "raw", "unit")

#: What an imported file's last layer gives: class probabilities (a softmax), unnormalised class scores
#: (logits; CXR Review appends the softmax) or one sigmoid unit (two classes: 1 - p, p).
OUTPUT_KINDS = ("probabilities", "logits", "sigmoid")

#: "Fine-tune every layer of the base": the one encoding, in specs, training configs and cards.
#: A fine-tuning depth is this or a count of the base's last layers (0 = a frozen base); ``None``
#: only ever means "not given: use the architecture's own".
ALL_LAYERS = "all"


def trainable_layers(value: object) -> int | str | None:
    """A fine-tuning depth as the command line, JSON and the tuner write it, in the one encoding.

    ``None`` stays ``None`` (not given); ``"all"`` (any case), and the older spellings ``"none"``
    and ``-1``, give :data:`ALL_LAYERS`; a whole number 0 or more, or its text, gives that count.

    Raises
    ------
    ModelError
        Anything else; the message names the value and what is accepted.

    Examples
    --------
    >>> trainable_layers("10"), trainable_layers("ALL"), trainable_layers(-1), trainable_layers(None)
    (10, 'all', 'all', None)
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in (ALL_LAYERS, "none", "-1"):
        return ALL_LAYERS
    if not isinstance(value, bool) and text.isdigit():
        return int(text)
    raise ModelError(f"trainable layers must be a number of the base's last layers (0 = frozen) or 'all'; "
                     f"got {value!r}")


@dataclass(frozen=True)
class HeadSpec:
    """The classification head on top of the convolutional base (see shared notes, heads.md)."""

    pooling: str = "avg"  # "avg" or "max": global pooling of the base's output
    hidden_units: tuple[int, ...] = (256,)
    activation: str = "relu"
    dropout: float = 0.0
    l2: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything CXR Review must know about one architecture.

    Attributes
    ----------
    arch : short name used on the command line and in cards (``"resnet50"``).
    keras_name : the ``keras.applications`` builder (``"ResNet50"``); empty for imported models.
    input_size : side of the square input (224, or 299 for Xception).
    preprocessing : ``"caffe"`` (BGR, ImageNet mean subtracted), ``"tf"`` ([-1, 1]),
        ``"raw"`` (0..255; the network rescales itself) or ``"unit"`` ([0, 1]).
    last_conv_layer : the layer Grad-CAM reads.
    head : the classification head the study used.
    trainable_base_layers : how many of the base's last layers are fine-tuned, or :data:`ALL_LAYERS`.
    imagenet_file : the Keras file name of the no-top ImageNet weights (for air-gapped installs).
    base_name : the base's layer name when it is nested inside an imported model.
    mask_markers : inpaint burned-in markers and black out the border before the network sees the
        film (``--mask-markers``); a model trained that way must be run that way.
    crop_lungs : crop each film to its estimated lung fields' bounding box (with a margin) before
        resizing (``--crop-lungs``, :mod:`cxr_core.models.lung_crop`); likewise run as trained.
    outputs : what the imported file's last layer gave (:data:`OUTPUT_KINDS`). The registered model
        always outputs probabilities; for ``"sigmoid"`` Grad-CAM explains class 1 by the unit's logit
        ``z`` and class 0 by ``-z``.
    """

    arch: str
    display_name: str
    keras_name: str
    input_size: int
    preprocessing: str
    last_conv_layer: str
    head: HeadSpec = field(default_factory=HeadSpec)
    trainable_base_layers: int | str = ALL_LAYERS
    imagenet_file: str = ""
    base_name: str = ""
    mask_markers: bool = False
    outputs: str = "probabilities"
    crop_lungs: bool = False

    def with_overrides(self, **changes: Any) -> "ModelSpec":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)


SPECS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec(
        "resnet50", "ResNet50", "ResNet50", 224, "caffe", "conv5_block3_out",
        HeadSpec(pooling="max", hidden_units=(256,)), trainable_base_layers=10,
        imagenet_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", base_name="resnet50",
    ),
    "vgg16": ModelSpec(
        "vgg16", "VGG16", "VGG16", 224, "caffe", "block5_conv3",
        HeadSpec(pooling="max", hidden_units=(256,)), trainable_base_layers=10,
        imagenet_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", base_name="vgg16",
    ),
    "xception": ModelSpec(
        "xception", "Xception", "Xception", 299, "tf", "block14_sepconv2_act",
        HeadSpec(pooling="avg", hidden_units=(64,)), trainable_base_layers=ALL_LAYERS,
        imagenet_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5", base_name="xception",
    ),
    "efficientnetv2b0": ModelSpec(
        "efficientnetv2b0", "EfficientNetV2B0", "EfficientNetV2B0", 224, "raw", "top_activation",
        HeadSpec(pooling="avg", hidden_units=(225,), dropout=0.4, l2=1e-4), trainable_base_layers=0,
        imagenet_file="efficientnetv2-b0_notop.h5", base_name="efficientnetv2-b0",
    ),
}

#: Minimum input side each base accepts (Xception's stem needs 71 px).
MIN_INPUT_SIZE = {"resnet50": 32, "vgg16": 32, "xception": 71, "efficientnetv2b0": 32}


def get_spec(arch: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``arch`` (case-insensitive)."""
    key = arch.lower().replace("-", "").replace("_", "")
    if key not in SPECS:
        raise ModelError(f"unknown architecture {arch!r}; expected one of {', '.join(SPECS)}")
    return SPECS[key]


def canonical_class(label: str, classes: tuple[str, ...] = DEFAULT_CLASSES) -> str:
    """Map a folder name or label (``covid``, ``TB``, ``NORMAL``) to its class in ``classes``."""
    wanted = label.strip().lower()
    for cls in classes:
        if wanted == cls.lower() or wanted in CLASS_ALIASES.get(cls, ()):
            return cls
    raise CXRError(f"label {label!r} matches none of the classes {', '.join(classes)}")


def _imagenet_help(spec: ModelSpec) -> str:
    cache = Path.home() / ".keras" / "models" / spec.imagenet_file
    return (
        f"ImageNet weights for {spec.display_name} could not be downloaded. On a machine without internet, "
        f"download {spec.imagenet_file} elsewhere and either put it at {cache} or pass its path "
        f"(--imagenet-weights PATH, or weights=PATH); or train from scratch (--no-imagenet, weights=None)"
    )


def build_model(
    arch: str,
    classes: tuple[str, ...] | list[str] = DEFAULT_CLASSES,
    weights: str | Path | None = "imagenet",
    *,
    input_size: int | None = None,
    head: HeadSpec | None = None,
    trainable_base_layers: int | str | None = None,
):
    """Build a classifier with the base flat on the input tensor, so every layer is reachable.

    Parameters
    ----------
    arch : one of :data:`SPECS`.
    classes : output classes, in order.
    weights : ``"imagenet"``, ``None`` (random) or a path to a local no-top weights file.
    input_size : square input side; defaults to the spec's.
    head : head override (hidden units, activation, ...); defaults to the study's head.
    trainable_base_layers : fine-tune the last N base layers (0 = frozen base) or :data:`ALL_LAYERS`;
        ``None``: the spec's. BatchNorm layers stay frozen either way.

    Returns
    -------
    keras.Model
        Outputs softmax probabilities; the pre-softmax scores are the ``logits`` layer's output.

    Raises
    ------
    WeightsUnavailableError
        ``weights="imagenet"`` cannot be downloaded, or a weights path does not exist.
    """
    import keras

    spec = get_spec(arch)
    size = input_size or spec.input_size
    if size < MIN_INPUT_SIZE[spec.arch]:
        raise ModelError(f"{spec.display_name} needs an input of at least {MIN_INPUT_SIZE[spec.arch]} px, got {size}")
    head = head or spec.head
    if len(classes) < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {list(classes)}")
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise WeightsUnavailableError(f"weights file {weights} does not exist; " + _imagenet_help(spec))
    inp = keras.Input((size, size, 3), name="image")
    builder = getattr(keras.applications, spec.keras_name)
    try:
        base = builder(include_top=False, weights=None if weights is None else str(weights), input_tensor=inp)
    except Exception as exc:  # Keras raises a bare Exception for a failed download
        if weights == "imagenet":
            raise WeightsUnavailableError(_imagenet_help(spec)) from exc
        raise ModelError(f"could not build {spec.display_name} with weights {weights}: {exc}") from exc
    n_trainable = trainable_layers(spec.trainable_base_layers if trainable_base_layers is None
                                   else trainable_base_layers)
    base_layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    for i, layer in enumerate(base_layers):
        fine_tuned = n_trainable == ALL_LAYERS or i >= len(base_layers) - int(n_trainable)
        layer.trainable = fine_tuned and not isinstance(layer, keras.layers.BatchNormalization)
    pool = keras.layers.GlobalMaxPooling2D if head.pooling == "max" else keras.layers.GlobalAveragePooling2D
    x = pool(name="pool")(base.output)
    x = keras.layers.Flatten(name="flatten")(x)
    regularizer = keras.regularizers.L2(head.l2) if head.l2 else None
    for i, units in enumerate(head.hidden_units, start=1):
        if head.dropout:
            x = keras.layers.Dropout(head.dropout, name=f"dropout_{i}")(x)
        x = keras.layers.Dense(units, activation=head.activation, kernel_regularizer=regularizer, name=f"hidden_{i}")(x)
    logits = keras.layers.Dense(len(classes), name="logits")(x)
    probs = keras.layers.Activation("softmax", name="probabilities", dtype="float32")(logits)
    return keras.Model(inp, probs, name=f"cxr_{spec.arch}")
