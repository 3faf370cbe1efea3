"""The reading-sessions page's state: its session keys and how intake screens films (as the review page does).

Session-state keys start with ``sessions_``. The screening rules themselves live in
:mod:`cxr_core.safety.screening` and :mod:`cxr_core.safety.intake`.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from cxr_core.errors import CXRError
from ui import common

SESSIONS_NAME = "sessions_name"
SESSIONS_BLIND = "sessions_blind"
SESSIONS_SOURCE = "sessions_source"
SESSIONS_UPLOADS = "sessions_uploads"
SESSIONS_SAMPLES = "sessions_samples"
SESSIONS_FOLDER = "sessions_folder"
SESSIONS_READERS = "sessions_readers"
SESSIONS_SHUFFLE = "sessions_shuffle"
SESSIONS_ADMIN = "sessions_admin"
SESSIONS_NEW_READER = "sessions_new_reader"
SESSIONS_NEW_ROLE = "sessions_new_role"
SESSIONS_FLASH = "sessions_flash"
SESSIONS_SCREENED = "sessions_screened"  # cxr_core.safety.intake.VerdictCache of this browser session
#: The screening table's column of file names: shown to the administrator who chose the files, never stored.
SESSIONS_FILE_COLUMN = "Your file (shown only here)"
SESSIONS_NAMES_NOTE = ("Films are named by their label (film- and 8 characters of the picture's fingerprint), as "
                       "readers, the audit trail and exports name them. Your file names are shown only here, in your "
                       "browser, to help you match films to files; they are never stored.")


def sessions_redact_key(ident: str) -> str:
    """Widget key of the "black out the burned-in text" checkbox of one film with text."""
    return f"sessions_redact::{ident}"


def sessions_keep_key(ident: str) -> str:
    """Key of the "keep this flagged film" checkbox of one intake file (``IntakeFile.ident``)."""
    return f"sessions_keep::{ident}"


@dataclass(frozen=True)
class IntakeScreening:
    """How the sessions page screens films: the review page's function for the default model, or the image checks.

    ``tag`` names the screener in the verdict cache; ``problem`` says why the default model's detector
    is not used when it should be (the page shows it as a warning).
    """

    screen: object  # XRay -> OODDecision
    tag: str
    screened_by: str
    description: str
    problem: str = ""


_CHECKS = ("image checks (colour, blank or noisy images, grey levels, the chest's layout, "
           "DICOM body part and view)")


def sessions_screening() -> IntakeScreening:
    """The screening of the review page's default model (the demo model when installed), as intake uses it.

    A model with an out-of-distribution detector screens through :func:`ui.common.screen_item`'s cached
    ``screen_cached`` (same function, same cache as the review page); without one, or with no model,
    :class:`cxr_core.safety.screening.Screener` without a detector runs the image checks alone, which is
    what the model's screener would do.
    """
    from cxr_core.safety.screening import Screener, screener

    checks_only = Screener(None)
    ready = common.ready_models(common.registry())
    if not ready:
        return IntakeScreening(lambda x: checks_only.screen([x])[0], "image-checks", "image checks",
                               f"Screened by the {_CHECKS} alone: no model is installed, so no model's "
                               "out-of-distribution detector can be asked.")
    entry = ready[0]  # the review page's default: the registry lists demo models first
    role = "the demo model" if entry.card.demo else "the review page's default model"
    if not entry.card.extra.get("ood"):
        return IntakeScreening(lambda x: checks_only.screen([x])[0], "image-checks", "image checks",
                               f"Screened by the {_CHECKS} alone: **{entry.name}** ({role}) has no "
                               "out-of-distribution detector.")
    try:
        screener(common.loaded_model(entry), common.weights_key())  # load and verify the detector once, here
    except CXRError as err:
        return IntakeScreening(lambda x: checks_only.screen([x])[0], "image-checks", "image checks",
                               f"Screened by the {_CHECKS} alone.",
                               f"{entry.name}'s out-of-distribution detector could not be used ({err}); "
                               "films are screened by the image checks alone.")
    weights, name, sha = common.weights_key(), entry.name, entry.card.sha256
    return IntakeScreening(lambda x: common.screen_cached(weights, name, sha, x.sha256, x), f"{name}:{sha}",
                           f"{name} (image checks and out-of-distribution detector)",
                           f"Screened as the review page screens a film: the {_CHECKS}, and the out-of-distribution "
                           f"detector of **{name}** ({role}), which compares each film with its training films.")


def sessions_screen(files, screening: IntakeScreening, progress=None) -> list:
    """:func:`cxr_core.safety.intake.screen_files` with this browser session's verdict cache (nothing decoded twice)."""
    from cxr_core.safety.intake import VerdictCache, screen_files

    cache = st.session_state.setdefault(SESSIONS_SCREENED, VerdictCache())
    return screen_files(files, screening.screen, cache=cache, tag=screening.tag, progress=progress)
