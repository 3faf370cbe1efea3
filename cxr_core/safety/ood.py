"""Refusing inputs that do not look like a frontal chest radiograph.

Two kinds of evidence, both on plain arrays:

- ``image_findings`` / ``image_checks``: cheap pixel and DICOM-header checks (colour, blank, noise,
  histogram, the chest's left-right intensity layout, modality, body part and view). Each failed
  check is a :class:`Finding`: a short sentence a radiologist can read (``reason``) and the measured
  figures (``details``). The pixel limits are not set by hand: :func:`derive_limits` puts each one
  beyond the worst of real chest films, by half the distance from their median to that worst film
  (on a log scale for positive measures), and :data:`REAL_FILM_LIMITS` is that rule applied to the
  520 real films of ``cxr-real`` (``bench/bench_ood.py`` recomputes it and the patient-held-out
  false refusals of every check). The shape of the image is not a check: wide pediatric films are
  real chest films, and the feature detector sees every film squeezed to a square anyway (an odd
  shape is a reader's warning, :data:`cxr_core.safety.warnings.MAX_SQUARE_ASPECT`, never a refusal).
- the feature detector (:class:`cxr_core.safety.detector.FeatureOOD`): distance of a model's features to
  its training films, in its own module.

References
----------
.. [1] Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
   Adversarial Attacks", NeurIPS 2018.
.. [2] Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.
.. [3] Hasler and Suesstrunk, "Measuring colourfulness in natural images", Proc. SPIE 5007, 2003.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cxr_core.errors import CXRError

ACCEPTED_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
CHEST_BODY_PARTS = ("CHEST", "THORAX", "TORAX", "LUNG")
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL"})
_WORK_SIDE = 256  # images are block-averaged to at most this side before measuring
_BINS = 32

class OODError(CXRError):
    """Input to an out-of-distribution check or detector has the wrong shape or content."""


@dataclass(frozen=True)
class CheckLimits:
    """Limits of the pixel checks. Defaults: :data:`REAL_FILM_LIMITS` (derived from real films).

    ``max_colorfulness`` cannot be learnt from grey films (theirs is 0); 0.06 (15/255) is the
    "slightly colourful" step of Hasler and Suesstrunk's scale [3]_.
    """

    max_colorfulness: float = 0.06
    min_std: float = 0.0267  # real films: 0.053 .. 0.31 (median 0.21)
    max_high_freq: float = 0.151  # real: 0.003 .. 0.059 (median 0.009); white noise: 1.0
    max_dominant_grey: float = 0.65  # real: 0.05 .. 0.34 (median 0.09) of pixels in one of 32 grey bins
    min_grey_entropy: float = 0.357  # real: 0.48 .. 0.98 (median 0.88), normalised, 32 bins
    min_layout: float = -0.533  # real: -0.05 .. 1.69 (median 0.93); inverted or rotated films: mostly < -0.5


#: Which way each limit points and on which scale it is derived: (feature, "max" or "min", log scale).
LIMIT_RULES = {
    "min_std": ("std", "min", True),
    "max_high_freq": ("high_freq", "max", True),
    "max_dominant_grey": ("dominant_grey", "max", True),
    "min_grey_entropy": ("grey_entropy", "min", True),
    "min_layout": ("layout", "min", False),
}
LIMIT_MARGIN = 0.5


def derive_limits(features: Sequence["ImageFeatures"], margin: float = LIMIT_MARGIN) -> CheckLimits:
    """Limits beyond the worst of ``features`` (real chest films) by ``margin`` x its distance from their median.

    On a log scale for positive measures (contrast, noise, histogram), so a limit never crosses 0;
    linearly for the signed layout. With ``margin`` 0.5 the 520 real films of ``cxr-real`` give
    :data:`REAL_FILM_LIMITS`, the defaults of :class:`CheckLimits`.
    """
    if len(features) < 2:
        raise OODError(f"deriving limits needs the features of at least 2 real films, got {len(features)}")
    out = {}
    for name, (attr, side, log) in LIMIT_RULES.items():
        v = np.array([getattr(f, attr) for f in features], dtype=np.float64)
        if log:
            v = np.log(np.maximum(v, 1e-12))
        worst = v.min() if side == "min" else v.max()
        limit = worst + margin * (worst - float(np.median(v)))
        out[name] = float(np.exp(limit) if log else limit)
    return CheckLimits(**out)


#: :func:`derive_limits` of the 520 real films of ``cxr-real`` (rounded outward); checked by ``bench/bench_ood.py``.
REAL_FILM_LIMITS = CheckLimits()


@dataclass(frozen=True)
class ImageFeatures:
    """Numbers the pixel checks look at, computed on a copy shrunk to at most 256 px a side."""

    aspect: float
    std: float
    high_freq: float
    dominant_grey: float
    grey_entropy: float
    layout: float


@dataclass(frozen=True)
class Finding:
    """One failed check: which, a sentence a radiologist can read, and the measured figures."""

    check: str  # colour, blank, noise, background, grey_levels, layout, modality, body_part, view, detector
    reason: str
    details: str


@dataclass
class OODDecision:
    """Whether an input may be scored, and why not when it may not.

    ``reasons`` are plain sentences; ``details[i]`` holds the figures behind ``reasons[i]`` and
    ``checks[i]`` names the check (empty lists when a caller built the decision from reasons alone).
    """

    ok: bool
    reasons: list[str] = field(default_factory=list)
    score: float | None = None
    threshold: float | None = None
    details: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, findings: Sequence[Finding], score: float | None = None,
           threshold: float | None = None) -> "OODDecision":
        """Decision from findings (refused when there is any)."""
        return cls(not findings, [f.reason for f in findings], score, threshold,
                   [f.details for f in findings], [f.check for f in findings])

    @property
    def details_text(self) -> str:
        """All measured figures in one line (empty when accepted)."""
        return "; ".join(d for d in self.details if d)


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler-Suesstrunk colourfulness of an (H, W, 3) RGB image with values in [0, 1].

    0 for any gray image (equal channels), about 0.3 for a colour photograph.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise OODError(f"colorfulness needs an (H, W, 3) RGB array, got shape {rgb.shape}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    x = np.asarray(pixels, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 2:
        raise OODError(f"pixels must be a 2-D (H, W) grayscale array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise OODError("pixels contain NaN or infinite values")
    return x


def _shrink(x: np.ndarray, side: int = _WORK_SIDE) -> np.ndarray:
    """Block-average so the longer side is at most ``side`` (keeps noise white, unlike zooming)."""
    f = int(np.ceil(max(x.shape) / side))
    if f <= 1:
        return x
    h, w = (x.shape[0] // f) * f, (x.shape[1] // f) * f
    if h == 0 or w == 0:
        return x
    return x[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _trim_borders(x: np.ndarray, frac: float = 0.15) -> np.ndarray:
    """Drop outer rows and columns that are nearly uniform (collimation, padding, letterbox)."""
    s = x.std()
    rows = np.flatnonzero(x.std(axis=1) > frac * s)
    cols = np.flatnonzero(x.std(axis=0) > frac * s)
    if rows.size < 8 or cols.size < 8:
        return x
    return x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _central_band(x: np.ndarray) -> float:
    """Central 10 % of columns minus the two lung-field bands, in units of the image's std."""
    col = x.mean(axis=0)
    n = col.size
    centre = col[int(0.45 * n) : max(int(0.55 * n), int(0.45 * n) + 1)].mean()
    lungs = np.r_[col[int(0.2 * n) : int(0.35 * n) + 1], col[int(0.65 * n) : int(0.8 * n) + 1]].mean()
    return float((centre - lungs) / (x.std() + 1e-12))


