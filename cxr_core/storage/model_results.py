"""Model outputs stored per image: probabilities and a compressed heatmap, keyed by model file, method and target.

Show them only through :mod:`cxr_core.safety.blinding`. Re-exported by :mod:`cxr_core.storage`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cxr_core.storage.checks import AnnotationError, flush_or_conflict
from cxr_core.storage.codec import decode_heatmap, encode_heatmap
from cxr_core.storage.schema import Image, ModelResult

def save_model_result(
    s: Session,
    *,
    image_sha: str,
    model_name: str,
    model_checksum: str,
    method: str,
    target: str,
    probabilities: Mapping[str, float],
    heatmap: np.ndarray | None = None,
    heatmap_dtype: type = np.float16,
) -> ModelResult:
    """Store a model's output for a stored image; the same key again returns the stored row.

    Show it only through :mod:`cxr_core.safety.blinding`.
    """
    if s.get(Image, image_sha) is None:
        raise AnnotationError(f"image {image_sha[:12]}... is not stored; add it with add_image() first")
    probs = {str(k): float(v) for k, v in probabilities.items()}
    if not probs or not all(np.isfinite(v) and 0 <= v <= 1 for v in probs.values()):
        raise AnnotationError(f"probabilities {probs!r:.100}; expected class -> value in [0, 1]")
    found = get_model_result(
        s, image_sha=image_sha, model_name=model_name, model_checksum=model_checksum, method=method, target=target
    )
    if found is not None:
        return found
    result = ModelResult(
        image_sha=image_sha, model_name=model_name, model_checksum=model_checksum, method=method, target=target,
        probabilities=probs, heatmap_npz=None if heatmap is None else encode_heatmap(heatmap, dtype=heatmap_dtype),
    )
    s.add(result)
    flush_or_conflict(s, "model result")
    return result


def get_model_result(
    s: Session, *, image_sha: str, model_name: str, model_checksum: str, method: str, target: str
) -> ModelResult | None:
    """The stored result for exactly this image, model file, method and target, or ``None``."""
    return s.scalar(select(ModelResult).where(
        ModelResult.image_sha == image_sha, ModelResult.model_name == model_name,
        ModelResult.model_checksum == model_checksum, ModelResult.method == method, ModelResult.target == target,
    ))


def model_results_for_image(s: Session, image_sha: str) -> list[ModelResult]:
    """All stored results for an image, oldest first (check blinding before showing them)."""
    return list(s.scalars(select(ModelResult).where(ModelResult.image_sha == image_sha).order_by(ModelResult.id)))


def result_heatmap(result: ModelResult) -> np.ndarray | None:
    """The stored heatmap as (H, W) float32, or ``None``."""
    return None if result.heatmap_npz is None else decode_heatmap(result.heatmap_npz)


__all__ = ["get_model_result", "model_results_for_image", "result_heatmap", "save_model_result"]
