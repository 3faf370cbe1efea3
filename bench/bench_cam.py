"""Grad-CAM cost per architecture at real input size: our one-pass engine versus a plain forward pass
and versus the keras.io recipe, with achieved GFLOP/s next to this machine's float32 matmul rate.

For each of ResNet50 (224), VGG16 (224), Xception (299) and EfficientNetV2B0 (224), built with
``weights=None`` (speed does not depend on the weights), on a 1024 x 1024 X-ray:

- ``fwd``: :func:`cxr_core.models.predict.predict` for one image (preprocessing + cached ``tf.function``);
- ``cam``: :meth:`CamEngine.run` for one image (preprocessing + one compiled pass giving
  probabilities and Grad-CAM + upsampling/normalisation to 1024 x 1024);
- ``eager``: keras.io's ``make_gradcam_heatmap`` as people copy it (sub-model built per call,
  ``GradientTape``, no compilation) on the flat model, plus the same preprocessing and upsampling;
  the input is watched so the frozen EfficientNetV2B0 base still yields gradients;
- ``fwd16`` / ``cam16``: throughput for a batch of 16;
- GFLOP: forward multiply-adds x 2 of the conv/dense layers, counted from the layer shapes;
  GFLOP/s = GFLOP / single-image latency (network only, no preprocessing), beside a compiled
  2048 x 2048 float32 matmul.

Engines side by side (issue 17): the same model on TensorFlow (``CamEngine``, the reference) and on
OpenVINO (:mod:`cxr_core.engines.openvino`) in float32 and, where the CPU has it, bfloat16:

- ``latency``: ``engine.run([xray])`` (predict + Grad-CAM + heatmap at the X-ray's size), best of the repeats;
- ``net``: the compiled predict+CAM call alone on a prepared image; GFLOP/s = forward GFLOP / ``net``,
  beside a 2048 x 2048 matmul measured in the same precision by the same engine;
- ``films/s @16``: ``engine.run`` on a batch of 16;
- ``max|dp|`` / ``corr``: largest probability difference from TensorFlow and the heatmaps' Pearson correlation
  on the film; ``setup``: OpenVINO conversion + compilation + its check against Keras (once per model file,
  then read from the cache).

Timings alternate the engines in each repeat and report the best of the repeats (as ``timeit``
advises), so load from other processes on a shared machine inflates neither side of a ratio; the median
is printed too. ``--ov-threads 0 1`` adds an OpenVINO row per thread count (0: OpenVINO's choice, every core);
the header states the CPU, its flags, the load average and the settings each engine compiled with.
Run: ``python bench/bench_cam.py [--archs resnet50 vgg16] [--repeats 5] [--engines-only] [--ov-threads 0 1]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from cxr_core.engines.openvino import (  # noqa: E402
    OpenVinoCamEngine, bf16_supported, compile_config, cpu_flags, cpu_name, ov_core,
)
from cxr_core.explain.cam import CamEngine  # noqa: E402
from cxr_core.io.imaging import XRay, load_xray, pixel_sha256  # noqa: E402
from cxr_core.models.predict import compiled_forward, predict  # noqa: E402
from cxr_core.models.preprocess import prepare_batch  # noqa: E402
from cxr_core.models.runtime import import_tensorflow_quietly  # noqa: E402
from cxr_core.models.zoo import DEFAULT_CLASSES, SPECS, build_model, get_spec  # noqa: E402

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cxr" / "covid_hannover_b343e657.png"


def forward_flops(model) -> float:
    """2 x multiply-adds of every Conv2D / DepthwiseConv2D / SeparableConv2D / Dense layer."""
    import keras

    total = 0
    for layer in model.layers:
        out = layer.output.shape
        if isinstance(layer, keras.layers.SeparableConv2D):
            cin = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            total += out[1] * out[2] * cin * (kh * kw * layer.depth_multiplier + layer.depth_multiplier * out[-1])
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += out[1] * out[2] * out[-1] * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            cin = layer.input.shape[-1] // layer.groups
            kh, kw = layer.kernel_size
            total += out[1] * out[2] * out[-1] * kh * kw * cin
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return 2.0 * total


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    mm = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    mm(a, b).numpy()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mm(a, b).numpy()
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / min(times) / 1e9


def ov_matmul_gflops(precision: str, n: int = 2048, repeats: int = 10) -> float:
    """The same matmul compiled by OpenVINO in ``precision`` ("float32" or "bfloat16"), the engine's settings."""
    import openvino as ov
    from openvino import opset13 as ops

    a, b = ops.parameter([n, n], np.float32), ops.parameter([n, n], np.float32)
    compiled = ov_core().compile_model(ov.Model([ops.matmul(a, b, False, False)], [a, b]), "CPU",
                                       compile_config(precision))
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    request.infer([x, x])
    return 2.0 * n ** 3 / min(tibest(lambda: request.infer([x, x])) for _ in range(repeats)) / 1e9


