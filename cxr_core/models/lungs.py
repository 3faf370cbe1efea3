"""Lung fields: expert masks when a folder has them, otherwise a small U-Net's estimate.

The estimate comes from a tiny Keras U-Net (about 120 k weights, 128 x 128 input) that this
project trained on the shared set's expert lung masks (V7 Labs polygons, both lungs, the part
behind the heart included). Its weights ship in ``weights/lungseg/`` with ``lungseg.json``,
which records the patient-disjoint held-out split and the Dice reached there; nothing is
downloaded at run time. ``bench/train_lungseg.py`` retrains it.

The expert masks cover adult films only (Hannover and ieee8023), so the estimate is least sure
on small pediatric chests; the audit says which lung source each image used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cxr_core.config import REPO_ROOT
from cxr_core.errors import DataError, ModelError

#: Where the shipped lung model lives (not the classifier registry: it is not a classifier).
LUNGSEG_DIR = REPO_ROOT / "weights" / "lungseg"  # the bundled lung model


def lungseg_dir() -> Path:
    """Where the lung model is read from: ``<CXR_WEIGHTS_DIR>/lungseg`` when that folder holds one, else the bundled."""
    from cxr_core.config import get_settings

    own = get_settings().weights_dir / "lungseg"
    return own if (own / LUNG_MODEL_FILE).is_file() else LUNGSEG_DIR


#: The lung model's files in its folder (the classifier registry's are ``manifest.MODEL_FILE``/``CARD_FILE``).
LUNG_MODEL_FILE = "lungseg.keras"
LUNG_CARD_FILE = "lungseg.json"
INPUT_SIZE = 128
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")


# --------------------------------------------------------------------------------------------
# Expert masks
# --------------------------------------------------------------------------------------------

def read_mask(path: Path | str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A binary mask file (any non-zero pixel is inside) as a bool array.

    Parameters
    ----------
    path : mask image (PNG or another format OpenCV reads).
    shape : (rows, cols) the mask must match; a mask of another size is resized (nearest
        neighbour) only when its aspect ratio is the same within 2 %.

    Raises
    ------
    DataError
        Unreadable file, or a size that does not fit ``shape``.
    """
    arr = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if arr is None:
        raise DataError(f"lung mask {path} could not be read; expected a binary PNG")
    mask = arr > 0
    if shape is not None and mask.shape != tuple(shape):
        (mr, mc), (r, c) = mask.shape, shape
        if abs(mr / mc - r / c) > 0.02 * (r / c):
            raise DataError(f"lung mask {path} is {mc}x{mr} px but its image is {c}x{r} px")
        mask = cv2.resize(mask.astype(np.uint8), (c, r), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def index_masks(folder: Path | str) -> dict[str, Path]:
    """``{stem: path}`` of every mask under ``folder`` (recursively).

    A mask named ``<image stem>.png`` or ``<image stem>_<anything>.png`` (e.g. the shared set's
    ``hannover_b343e657_lungs_v7.png``) belongs to the image with that stem; see :func:`mask_for`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"lung mask folder {folder} does not exist")
    return {p.stem: p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in MASK_SUFFIXES}


def mask_for(stem: str, index: dict[str, Path], *, image: Path | str | None = None) -> Path | None:
    """The mask of the image ``stem``: an exact stem match, else the shortest ``<stem>_...`` one.

    ``image`` (the image's own path) is never returned, so masks may sit in the images' folder.
    """
    own = Path(image).resolve() if image is not None else None
    hits = ([stem] if stem in index else []) + sorted((k for k in index if k.startswith(stem + "_")), key=len)
    for key in hits:
        if own is None or index[key].resolve() != own:
            return index[key]
    return None


# --------------------------------------------------------------------------------------------
# The U-Net
# --------------------------------------------------------------------------------------------

def to_input(pixels: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """[0, 1] pixels to the U-Net's (size, size, 1) input: resized, then zero mean, unit spread."""
    small = cv2.resize(np.asarray(pixels, np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return ((small - small.mean()) / (small.std() + 1e-6))[..., None].astype(np.float32)


def build_unet(size: int = INPUT_SIZE, widths: Sequence[int] = (8, 16, 32, 64)):
    """A small U-Net: two 3x3 convs a level, max-pool down, transposed conv up, sigmoid out."""
    import keras
    from keras import layers

    def block(x, n, name):
        for i in (1, 2):
            x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        return x

    inp = keras.Input((size, size, 1), name="xray")
    skips, x = [], inp
    for level, n in enumerate(widths[:-1]):
        x = block(x, n, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"pool{level}")(x)
    x = block(x, widths[-1], "bottom")
    for level in reversed(range(len(widths) - 1)):
        x = layers.Conv2DTranspose(widths[level], 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"cat{level}")([x, skips[level]])
        x = block(x, widths[level], f"dec{level}")
    out = layers.Conv2D(1, 1, activation="sigmoid", name="lungs")(x)
    return keras.Model(inp, out, name="lungseg_unet")


def clean_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Probability map to a mask: threshold, keep the two largest blobs, fill their holes."""
    mask = (prob >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.argsort(areas)[::-1][:2]
    keep = [k for k in keep if stats[k, cv2.CC_STAT_AREA] >= 0.1 * areas.max()]
    mask = np.isin(labels, keep).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


@dataclass
class LungEstimator:
    """The trained U-Net with its card; call :meth:`estimate` on [0, 1] pixels."""

    model: object
    card: dict

    @classmethod
    def load(cls, folder: Path | str | None = None) -> "LungEstimator":
        """Load ``weights/lungseg/`` (or ``folder``).

        Raises
        ------
        ModelError
            The folder lacks ``lungseg.keras`` or ``lungseg.json``, or Keras cannot read them.
        """
        import keras

        folder = Path(folder) if folder is not None else lungseg_dir()
        model_file, card_file = folder / LUNG_MODEL_FILE, folder / LUNG_CARD_FILE
        if not model_file.is_file() or not card_file.is_file():
            raise ModelError(
                f"no lung model in {folder} (expected {LUNG_MODEL_FILE} and {LUNG_CARD_FILE}); "
                "pass expert masks with --lung-masks or retrain with bench/train_lungseg.py"
            )
        try:
            model = keras.models.load_model(model_file, compile=False)
            card = json.loads(card_file.read_text())
        except Exception as exc:  # Keras raises many types for a bad file
            raise ModelError(f"could not load the lung model {model_file}: {exc}") from exc
        return cls(model, card)

    @property
    def size(self) -> int:
        return int(self.model.input_shape[1])

    def probabilities(self, images: Sequence[np.ndarray], *, batch_size: int = 32) -> list[np.ndarray]:
        """Per image, the (size, size) lung probability at the U-Net's resolution."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([to_input(p, self.size) for p in images[start:start + batch_size]])
            out.extend(np.asarray(self.model(batch, training=False))[..., 0])
        return out

    def estimate(self, images: Sequence[np.ndarray], *, threshold: float = 0.5) -> list[np.ndarray]:
        """Per image, a bool lung mask at that image's own size."""
        masks = []
        for pixels, prob in zip(images, self.probabilities(images)):
            rows, cols = np.asarray(pixels).shape[:2]
            big = cv2.resize(prob.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
            masks.append(clean_mask(big, threshold))
        return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


# --------------------------------------------------------------------------------------------
# Training (used by bench/train_lungseg.py)
# --------------------------------------------------------------------------------------------

def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random affine + contrast variation of a (size, size) image and its mask.

    Horizontal squeeze down to 0.75 imitates the sideways-squeezed 224 px pediatric films the
    masks do not cover; scale, shift and a few degrees of rotation imitate other framings.
    """
    size = image.shape[0]
    angle = rng.uniform(-8, 8)
    scale = rng.uniform(0.85, 1.15)
    squeeze = rng.uniform(0.75, 1.1)
    mat = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    mat[0, :2] *= squeeze
    mat[0, 2] += (1 - squeeze) * size / 2 + rng.uniform(-0.08, 0.08) * size
    mat[1, 2] += rng.uniform(-0.08, 0.08) * size
    img = cv2.warpAffine(image, mat, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    msk = cv2.warpAffine(mask.astype(np.float32), mat, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT) > 0.5
    gamma = np.exp(rng.uniform(-0.4, 0.4))
    img = np.clip(img, 0, 1) ** gamma
    if rng.random() < 0.5:
        img, msk = img[:, ::-1], msk[:, ::-1]
    return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(msk)


def train_unet(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    size: int = INPUT_SIZE,
    epochs: int = 40,
    steps_per_epoch: int = 12,
    batch_size: int = 16,
    seed: int = 0,
):
    """Fit :func:`build_unet` on [0, 1] images and bool masks with fresh augmentation each step.

    Loss: binary cross-entropy plus soft Dice. Returns the trained Keras model.
    """
    import keras

    if len(images) != len(masks) or not images:
        raise DataError(f"need matching images and masks, got {len(images)} and {len(masks)}")
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    small = [cv2.resize(np.asarray(p, np.float32), (size, size), interpolation=cv2.INTER_AREA) for p in images]
    small_m = [cv2.resize(np.asarray(m, np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0 for m in masks]

    def batches():
        while True:
            idx = rng.integers(0, len(small), batch_size)
            pairs = [augment(small[i], small_m[i], rng) for i in idx]
            x = np.stack([to_input(p, size) for p, _ in pairs])
            y = np.stack([m[..., None].astype(np.float32) for _, m in pairs])
            yield x, y

    def loss(y_true, y_pred):
        ops = keras.ops
        bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
        inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
        soft_dice = (2 * inter + 1) / (ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3)) + 1)
        return bce + 1 - ops.mean(soft_dice)

    model = build_unet(size)
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, epochs * steps_per_epoch, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    gen = batches()
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            model.train_on_batch(*next(gen))
    return model


__all__ = [
    "LUNGSEG_DIR", "lungseg_dir", "LungEstimator", "read_mask", "index_masks", "mask_for", "to_input", "build_unet",
    "clean_mask", "dice", "augment", "train_unet",
]
