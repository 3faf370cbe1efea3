"""CXR Review: the Streamlit entry point. Logs the user in, then registers the pages their role may open.

Run with ``make run`` (or ``streamlit run app.py``). Nobody logged in sees only the login form
(``ui.auth.login_gate``); a logged-in user's navigation lists only the pages their role may open
(``cxr_core.auth.pages_for``, the one roles x actions table). Pages live in ``pages/``, one file each.
"""

import streamlit as st

from cxr_core.auth import pages_for
from ui import auth, common

st.set_page_config(page_title="CXR Review", page_icon=":material/radiology:", layout="wide")

#: Each page's action in cxr_core.auth.ACTIONS -> (file, title, icon).
PAGES = {
    "page:review": ("pages/review.py", "Review X-rays", ":material/radiology:"),
    "page:models": ("pages/models.py", "Models", ":material/model_training:"),
    "page:audit": ("pages/audit.py", "Dataset audit", ":material/fact_check:"),
    "page:annotate": ("pages/annotate.py", "Annotate (experts)", ":material/draw:"),
    "page:sessions": ("pages/sessions.py", "Reading sessions (admin)", ":material/group:"),
    "page:agreement": ("pages/agreement.py", "Heatmap agreement", ":material/compare:"),
    "page:users": ("pages/users.py", "Users (admin)", ":material/manage_accounts:"),
    "page:trail": ("pages/trail.py", "Audit trail (admin)", ":material/history:"),
}

user = auth.login_gate()  # st.stop()s with the login form when nobody is logged in
may_open = set(pages_for(user.role))
allowed = [action for action in PAGES if action in may_open]  # in PAGES' order
pages = st.navigation([
    st.Page(PAGES[action][0], title=PAGES[action][1], icon=PAGES[action][2], default=i == 0)
    for i, action in enumerate(allowed)
])

st.warning(common.BANNER, icon=":material/info:")
pages.run()
