"""Register a ``.keras`` file sent from a browser, with every check of the ``import-model`` command.

The bytes are written to a private temporary folder, handed to
:func:`cxr_core.models.manifest.import_model` (same options, same checks: it loads with Keras's safe
mode, takes a square 3-channel input, gives one output per class, has a last convolutional
layer for Grad-CAM), and the temporary copy is removed whatever happens. A refusal registers
nothing.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path, PurePath

from cxr_core.errors import ModelError
from cxr_core.models.manifest import check_model_name, import_model

#: The largest model file the page accepts (the study's largest architecture, Xception, is ~90 MB).
MAX_MODEL_BYTES = 1_000_000_000


def import_uploaded(data: bytes, filename: str, name: str, arch: str, classes: list[str], *,
                    last_conv_layer: str | None = None, preprocessing: str | None = None,
                    outputs: str | None = None, replace: bool = False, weights_dir: Path | str | None = None,
                    **card_fields):
    """:func:`~cxr_core.models.manifest.import_model` for an uploaded file; returns the loaded model.

    Raises
    ------
    ModelError
        Not a ``.keras`` file, empty or too large, a bad name or class list, or any check of
        ``import_model`` that fails (the message says which).
    """
    check_model_name(name)
    if PurePath(filename or "").suffix.lower() != ".keras":
        raise ModelError(f"{filename!r} is not a .keras file; save the model with model.save('NAME.keras')")
    if not data:
        raise ModelError(f"{filename!r} is empty (0 bytes)")
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(f"{filename!r} is {len(data) / 1e6:.0f} MB; at most {MAX_MODEL_BYTES / 1e6:.0f} MB")
    classes = [c.strip() for c in classes if c and c.strip()]
    if len(classes) < 2:
        raise ModelError(f"a model needs at least two classes in output order; got {classes}")
    if len(set(classes)) != len(classes):
        raise ModelError(f"classes must differ from one another; got {', '.join(classes)}")
    with tempfile.TemporaryDirectory(prefix="cxr-upload-") as folder:
        path = Path(folder) / re.sub(r"[^A-Za-z0-9._-]", "_", PurePath(filename).name)  # named in the card's notes
        path.write_bytes(data)
        return import_model(path, name, arch.strip(), classes, last_conv_layer=last_conv_layer or None,
                            preprocessing=preprocessing or None, outputs=outputs or None, replace=replace,
                            weights_dir=weights_dir, **card_fields)


__all__ = ["MAX_MODEL_BYTES", "import_uploaded"]
