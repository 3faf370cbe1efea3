"""The models page's state: its session keys.

What the page says about each model is decided elsewhere: the file check and how to get missing
architectures in :mod:`cxr_core.models.status`, the charts and tables in :mod:`ui.figures`.
Session-state keys start with ``models_``.
"""

from __future__ import annotations

import streamlit as st

from cxr_core.errors import CXRError
from cxr_core.io.plain_text import md_escape
from cxr_core.models.zoo import DEFAULT_CLASSES
from ui import auth as ui_auth

MODELS_PER_CLASS = "models_per_class"  # toggle: per-class rows in the metrics table
MODELS_FLASH = "models_flash"  # one-run message after a model was registered from the browser


def engine_text(entry) -> str:
    """Which engine and precision score this model's films on this server, or how it will be chosen."""
    from cxr_core.config import SettingsError
    from cxr_core.engines.select import backend_setting, precision_setting
    from ui import common

    built = common.engine_built(entry)
    if built is not None:
        label, reason = built
        return f"Scores by {label}" + (f" ({reason})" if reason else "")
    try:
        setting = f"CXR_BACKEND={backend_setting()}, CXR_OPENVINO_PRECISION={precision_setting()}"
    except SettingsError as err:
        return f"Not chosen: {err}"
    return f"Chosen when the model reads its first film on this server ({setting})"


def upload_form() -> None:
    """Administrators: register a ``.keras`` file from the browser, with every check of ``import-model``."""
    from cxr_core.models.upload import MAX_MODEL_BYTES, import_uploaded
    from cxr_core.models.zoo import OUTPUT_KINDS, PREPROCESSING_MODES, SPECS

    archs = [*SPECS, "custom"]
    with st.expander("Add a model from a .keras file (administrators)", icon=":material/upload:"):
        st.caption("The same checks as `python -m cxr_core import-model`: the file loads (Keras safe mode), takes a "
                   "square 3-channel image, gives one output per class, and has a convolutional layer for "
                   "Grad-CAM. Its card records the architecture, classes, input scaling and what its last layer "
                   "gives. A refused file registers nothing.")
        with st.form("models_upload"):
            file = st.file_uploader("Model file (.keras)", type=["keras"], key="models_upload_file",
                                    max_upload_size=MAX_MODEL_BYTES // 1_000_000)
            name_col, arch_col = st.columns(2)
            name = name_col.text_input("Name in the registry", key="models_upload_name",
                                       placeholder="e.g. resnet50-site-a",
                                       help="Letters, digits, '.', '_' and '-'; it becomes a folder under weights/.")
            arch = arch_col.selectbox("Architecture", archs, key="models_upload_arch",
                                      format_func=lambda a: SPECS[a].display_name if a in SPECS else "custom (other)")
            classes = st.text_input("Classes, in the model's output order, separated by commas",
                                    value=", ".join(DEFAULT_CLASSES), key="models_upload_classes")
            layer_col, prep_col, out_col = st.columns(3)
            layer = layer_col.text_input("Last convolutional layer (optional)", key="models_upload_layer",
                                         help="For Grad-CAM; default: the architecture's, else the last 4-D layer.")
            prep = prep_col.selectbox("Input scaling", ["default", *PREPROCESSING_MODES], key="models_upload_prep",
                                      help="default: the architecture's, else unit ([0, 1]).")
            outputs = out_col.selectbox("Its last layer gives", ["detect", *OUTPUT_KINDS], key="models_upload_outputs",
                                        help="probabilities (a softmax), logits (a softmax is applied), or one "
                                             "sigmoid unit (two classes: 1 - p, then p).")
            replace = st.checkbox("Replace a model registered under this name", key="models_upload_replace")
            go = st.form_submit_button("Check and register", type="primary", icon=":material/add_circle:")
    if not go:
        return
    if not ui_auth.allowed("model:register"):  # checked again on the server when the form is sent
        st.error("Your role may not register a model.")
        return
    if file is None:
        st.error("Choose a .keras file first.")
        return
    from cxr_core.models.runtime import import_tensorflow_quietly

    try:
        with st.spinner("Checking the model (it is loaded and run once)..."):
            import_tensorflow_quietly()
            card = import_uploaded(file.getvalue(), file.name, name.strip(), arch, classes.split(","),
                                   last_conv_layer=layer.strip() or None,
                                   preprocessing=None if prep == "default" else prep,
                                   outputs=None if outputs == "detect" else outputs, replace=replace).card
    except CXRError as err:
        st.error(f"Not registered: {err}", icon=":material/block:")
        return
    ui_auth.record("model_change", detail=f"registered {card.name} ({card.architecture}, "
                   f"{len(card.classes)} classes, sha256 {card.sha256[:16]}){' replacing the old one' if replace else ''}")
    st.session_state[MODELS_FLASH] = (
        f"Registered {card.name}: {card.architecture}, {len(card.classes)} classes "
        f"({md_escape(', '.join(card.classes))}), "
        f"input {card.input_size} x {card.input_size}, Grad-CAM layer {card.last_conv_layer}, outputs {card.outputs}.")
    st.rerun()