def image_features(pixels: np.ndarray) -> ImageFeatures:
    """Measure what the pixel checks use.

    ``layout`` is why a chest film is recognisable without a model: on a frontal film (bone
    bright) the spine and mediastinum form a bright vertical band between two darker lungs.
    It is that band's contrast across columns minus the same contrast across rows, so a film
    rotated by 90 degrees or inverted scores negative.

    Parameters
    ----------
    pixels : (H, W) ndarray
        Grayscale image, float in [0, 1].
    """
    x = _check_pixels(pixels)
    aspect = max(x.shape) / min(x.shape)
    x = _shrink(x)
    std = float(x.std())
    if std == 0.0:
        return ImageFeatures(aspect, 0.0, 0.0, 1.0, 0.0, 0.0)
    dx, dy = np.diff(x, axis=1), np.diff(x, axis=0)
    high_freq = float((np.mean(dx**2) + np.mean(dy**2)) / (4 * std**2))  # = 1 - lag-1 autocorr
    t = _trim_borders(x)
    hist = np.histogram(np.clip(t, 0, 1), bins=_BINS, range=(0.0, 1.0))[0] / t.size
    nz = hist[hist > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(_BINS))
    layout = _central_band(t) - _central_band(t.T)
    return ImageFeatures(aspect, std, high_freq, float(hist.max()), entropy, layout)


def _meta(metadata: dict, *names: str) -> str:
    for key, value in metadata.items():
        if key.replace("_", "").lower() in names and value not in (None, ""):
            return str(value).strip().upper()
    return ""


