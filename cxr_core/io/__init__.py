"""Films in, text out: DICOM and raster decoding to [0, 1] pixels, CSV cells a spreadsheet reads as data, and
HTML from autoescaped Jinja2 templates. Nothing here knows about models.
"""
