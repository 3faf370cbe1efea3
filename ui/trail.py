"""What the pages write to the audit trail: every download, and model output shown for a film.

- :func:`download`: every download of the app. The role is asked first (:data:`cxr_core.auth.ACTIONS`);
  a role that may not take it gets a plain caption in place of the button. A click writes an
  ``export`` event (who, what, which film), so the trail lists every file that left the app.
- :func:`output_shown`: model output (scores, heatmap, predicted class) shown for a film, written
  once per film, page and model in a browser session, not on every rerun.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui import auth as ui_auth

#: Text of the caption shown in place of a download the user's role may not take.
REFUSED = "Your role ({role}) may not {words}."


def _recorded(detail: str, film_sha: str | None) -> None:
    ui_auth.record("export", film_sha=film_sha, detail=detail)


def download(label: str, data: Any, file_name: str, mime: str, *, action: str | None, detail: str,
             film_sha: str | None = None, key: str | None = None, icon: str = ":material/download:",
             container=None) -> bool:
    """``st.download_button`` when the logged-in user may do ``action`` (None: any user who opened the page).

    Returns whether the button was shown. ``detail`` says what leaves the app, for the trail (never
    a file's contents); ``film_sha`` names the film when the file is about one film.
    """
    from cxr_core import auth

    where = container if container is not None else st
    if action is not None and not ui_auth.allowed(action):
        user = ui_auth.current_user()
        where.caption(REFUSED.format(role=user.role if user else "none", words=auth.ACTION_WORDS[action]))
        return False
    where.download_button(label, data, file_name, mime, key=key, icon=icon, on_click=_recorded,
                          args=(f"{file_name}: {detail}", film_sha))
    return True


SHOWN_KEY = "trail_shown"  # (page, film SHA-256, what) already recorded in this browser session


def output_shown(page: str, film_sha: str, what: str) -> None:
    """Record that model output for ``film_sha`` was shown on ``page`` (``what``: model, method...), once.

    A database that cannot record it shows a warning; the page itself goes on.
    """
    from cxr_core.errors import CXRError

    done: set = st.session_state.setdefault(SHOWN_KEY, set())
    key = (page, film_sha, what)
    if key in done:
        return
    try:
        ui_auth.record("model_output_shown", film_sha=film_sha, detail=f"{page}: {what}")
    except CXRError as err:
        st.warning(f"That model output was shown was not recorded in the audit trail: {err}")
        return
    done.add(key)


__all__ = ["REFUSED", "SHOWN_KEY", "download", "output_shown"]
