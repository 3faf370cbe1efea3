"""Inference engines: the same scores and Grad-CAM heatmaps from TensorFlow (the reference, and the training
engine) or from OpenVINO (faster on CPUs, bfloat16 where the CPU has it).

- :mod:`cxr_core.engines.openvino`: :class:`~cxr_core.engines.openvino.OpenVinoCamEngine`, the network body
  compiled by OpenVINO once per model file (cached by its SHA-256), the small head above the Grad-CAM layer
  differentiated in TensorFlow, so one inference gives the probabilities and the heatmap.
- :mod:`cxr_core.engines.select`: ``CXR_BACKEND=auto|openvino|tensorflow`` and
  :func:`~cxr_core.engines.select.engine_for`, which returns an engine with the
  :class:`~cxr_core.explain.cam.CamEngine` interface and says which backend and precision it runs, and why.

Nothing here is imported by ``import cxr_core``; OpenVINO and TensorFlow are imported when an engine is made.
"""
