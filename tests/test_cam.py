"""Grad-CAM engine: ground truth by construction, a keras.io reference on all four bases,
nested vs flat builds, batch/repeat/save-load invariance, the all-zero case and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_core.explain.binarize import normalize, upsample
from cxr_core.explain.cam import METHODS, CamEngine, CamResult, CamUnavailableError, postprocess
from cxr_core.errors import CXRError
from cxr_core.io.imaging import XRay, pixel_sha256
from cxr_core.models.zoo import DEFAULT_CLASSES, ModelSpec, build_model, get_spec

SIZE = 96  # every base accepts it (Xception needs >= 71); grids: 3x3 (6x6 for VGG16's block5_conv3)
ARCHS = ("resnet50", "vgg16", "xception", "efficientnetv2b0")
TOL = 1e-5


def blob_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth [0, 1] image with a few Gaussian blobs: structure for random-weight bases to respond to."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w]
    img = np.full((h, w), 0.2)
    for _ in range(3):
        r, c, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.08, 0.2) * min(h, w)
        img += rng.uniform(0.3, 0.7) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * s * s))
    return np.clip(img, 0, 1).astype(np.float32)


IMAGES = [blob_image(120, 88, 1), blob_image(70, 150, 2), blob_image(96, 96, 3)]  # non-square originals


# --- fixtures: each architecture built once, flat (the zoo's) and nested with the same weights --------

def build_nested(flat, arch: str, classes):
    """The same network with the base nested as one layer and a Dense(softmax) head (no ``logits`` layer)."""
    import keras

    spec = get_spec(arch)
    base = getattr(keras.applications, spec.keras_name)(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    inp = keras.Input((SIZE, SIZE, 3))
    x = base(inp, training=False)
    pool = keras.layers.GlobalMaxPooling2D if spec.head.pooling == "max" else keras.layers.GlobalAveragePooling2D
    x = keras.layers.Flatten(name="flatten")(pool(name="pool")(x))
    for i, units in enumerate(spec.head.hidden_units, start=1):
        if spec.head.dropout:
            x = keras.layers.Dropout(spec.head.dropout, name=f"dropout_{i}")(x)
        x = keras.layers.Dense(units, activation=spec.head.activation, name=f"hidden_{i}")(x)
    out = keras.layers.Dense(len(classes), activation="softmax", name="head")(x)
    nested = keras.Model(inp, out)
    flat_base = flat.layers[1:len(base.layers)]  # same order; auto-named layers differ between builds
    for layer, twin in zip(base.layers[1:], flat_base, strict=True):
        assert type(layer) is type(twin)
        layer.set_weights(twin.get_weights())
    for i in range(1, len(spec.head.hidden_units) + 1):
        nested.get_layer(f"hidden_{i}").set_weights(flat.get_layer(f"hidden_{i}").get_weights())
    nested.get_layer("head").set_weights(flat.get_layer("logits").get_weights())
    return nested, spec.with_overrides(input_size=SIZE, base_name=base.name)


class Case:
    """One architecture: flat model and engine, nested model and engine (built lazily, once)."""

    def __init__(self, arch: str):
        import keras

        keras.utils.set_random_seed(ARCHS.index(arch))
        self.arch = arch
        self.classes = DEFAULT_CLASSES
        self.spec = get_spec(arch).with_overrides(input_size=SIZE)
        self.model = build_model(arch, self.classes, weights=None, input_size=SIZE)
        self.engine = CamEngine.from_model(self.model, self.spec, self.classes)
        self._nested = None

    @property
    def nested(self):
        if self._nested is None:
            model, spec = build_nested(self.model, self.arch, self.classes)
            self._nested = (model, spec, CamEngine.from_model(model, spec, self.classes))
        return self._nested


@pytest.fixture(scope="session")
def cases():
    built: dict[str, Case] = {}

    def get(arch: str) -> Case:
        if arch not in built:
            built[arch] = Case(arch)
        return built[arch]

    return get


# --- the keras.io recipe, written out as the reference ------------------------------------------

def reference_gradcam(model, layer: str, x: np.ndarray, class_index: int):
    """keras.io ``make_gradcam_heatmap`` on the flat model with the pre-softmax score, per class.

    Returns, per class, the maps before the ReLU (B, h, w), the activations and the gradients.
    The input is watched so frozen bases are recorded by the tape; one forward pass serves
    every class (persistent tape).
    """
    import keras
    import tensorflow as tf

    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.get_layer("logits").output])
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        conv, logits = grad_model(x, training=False)
        scores = [logits[:, k] for k in range(logits.shape[-1])]
    out = []
    for score in scores:
        grads = tape.gradient(score, conv)  # d score / d feature map
        pooled = tf.reduce_mean(grads, axis=(1, 2))  # one weight per channel
        heat = tf.einsum("bhwc,bc->bhw", conv, pooled)  # weighted sum of channels (ReLU'd by the caller)
        out.append((np.asarray(heat), np.asarray(conv), np.asarray(grads)))
    return out


def reference_gradcampp_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``GradCAMPlusPlus.get_cam_weights`` in NumPy (channels last)."""
    g2 = grads ** 2
    g3 = g2 * grads
    alpha = g2 / (2 * g2 + acts.sum(axis=(0, 1)) * g3 + 1e-6)
    alpha = np.where(grads != 0, alpha, 0)
    return (np.maximum(grads, 0) * alpha).sum(axis=(0, 1))


def minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_keras_io_reference_for_every_class(cases, arch):
    from cxr_core.models.preprocess import prepare_batch

    case = cases(arch)
    images = IMAGES[:2]
    reference = reference_gradcam(case.model, case.spec.last_conv_layer, prepare_batch(images, case.spec), 0)
    explained = 0
    for k, cls in enumerate(case.classes):
        ours = case.engine.run_arrays(images, target=cls)
        ours_pp = case.engine.run_arrays(images, target=k, method="gradcam++")
        for i, img in enumerate(images):
            raw, acts, grads = (a[i] for a in reference[k])
            res, res_pp = ours[i], ours_pp[i]
            assert res.target == cls and res.target_index == k and res.grid.shape == raw.shape
            for got, ref in ((res, raw), (res_pp, acts @ reference_gradcampp_weights(acts, grads))):
                heat = np.maximum(ref, 0)
                if heat.max() - heat.min() > 1e-2 * np.abs(ref).max():  # well-conditioned: compare maps
                    explained += 1
                    assert not got.all_zero
                    np.testing.assert_allclose(got.grid, minmax(heat), atol=TOL)
                    np.testing.assert_allclose(got.heatmap, normalize(upsample(minmax(heat), img.shape)), atol=TOL)
                elif heat.max() <= 1e-6 * np.abs(ref).max():
                    assert got.all_zero and not got.heatmap.any()
    assert explained >= 4, "too few non-empty maps to compare; pick other seeds"


@pytest.mark.parametrize("arch", ARCHS)
def test_nested_build_gives_the_flat_build_cam(cases, arch):
    case = cases(arch)
    nested_model, nested_spec, nested_engine = case.nested
    assert nested_spec.last_conv_layer not in {layer.name for layer in nested_model.layers}  # really nested
    flat = case.engine.run_arrays(IMAGES)  # the weighting is shared code; the forward pass is what differs
    nested = nested_engine.run_arrays(IMAGES)
    assert any(not r.all_zero for r in flat)
    for a, b in zip(flat, nested):
        assert a.target == b.target and a.all_zero == b.all_zero
        np.testing.assert_allclose(a.prediction.raw_probabilities, b.prediction.raw_probabilities, atol=TOL)
        np.testing.assert_allclose(a.grid, b.grid, atol=TOL)
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_alone_batched_and_repeated_give_the_same_map(cases, arch):
    case = cases(arch)
    for method in METHODS:
        batched = case.engine.run_arrays(IMAGES, method=method, batch_size=2)
        together = case.engine.run_arrays(IMAGES, method=method)
        again = case.engine.run_arrays(IMAGES[::-1], method=method)[::-1]
        for i, img in enumerate(IMAGES):
            alone = case.engine.run_arrays([img], method=method)[0]
            assert alone.heatmap.shape == img.shape and alone.heatmap.dtype == np.float32
            assert alone.grid.min() >= 0 and alone.grid.max() <= 1 and np.isfinite(alone.heatmap).all()
            for other in (batched[i], together[i], again[i]):
                assert other.target == alone.target and other.all_zero == alone.all_zero
                assert np.abs(other.heatmap - alone.heatmap).max() <= TOL
                assert np.abs(other.grid - alone.grid).max() <= TOL


