"""Argparse front end: one subcommand per module in :mod:`cxr_core.cli.commands`, no logic here.

Exit codes: 0 success, 2 bad input (a one-line message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cxr_core.errors import CXRError

#: Modules under cxr_core.cli.commands; each has ``register(subparsers)`` setting ``func(args) -> int``.
COMMANDS = ("models", "predict", "import_model", "audit", "train", "evaluate", "split", "demo_model", "agree", "report",
            "calibrate", "sanity", "users")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cxr_core",
        description="CXR Review: chest X-ray classifier review tools. Model scores are not diagnoses.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"cxr_core.cli.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
