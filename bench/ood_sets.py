"""Out-of-distribution test sets built from what is available offline, and a measurement.

``ood_samples(chest)`` returns images that are not frontal chest films: photographs and
documents shipped by scikit-image, other radiographs and CT/MR/NM/US slices shipped by pydicom
and pydicom-data, a rendered document page, and transforms of real chest films (rotated 90
degrees, inverted, heavily cropped), pure noise and blank images. Both packages are dev
requirements; they are imported inside the functions.

Run ``python bench/ood_sets.py [CHEST_DIR]`` to measure how well ``cxr_core.safety.ood.image_checks``
alone separates real chest films (default: ../shared/data/cxr-real/images) from these sets, and
how ``FeatureOOD`` does on a stand-in feature (a 32x32 thumbnail), fitted on a patient-disjoint
70 % of the films, until a trained model's penultimate features replace it.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxr_core.safety.detector import FeatureOOD, evaluate_detector  # noqa: E402
from cxr_core.safety.ood import colorfulness, image_checks  # noqa: E402

SKIMAGE_IMAGES = {
    "photo": ["astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
              "horse", "hubble_deep_field", "moon", "rocket", "clock", "logo", "colorwheel",
              "checkerboard"],
    "document": ["page", "text"],
    "microscopy-fundus": ["cell", "immunohistochemistry", "retina", "microaneurysms"],
    "ct-phantom": ["shepp_logan_phantom"],
}
# One file per distinct image (the J2K/RLE copies of these files hold the same pixels).
DICOM_FILES = {
    "chest-cr": ["RG1_UNCR.dcm"],  # CR CHEST: a real chest film, in-distribution
    "radiograph-other": ["RG3_UNCR.dcm"],  # CR EXTREMITY (distal femur / knee)
    "ct-mr-nm-us": ["CT_small.dcm", "693_UNCR.dcm", "explicit_VR-UN.dcm",
                    "J2K_pixelrep_mismatch.dcm", "MR_small.dcm", "MR2_UNCR.dcm",
                    "MR-SIEMENS-DICOM-WithOverlays.dcm", "JPEG2000_UNC.dcm",
                    "JPGLosslessP14SV1_1s_1f_8b.dcm", "US1_UNCR.dcm"],
}


@dataclass
class Sample:
    """One image with the fields an image record carries."""

    group: str
    name: str
    pixels: np.ndarray  # (H, W) float32 in [0, 1], bone bright
    was_color: bool = False
    colorfulness: float | None = None
    metadata: dict = field(default_factory=dict)


def _from_array(group: str, name: str, a: np.ndarray) -> Sample:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / np.iinfo(a.dtype).max
    a = a.astype(np.float32)
    if a.ndim == 3:
        rgb = a[..., :3]
        if a.shape[-1] == 4:  # composite alpha on black, as imaging does
            rgb = rgb * a[..., 3:4]
        gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        return Sample(group, name, gray, True, colorfulness(rgb))
    return Sample(group, name, a)


def skimage_samples() -> list[Sample]:
    """Photographs, documents, microscopy and a CT phantom from ``skimage.data``."""
    import skimage.data

    out = []
    for group, names in SKIMAGE_IMAGES.items():
        for name in names:
            out.append(_from_array(group, name, getattr(skimage.data, name)()))
    return out


def _decode_dicom(path: str) -> tuple[np.ndarray, bool, dict]:
    try:
        from cxr_core.io.imaging import load_xray
    except ImportError:
        load_xray = None
    if load_xray is not None:
        xray = load_xray(path)
        return xray.pixels, False, dict(xray.metadata)
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    a = ds.pixel_array
    meta = {k: str(ds.get(k, "")) for k in ("Modality", "BodyPartExamined", "ViewPosition")}
    if ds.get("SamplesPerPixel", 1) == 3:
        rgb = a.astype(np.float32) / max(float(a.max()), 1.0)
        gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        return gray, True, meta | {"colorfulness": colorfulness(rgb)}
    a = apply_voi_lut(apply_modality_lut(a, ds), ds).astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        a = a.max() - a
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    return a.astype(np.float32), False, meta


def dicom_samples() -> list[Sample]:
    """Radiographs and CT/MR/NM/US images shipped by pydicom and pydicom-data."""
    from pydicom.data import get_testdata_file

    out = []
    for group, names in DICOM_FILES.items():
        for name in names:
            path = get_testdata_file(name, download=False)
            if path is None:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels, was_color, meta = _decode_dicom(str(path))
            cf = meta.pop("colorfulness", None)
            out.append(Sample(group, name, pixels, was_color, cf, meta))
    return out


def rendered_document(seed: int = 0, size: tuple[int, int] = (1100, 850)) -> np.ndarray:
    """A portrait page of black text lines on white paper, like a scanned letter."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    page = Image.new("L", size[::-1], 245)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=18)
    words = ["patient", "report", "findings", "the", "of", "and", "chest", "clinic", "date"]
    for y in range(80, size[0] - 80, 28):
        line = " ".join(rng.choice(words, size=rng.integers(6, 12)))
        draw.text((70, y), line, fill=20, font=font)
    return np.asarray(page, np.float32) / 255


