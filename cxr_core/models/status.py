"""What the app says about the model registry: each model's file check, and how to get the models not there.

Pure functions of :class:`cxr_core.models.manifest.ModelEntry` records (as ``list_models`` returns
them); the models and review pages show these sentences.
"""

from __future__ import annotations

from cxr_core.models.manifest import READY, ModelEntry
from cxr_core.models.zoo import SPECS


def checksum_line(entry: ModelEntry) -> tuple[bool, str]:
    """``(ok, sentence)`` for a model's file check, as the models page shows it."""
    if entry.status == READY:
        return True, f"Checksum verified: model.keras matches the SHA-256 in its card ({entry.card.sha256[:16]}...)."
    return False, f"{entry.status.capitalize()}: {entry.message}. This model cannot be used until this is fixed."


def missing_architectures(entries: list[ModelEntry]) -> list[tuple[str, str]]:
    """``(display name, how to get it)`` for each zoo architecture with no ready model registered."""
    have = {e.card.architecture.lower() for e in entries if e.ready and e.card is not None}
    out = []
    for arch, spec in SPECS.items():
        if arch not in have:
            out.append((spec.display_name, (
                f"train it: `python -m cxr_core train --arch {arch} --data DIR --name {arch}` "
                f"(DIR holds train/val/test folders per class), or register a trained file: "
                f"`python -m cxr_core import-model FILE.keras --name {arch} --arch {arch}`"
            )))
    return out
