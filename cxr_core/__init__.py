"""CXR Review core library: imaging, models, Grad-CAM, annotation storage and agreement.

Pure Python with no Streamlit import. The rooms (see ``docs/architecture.md``):

- :mod:`cxr_core.io`: bytes to pixels (DICOM, PNG, JPEG), CSV and HTML out;
- :mod:`cxr_core.models`: model zoo, weights and cards, preprocessing, prediction, calibration;
- :mod:`cxr_core.explain`: Grad-CAM, binarisation, overlays, faithfulness and sanity checks;
- :mod:`cxr_core.safety`: out-of-distribution screening, markers, the blind gate, session intake;
- :mod:`cxr_core.annotation`: findings, canvas readings, masks, consensus;
- :mod:`cxr_core.storage`: the annotation database and its Alembic migrations;
- :mod:`cxr_core.agreement`: heatmap-versus-expert metrics, session scores and reports;
- :mod:`cxr_core.audit`: where a model looks across a dataset;
- :mod:`cxr_core.training`: training, tuning, datasets, evaluation;
- :mod:`cxr_core.cli`: ``python -m cxr_core`` and its commands;
- :mod:`cxr_core.analysis`: the one path a film takes (decode, screen, warn, predict, explain).

A small stable API for scripts, whatever the rooms become::

    import cxr_core
    xray = cxr_core.load_xray("film.dcm")
    model = cxr_core.load_model("demo-efficientnetv2b0")
    [prediction] = cxr_core.predict(model, [xray])
    result = cxr_core.analyse(model, xray, method="gradcam")  # screened, warned, scored and explained

``cxr_core.storage`` and ``cxr_core.annotation`` are stable module paths too. TensorFlow is imported
lazily by the modules that need it, so ``import cxr_core`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Stable names -> (module, attribute); resolved on first use so importing the package stays cheap.
_API = {
    "load_xray": ("cxr_core.io.imaging", "load_xray"),
    "XRay": ("cxr_core.io.imaging", "XRay"),
    "load_model": ("cxr_core.models.manifest", "load_model"),
    "list_models": ("cxr_core.models.manifest", "list_models"),
    "predict": ("cxr_core.models.predict", "predict_loaded"),
    "Prediction": ("cxr_core.models.predict", "Prediction"),
    "analyse": ("cxr_core.analysis", "analyse"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cxr_core' has no attribute {name!r}")
