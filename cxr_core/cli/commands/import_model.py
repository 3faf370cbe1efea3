"""``import-model``: register a Keras model trained elsewhere."""

from __future__ import annotations

from cxr_core.models.manifest import import_model
from cxr_core.models.zoo import DEFAULT_CLASSES, OUTPUT_KINDS, PREPROCESSING_MODES


def register(sub) -> None:
    p = sub.add_parser("import-model", help="register a .keras model trained elsewhere")
    p.add_argument("file", help="the .keras file")
    p.add_argument("--name", required=True, help="registry name (folder under weights/)")
    p.add_argument("--arch", required=True, help="resnet50, vgg16, xception, efficientnetv2b0 or custom")
    p.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES), help="output classes in order")
    p.add_argument("--last-conv-layer", help="layer for Grad-CAM (default: the zoo's, else the last 4-D layer)")
    p.add_argument("--preprocessing", choices=PREPROCESSING_MODES, help="input scaling (default: the zoo's, else unit)")
    p.add_argument("--outputs", choices=OUTPUT_KINDS,
                   help="what the last layer gives (default: detected): a softmax's probabilities; logits (a "
                        "softmax is applied); or one sigmoid unit, which becomes two classes (1 - p, p) in "
                        "--classes order")
    p.add_argument("--replace", action="store_true", help="overwrite a model already registered under --name")
    p.set_defaults(func=run)


def run(args) -> int:
    from cxr_core.models.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()
    loaded = import_model(
        args.file, args.name, args.arch, args.classes,
        last_conv_layer=args.last_conv_layer, preprocessing=args.preprocessing, outputs=args.outputs,
        replace=args.replace,
    )
    card = loaded.card
    how = {"probabilities": "probabilities", "logits": "logits (softmax applied)",
           "sigmoid": "one sigmoid unit (two classes: 1 - p, p)"}[card.outputs]
    print(f"registered {card.name}: {card.architecture}, {len(card.classes)} classes, input {card.input_size}, "
          f"Grad-CAM layer {card.last_conv_layer}, outputs {how}" + ("" if args.outputs else " (detected)"))
    return 0
