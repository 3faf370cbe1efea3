"""The models page's state: its session keys.

What the page says about each model is decided elsewhere: the file check and how to get missing
architectures in :mod:`cxr_core.models.status`, the charts and tables in :mod:`ui.figures`.
Session-state keys start with ``models_``.
"""

from __future__ import annotations

MODELS_PER_CLASS = "models_per_class"  # toggle: per-class rows in the metrics table
