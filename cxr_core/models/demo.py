"""The shipped demo model: EfficientNetV2B0 trained from scratch on ``shared/data/cxr-real``.

``make demo-model`` (``python -m cxr_core demo-model --source ../shared/data/cxr-real``) rebuilds
``weights/demo-efficientnetv2b0/`` with :data:`RECIPE`; the card carries the sources, their licences
and attributions, the patient-disjoint split, test metrics with intervals and the known confounds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cxr_core.models.zoo import ALL_LAYERS
from cxr_core.training.dataset import Record, load_records
from cxr_core.training.train import TrainConfig, TrainResult, train

NAME = "demo-efficientnetv2b0"
CLASSES = ("COVID-19", "Normal", "Pneumonia")

#: The demo recipe. From scratch (ImageNet weights cannot be downloaded here), every layer trained,
#: sized to finish on 2 shared CPU cores in well under an hour. Lung crop and source-balanced weights: the
#: issue-16 mitigation that beat the uncropped recipe on the patient-held-out test split (docs/demo-model.md).
RECIPE = dict(
    arch="efficientnetv2b0", name=NAME, classes=CLASSES, weights=None, trainable_layers=ALL_LAYERS,
    input_size=192, epochs=40, batch_size=16, lr=1e-3, seed=7, early_stopping_patience=8, lr_patience=3,
    max_minutes=42, crop_lungs=True, balance_by="source",
)

INTENDED_USE = "demonstration of the review workflow, not clinical use"

#: Attribution each source requires (from the data folder's SOURCES.md).
ATTRIBUTION = {
    "hannover": (
        "Hannover Medical School, Institute for Diagnostic and Interventional Radiology: COVID-19 image repository "
        "(ml-workgroup/covid-19-image-repository), CC BY 3.0, doi:10.6084/m9.figshare.12275009"
    ),
    "ieee8023": (
        "Cohen et al., COVID-19 image data collection (ieee8023/covid-chestxray-dataset); each image under its own "
        "licence (CC BY, CC BY 4.0 or CC BY-SA) with its original URL in the manifest"
    ),
    "kermany224": (
        "Kermany et al., Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for Classification, "
        "Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0 (224 px copy from waliatushar/ai-pneumonia-detection)"
    ),
    "kermany": (
        "Kermany et al., Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0"
    ),
    "nih14": (
        "Data provided by the NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC; Wang et al., "
        "ChestX-ray8, IEEE CVPR 2017, pp. 3462-3471"
    ),
}

NOTES = [
    "Demonstration model: trained from scratch (no ImageNet weights) on 520 images; its scores are not diagnoses.",
    "Known confound: almost all Normal and Pneumonia images are pediatric films from one hospital (Kermany, "
    "Guangzhou), almost all COVID-19 images adult ward/ICU films from another (Hannover). The model may have learnt "
    "age, body size, hospital, scanner or burned-in markers rather than disease; its test accuracy is a demo number, "
    "not evidence of diagnostic skill.",
    "Resolution shortcut: Kermany images are 224x224 squeezed squares, Hannover images 512x~419; the model may "
    "use image shape and texture.",
    "No tuberculosis class: no TB chest X-ray source with terms that allow redistribution was found (Montgomery/"
    "Shenzhen ask not to share, TBX11K and Belarus have no clear licence, TB Portals needs an agreement), so this "
    "model neither detects nor rules out TB.",
    "Pneumonia mixes pediatric bacterial and viral Kermany cases with 3 adult cases (2 Pneumocystis, 1 ARDS).",
    "The split is patient-disjoint by patient_id (Kermany id groups only approximate patients); split.csv lists it. "
    "The test split has 79 images from 50 patients, so the intervals are wide.",
    "Training stops at early stopping or a 42-minute time budget, whichever comes first, so `make demo-model` on a "
    "faster or less loaded machine trains more epochs and gives somewhat different numbers; the card records "
    "epochs_run, best_epoch and the device.",
]


def licences(records: list[Record]) -> list[dict]:
    """One entry per (source, licence) with the attribution it requires and the number of images."""
    counts = Counter((r.source, r.extra.get("license", "")) for r in records)
    return [
        {"source": source, "license": licence, "attribution": ATTRIBUTION.get(source, ""), "images": n}
        for (source, licence), n in sorted(counts.items())
    ]


def recipe_notes(config: dict) -> list[str]:
    """Card notes for the issue-16 mitigations a recipe uses (lung crop, source-balanced weights)."""
    notes = []
    if config.get("crop_lungs"):
        notes.append("Lung crop: every film is cut to the bounding box of its lung fields as the bundled lung U-Net "
                     "estimates them (plus 10% margin) before the network sees it, in training and in every "
                     "prediction; heatmaps are computed on the crop and put back on the whole film (zero outside the "
                     "box), so their outside-lung share is lower partly by construction.")
    if config.get("balance_by"):
        notes.append(f"Balanced by {config['balance_by']}: within each class every {config['balance_by']} carries "
                     "the same total training weight (per-image factor capped), so the 15 adult NIH Normal films are "
                     "not drowned by 105 pediatric Kermany ones.")
    return notes


def card_fields(records: list[Record], source: Path, config: dict | None = None) -> dict:
    return {
        "demo": True,
        "intended_use": INTENDED_USE,
        "licences": licences(records),
        "notes": list(NOTES) + recipe_notes(config or {}),
        "training_data": {
            "dataset": f"{source.name} (520 real chest X-rays: COVID-19, Normal, Pneumonia; see its SOURCES.md)",
            "sources": dict(sorted(Counter(r.source for r in records).items())),
            "age_groups": dict(sorted(Counter(r.extra.get("age_group", "") for r in records).items())),
        },
    }


def build_demo(
    source: Path | str,
    *,
    weights_dir: Path | str | None = None,
    log: Callable[[str], None] = print,
    split_csv: Path | str | None = None,
    **overrides,
) -> TrainResult:
    """Train and register the demo model from the ``cxr-real`` folder (``overrides`` change :data:`RECIPE`).

    ``split_csv``: a saved ``split.csv`` (paths relative to ``source``) to reuse, so two recipes are
    compared on the same patient-held-out test films.
    """
    from cxr_core.training.dataset import apply_split, read_split_csv

    source = Path(source)
    records = load_records(source, CLASSES)
    if split_csv is not None:
        records = apply_split(records, read_split_csv(split_csv), root=source)
    config = TrainConfig(**{**RECIPE, **overrides})
    result = train(records, config, weights_dir=weights_dir, data_root=source,
                   card_fields=card_fields(records, source, {**RECIPE, **overrides}), log=log)
    add_source_breakdown(result.loaded, [r for r in result.records if r.split == "test"], weights_dir=weights_dir)
    return result


def add_source_breakdown(loaded, test: list[Record], *, weights_dir: Path | str | None = None) -> dict:
    """Test accuracy per (class, source) into ``card.metrics["test_by_source"]`` and a note: the confound, measured."""
    import numpy as np

    from cxr_core.training.evaluate import predict_records
    from cxr_core.models.manifest import model_folder, write_card

    predicted = np.asarray(loaded.card.classes)[predict_records(loaded, test).argmax(axis=1)]
    groups: dict[str, list[bool]] = {}
    for rec, pred in zip(test, predicted):
        groups.setdefault(f"{rec.label} / {rec.source}", []).append(bool(pred == rec.label))
    breakdown = {k: {"images": len(v), "correct": int(sum(v))} for k, v in sorted(groups.items())}
    card = loaded.card
    card.metrics["test_by_source"] = breakdown
    card.notes = [n for n in card.notes if not n.startswith("Test accuracy by class and source")] + [
        "Test accuracy by class and source (small groups are anecdotes, not estimates): " + "; ".join(
            f"{k} {v['correct']}/{v['images']}" for k, v in breakdown.items())
    ]
    write_card(model_folder(card.name, weights_dir), card)
    return breakdown


def pick_samples(records: list[Record], per_class: int = 4) -> list[Record]:
    """``per_class`` test-split images per class, one per patient, taking sources in turn (deterministic)."""
    chosen = []
    for cls in CLASSES:
        pool = sorted((r for r in records if r.split == "test" and r.label == cls), key=lambda r: r.file.name)
        by_source: dict[str, list[Record]] = {}
        for rec in pool:
            by_source.setdefault(rec.source, []).append(rec)
        picked, seen = [], set()
        while len(picked) < per_class and any(by_source.values()):
            for source in sorted(by_source):
                queue = by_source[source]
                while queue and queue[0].patient_id in seen:
                    queue.pop(0)
                if queue and len(picked) < per_class:
                    rec = queue.pop(0)
                    picked.append(rec)
                    seen.add(rec.patient_id)
        chosen.extend(picked)
    return chosen


def write_samples(records: list[Record], dest: Path | str, per_class: int = 4) -> list[dict]:
    """Copy :func:`pick_samples` into ``dest`` with ``samples.json`` and ``ATTRIBUTION.md``."""
    import json
    import shutil

    from cxr_core.io.samples import SAMPLES_JSON

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    entries = []
    for rec in pick_samples(records, per_class):
        name = f"{rec.label.lower().replace('-19', '')}_{rec.file.name}"
        shutil.copyfile(rec.file, dest / name)
        entries.append({
            "file": name, "label": rec.label, "source": rec.source, "license": rec.extra.get("license", ""),
            "attribution": ATTRIBUTION.get(rec.source, ""), "patient_id": rec.patient_id,
            "original": f"{rec.extra.get('source_repository', '')}: {rec.extra.get('original_path', '')}",
            "split": "test (of the demo model's patient-disjoint split)",
        })
    (dest / SAMPLES_JSON).write_text(json.dumps(entries, indent=2) + "\n")
    lines = [
        "# Sample chest X-rays: attribution",
        "",
        "Twelve real radiographs (4 COVID-19, 4 Normal, 4 Pneumonia) copied unchanged from `shared/data/cxr-real`,",
        f"all from the **test** side of the demo model `{NAME}`'s patient-disjoint split, so the demo model never",
        "trained on them. They are here for the app's \"try a sample\" choice; model scores on them are not diagnoses.",
        "Each image keeps its licence; reuse requires the attribution below.",
        "",
        "| file | label | source | licence | attribution |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| `{e['file']}` | {e['label']} | {e['source']} | {e['license'].replace('|', '/')} | {e['attribution']} |"
              for e in entries]
    lines += ["", "Caveat: the Normal and Pneumonia Kermany images are pediatric and the COVID-19 Hannover images adult;",
              "see the demo model's card for what that means for its scores.", ""]
    (dest / "ATTRIBUTION.md").write_text("\n".join(lines))
    return entries