def test_predictions_equal_the_plain_forward_pass(cases):
    from cxr_core.models.predict import predict_arrays

    case = cases("resnet50")
    plain = predict_arrays(case.model, case.spec, IMAGES)
    results = case.engine.run_arrays(IMAGES)
    np.testing.assert_allclose(np.stack([r.prediction.raw_probabilities for r in results]), plain, atol=TOL)
    assert [r.target for r in results] == [case.classes[i] for i in plain.argmax(axis=1)]


@pytest.mark.parametrize("arch,how", [("efficientnetv2b0", "save_model"), ("vgg16", "import_model nested")])
def test_registry_round_trip_keeps_the_map(cases, arch, how, tmp_path):
    from cxr_core.models.manifest import ModelCard, import_model, load_model, save_model
    from cxr_core.models.predict import predict_loaded

    case = cases(arch)
    if how == "save_model":
        model, spec, engine = case.model, case.spec, case.engine
        card = ModelCard(name="m", architecture=arch, classes=list(case.classes), input_size=SIZE,
                         preprocessing=spec.preprocessing, last_conv_layer=spec.last_conv_layer,
                         calibration={"temperature": 2.0})
        save_model(model, card, tmp_path)
        loaded = load_model("m", tmp_path)
    else:
        model, spec, engine = case.nested
        model.save(tmp_path / "nested.keras")
        loaded = import_model(tmp_path / "nested.keras", "m", arch, list(case.classes), weights_dir=tmp_path / "w",
                              calibration={"temperature": 2.0})
        assert loaded.spec.base_name == spec.base_name
    reloaded = CamEngine.from_loaded(loaded)
    xrays = [XRay(img, "png", 8, pixel_sha256(img)) for img in IMAGES]
    before, after = engine.run(xrays), reloaded.run(xrays)
    for a, b in zip(before, after):
        assert a.target == b.target and np.abs(a.heatmap - b.heatmap).max() <= TOL
    for res, pred in zip(after, predict_loaded(loaded, xrays)):  # temperature applied as predict does
        assert res.prediction.temperature == 2.0
        np.testing.assert_allclose(res.prediction.probabilities, pred.probabilities, atol=TOL)


def test_random_baseline_is_seeded_per_image_and_differs_from_gradcam(cases):
    case = cases("vgg16")
    xrays = [XRay(img, "png", 8, pixel_sha256(img)) for img in IMAGES]
    first = case.engine.run(xrays, method="random")
    i = next(i for i, r in enumerate(first) if not r.all_zero)  # some maps are empty (ReLU of a random mix)
    alone = case.engine.run_arrays([IMAGES[i]], method="random")[0]
    np.testing.assert_array_equal(first[i].heatmap, alone.heatmap)  # run and run_arrays seed alike
    seeds = {json.dumps(r.grid.round(4).tolist()) for r in first}
    assert len(seeds) == len(first)  # a different weighting per image
    grad = case.engine.run_arrays([IMAGES[i]])[0]
    assert np.abs(grad.heatmap - first[i].heatmap).max() > 0.1


# --- ground truth by construction ---------------------------------------------------------------

TOY_SIZE = 32
REGION = (slice(8, 16), slice(18, 28))  # rows, cols of the input the class score depends on