def transformed_samples(chest: list[np.ndarray], seed: int = 0) -> list[Sample]:
    """Rotated (90 and 270 degrees), inverted and heavily cropped real films."""
    rng = np.random.default_rng(seed)
    out = []
    for i, x in enumerate(chest):
        out.append(Sample("rotated", f"rot90-{i}", np.rot90(x, k=1 + 2 * (i % 2)).copy()))
        out.append(Sample("inverted", f"invert-{i}", 1.0 - x))
        h, w = x.shape
        ch, cw = int(h * rng.uniform(0.2, 0.35)), int(w * rng.uniform(0.2, 0.35))
        r0, c0 = rng.integers(0, h - ch), rng.integers(0, w - cw)
        out.append(Sample("cropped", f"crop-{i}", x[r0 : r0 + ch, c0 : c0 + cw].copy()))
    return out


def synthetic_samples(n: int = 20, seed: int = 0) -> list[Sample]:
    """Uniform and Gaussian noise, and blank images (constant or constant plus faint noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = (int(rng.integers(200, 600)), int(rng.integers(200, 600)))
        out.append(Sample("noise", f"uniform-{i}", rng.random(shape, np.float32)))
        g = np.clip(rng.normal(0.5, rng.uniform(0.05, 0.3), shape), 0, 1).astype(np.float32)
        out.append(Sample("noise", f"gauss-{i}", g))
        level = rng.random()
        blank = np.full(shape, level, np.float32)
        if i % 2:
            blank = np.clip(blank + rng.normal(0, 0.005, shape), 0, 1).astype(np.float32)
        out.append(Sample("blank", f"blank-{i}", blank))
    return out


def ood_samples(chest: list[np.ndarray], seed: int = 0) -> list[Sample]:
    """Every out-of-distribution sample (plus the in-distribution ``chest-cr`` DICOM)."""
    docs = [Sample("document", f"rendered-{i}", rendered_document(seed + i)) for i in range(3)]
    return (skimage_samples() + docs + dicom_samples()
            + transformed_samples(chest, seed) + synthetic_samples(seed=seed))


def load_chest_films(root: Path) -> list[tuple[str, np.ndarray]]:
    """Every PNG/JPEG under ``root`` as float32 [0, 1] grayscale."""
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    return [(str(p.relative_to(root)), np.asarray(Image.open(p).convert("L"), np.float32) / 255)
            for p in files]


def thumbnail_features(pixels: np.ndarray, side: int = 32) -> np.ndarray:
    """Stand-in feature vector: the image squeezed to side x side, zero mean, unit variance."""
    from PIL import Image

    t = np.asarray(Image.fromarray(np.asarray(pixels, np.float32)).resize((side, side), Image.BILINEAR))
    return ((t - t.mean()) / (t.std() + 1e-6)).ravel()


def patient_split(names: list[str], manifest: Path, frac: float = 0.7, seed: int = 0) -> np.ndarray:
    """Boolean mask of films whose patient falls in the fitting part (by manifest patient_id)."""
    import csv

    pid = {}
    if manifest.exists():
        with manifest.open() as fh:
            pid = {r["file"].removeprefix("images/"): r["patient_id"] for r in csv.DictReader(fh)}
    patients = sorted({pid.get(n, n) for n in names})
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(patients, int(frac * len(patients)), replace=False))
    return np.array([pid.get(n, n) in chosen for n in names])


def feature_measurement(films, samples, manifest: Path) -> None:
    names = [n for n, _ in films]
    fit_mask = patient_split(names, manifest)
    feats = np.stack([thumbnail_features(x) for _, x in films])
    ood = [s for s in samples if s.group != "chest-cr"]
    ood_feats = np.stack([thumbnail_features(s.pixels) for s in ood])
    ood_checks = np.array([bool(image_checks(s.pixels, was_color=s.was_color,
                                             colorfulness=s.colorfulness, metadata=s.metadata))
                           for s in ood])
    test_checks = np.array([bool(image_checks(x)) for _, x in films])[~fit_mask]
    print(f"\nFeatureOOD on 32x32 thumbnails (stand-in features), fitted on {fit_mask.sum()} films, "
          f"tested on {(~fit_mask).sum()} films of other patients and {len(ood)} OOD images")
    for method, k in (("mahalanobis", 0), ("knn", 5)):
        det = FeatureOOD.fit(feats[fit_mask], method=method, k=max(k, 1), percentile=99.5)
        s_in, s_out = det.score(feats[~fit_mask]), det.score(ood_feats)
        r = evaluate_detector(s_in, s_out, det.threshold)
        both_in = np.mean(test_checks | (s_in > det.threshold))
        both_out = np.mean(ood_checks | (s_out > det.threshold))
        per_group = defaultdict(list)
        for smp, refused in zip(ood, ood_checks | (s_out > det.threshold)):
            per_group[smp.group].append(refused)
        print(f"  {method:11s} AUROC {r['auroc']:.3f}  alone: false refusals "
              f"{r['false_refusal_rate_at_threshold']:.1%}, OOD refused {r['true_refusal_rate']:.1%}"
              f"  | with image checks: false refusals {both_in:.1%}, OOD refused {both_out:.1%}")
        print("    combined per group: " + ", ".join(f"{g} {np.mean(v):.0%}" for g, v in per_group.items()))


def main(argv: list[str]) -> None:
    here = Path(__file__).resolve().parent.parent
    root = Path(argv[0]) if argv else here.parent / "shared" / "data" / "cxr-real" / "images"
    films = load_chest_films(root)
    refused = [(name, r) for name, x in films if (r := image_checks(x))]
    print(f"real chest films: {len(films)}, refused by image checks: {len(refused)} "
          f"({len(refused) / len(films):.1%})")
    for name, r in refused:
        print(f"  {name}: {r}")
    step = max(1, len(films) // 60)  # about 60 films for the transforms
    samples = ood_samples([x for _, x in films[::step]])
    by_group, reasons = defaultdict(list), Counter()
    for s in samples:
        r = image_checks(s.pixels, was_color=s.was_color, colorfulness=s.colorfulness,
                         metadata=s.metadata)
        by_group[s.group].append((s.name, r))
        reasons.update(x.split(" (")[0].split(":")[0] for x in r)  # plain sentences, figures are in details
    total_ood = refused_ood = 0
    for group, rows in by_group.items():
        n_ref = sum(bool(r) for _, r in rows)
        if group != "chest-cr":
            total_ood, refused_ood = total_ood + len(rows), refused_ood + n_ref
        missed = [name for name, r in rows if not r]
        print(f"{group:18s} refused {n_ref:3d}/{len(rows):3d}  passed: {', '.join(missed[:8])}"
              + (" ..." if len(missed) > 8 else ""))
    print(f"OOD total: refused {refused_ood}/{total_ood} ({refused_ood / total_ood:.1%})")
    print("reasons:", dict(reasons.most_common()))
    feature_measurement(films, samples, root.parent / "manifest.csv")


if __name__ == "__main__":
    main(sys.argv[1:])
