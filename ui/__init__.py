"""The Streamlit side of CXR Review, one module per page plus what the pages share.

``ui.common`` holds what every page needs (the banner, cached models, engine and database, decoded
films); ``ui.review``, ``ui.models``, ``ui.annotate``, ``ui.sessions``, ``ui.agreement`` and
``ui.audit`` hold the state and helpers of the page with the same name; ``ui.figures`` draws the
charts and ``ui.viewport`` wraps the film viewer component. Clinical rules and other logic without a
Streamlit call live in ``cxr_core``; these modules only keep session state, caches and widgets.
"""