@pytest.fixture(scope="session")
def toy_engine():
    """Class 0's score is the mean brightness response inside REGION; class 1's is its negative."""
    import keras

    (r0, r1), (c0, c1) = (REGION[0].start, REGION[0].stop), (REGION[1].start, REGION[1].stop)
    crop = ((r0, TOY_SIZE - r1), (c0, TOY_SIZE - c1))
    inp = keras.Input((TOY_SIZE, TOY_SIZE, 3))
    x = keras.layers.Conv2D(4, 1, activation="relu", name="features")(inp)  # 1x1: no spill over the edge
    x = keras.layers.Cropping2D(crop, name="crop")(x)
    x = keras.layers.ZeroPadding2D(crop, name="evidence")(x)  # features outside REGION are zero
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inp, keras.layers.Activation("softmax", name="probabilities")(logits))
    rng = np.random.default_rng(0)
    model.get_layer("features").set_weights([rng.uniform(0.5, 1.0, (1, 1, 3, 4)), np.zeros(4)])
    model.get_layer("logits").set_weights([np.stack([np.ones(4), -np.ones(4)], axis=1), np.zeros(2)])
    spec = ModelSpec("toy", "Toy", "", TOY_SIZE, "unit", "evidence")
    return CamEngine.from_model(model, spec, ("lesion", "other"))


