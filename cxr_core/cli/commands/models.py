"""``models``: list the registry with each model's status."""

from __future__ import annotations

import json

from cxr_core.models.manifest import list_models


def register(sub) -> None:
    p = sub.add_parser("models", help="list registered models and their status")
    p.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    entries = list_models()
    rows = [
        {
            "name": e.name,
            "status": e.status,
            "architecture": e.card.architecture if e.card else None,
            "classes": e.card.classes if e.card else None,
            "input_size": e.card.input_size if e.card else None,
            "demo": bool(e.card and e.card.demo),
            "message": e.message,
        }
        for e in entries
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models registered (train one with `python -m cxr_core train` or import one)")
    for r in rows:
        classes = ", ".join(r["classes"] or [])
        print(f"{r['name']:32s} {r['status']:18s} {r['architecture'] or '?':18s} {classes}")
    return 0
