"""CXR Review: the Streamlit entry point. Registers every page with st.navigation and shows the banner.

Run with ``make run`` (or ``streamlit run app.py``). Pages live in ``pages/``, one file each; the
cached ``cxr_core`` wrappers and session-state keys they share live in the ``ui`` package.
"""

import streamlit as st

from ui import common

st.set_page_config(page_title="CXR Review", page_icon=":material/radiology:", layout="wide")

pages = st.navigation([
    st.Page("pages/review.py", title="Review X-rays", icon=":material/radiology:", default=True),
    st.Page("pages/models.py", title="Models", icon=":material/model_training:"),
    st.Page("pages/audit.py", title="Dataset audit", icon=":material/fact_check:"),
    st.Page("pages/annotate.py", title="Annotate (experts)", icon=":material/draw:"),
    st.Page("pages/sessions.py", title="Reading sessions (admin)", icon=":material/group:"),
    st.Page("pages/agreement.py", title="Heatmap agreement", icon=":material/compare:"),
])

st.warning(common.BANNER, icon=":material/info:")
pages.run()
