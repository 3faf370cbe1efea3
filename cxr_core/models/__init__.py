"""The model zoo (class names, layer names, input sizes: one place each), the weights folder and its model
cards, preprocessing, prediction, calibration, output conversion (logits, sigmoid), the lung model and the
shipped demo model.
"""
