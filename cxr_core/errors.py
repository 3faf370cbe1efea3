"""Errors raised for bad input or unusable models.

Every message says what was received and what is accepted, so the CLI and the app can show it
as it is, in one line, without a traceback.
"""

from __future__ import annotations


class CXRError(Exception):
    """Base class for every error a user can cause and fix."""


class ImageError(CXRError):
    """The file is not an X-ray CXR Review can read."""


class EmptyFileError(ImageError):
    """The file has no bytes."""


class UnsupportedFormatError(ImageError):
    """The bytes are not PNG, JPEG, TIFF or DICOM."""


class CorruptImageError(ImageError):
    """The format was recognised but the data is truncated or damaged."""


class ImageTooLargeError(ImageError):
    """More pixels than the configured limit (decompression bombs included)."""


class ImageTooSmallError(ImageError):
    """Smaller than the minimum side a chest film can have."""


class MultiFrameError(ImageError):
    """A DICOM with several frames (a cine or a stack), not a single radiograph."""


class ModelError(CXRError):
    """A model cannot be built, found, verified or loaded."""


class ModelNotFoundError(ModelError):
    """No registered model of that name, or its file is missing."""


class ChecksumError(ModelError):
    """The model file differs from the one its card describes."""


class WeightsUnavailableError(ModelError):
    """Pretrained (ImageNet) weights were asked for but cannot be obtained."""


class DataError(CXRError):
    """A dataset folder or manifest cannot be used as given."""
