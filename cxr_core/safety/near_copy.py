"""Perceptual hashes of films, so the blind gate also knows a pending film re-saved, cropped or retouched.

A pixel SHA-256 changes with any edit: a pending film saved again as JPEG, cropped by a few
pixels or with one pixel changed would pass an exact-hash gate. The DCT perceptual hash
(``imagehash.phash``, 16 x 16 = 256 bits, of the film reduced to 8 bits) barely moves under
such edits and differs widely between different chest films.

The threshold is measured, not guessed: on 250 real chest films of ``shared/data/cxr-real``
(31,125 pairs) the closest two different films were 56 bits apart (0.1st percentile 76); a JPEG
re-save (quality 70) moved a film by at most 6 bits, a crop of 1, 2 or 4 pixels on every side
by at most 18, 26 and 46 bits. ``MAX_DISTANCE = 48`` sits between the two.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

HASH_SIZE = 16
MAX_DISTANCE = 48


def perceptual_hash(pixels: np.ndarray) -> str:
    """Hex DCT perceptual hash (256 bits) of a film in [0, 1] (any size, grey)."""
    import imagehash
    from PIL import Image

    film = np.asarray(pixels, dtype=np.float32)
    if film.ndim != 2 or film.size == 0:
        raise ValueError(f"a film must be a non-empty 2-D array; got shape {film.shape}")
    grey = Image.fromarray((np.clip(film, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    return str(imagehash.phash(grey, hash_size=HASH_SIZE))


def distance(a: str, b: str) -> int:
    """Hamming distance in bits between two hashes from :func:`perceptual_hash`."""
    return int((int(a, 16) ^ int(b, 16)).bit_count())


def near_copies(query: str, candidates: Mapping[str, str], *, max_distance: int = MAX_DISTANCE) -> dict[str, int]:
    """The candidates (key -> hash) within ``max_distance`` bits of ``query``, with their distances."""
    found = {key: distance(query, other) for key, other in candidates.items()}
    return {key: d for key, d in sorted(found.items(), key=lambda kv: kv[1]) if d <= max_distance}
