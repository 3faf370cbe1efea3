"""Audit trail (administrators): who logged in, saw model output, revealed, overrode, exported, changed what."""

from datetime import datetime, time, timedelta, timezone

import streamlit as st

from cxr_core import auth
from cxr_core.auth.trail import AUDIT_ACTIONS
from cxr_core.errors import CXRError
from ui import auth as ui_auth
from ui import common
from ui import trail

ui_auth.require_page("page:trail")

#: At most this many events on the page (the newest); the CSV holds every event the filter matches.
SHOWN = 2000
ANYONE = "(anyone)"
ANY_ACTION = "(any action)"

st.title("Audit trail")
st.caption(
    "This page is for administrators: every login and failed login, model output shown for a film, reveal, "
    "refusal override, download, and change to sessions and users, with who, when (UTC) and the film's hash. "
    "Events can be neither changed nor deleted. Filter them and download the result as CSV. "
    "It shows no model output; model scores are not diagnoses."
)

with common.reading() as s:
    names = sorted({u.name for u in auth.list_users(s)})
cols = st.columns([2, 2, 2, 2])
who = cols[0].selectbox("Who", [ANYONE, *names], key="trail_who")
action = cols[1].selectbox("Action", [ANY_ACTION, *AUDIT_ACTIONS], key="trail_action")
today = datetime.now(timezone.utc).date()
dates = cols[2].date_input("Between (UTC dates, inclusive)", value=(today - timedelta(days=30), today),
                           key="trail_dates", help="Clear the dates to see every day.")
film = cols[3].text_input("Film hash (its first 6 or more hex digits)", key="trail_film",
                          placeholder="e.g. 3fa2c1")
since = until = None
if isinstance(dates, (tuple, list)) and dates:
    since = datetime.combine(dates[0], time.min, timezone.utc)
    until = datetime.combine(dates[-1], time.min, timezone.utc) + timedelta(days=1)
filters = dict(who=None if who == ANYONE else who, action=None if action == ANY_ACTION else action,
               since=since, until=until, film_sha=film.strip() or None)
try:
    with common.reading() as s:
        found = auth.events(s, **filters)
except CXRError as err:
    st.error(f"Nothing is shown: {err}")
    st.stop()

st.subheader(f"{len(found)} event(s)")
if not found:
    st.info("No event matches these filters.")
    st.stop()
shown = found[-SHOWN:][::-1]  # newest first
if len(found) > SHOWN:
    st.caption(f"The newest {SHOWN} are listed; the CSV holds all {len(found)}.")
st.dataframe(  # cells are plain text: names and details are never rendered as markdown
    {"When (UTC)": [e.at.strftime("%Y-%m-%d %H:%M:%S") for e in shown], "Who": [e.who or "(system)" for e in shown],
     "Action": [e.action for e in shown], "Film": [(e.film_sha or "")[:16] for e in shown],
     "Detail": [e.detail for e in shown]},
    hide_index=True, key="trail_table", column_config={"Detail": st.column_config.TextColumn(width="large")},
)
described = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None) or "no filter"
trail.download("Download these events (CSV)", auth.events_csv(found), "audit-trail.csv", "text/csv",
               action="export:trail", detail=f"{len(found)} audit event(s), {described}", key="trail_csv")
