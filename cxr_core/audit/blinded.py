"""A dataset audit as one reader may see it: no prediction for a film they still read blind.

An audit lists each film's predicted class and heatmap shares, and its summaries and shortcut
flags count predicted classes. A film pending in the reader's blind session
(:func:`cxr_core.safety.blinding.hidden_images`, the one gate) is taken out of all of them, and the
summaries are recomputed without it, so no chart, table, caption or download can give its
prediction away. A film the audit holds no pixel hash for (an audit saved by an older version)
cannot be checked, so it is taken out too whenever the reader has any film pending.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr_core.audit import from_json, to_json


@dataclass(frozen=True)
class BlindedAudit:
    """The audit the reader may see, and how many films were taken out of it (and why)."""

    data: dict
    hidden: int
    unchecked: int  # of ``hidden``: films without a pixel hash


def without_pending(data: dict, pending: set[str], *, n_boot: int = 1000) -> BlindedAudit:
    """``data`` (:func:`cxr_core.audit.to_json` output) without the films whose pixel hash is in ``pending``.

    Parameters
    ----------
    data : dict
        A whole audit.
    pending : set of str
        Pixel SHA-256 of the films whose model output the reader may not see
        (:func:`cxr_core.safety.blinding.hidden_images`).
    """
    if not pending:
        return BlindedAudit(data, 0, 0)

    def hide(sha: str) -> bool:
        return not sha or sha in pending

    images = data.get("images") or []
    gone = [im for im in images if hide(im.get("sha256", ""))]
    flagged_gone = [f for f in data.get("flagged") or [] if hide(f.get("sha256", ""))]
    if not gone and not flagged_gone:
        return BlindedAudit(data, 0, 0)
    report = from_json(data)
    report.images = [im for im in report.images if not hide(im.sha256)]
    report.flagged = [f for f in report.flagged if not hide(f.sha256)]
    kept = to_json(report, n_boot=n_boot)
    return BlindedAudit(kept, len(gone), sum(1 for im in gone if not im.get("sha256")))


__all__ = ["BlindedAudit", "without_pending"]
