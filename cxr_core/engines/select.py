"""Which engine runs a model: ``CXR_BACKEND=auto|openvino|tensorflow``, and the reason, stated with every result.

- ``auto`` (default): OpenVINO when it loads and matches the Keras model (:mod:`cxr_core.engines.openvino`),
  otherwise TensorFlow, with the reason OpenVINO was not used in ``engine.info.reason`` (not installed, a
  graph it cannot cut at the Grad-CAM layer, probabilities that do not match...).
- ``openvino``: OpenVINO or an :class:`~cxr_core.engines.openvino.EngineUnavailableError` saying why
  (for an administrator who must know which engine runs).
- ``tensorflow``: the reference engine (:class:`~cxr_core.explain.cam.CamEngine`); training always uses it.

Other settings: ``CXR_OPENVINO_PRECISION=auto|float32|bfloat16`` (auto: bfloat16 where the CPU supports it),
``CXR_OPENVINO_THREADS`` (OpenVINO's inference threads; 0 or unset: OpenVINO's choice, every core; 1 can be faster
for one film on a small machine crowded by other processes) and ``CXR_CACHE_DIR``, where converted models are
kept (default ``<CXR_DATA_DIR>/cache``, i.e. ``data/cache``).

Both engines are :class:`~cxr_core.explain.cam.CamEngine` objects (same ``run`` / ``run_arrays``) whose results
are :class:`~cxr_core.engines.openvino.EngineCamResult` objects carrying an
:class:`~cxr_core.engines.openvino.EngineInfo` (backend, precision, device, reason).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from cxr_core.config import SettingsError, get_settings
from cxr_core.engines.openvino import PRECISIONS, EngineCamResult, EngineInfo, EngineUnavailableError, cpu_name
from cxr_core.explain.cam import CamEngine, CamResult
from cxr_core.models.zoo import ModelSpec

BACKENDS = ("auto", "openvino", "tensorflow")


def _choice(env: Mapping[str, str] | None, name: str, choices: tuple[str, ...]) -> str:
    """The environment variable ``name``, lower-cased and checked against ``choices`` (default ``auto``)."""
    env = os.environ if env is None else env
    value = env.get(name, "").strip().lower() or "auto"
    if value not in choices:
        raise SettingsError(f"{name}={value!r}; expected one of {', '.join(choices)}")
    return value


def backend_setting(env: Mapping[str, str] | None = None) -> str:
    """``CXR_BACKEND``, checked (default ``auto``)."""
    return _choice(env, "CXR_BACKEND", BACKENDS)


def precision_setting(env: Mapping[str, str] | None = None) -> str:
    """``CXR_OPENVINO_PRECISION``, checked (default ``auto``)."""
    return _choice(env, "CXR_OPENVINO_PRECISION", PRECISIONS)


def threads_setting(env: Mapping[str, str] | None = None) -> int:
    """``CXR_OPENVINO_THREADS``, checked: a whole number >= 0 (default 0, OpenVINO's choice)."""
    env = os.environ if env is None else env
    value = env.get("CXR_OPENVINO_THREADS", "").strip() or "0"
    if not value.isdigit():
        raise SettingsError(f"CXR_OPENVINO_THREADS={value!r}; expected a whole number of threads, 0 for OpenVINO's "
                            "choice")
    return int(value)


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``CXR_CACHE_DIR``, or ``cache`` inside the data folder (``data/cache`` by default; git ignores it)."""
    env = os.environ if env is None else env
    value = env.get("CXR_CACHE_DIR", "").strip()
    return Path(value).expanduser() if value else get_settings().data_dir / "cache"


class TensorFlowCamEngine(CamEngine):
    """The reference :class:`~cxr_core.explain.cam.CamEngine`, whose results also say engine and precision."""

    backend = "tensorflow"

    def __init__(self, model, spec: ModelSpec, classes: Sequence[str], *, temperature: float = 1.0,
                 reason: str = ""):
        super().__init__(model, spec, classes, temperature=temperature)
        precision = str(getattr(getattr(model, "dtype_policy", None), "compute_dtype", "float32"))
        self.info = EngineInfo("tensorflow", precision, cpu_name(), reason)

    @property
    def precision(self) -> str:
        return self.info.precision

    def _run(self, images, shas, method, target, batch_size) -> list[CamResult]:
        return [EngineCamResult.of(r, self.info) for r in super()._run(images, shas, method, target, batch_size)]


def _openvino_failure(exc: Exception) -> str:
    if isinstance(exc, ImportError):
        return f"the openvino package could not be loaded ({type(exc).__name__}: {exc})"
    if isinstance(exc, EngineUnavailableError):
        return exc.reason
    return f"{type(exc).__name__}: {exc}"


def engine_for_model(model, spec: ModelSpec, classes: Sequence[str], *, temperature: float = 1.0,
                     sha256: str | None = None, backend: str | None = None, precision: str | None = None,
                     cache: Path | str | None = None, threads: int | None = None) -> CamEngine:
    """The engine for a Keras model under ``backend`` (default ``CXR_BACKEND``); see :func:`engine_for`.

    ``sha256`` (the model file's) keys the converted-model cache; without it OpenVINO converts every time.
    """
    backend = backend_setting({"CXR_BACKEND": backend} if backend else None)
    precision = precision_setting({"CXR_OPENVINO_PRECISION": precision} if precision else None)
    threads = threads_setting({"CXR_OPENVINO_THREADS": str(threads)} if threads is not None else None)
    if backend == "tensorflow":
        return TensorFlowCamEngine(model, spec, classes, temperature=temperature,
                                   reason="CXR_BACKEND=tensorflow (the reference engine)")
    try:
        from cxr_core.engines.openvino import OpenVinoCamEngine

        return OpenVinoCamEngine(model, spec, classes, temperature=temperature, sha256=sha256,
                                 cache_dir=cache_dir() if cache is None else cache, precision=precision,
                                 threads=threads)
    except Exception as exc:  # noqa: BLE001 - any OpenVINO failure means TensorFlow (auto) or a stated refusal
        reason = _openvino_failure(exc)
        if backend == "openvino":
            raise exc if isinstance(exc, EngineUnavailableError) else EngineUnavailableError(reason) from exc
    return TensorFlowCamEngine(model, spec, classes, temperature=temperature,
                               reason=f"OpenVINO not used: {reason}")


def engine_for(loaded, *, backend: str | None = None, precision: str | None = None,
               cache: Path | str | None = None, threads: int | None = None) -> CamEngine:
    """The engine for a registry :class:`~cxr_core.models.manifest.LoadedModel`: drop-in for ``CamEngine.from_loaded``.

    Returns an :class:`~cxr_core.engines.openvino.OpenVinoCamEngine` or a :class:`TensorFlowCamEngine`; both
    have ``run`` / ``run_arrays`` returning :class:`~cxr_core.engines.openvino.EngineCamResult` objects (a
    ``CamResult`` plus ``engine``) and ``info`` (:class:`~cxr_core.engines.openvino.EngineInfo`).

    Raises
    ------
    CamUnavailableError
        The model has no trustworthy heatmap on either engine (as ``CamEngine.from_loaded``).
    EngineUnavailableError
        ``backend="openvino"`` (or ``CXR_BACKEND=openvino``) and OpenVINO cannot run this model.
    SettingsError
        ``CXR_BACKEND``, ``CXR_OPENVINO_PRECISION`` or ``CXR_OPENVINO_THREADS`` holds an unknown value.
    """
    from cxr_core.models.predict import card_temperature

    temperature = card_temperature(loaded.card)
    return engine_for_model(loaded.model, loaded.spec, loaded.card.classes, temperature=temperature,
                            sha256=loaded.card.sha256 or None, backend=backend, precision=precision, cache=cache,
                            threads=threads)


__all__ = ["BACKENDS", "TensorFlowCamEngine", "backend_setting", "cache_dir", "engine_for", "engine_for_model",
           "precision_setting", "threads_setting"]