def metadata_findings(metadata: dict | None) -> list[Finding]:
    """Findings from DICOM header fields (any key spelling: ``Modality`` or ``modality``)."""
    if not metadata:
        return []
    out = []
    modality = _meta(metadata, "modality")
    if modality and modality not in ACCEPTED_MODALITIES:
        article = "an" if modality[0] in "AEFHILMNORSX" else "a"  # as spoken: an MR, an NM, a CT, a US
        out.append(Finding("modality", f"The file says this is {article} {modality} image, not a plain X-ray.",
                           f"DICOM Modality {modality}; accepted: {', '.join(sorted(ACCEPTED_MODALITIES))}"))
    part = _meta(metadata, "bodypartexamined", "bodypart")
    if part and not any(p in part for p in CHEST_BODY_PARTS):
        out.append(Finding("body_part", f"The file says this shows the {part.lower()}, not the chest.",
                           f"DICOM BodyPartExamined {part}; accepted: {', '.join(CHEST_BODY_PARTS)}"))
    view = _meta(metadata, "viewposition", "view")
    if view in LATERAL_VIEWS:
        out.append(Finding("view", "The file says this is a lateral film; the model reads frontal (PA or AP) films.",
                           f"DICOM ViewPosition {view}"))
    return out


def metadata_checks(metadata: dict | None) -> list[str]:
    """Sentences of :func:`metadata_findings`."""
    return [f.reason for f in metadata_findings(metadata)]


def image_findings(
    pixels: np.ndarray,
    *,
    was_color: bool = False,
    colorfulness: float | None = None,
    metadata: dict | None = None,
    limits: CheckLimits = CheckLimits(),
) -> list[Finding]:
    """Why an image does not look like a frontal chest radiograph; empty if nothing is wrong.

    Parameters
    ----------
    pixels : (H, W) ndarray
        Grayscale image, float in [0, 1], bone bright (as ``imaging.load_xray`` returns it).
    was_color : bool
        The file had colour channels. Alone this refuses nothing (many films are stored as
        RGB with equal channels); ``colorfulness`` decides.
    colorfulness : float or None
        ``colorfulness(rgb)`` of the original RGB pixels, when there were any.
    metadata : dict or None
        DICOM fields such as Modality, BodyPartExamined, ViewPosition.

    Returns
    -------
    findings : list of Finding
        One per failed check: a plain sentence and the measured value with its limit.
    """
    out = []
    if was_color and colorfulness is not None and colorfulness > limits.max_colorfulness:
        out.append(Finding("colour", "This is a colour picture (a photograph or a figure), not an X-ray.",
                           f"colourfulness {colorfulness:.2f}, limit {limits.max_colorfulness:.2f}"))
    f = image_features(pixels)
    if f.std < limits.min_std:
        out.append(Finding("blank", "The image is blank: almost no contrast.",
                           f"grey-level spread {f.std:.3f}, limit {limits.min_std:.3f}"))
        return out + metadata_findings(metadata)
    if f.high_freq > limits.max_high_freq:
        out.append(Finding("noise", "The image looks like noise, text or a fine texture, not an X-ray.",
                           f"high-frequency energy {f.high_freq:.2f}, limit {limits.max_high_freq:.2f}"))
    if f.dominant_grey > limits.max_dominant_grey:
        out.append(Finding("background", "Most of the image is one flat grey, unlike a chest film.",
                           f"{f.dominant_grey:.0%} of pixels in one of {_BINS} grey levels, "
                           f"limit {limits.max_dominant_grey:.0%}"))
    if f.grey_entropy < limits.min_grey_entropy:
        out.append(Finding("grey_levels", "The image has too few shades of grey, like a drawing or text.",
                           f"grey-level entropy {f.grey_entropy:.2f}, limit {limits.min_grey_entropy:.2f}"))
    if f.layout < limits.min_layout:
        out.append(Finding("layout", "This does not look like a frontal chest film: there is no bright spine "
                           "between two darker lungs (it may be rotated, inverted or another body part).",
                           f"layout {f.layout:.2f} (centre-column minus centre-row brightness), "
                           f"limit {limits.min_layout:.2f}"))
    return out + metadata_findings(metadata)


def image_checks(
    pixels: np.ndarray,
    *,
    was_color: bool = False,
    colorfulness: float | None = None,
    metadata: dict | None = None,
    limits: CheckLimits = CheckLimits(),
) -> list[str]:
    """The sentences of :func:`image_findings` (same arguments).

    Examples
    --------
    >>> image_checks(np.zeros((300, 300), np.float32))
    ['The image is blank: almost no contrast.']
    """
    return [f.reason for f in image_findings(pixels, was_color=was_color, colorfulness=colorfulness,
                                             metadata=metadata, limits=limits)]


def image_decision(reasons: list[str]) -> OODDecision:
    """Decision from image-check sentences alone (used when no feature detector is available)."""
    return OODDecision(not reasons, list(reasons), details=[""] * len(reasons), checks=["image"] * len(reasons))
