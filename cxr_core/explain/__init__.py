"""Heatmaps and how to check them: Grad-CAM / Grad-CAM++, binarisation, overlays, deletion and insertion
curves, and the randomisation sanity checks.
"""