def toy_image() -> np.ndarray:
    """96 x 160 original: a blob inside REGION and a brighter distractor outside it."""
    h, w = 96, 160
    rows, cols = np.mgrid[0:h, 0:w]
    sy, sx = h / TOY_SIZE, w / TOY_SIZE
    inside = np.exp(-((rows - 11 * sy) ** 2 / (2 * (2 * sy) ** 2) + (cols - 22 * sx) ** 2 / (2 * (2 * sx) ** 2)))
    outside = np.exp(-((rows - 24 * sy) ** 2 + (cols - 6 * sx) ** 2) / (2 * 10.0 ** 2))
    return np.clip(0.6 * inside + 1.0 * outside, 0, 1).astype(np.float32)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_map_falls_in_the_region_the_score_depends_on(toy_engine, method):
    img = toy_image()
    res = toy_engine.run_arrays([img], method=method, target="lesion")[0]
    h, w = img.shape
    region = np.zeros(img.shape, bool)
    region[REGION[0].start * h // TOY_SIZE:REGION[0].stop * h // TOY_SIZE,
           REGION[1].start * w // TOY_SIZE:REGION[1].stop * w // TOY_SIZE] = True
    peak = np.unravel_index(np.argmax(res.heatmap), img.shape)
    assert region[peak], f"peak at {peak} outside the region"
    assert res.heatmap[region].sum() / res.heatmap.sum() > 0.8
    assert res.heatmap.shape == img.shape and res.grid.shape == (TOY_SIZE, TOY_SIZE)
    assert res.grid[REGION].max() == 1.0 and res.grid[:REGION[0].start].max() == 0.0


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_no_positive_evidence_is_reported_all_zero_not_nan(toy_engine, method):
    res = toy_engine.run_arrays([toy_image()], method=method, target="other")[0]
    assert res.all_zero and res.target == "other"
    assert not res.heatmap.any() and not res.grid.any() and res.heatmap.shape == (96, 160)
    record = json.loads(json.dumps(res.to_dict()))
    assert record["cam"] == {**record["cam"], "all_zero": True, "method": method, "target": "other",
                             "grid_size": [TOY_SIZE, TOY_SIZE]}
    assert record["predicted"] == "lesion"


def test_postprocess_treats_round_off_as_zero_and_normalises_per_image():
    grid, heat, zero = postprocess(np.array([[-1.0, -2.0], [1e-9, -0.5]]), (4, 6))
    assert zero and not heat.any() and heat.shape == (4, 6)
    grid, heat, zero = postprocess(np.array([[1.0, 3.0], [-2.0, 2.0]]), (5, 7))
    assert not zero
    np.testing.assert_allclose(grid, [[1 / 3, 1.0], [0.0, 2 / 3]], atol=1e-7)
    assert heat.min() == 0.0 and heat.max() == 1.0 and heat.shape == (5, 7)
    assert heat[0, -1] > heat[-1, 0]  # hot cell (row 0, col 1) stays top-right after upsampling


@pytest.mark.parametrize("seed", [2097, 2672, 3155])
def test_postprocess_never_undershoots_zero_after_upsampling(seed):
    # These 7 x 7 maps made OpenCV's min-max rescale return minima near -1e-13 at 224 x 224, which the
    # overlay then refused ("heatmap values must lie in [0, 1]") and `predict --cam` stopped on.
    raw = np.random.default_rng(seed).normal(size=(7, 7)).astype(np.float32)
    for shape in ((224, 224), (120, 90)):
        grid, heat, zero = postprocess(raw, shape)
        assert not zero and heat.dtype == np.float32
        assert heat.min() == 0.0 and heat.max() == 1.0
        assert grid.min() == 0.0 and grid.max() == 1.0


def test_default_target_is_the_predicted_class_per_image(toy_engine):
    dark = np.zeros((40, 40), np.float32)  # no response: equal scores, argmax picks class 0
    results = toy_engine.run_arrays([toy_image(), dark])
    assert [r.target for r in results] == [r.prediction.predicted for r in results]
    assert isinstance(results[0], CamResult)


# --- errors ----------------------------------------------------------------------------------------

def test_bad_target_method_and_image_are_rejected_with_what_was_given(toy_engine):
    with pytest.raises(CXRError, match=r"target 'Effusion' is not a class .* lesion, other"):
        toy_engine.run_arrays([toy_image()], target="Effusion")
    with pytest.raises(CXRError, match="target 5 is not a class"):
        toy_engine.run_arrays([toy_image()], target=5)
    with pytest.raises(CXRError, match="method 'scorecam' unknown"):
        toy_engine.run_arrays([toy_image()], method="scorecam")
    with pytest.raises(CXRError, match=r"got shape \(8, 8, 3\)"):
        toy_engine.run_arrays([np.zeros((8, 8, 3))])
    assert toy_engine.run_arrays([toy_image()], target="LESION")[0].target_index == 0


def _small_nested(twist: str):
    """A tiny nested model; ``twist`` breaks it the way imported models can be broken."""
    import keras

    base_in = keras.Input((16, 16, 3))
    base = keras.Model(base_in, keras.layers.Conv2D(8, 3, activation="relu", name="conv")(base_in), name="base")
    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base(inp))
    if twist == "reused layer":  # the same Dense applied twice: a chain replay applies it once
        shared = keras.layers.Dense(8, activation="relu", name="shared")
        x = shared(shared(x))
    out = keras.layers.Dense(3, activation=None if twist == "no softmax" else "softmax", name="head")(x)
    return keras.Model(inp, out), ModelSpec("custom", "Custom", "", 16, "unit", "conv", base_name="base")


@pytest.mark.parametrize("twist,match", [
    ("reused layer", "differ from the model's by"),
    ("no softmax", "last layer 'head' .* is not a softmax"),
    ("missing layer", "no layer named 'block_x'"),
])
def test_models_without_a_trustworthy_replay_are_refused(twist, match):
    model, spec = _small_nested(twist)
    if twist == "missing layer":
        spec = spec.with_overrides(last_conv_layer="block_x")
    with pytest.raises(CamUnavailableError, match="^heatmap unavailable for this model: .*" + match):
        CamEngine.from_model(model, spec, ("a", "b", "c"))


def test_a_plain_nested_model_passes_the_replay_check():
    model, spec = _small_nested("none")
    res = CamEngine.from_model(model, spec, ("a", "b", "c")).run_arrays([blob_image(20, 30, 0)])[0]
    assert res.grid.shape == (14, 14) and res.heatmap.shape == (20, 30)
    with pytest.raises(CXRError, match=r"model outputs 3 scores but 2 classes were given \(a, b\)"):
        CamEngine.from_model(model, spec, ("a", "b"))
