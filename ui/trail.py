"""What the pages write to the audit trail: every download, and model output shown for a film.

- :func:`download`: every download of the app. The role is asked first (:data:`cxr_core.auth.ACTIONS`);
  a role that may not take it gets a plain caption in place of the button. A click writes an
  ``export`` event (who, what, which film), so the trail lists every file that left the app.
- :func:`output_shown`: model output (scores, heatmap, predicted class) shown for a film, written
  once per film, page and model in a browser session, not on every rerun; :func:`once` does the same
  for reveals and refusal overrides.
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


def output_shown(page: str, film_shas, what: str) -> None:
    """Record that model output for each film in ``film_shas`` (one SHA-256 or several) was shown on ``page``.

    ``what`` names the output (model, method...). Each film is written once per page and ``what`` in a
    browser session, all new ones in one transaction, not on every rerun. A database that cannot record
    it shows a warning; the page itself goes on.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from cxr_core import auth
    from cxr_core.errors import CXRError
    from ui import common

    shas = [film_shas] if isinstance(film_shas, str) else list(film_shas)
    done: set = st.session_state.setdefault(SHOWN_KEY, set())
    new = [sha for sha in dict.fromkeys(shas) if sha and (page, sha, what) not in done]
    if not new:
        return
    user = ui_auth.current_user()
    try:
        with common.db().begin() as s:
            for sha in new:
                auth.record(s, user.name if user else None, "model_output_shown", film_sha=sha,
                            detail=f"{page}: {what}")
    except (CXRError, SQLAlchemyError) as err:
        st.warning(f"The audit trail could not record that model output was shown: {err}")
        return
    done.update((page, sha, what) for sha in new)


def once(kind: str, film_sha: str | None, detail: str, key: tuple) -> None:
    """Record ``kind`` (a reveal, a refusal override...) once per ``key`` in this browser session."""
    from sqlalchemy.exc import SQLAlchemyError

    from cxr_core.errors import CXRError

    done: set = st.session_state.setdefault(SHOWN_KEY, set())
    if (kind, *key) in done:
        return
    try:
        ui_auth.record(kind, film_sha=film_sha, detail=detail)
    except (CXRError, SQLAlchemyError) as err:
        st.warning(f"The audit trail could not record this {kind.replace('_', ' ')}: {err}")
        return
    done.add((kind, *key))


__all__ = ["REFUSED", "SHOWN_KEY", "download", "once", "output_shown"]
