"""CXR Review core library: imaging, models, Grad-CAM, annotation storage and agreement.

Pure Python with no Streamlit import; TensorFlow is imported lazily by the modules that need it,
so ``import cxr_core`` stays cheap.
"""

__version__ = "0.1.0"