def keras_io_gradcam(model, spec, xray: XRay) -> np.ndarray:
    """keras.io ``make_gradcam_heatmap`` per call (pre-softmax ``logits``), upsampled to the X-ray."""
    import keras
    import tensorflow as tf

    img_array = tf.constant(prepare_batch([xray.pixels], spec))
    grad_model = keras.Model(model.inputs, [model.get_layer(spec.last_conv_layer).output,
                                            model.get_layer("logits").output])
    with tf.GradientTape() as tape:
        tape.watch(img_array)
        last_conv_layer_output, preds = grad_model(img_array)
        pred_index = tf.argmax(preds[0])
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = tf.squeeze(last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis])
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return cv2.resize(heatmap.numpy(), xray.shape[::-1], interpolation=cv2.INTER_LINEAR)


def tibest(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_arch(arch: str, xray: XRay, repeats: int) -> dict:
    import keras

    spec = get_spec(arch)
    t0 = time.perf_counter()
    model = build_model(arch, DEFAULT_CLASSES, weights=None)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = CamEngine.from_model(model, spec, DEFAULT_CLASSES)
    engine.run([xray])  # first call traces
    predict(model, spec, [xray], DEFAULT_CLASSES)
    setup_s = time.perf_counter() - t0
    batch = [xray] * 16
    x1 = prepare_batch([xray.pixels], spec)
    fwd_fn, cam_fn = compiled_forward(model, spec.input_size), engine._compiled_step("gradcam")
    targets, noise = np.full(1, -1, np.int32), np.zeros((1, 0), np.float32)
    engine.run(batch)
    predict(model, spec, batch, DEFAULT_CLASSES)  # warm the batch-16 shapes
    keras_io_gradcam(model, spec, xray)

    fwd, cam, net_fwd, net_cam, eager = [], [], [], [], []
    for _ in range(repeats):
        fwd.append(tibest(lambda: predict(model, spec, [xray], DEFAULT_CLASSES)))
        cam.append(tibest(lambda: engine.run([xray])))
        net_fwd.append(tibest(lambda: fwd_fn(x1).numpy()))
        net_cam.append(tibest(lambda: [t.numpy() for t in cam_fn(x1, targets, noise)]))
    for _ in range(max(3, repeats // 2)):
        eager.append(tibest(lambda: keras_io_gradcam(model, spec, xray)))
    fwd16, cam16 = [], []
    for _ in range(max(3, repeats // 2)):
        fwd16.append(tibest(lambda: predict(model, spec, batch, DEFAULT_CLASSES)))
        cam16.append(tibest(lambda: engine.run(batch)))
    best = min  # the least disturbed by other processes
    row = {
        "arch": spec.display_name, "input": spec.input_size, "grid": engine.run([xray])[0].grid.shape,
        "build_s": build_s, "setup_s": setup_s, "gflop": forward_flops(model) / 1e9,
        "fwd": best(fwd), "cam": best(cam), "net_fwd": best(net_fwd), "net_cam": best(net_cam), "eager": best(eager),
        "fwd16": 16 / best(fwd16), "cam16": 16 / best(cam16),
    }
    del engine, model, fwd_fn, cam_fn
    keras.backend.clear_session()
    gc.collect()
    return row


def bench_engines(arch: str, xray: XRay, repeats: int, precisions: list[str], threads: list[int],
                  settings: dict[str, dict]) -> list[dict]:
    """One row per engine (TensorFlow, OpenVINO in each precision and thread count) for the same weights=None model.

    ``settings`` collects what each OpenVINO engine compiled with (by engine name), for the header.
    """
    import keras

    spec = get_spec(arch)
    keras.utils.set_random_seed(0)
    model = build_model(arch, DEFAULT_CLASSES, weights=None)
    engines, setup = {}, {}
    t0 = time.perf_counter()
    engines["TensorFlow float32"] = CamEngine.from_model(model, spec, DEFAULT_CLASSES)
    setup["TensorFlow float32"] = time.perf_counter() - t0
    for precision in precisions:
        for n in threads:
            t0 = time.perf_counter()
            engine = OpenVinoCamEngine(model, spec, DEFAULT_CLASSES, precision=precision, threads=n)
            name = f"OpenVINO {engine.info.precision}" + (f" {n}t" if n else "")
            setup[name] = time.perf_counter() - t0
            engines[name] = engine
            settings[name] = engine.settings
    x1 = prepare_batch([xray.pixels], spec)
    targets, noise = np.full(1, -1, np.int32), np.zeros((1, 0), np.float32)
    steps = {name: e._compiled_step("gradcam") for name, e in engines.items()}
    batch = [xray] * 16
    reference = engines["TensorFlow float32"].run([xray])[0]
    times: dict[str, dict[str, list[float]]] = {name: {"run": [], "net": [], "run16": []} for name in engines}
    results = {}
    for name, engine in engines.items():  # warm every shape before timing
        results[name] = engine.run([xray])[0]
        engine.run(batch)
    for _ in range(repeats):
        for name, engine in engines.items():
            times[name]["run"].append(tibest(lambda: engine.run([xray])))
            times[name]["net"].append(tibest(lambda: [np.asarray(t) for t in steps[name](x1, targets, noise)]))
    for _ in range(max(3, repeats // 2)):
        for name, engine in engines.items():
            times[name]["run16"].append(tibest(lambda: engine.run(batch)))
    gflop = forward_flops(model) / 1e9
    rows = []
    for name, engine in engines.items():
        r = results[name]
        diff = float(np.max(np.abs(r.prediction.raw_probabilities - reference.prediction.raw_probabilities)))
        corr = (float(np.corrcoef(r.heatmap.ravel(), reference.heatmap.ravel())[0, 1])
                if not (r.all_zero or reference.all_zero) else float("nan"))
        rows.append({"arch": spec.display_name, "input": spec.input_size, "engine": name, "gflop": gflop,
                     "precision": getattr(engine, "precision", "float32"), "run": min(times[name]["run"]),
                     "run_median": float(np.median(times[name]["run"])), "net": min(times[name]["net"]),
                     "run16": 16 / min(times[name]["run16"]), "setup": setup[name], "diff": diff, "corr": corr,
                     "same": r.target_index == reference.target_index})
    del engines, steps, model
    keras.backend.clear_session()
    gc.collect()
    return rows


def print_engines(rows: list[dict], mm: dict[str, float]) -> None:
    """The side-by-side table; speed-up = TensorFlow latency / this engine's, for the same model."""
    print("\nEngines side by side: predict + Grad-CAM (weights=None; end-to-end latency includes preprocessing and "
          "the heatmap at the X-ray's size; net = the compiled call alone)")
    print(f"{'model':17s} {'engine':19s} {'latency s':>9s} {'speed-up':>8s} {'median s':>8s} {'net s':>7s} "
          f"{'films/s@16':>10s} "
          f"{'GFLOP/s':>8s} {'of matmul':>9s} {'max|dp|':>8s} {'corr':>7s} {'class':>5s} {'setup s':>7s}")
    tf_rows = {r["arch"]: r for r in rows if r["engine"].startswith("TensorFlow")}
    for r in rows:
        rate = r["gflop"] / r["net"]
        peak = mm["tf"] if r["engine"].startswith("TensorFlow") else mm[r["precision"]]
        print(f"{r['arch']:17s} {r['engine']:19s} {r['run']:9.4f} {tf_rows[r['arch']]['run'] / r['run']:7.2f}x "
              f"{r['run_median']:8.4f} {r['net']:7.4f} {r['run16']:10.1f} {rate:8.1f} {rate / peak:9.0%} "
              f"{r['diff']:8.1e} {r['corr']:7.4f} "
              f"{'same' if r['same'] else 'DIFF':>5s} {r['setup']:7.1f}")
    print("matmul 2048^3: " + ", ".join(f"{k if k != 'tf' else 'TensorFlow float32'} {v:.1f} GFLOP/s"
                                        for k, v in mm.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024, help="side of the X-ray (default 1024)")
    parser.add_argument("--engines-only", action="store_true",
                        help="only the TensorFlow / OpenVINO side-by-side table (skip the keras.io comparison)")
    parser.add_argument("--ov-threads", nargs="+", type=int, default=[0],
                        help="OpenVINO inference threads, one row each (0: OpenVINO's choice, every core)")
    parser.add_argument("--precisions", nargs="+", choices=["float32", "bfloat16"], default=None,
                        help="OpenVINO precisions (default float32, plus bfloat16 where the CPU has it)")
    args = parser.parse_args()

    tf = import_tensorflow_quietly()
    pixels = cv2.resize(load_xray(FIXTURE).pixels, (args.size, args.size), interpolation=cv2.INTER_LINEAR)
    xray = XRay(pixels, "png", 8, pixel_sha256(pixels))
    import openvino as ov

    load_before = os.getloadavg()[0]
    precisions = args.precisions or ["float32"] + (["bfloat16"] if bf16_supported() else [])
    mm = matmul_gflops()
    mm_engines = {"tf": mm, **{p: ov_matmul_gflops(p) for p in precisions}}
    print(f"CPU: {cpu_name()}; {os.cpu_count()} logical CPUs; flags: {' '.join(cpu_flags()) or 'none of interest'}; "
          f"OpenVINO CPU capabilities: {', '.join(ov_core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}")
    print(f"TensorFlow {tf.__version__}, OpenVINO {ov.get_version().split('-')[0]}; load average {load_before:.1f}; "
          f"X-ray {args.size} x {args.size}; best of {args.repeats}")
    settings: dict[str, dict] = {}
    engine_rows = [row for arch in args.archs
                   for row in bench_engines(arch, xray, args.repeats, precisions, args.ov_threads, settings)]
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    print(f"Settings: TensorFlow intra-op threads {intra or 'default (every core)'}, inter-op {inter or 'default'}, "
          f"oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default (on)')}; OpenVINO batch dimension free "
          "(one compiled model for every batch size)")
    for name, values in settings.items():
        print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    rows = [] if args.engines_only else [bench_arch(arch, xray, args.repeats) for arch in args.archs]
    mm = max(mm, matmul_gflops())  # again at the end: the better of the two is the machine's rate
    mm_engines = {"tf": mm, **{p: max(mm_engines[p], ov_matmul_gflops(p)) for p in precisions}}
    print_engines(engine_rows, mm_engines)
    if args.engines_only:
        print(f"Load average at end {os.getloadavg()[0]:.1f}.")
        return

    print(f"\nLatency, one image (s; end to end: preprocessing, network, heatmap at {args.size} x {args.size}; "
          "net = the compiled call alone)")
    head = (f"{'model':17s} {'input':>5s} {'grid':>6s} {'fwd':>7s} {'fwd+CAM':>8s} {'ratio':>6s} "
            f"{'net fwd':>8s} {'net CAM':>8s} {'ratio':>6s} {'keras.io':>9s} {'speed-up':>9s}")
    print(head)
    for r in rows:
        grid = f"{r['grid'][0]}x{r['grid'][1]}"
        print(f"{r['arch']:17s} {r['input']:5d} {grid:>6s} {r['fwd']:7.3f} {r['cam']:8.3f} {r['cam'] / r['fwd']:6.2f} "
              f"{r['net_fwd']:8.3f} {r['net_cam']:8.3f} {r['net_cam'] / r['net_fwd']:6.2f} {r['eager']:9.3f} "
              f"{r['eager'] / r['cam']:8.1f}x")
    print("\nThroughput, batch of 16 (images/s), and compute rate of the single-image network pass")
    print(f"{'model':17s} {'fwd16':>7s} {'CAM16':>7s} {'ratio':>6s} {'GFLOP':>7s} {'fwd GFLOP/s':>12s} "
          f"{'CAM GFLOP/s':>12s} {'of matmul':>10s} {'build s':>8s} {'setup s':>8s}")
    for r in rows:
        gf, gfc = r["gflop"] / r["net_fwd"], r["gflop"] / r["net_cam"]
        print(f"{r['arch']:17s} {r['fwd16']:7.1f} {r['cam16']:7.1f} {r['fwd16'] / r['cam16']:6.2f} {r['gflop']:7.2f} "
              f"{gf:12.1f} {gfc:12.1f} {gf / mm:9.0%} {r['build_s']:8.1f} {r['setup_s']:8.1f}")
    print(f"\nfloat32 matmul 2048^3 on this machine: {mm:.1f} GFLOP/s (best of 10, before and after)")
    print("ratio = with CAM / without (target <= 1.15); speed-up = keras.io eager / ours (target >= 10x); "
          f"setup = engine check + first traces. Load average at end {os.getloadavg()[0]:.1f}.")
    resnet = next((r for r in rows if r["arch"] == "ResNet50"), None)
    if resnet:
        print(f"ResNet50 predict+CAM per image: {resnet['cam']:.3f} s (target <= 0.15 s)")


if __name__ == "__main__":
    main()
