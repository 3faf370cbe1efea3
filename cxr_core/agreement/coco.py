"""COCO export of expert, consensus and heatmap masks: polygons or uncompressed RLE.

COCO annotations use uncompressed, column-major RLE (``{"size": [h, w], "counts": [...]}``,
``iscrowd: 1``), which pycocotools, CVAT and Label Studio read; it is written and decoded here in
numpy. Regions drawn with straight edges are written as polygons (``iscrowd: 0``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

import cxr_core
from cxr_core.agreement import ReportError
from cxr_core.io.json_safe import clean

def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths of the column-major flattened mask, zeros first.

    Examples
    --------
    >>> rle_encode(np.array([[0, 1, 1], [0, 0, 1]], bool))
    {'size': [2, 3], 'counts': [2, 1, 1, 2]}
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ReportError(f"RLE needs a 2-D mask; got shape {m.shape}")
    flat = m.astype(bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size])))
    if flat.size and flat[0]:
        counts = np.concatenate(([0], counts))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Boolean (h, w) mask from uncompressed COCO RLE (:func:`rle_encode`'s inverse)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise ReportError(f"RLE must be {{'size': [h, w], 'counts': [...]}}; got {rle!r:.80}") from None
    if isinstance(counts, (str, bytes)):
        raise ReportError("compressed (string) RLE is not supported; accepted: a list of run lengths")
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any() or runs.sum() != h * w:
        raise ReportError(f"RLE run lengths must be non-negative and sum to h*w = {h * w}; got sum {runs.sum()}")
    flat = np.repeat(np.arange(runs.size) % 2 == 1, runs)
    return flat.reshape((h, w), order="F")


@dataclass(frozen=True)
class CocoAnnotation:
    """One mask to export: an expert's drawn region (``source="expert"``), a consensus or a binarised heatmap.

    ``polygon`` (COCO ``[x1, y1, x2, y2, ...]`` in image pixels, pixel edges at integers) is written
    instead of RLE when the region was drawn with straight edges; ``mask`` is then its rasterisation
    (area and box come from it).
    """

    image_id: str
    file_name: str
    category: str
    mask: np.ndarray
    reader: str = ""
    source: str = "expert"
    attributes: Mapping[str, Any] = field(default_factory=dict)
    polygon: Sequence[float] | None = None


@dataclass(frozen=True)
class CocoImage:
    """An image to list whether or not it has a mask (a Normal or excluded reading), with its attributes."""

    image_id: str
    file_name: str
    height: int
    width: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


def to_coco(annotations: Sequence[CocoAnnotation], *, categories: Sequence[str] | None = None,
            images: Sequence[CocoImage] = (), description: str = "CXR Review annotations") -> str:
    """COCO JSON that pycocotools, CVAT and Label Studio read: polygons (``iscrowd: 0``) or RLE (``iscrowd: 1``).

    ``images`` are listed first, then images met in annotations, numbered from 1; categories in the
    order given (or sorted). Empty masks list their image but add no annotation. Our own ids,
    reader and source are kept in each annotation's ``attributes``.
    """
    names = list(categories) if categories is not None else sorted({a.category for a in annotations})
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    listed: dict[str, dict] = {}
    for im in images:
        listed[im.image_id] = {"id": len(listed) + 1, "file_name": im.file_name, "height": int(im.height),
                               "width": int(im.width), "attributes": clean(dict(im.attributes))}
    out = []
    for a in annotations:
        if a.category not in cat_ids:
            raise ReportError(f"category {a.category!r} not among {names}")
        mask = np.asarray(a.mask).astype(bool)
        if mask.ndim != 2:
            raise ReportError(f"annotation for {a.image_id!r}: mask must be 2-D; got shape {mask.shape}")
        entry = listed.setdefault(a.image_id, {"id": len(listed) + 1, "file_name": a.file_name,
                                               "height": int(mask.shape[0]), "width": int(mask.shape[1])})
        if (entry["height"], entry["width"]) != mask.shape:
            raise ReportError(
                f"image {a.image_id!r} has masks of sizes {(entry['height'], entry['width'])} and {mask.shape}")
        if not mask.any():
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        out.append({
            "id": len(out) + 1, "image_id": entry["id"], "category_id": cat_ids[a.category],
            "segmentation": rle_encode(mask) if a.polygon is None else [[round(float(v), 3) for v in a.polygon]],
            "area": int(mask.sum()),
            "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)],
            "iscrowd": 1 if a.polygon is None else 0,
            "attributes": clean({"image_key": a.image_id, "reader": a.reader, "source": a.source, **a.attributes}),
        })
    payload = {
        "info": {"description": description, "version": cxr_core.__version__,
                 "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "licenses": [],
        "images": list(listed.values()),
        "annotations": out,
        "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in cat_ids.items()],
    }
    return json.dumps(payload, allow_nan=False)


__all__ = ["CocoAnnotation", "CocoImage", "rle_decode", "rle_encode", "to_coco"]
