"""Scores and Grad-CAM from one OpenVINO inference: the network body compiled once per model file.

The model is split at the Grad-CAM layer (``spec.last_conv_layer``):

- the **body** (image -> that layer's activations, nearly all the work) is converted to OpenVINO once per
  model file and cached under ``<cache>/openvino/<file SHA-256>-<layer>-<size>-ov<version>/``; a later load
  reads the cached IR (no conversion); OpenVINO's own compiled-blob cache sits beside it;
- the **head** above that layer (pooling, dense layers, softmax: a few thousand multiply-adds) runs in
  TensorFlow in float32, which gives the probabilities and, by differentiating only the head, the
  gradients of the pre-softmax score with respect to the activations. So a heatmap costs no second pass.

The channel weights, the ReLU, the normalisation and the upsampling are those of
:mod:`cxr_core.explain.cam` (the same functions), and results are :class:`~cxr_core.explain.cam.CamResult`
objects that also say which engine and precision made them (:class:`EngineCamResult`).

Precision: bfloat16 where OpenVINO reports the CPU can (``BF16`` in the CPU's ``OPTIMIZATION_CAPABILITIES``,
e.g. AVX512_BF16 or AMX), float32 otherwise. Every engine is checked when made: its probabilities on a probe
batch must match the Keras model's own within :data:`TOLERANCE` (1e-4 in float32, 1e-2 in bfloat16); a
bfloat16 engine that misses falls back to float32, and a float32 one that misses is refused
(:class:`EngineUnavailableError`), never a wrong score.

Compile settings (:func:`compile_config`; measured on a shared 2-core AVX2 EPYC, see ``bench/bench_cam.py``):
``PERFORMANCE_HINT=LATENCY`` (one stream, all cores for one film), ``ENABLE_CPU_PINNING=False`` and, optionally,
``INFERENCE_NUM_THREADS`` (``CXR_OPENVINO_THREADS``; 0 = OpenVINO's choice, all cores). Pinning binds OpenVINO's
threads to fixed cores: where other processes (the app server, another engine, training) want the same cores, a
pinned thread cannot move and every layer waits for it (batch 1, one interleaved run on a loaded machine:
ResNet50 0.43 -> 0.25 s, Xception 0.75 -> 0.59 s with pinning off). OpenVINO's kernels split each layer into
one fixed share per thread, so a thread that the OS preempts still stalls the layer; TensorFlow's oneDNN pool
hands out shares to whichever thread is running, which is why it loses less on a crowded machine (there one
thread, ``CXR_OPENVINO_THREADS=1``, can be faster). The batch dimension stays free: a static batch-1 copy was no
faster beyond run-to-run noise and would double compilation time and weight memory.

About 470 lines by choice: the body's conversion, its cache and the head's gradient are checked together
against the Keras model when an engine is made; apart, a stale cache could pair with the wrong head.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from cxr_core.errors import CXRError
from cxr_core.explain.cam import _WEIGHTS, CamEngine, CamResult, CamUnavailableError
from cxr_core.models.model_outputs import output_layer, score_function
from cxr_core.models.predict import scale_temperature
from cxr_core.models.preprocess import prepare_batch
from cxr_core.models.zoo import ModelSpec

#: Largest |difference| allowed between this engine's probabilities and the Keras model's own (probe batch).
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}
#: ``CXR_OPENVINO_PRECISION`` values: ``auto`` is bfloat16 when the CPU supports it, else float32.
PRECISIONS = ("auto", "float32", "bfloat16")
_HINT = {"float32": "f32", "bfloat16": "bf16"}
_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
#: Compiled-model properties worth stating next to timings (what :attr:`OpenVinoCamEngine.settings` holds).
SETTINGS = ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
            "ENABLE_CPU_PINNING")
#: CPU flags worth printing next to timings (vector width, bfloat16 and int8 dot products, AMX tiles).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
               "amx_int8")


class EngineUnavailableError(CXRError):
    """OpenVINO cannot give trustworthy results for this model; the message says why."""

    def __init__(self, reason: str):
        super().__init__(f"the OpenVINO engine cannot run this model: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class EngineInfo:
    """Which engine made a result, in which precision, on what, and why that engine.

    ``precision`` is the network body's; the head above the Grad-CAM layer always runs in float32.
    ``max_abs_diff`` is the largest probability difference from the Keras model measured when the engine was
    made (None for the TensorFlow engine, which is the reference).
    """

    backend: str
    precision: str
    device: str = ""
    reason: str = ""
    cache: str = ""
    max_abs_diff: float | None = None

    @property
    def label(self) -> str:
        """``"OpenVINO, bfloat16"`` / ``"TensorFlow, float32"``: what a page prints next to a score."""
        return f"{'OpenVINO' if self.backend == 'openvino' else 'TensorFlow'}, {self.precision}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EngineCamResult(CamResult):
    """A :class:`~cxr_core.explain.cam.CamResult` that also says which engine and precision made it."""

    engine: EngineInfo | None = None

    @classmethod
    def of(cls, result: CamResult, engine: EngineInfo) -> "EngineCamResult":
        return cls(**{f.name: getattr(result, f.name) for f in fields(CamResult)}, engine=engine)

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.engine is not None:
            out["engine"] = self.engine.to_dict()
        return out


# --- the CPU -----------------------------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_flags() -> tuple[str, ...]:
    """The :data:`SPEED_FLAGS` this CPU has (empty where ``/proc/cpuinfo`` cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return tuple(f for f in SPEED_FLAGS if f in have)


_CORE = None
_CORE_LOCK = threading.Lock()


def ov_core():
    """One ``openvino.Core`` per process (it holds the plugins; making one costs ~0.1 s)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin can run bfloat16 here (``BF16`` among its optimisation capabilities)."""
    return "BF16" in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def choose_precision(requested: str = "auto") -> tuple[str, str]:
    """``(precision, why)`` for a requested one of :data:`PRECISIONS` on this CPU."""
    if requested not in PRECISIONS:
        raise CXRError(f"precision {requested!r} unknown; expected one of {', '.join(PRECISIONS)}")
    supported = bf16_supported()
    if requested == "float32":
        return "float32", "float32 was asked for"
    if supported:
        return "bfloat16", "this CPU supports bfloat16"
    caps = ", ".join(ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    asked = "bfloat16 was asked for, but " if requested == "bfloat16" else ""
    return "float32", f"{asked}this CPU has no bfloat16 support (OpenVINO CPU capabilities: {caps})"


def compile_config(precision: str, *, threads: int = 0, cache_dir: str | None = None) -> dict[str, object]:
    """The CPU plugin configuration for one film at a time: latency hint, ``precision``, no thread pinning.

    ``threads`` > 0 caps OpenVINO's threads (``INFERENCE_NUM_THREADS``); 0 leaves the choice to OpenVINO
    (every core). ``cache_dir`` is OpenVINO's compiled-blob cache (``CACHE_DIR``); None: no blob cache.
    """
    if threads < 0:
        raise CXRError(f"OpenVINO threads must be 0 (OpenVINO's choice) or more; got {threads}")
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _HINT[precision],
                                 "ENABLE_CPU_PINNING": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir:
        config["CACHE_DIR"] = cache_dir
    return config


def _text(value: object) -> str:
    """A compiled-model property as text: an element type by its short name (``f32``), anything else by ``str``."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


# --- splitting the Keras model at the Grad-CAM layer ----------------------------------------------------

def _nested_base(model, layer_name: str, base_name: str):
    import keras

    nested = [lyr for lyr in model.layers if isinstance(lyr, keras.Model)]
    candidates = sorted(nested, key=lambda m: m.name != base_name)
    for lyr in candidates:
        if any(inner.name == layer_name for inner in lyr.layers):
            return lyr
    raise CamUnavailableError(f"no layer named {layer_name!r} in the model or in a base nested one level deep")


def split_model(model, spec: ModelSpec):
    """``(body, head)`` Keras models: ``body(image) -> activations``, ``head(activations) -> [pre, probs]``.

    ``pre`` is the input of the model's final softmax layer (what :func:`score_function` turns into the
    pre-softmax class scores). Flat models are cut on their own graph; a base nested one level deep (an
    imported model) is cut inside the base and the outer layers are chained after it, as
    :mod:`cxr_core.explain.cam` replays them. A graph that cannot be cut this way raises.

    Raises
    ------
    CamUnavailableError
        The model's last layer is no softmax, or it has no layer ``spec.last_conv_layer``.
    EngineUnavailableError
        The graph cannot be cut at that layer (e.g. a branch that bypasses it).
    """
    import keras

    final, node = output_layer(model)
    if score_function(final, spec.outputs) is None:
        raise CamUnavailableError(f"its last layer {final.name!r} ({type(final).__name__}) is not a softmax, so the "
                                  "pre-softmax class scores Grad-CAM needs cannot be read")
    layer = spec.last_conv_layer
    try:
        if layer in {lyr.name for lyr in model.layers}:
            acts = model.get_layer(layer).output
            pre = final._inbound_nodes[node].input_tensors[0]
            return keras.Model(model.inputs, acts), keras.Model(acts, [pre, model.outputs[0]])
        base = _nested_base(model, layer, spec.base_name)
        inner = base.get_layer(layer).output
        layers = [lyr for lyr in model.layers if not isinstance(lyr, keras.layers.InputLayer)]
        if layers[-1] is not final:
            raise EngineUnavailableError(
                f"its output comes from {final.name!r}, not its last layer {layers[-1].name!r}")
        at = layers.index(base)
        x = keras.Input(tuple(model.input_shape[1:]), name="image")
        h = x
        for lyr in layers[:at]:
            h = lyr(h)
        body = keras.Model(x, keras.Model(base.inputs, inner)(h))
        a = keras.Input(tuple(inner.shape[1:]), name="activations")
        h = a if inner is base.outputs[0] else keras.Model(inner, base.outputs[0])(a)
        for lyr in layers[at + 1:-1]:
            h = lyr(h)
        return body, keras.Model(a, [h, final(h)])
    except (CamUnavailableError, EngineUnavailableError):
        raise
    except Exception as exc:  # Keras raises many types for graphs it cannot cut
        raise EngineUnavailableError(f"its graph cannot be cut at layer {layer!r} ({exc})") from exc


# --- conversion and the on-disk cache -----------------------------------------------------------------

def convert_body(body, input_size: int):
    """Convert the Keras body to an OpenVINO model with a free batch dimension (slow: seconds to a minute)."""
    import openvino as ov

    with warnings.catch_warnings():  # Keras warns that the traced input is not a dict: harmless
        warnings.simplefilter("ignore", UserWarning)
        return ov.convert_model(body, input=[(-1, input_size, input_size, 3)])


def cache_key(sha256: str, spec: ModelSpec) -> str:
    """Folder name of a converted body: model file SHA-256, layer, input size and OpenVINO version."""
    import openvino as ov

    version = ov.get_version().split("-")[0]
    raw = f"{sha256}-{spec.last_conv_layer}-{spec.input_size}-ov{version}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


def load_or_convert(body, spec: ModelSpec, *, sha256: str | None, cache_dir: Path | None):
    """``(openvino.Model, cache folder or None, converted?)``: the cached IR when there is one, else a conversion.

    The IR is written to a temporary folder and renamed into place, so a reader never sees half a file and
    two processes converting at once both end with one complete entry. Weights are kept in float32
    (``compress_to_fp16=False``). An entry that cannot be read is converted again; a cache folder that cannot
    be written (read-only, full) leaves the model uncached (folder None).
    """
    import openvino as ov

    if sha256 is None or cache_dir is None:
        return convert_body(body, spec.input_size), None, True
    folder = Path(cache_dir) / "openvino" / cache_key(sha256, spec)
    xml = folder / "model.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        try:
            return ov_core().read_model(str(xml)), folder, False
        except Exception:  # noqa: BLE001 - a damaged entry is rebuilt below
            shutil.rmtree(folder, ignore_errors=True)
    converted = convert_body(body, spec.input_size)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}")
    try:
        tmp.mkdir(parents=True)
        ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=False)
        os.replace(tmp, folder)
    except OSError:  # another process stored it first, or the cache cannot be written (then run uncached)
        if not xml.is_file():
            return converted, None, True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return converted, folder, True


# --- the engine ---------------------------------------------------------------------------------------

class OpenVinoCamEngine(CamEngine):
    """:class:`~cxr_core.explain.cam.CamEngine` whose network body runs in OpenVINO; same methods, same results.

    Keep one per model (the compiled model and the TensorFlow head's traces are reused); it is safe to call
    from several threads (one OpenVINO request per thread). ``info`` says the precision and why.

    Parameters
    ----------
    model, spec, classes, temperature : as for :class:`~cxr_core.explain.cam.CamEngine`.
    sha256 : str, optional
        The model file's SHA-256: the cache key. Without it (an in-memory model) nothing is cached.
    cache_dir : path, optional
        The cache folder (``<cache_dir>/openvino/...``); None: no cache.
    precision : {"auto", "float32", "bfloat16"}
    threads : int
        OpenVINO's inference threads; 0 (default): OpenVINO's choice (every core). See :func:`compile_config`.

    Raises
    ------
    CamUnavailableError
        The model has no trustworthy heatmap at all (same reasons as the TensorFlow engine).
    EngineUnavailableError
        OpenVINO cannot split, convert or match this model (the TensorFlow engine may still).
    """

    backend = "openvino"

    def __init__(self, model, spec: ModelSpec, classes: Sequence[str], *, temperature: float = 1.0,
                 sha256: str | None = None, cache_dir: Path | str | None = None, precision: str = "auto",
                 threads: int = 0):
        # CamEngine.__init__ is not called: its TensorFlow pass is what this engine replaces.
        self.model, self.spec, self.classes, self.temperature = model, spec, tuple(classes), float(temperature)
        self._compiled: dict[str, Callable] = {}
        self._local = threading.local()
        self.threads = int(threads)
        compile_config("float32", threads=self.threads)  # a bad thread count fails before the slow conversion
        body, self._head = split_model(model, spec)
        final, _ = output_layer(model)
        self._score = score_function(final, spec.outputs)
        shape = tuple(body.outputs[0].shape[1:])
        if len(shape) != 3:
            raise CamUnavailableError(f"the target layer's output has shape {shape}, not a (rows, cols, channels) map")
        self._acts_shape = tuple(int(s) for s in shape)
        self.channels = self._acts_shape[-1]
        self._ov_model, folder, self.converted = load_or_convert(body, spec, sha256=sha256, cache_dir=cache_dir)
        wanted, why = choose_precision(precision)
        blobs = str(Path(cache_dir) / "openvino" / "compiled") if folder is not None else None
        diff, precision_used = self._compile_and_check(wanted, blobs)
        if diff > TOLERANCE[precision_used] and precision_used == "bfloat16":
            why = f"bfloat16 probabilities differed from TensorFlow's by {diff:.2g} (> {TOLERANCE['bfloat16']:g})"
            diff, precision_used = self._compile_and_check("float32", blobs)
        if not diff <= TOLERANCE[precision_used]:
            raise EngineUnavailableError(f"its {precision_used} probabilities differ from the Keras model's by "
                                         f"{diff:.2g} (more than {TOLERANCE[precision_used]:g})")
        self.info = EngineInfo("openvino", precision_used, cpu_name(), why, str(folder or ""), diff)

    @classmethod
    def from_loaded(cls, loaded, *, cache_dir: Path | str | None = None,
                    precision: str = "auto", threads: int = 0) -> "OpenVinoCamEngine":
        """Engine for a registry :class:`~cxr_core.models.manifest.LoadedModel`, cached by its file's SHA-256."""
        temperature = float(loaded.card.calibration.get("temperature", 1.0) or 1.0)
        return cls(loaded.model, loaded.spec, loaded.card.classes, temperature=temperature,
                   sha256=loaded.card.sha256 or None, cache_dir=cache_dir, precision=precision, threads=threads)

    @property
    def precision(self) -> str:
        return self.info.precision

    def _compile_and_check(self, precision: str, blobs: str | None) -> tuple[float, str]:
        """Compile the body in ``precision``; returns (max |prob difference| on the probe, precision used)."""
        config = compile_config(precision, threads=self.threads, cache_dir=blobs)
        self._body = ov_core().compile_model(self._ov_model, "CPU", config)
        self._local = threading.local()
        #: What OpenVINO compiled with (``SETTINGS``: hint, precision, threads, streams, pinning), as strings.
        self.settings = {key: _text(self._body.get_property(key)) for key in SETTINGS}
        used = self._body.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return self._verify(), _NAMES.get(used, used)

    def _verify(self) -> float:
        """Max |difference| between this engine's and the Keras model's probabilities on a probe batch."""
        rng = np.random.default_rng(0)
        probe = prepare_batch([rng.uniform(0, 1, (32, 40)).astype(np.float32) for _ in range(2)], self.spec)
        expected = np.asarray(self.model(probe, training=False), np.float64)
        probs = self.probabilities(probe)
        if probs.shape != expected.shape:
            raise EngineUnavailableError(f"it gives outputs of shape {probs.shape}, the model {expected.shape}")
        return float(np.max(np.abs(probs - expected)))

    def activations(self, batch: np.ndarray) -> np.ndarray:
        """The Grad-CAM layer's activations (N, h, w, C) float32 for a prepared batch: the OpenVINO inference."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._body.create_infer_request()
        # share_inputs: OpenVINO reads the (contiguous) array in place during this synchronous call, no copy
        return np.asarray(request.infer([np.ascontiguousarray(batch, np.float32)], share_inputs=True)[0],
                          np.float32)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Raw softmax outputs (N, K) float64 for a prepared batch (no gradients)."""
        if "_probs" not in self._compiled:
            import tensorflow as tf

            spec = tf.TensorSpec([None, *self._acts_shape], tf.float32)
            self._compiled["_probs"] = tf.function(lambda a: self._head(a, training=False)[1], input_signature=[spec],
                                                   autograph=False)
        return np.asarray(self._compiled["_probs"](self.activations(batch)), np.float64)

    def predict_arrays(self, images: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
        """Raw softmax outputs (N, K) for [0, 1] grayscale images, as :func:`cxr_core.models.predict.predict_arrays`."""
        out = [self.probabilities(prepare_batch(list(images[s:s + batch_size]), self.spec))
               for s in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def scores(self, images: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
        """Temperature-scaled scores (N, K) for [0, 1] grayscale images."""
        return scale_temperature(self.predict_arrays(images, batch_size=batch_size), self.temperature)

    def _compiled_step(self, method: str) -> Callable:
        """``(x, targets, noise) -> (probs, target index, raw CAM)``: OpenVINO body, then the TensorFlow head."""
        if method in self._compiled:
            return self._compiled[method]
        import tensorflow as tf

        weights_fn, needs_grads = _WEIGHTS[method]
        signature = [tf.TensorSpec([None, *self._acts_shape], tf.float32), tf.TensorSpec([None], tf.int32),
                     tf.TensorSpec([None, None], tf.float32)]

        @tf.function(input_signature=signature, reduce_retracing=True, autograph=False)
        def head_step(acts, targets, noise):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(acts)
                pre, probs = self._head(acts, training=False)
                logits = tf.cast(self._score(pre), tf.float32)
                chosen = tf.where(targets < 0, tf.argmax(logits, axis=-1, output_type=tf.int32), targets)
                score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
            grads = tf.cast(tape.gradient(score, acts), tf.float32) if needs_grads else None
            cam = tf.einsum("bhwc,bc->bhw", acts, weights_fn(acts, grads, noise))
            return tf.cast(probs, tf.float32), chosen, cam

        def step(x, targets, noise):
            probs, chosen, cam = head_step(self.activations(x), targets, noise)
            return probs.numpy(), chosen.numpy(), cam.numpy()

        self._compiled[method] = step
        return step

    def _run(self, images, shas, method, target, batch_size) -> list[CamResult]:
        return [EngineCamResult.of(r, self.info) for r in super()._run(images, shas, method, target, batch_size)]


__all__ = ["EngineCamResult", "EngineInfo", "EngineUnavailableError", "OpenVinoCamEngine", "TOLERANCE",
           "bf16_supported", "choose_precision", "compile_config", "cpu_flags", "cpu_name", "split_model"]
