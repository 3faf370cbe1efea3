"""What a reader should know before reading a model's scores for a film: warnings, never refusals.

A refusal (:mod:`cxr_core.safety.screening`) means the film is not analysed; a warning means it is
analysed but something limits what the scores can say: a demonstration model, classes the model
does not have, a film too small for the model's input, a film whose shape is distorted by the
squeeze to the model's square input, a colour file turned grey, or what the decoder noticed
(``XRay.warnings``). Every page, command and report takes them from :func:`film_warnings`, so the
rules and their one threshold (:data:`MAX_SQUARE_ASPECT`) live here only.

Each warning is a plain sentence (``text``) with the measured figures apart (``details``), like a
refusal's reasons and details; ``emphasis`` names the words a page may set in bold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cxr_core.models.zoo import DEFAULT_CLASSES

#: Longer side / shorter side past which the squeeze to the model's square input visibly distorts anatomy.
#: A warning only: adult films of ``cxr-real`` measure 1.00 to 1.36, and wide pediatric films (up to about
#: 2) are real chest films, which is why the shape is no refusal check in :mod:`cxr_core.safety.ood`.
MAX_SQUARE_ASPECT = 1.45


@dataclass(frozen=True)
class ClinicianWarning:
    """One thing a reader should know: which rule (``kind``), a plain sentence, and the figures behind it."""

    kind: str  # demo, missing_classes, small, shape, colour, decoder
    text: str
    details: str = ""
    emphasis: tuple[str, ...] = ()

    def plain(self) -> str:
        """The sentence with its figures in brackets, for a table cell, a CSV or a terminal."""
        return f"{self.text} ({self.details})" if self.details else self.text

    def markdown(self) -> str:
        """The sentence with ``emphasis`` in bold and the figures in italics, for a page."""
        text = self.text
        for word in self.emphasis:
            text = text.replace(word, f"**{word}**", 1)
        return f"{text} *({self.details})*" if self.details else text

    def to_dict(self) -> dict:
        return {"kind": self.kind, "text": self.text, "details": self.details}


def film_warnings(xray, card=None, *, expected_classes: Sequence[str] = DEFAULT_CLASSES) -> list[ClinicianWarning]:
    """What a reader should know before reading ``card``'s model's scores for ``xray``.

    Parameters
    ----------
    xray : XRay
        The decoded film (:func:`cxr_core.io.imaging.load_xray`).
    card : ModelCard, optional
        The model's card; without one only the film's own warnings are given.
    expected_classes : sequence of str
        Classes a reader expects a model to score (default: the project's four).

    Returns
    -------
    list of ClinicianWarning
        In a fixed order: model, classes, size, shape, colour, decoder notes.
    """
    notes: list[ClinicianWarning] = []
    h, w = xray.pixels.shape
    if card is not None:
        if card.demo:
            headline = f"{card.name} is a demonstration model"
            notes.append(ClinicianWarning(
                "demo", f"{headline} ({card.intended_use}). Its scores show how the workflow looks, not what the "
                        "film shows.", emphasis=(headline,)))
        missing = [c for c in expected_classes if c not in card.classes]
        if missing:
            names = ", ".join(missing)
            notes.append(ClinicianWarning(
                "missing_classes", f"This model has no output for {names}: it can neither flag nor rule out "
                                   f"{' or '.join(missing)}, and its scores are shared among "
                                   f"{', '.join(card.classes)} only.", emphasis=(names,)))
        if min(h, w) < card.input_size:
            notes.append(ClinicianWarning(
                "small", "The image is small for a chest film; it is enlarged to the model's input, so fine detail "
                         "is not there to be seen.",
                f"{w}x{h} pixels, model input {card.input_size}x{card.input_size}"))
    aspect = max(h, w) / min(h, w)
    if aspect > MAX_SQUARE_ASPECT:
        notes.append(ClinicianWarning(
            "shape", "The image is oddly shaped for a chest film; the model squeezes it to a square, which distorts "
                     "anatomy. Is it cropped, or a wide pediatric film?",
            f"aspect ratio {aspect:.2f}, warned above {MAX_SQUARE_ASPECT:.2f}"))
    if xray.was_color:
        notes.append(ClinicianWarning(
            "colour", "The file was in colour and has been converted to grey; X-rays are normally grayscale.",
            f"colourfulness {xray.colorfulness:.2f}" if xray.colorfulness else ""))
    notes.extend(ClinicianWarning("decoder", str(note)) for note in xray.warnings)
    return notes


__all__ = ["MAX_SQUARE_ASPECT", "ClinicianWarning", "film_warnings"]
