"""CXR Review: the Streamlit entry point. Registers every page with st.navigation."""

import streamlit as st

st.set_page_config(page_title="CXR Review", layout="wide")
st.title("CXR Review")
st.warning("Research tool. Model scores are not diagnoses.")
from cxr_core.manifest import list_models  # noqa: E402

for entry in list_models():
    st.write(f"**{entry.name}**: {entry.status}")
