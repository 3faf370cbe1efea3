"""X-ray pixels to network input, one path for training and inference.

A grayscale film becomes three identical channels by :func:`to_rgb`, then is resized to the
model's square input and scaled as its :class:`~cxr_core.models.zoo.ModelSpec` says. A spec with
``crop_lungs`` first cuts the film to its estimated lung fields (:mod:`cxr_core.models.lung_crop`);
:func:`prepare_cropped` also returns that crop so a heatmap can be put back on the whole film.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from cxr_core.errors import ModelError
from cxr_core.models.zoo import ModelSpec

#: ImageNet channel means in BGR order, as ``keras.applications`` "caffe" mode subtracts them.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) grayscale to (H, W, 3) with identical channels (the only place this happens)."""
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {gray.shape}")
    return np.repeat(gray[..., None], 3, axis=-1)


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` (area averaging when shrinking, bilinear when enlarging).

    The aspect ratio is not kept, as in the study's Keras data generators.
    """
    h, w = pixels.shape[:2]
    interp = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
    return cv2.resize(pixels, (size, size), interpolation=interp)


def scale(rgb255: np.ndarray, mode: str) -> np.ndarray:
    """Apply a preprocessing mode to RGB values in 0..255 (float32, channels last)."""
    if mode == "caffe":
        return rgb255[..., ::-1] - CAFFE_MEAN_BGR
    if mode == "tf":
        return rgb255 / 127.5 - 1.0
    if mode == "raw":
        return rgb255
    if mode == "unit":
        return rgb255 / 255.0
    raise ModelError(f"unknown preprocessing mode {mode!r}; expected caffe, tf, raw or unit")


#: An optional step on the [0, 1] pixels before resizing, e.g. :func:`cxr_core.safety.markers.mask_markers`
#: (``--mask-markers``); training and inference must pass the same one.
PixelStep = Callable[[np.ndarray], np.ndarray]


_ESTIMATORS: dict[str, object] = {}
_ESTIMATOR_LOCK = threading.Lock()


def lung_estimator():
    """The lung U-Net (:class:`cxr_core.models.lungs.LungEstimator`), loaded once per folder and kept."""
    from cxr_core.models.lungs import LungEstimator, lungseg_dir

    key = str(lungseg_dir())
    with _ESTIMATOR_LOCK:
        if key not in _ESTIMATORS:
            _ESTIMATORS[key] = LungEstimator.load(Path(key))
        return _ESTIMATORS[key]


def lung_crop_of(pixels: np.ndarray):
    """:class:`~cxr_core.models.lung_crop.LungCrop` of [0, 1] ``pixels`` to the U-Net's lung fields."""
    from cxr_core.models.lung_crop import crop_to_lungs

    (lungs,) = lung_estimator().estimate([pixels])
    return crop_to_lungs(pixels, lungs)


def prepare_cropped(pixels: np.ndarray, spec: ModelSpec, *, pixel_step: PixelStep | None = None):
    """:func:`prepare` and the :class:`~cxr_core.models.lung_crop.LungCrop` it used (None without ``crop_lungs``).

    ``pixel_step`` runs first, then marker masking, then the lung crop, each when the spec says the
    model was trained with it; the crop's box is in the film's own rows and columns.
    """
    if pixel_step is not None:
        pixels = pixel_step(pixels)
    if spec.mask_markers:
        from cxr_core.safety.markers import mask_markers

        pixels = mask_markers(pixels)
    crop = None
    if spec.crop_lungs:
        crop = lung_crop_of(np.asarray(pixels, dtype=np.float32))
        pixels = crop.pixels
    small = resize(np.asarray(pixels, dtype=np.float32), spec.input_size)
    return np.ascontiguousarray(scale(to_rgb(small) * 255.0, spec.preprocessing), dtype=np.float32), crop


def prepare(pixels: np.ndarray, spec: ModelSpec, *, pixel_step: PixelStep | None = None) -> np.ndarray:
    """One X-ray's [0, 1] pixels to a (S, S, 3) float32 network input (see :func:`prepare_cropped`)."""
    return prepare_cropped(pixels, spec, pixel_step=pixel_step)[0]


def prepare_batch(images: Sequence[np.ndarray], spec: ModelSpec, *, pixel_step: PixelStep | None = None) -> np.ndarray:
    """Stack :func:`prepare` over several images into (N, S, S, 3)."""
    if not images:
        return np.zeros((0, spec.input_size, spec.input_size, 3), np.float32)
    return np.stack([prepare(p, spec, pixel_step=pixel_step) for p in images])
