"""JSON that every reader parses: NaN and infinities become null, numpy scalars and arrays plain Python.

Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON; a metric that is undefined
for an image (NaN) must reach a JSON export as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def clean(value: Any) -> Any:
    """JSON-safe copy of ``value``: NaN/inf to None, numpy scalars and arrays to Python, keys to str.

    Examples
    --------
    >>> clean({"iou": float("nan"), "n": np.int64(3), "xs": np.array([0.5, np.inf])})
    {'iou': None, 'n': 3, 'xs': [0.5, None]}
    """
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["clean"]
