"""One path for a film: decode, screen, warn, predict, explain. Every page, command and report takes it.

:func:`analyse` (one film) and :func:`analyse_films` (a batch) are the only places where a model's
scores for a film are made:

1. **decode**: bytes or a path through :func:`cxr_core.io.imaging.load_xray` (an ``XRay`` is taken as is);
2. **screen**: :mod:`cxr_core.safety.screening` (image checks, and the model's feature detector when its
   card has one). A refused film gets no scores and no heatmap: ``refused`` is True and ``reasons``
   (plain sentences a radiologist can read) and ``details`` (the measured figures) say why. With
   ``allow_ood`` (an expert override) it is scored anyway and ``overridden`` is True;
3. **warn**: :func:`cxr_core.safety.warnings.film_warnings` (demo model, missing classes, size, shape...);
4. **predict**: temperature-scaled scores (:mod:`cxr_core.models.predict`);
5. **explain**, when a CAM method is asked: :class:`cxr_core.explain.cam.CamEngine` gives the scores and the
   heatmap from one pass (the same numbers as step 4). A model without a trustworthy heatmap keeps its
   scores and says why in ``cam_error``.

So the CLI, the review page, the annotate reveal, the agreement page and its exports, the dataset audit and
the session report list the same films as refused, with the same reasons, and give the same scores.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_core.errors import CXRError
from cxr_core.io.imaging import XRay
from cxr_core.safety.ood import OODDecision
from cxr_core.safety.warnings import ClinicianWarning, film_warnings

#: ``method`` values meaning "scores only, no heatmap".
NO_CAM = (None, "none")

_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FilmAnalysis:
    """One model's analysis of one film. Model scores are not diagnoses.

    ``refused``: the film did not look like a frontal chest X-ray and was not analysed (no
    ``prediction``, no ``cam``); ``reasons`` / ``details`` say why, one entry each per failed check.
    ``overridden``: it was refused but an expert asked for the scores anyway (``allow_ood``).
    ``cam`` is a :class:`~cxr_core.explain.cam.CamResult` (heatmap at the film's size) when a method was
    asked and the model allows one; otherwise ``cam_error`` says why there is none.
    """

    model: str
    image_sha256: str
    name: str | None
    screening: OODDecision = field(compare=False)
    warnings: tuple[ClinicianWarning, ...] = ()
    prediction: object | None = field(default=None, compare=False)  # cxr_core.models.predict.Prediction
    cam: object | None = field(default=None, compare=False)  # cxr_core.explain.cam.CamResult
    cam_error: str = ""
    overridden: bool = False

    @property
    def refused(self) -> bool:
        """Screened out and not analysed (an expert override makes it False)."""
        return not self.screening.ok and not self.overridden

    @property
    def analysed(self) -> bool:
        return self.prediction is not None

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the screen refused the film, in plain sentences (empty when it passed)."""
        return tuple(self.screening.reasons)

    @property
    def details(self) -> tuple[str, ...]:
        """The measured figures behind each of :attr:`reasons` (same length; an entry may be empty)."""
        from cxr_core.safety.screening import refusal_lines

        return tuple(d for _, d in refusal_lines(self.screening))

    def refusal_lines(self) -> list[tuple[str, str]]:
        """``(reason, details)`` per refusal reason (see :func:`cxr_core.safety.screening.refusal_lines`)."""
        return list(zip(self.reasons, self.details))

    def refusal_message(self) -> str:
        """One line: ``not analysed: this does not look like a frontal chest X-ray (reason [figures]; ...)``."""
        from cxr_core.safety.screening import refusal_message

        return refusal_message(self.screening)

    def refusal_row(self) -> dict:
        """``{"model", "reasons", "details", "checks"}``: the refusal as every report lists it."""
        return {"model": self.model, "reasons": list(self.reasons), "details": list(self.details),
                "checks": list(self.screening.checks)}

    def screening_record(self) -> dict:
        """JSON-ready screening result (:func:`cxr_core.safety.screening.decision_record`)."""
        from cxr_core.safety.screening import decision_record

        return decision_record(self.screening)

    def override_record(self, *, where: str, by: str | None = None, image: str | None = None,
                        log: bool = True) -> dict:
        """The screening record of an overridden refusal, logged (WARNING) unless ``log`` is False."""
        from cxr_core.safety.screening import decision_record, override_record

        if not log:
            return {**decision_record(self.screening), "overridden": True, "by": by, "where": where}
        image = image or f"{self.name or 'film'} (sha256 {self.image_sha256[:16]})"
        return override_record(self.screening, model=self.model, image=image, where=where, by=by)

    def record(self, file: str | None = None) -> dict:
        """The JSON record the CLI writes and the review page downloads: file, model, scores, heatmap facts,
        screening, warnings; a refused film has ``analysed: False`` and ``message`` instead of scores."""
        head = {"file": file if file is not None else self.name, "model": self.model}
        warnings = [w.to_dict() for w in self.warnings]
        if self.refused:
            return {**head, "analysed": False, "ood": self.screening_record(), "message": self.refusal_message(),
                    "warnings": warnings}
        body = self.cam.to_dict() if self.cam is not None else self.prediction.to_dict()
        out = {**head, **body, "ood": self.screening_record(), "warnings": warnings}
        if self.cam is None and self.cam_error:
            out["cam"], out["cam_unavailable"] = None, self.cam_error
        return out


def _decode(film) -> XRay:
    if isinstance(film, XRay):
        return film
    from cxr_core.io.imaging import load_xray

    if isinstance(film, (bytes, bytearray)):
        return load_xray(bytes(film))
    if isinstance(film, (str, Path)):
        return load_xray(film)
    raise CXRError(f"a film is an XRay, file bytes or a path; got {type(film).__name__}")


def cam_engine(loaded):
    """The :class:`~cxr_core.explain.cam.CamEngine` of a loaded model, made once per Keras model object.

    The engine is :func:`cxr_core.engines.select.engine_for`'s: OpenVINO where it loads and matches the model
    (``CXR_BACKEND=auto``), else TensorFlow, the reference; every page, command and report asks here.

    Raises
    ------
    CamUnavailableError
        The model has no trustworthy heatmap (remembered, so it is not retried on every film).
    """
    from cxr_core.engines.select import engine_for
    from cxr_core.explain.cam import CamUnavailableError

    found = _ENGINES.get(loaded.model)
    if found is None:
        try:
            found = engine_for(loaded)  # OpenVINO or TensorFlow, as CXR_BACKEND says (cxr_core.engines)
        except CamUnavailableError as exc:
            found = exc
        _ENGINES[loaded.model] = found
    if isinstance(found, Exception):
        raise found
    return found


def _model_facts(model):
    """(name, card or None) of a registry LoadedModel, or of a bare CamEngine (an unregistered model)."""
    card = getattr(model, "card", None)
    return (card.name if card is not None else getattr(model, "name", "") or ""), card


def screen_films(model, films: Sequence, *, screener=None, name: str | None = None) -> list[FilmAnalysis]:
    """The first three steps of :func:`analyse_films` (decode, screen, warn), with no scores.

    For a report that only lists which films a model refuses, and why (a refused film's analysis
    is complete here: it gets no scores anyway).
    """
    from cxr_core.explain.cam import CamEngine
    from cxr_core.safety.screening import Screener, screener as model_screener

    xrays = [_decode(f) for f in films]
    model_name, card = _model_facts(model)
    if screener is None:
        screener = Screener(None) if isinstance(model, CamEngine) else model_screener(model)
    decisions = screener.screen(xrays) if xrays else []
    return [FilmAnalysis(name or model_name, x.sha256, x.name, d, tuple(film_warnings(x, card)))
            for x, d in zip(xrays, decisions)]


def analyse_films(model, films: Sequence, *, method: str | None = None, target: str | int | None = None,
                  allow_ood: bool = False, screener=None, engine=None,
                  model_pixels: Sequence[np.ndarray] | None = None, batch_size: int = 16,
                  name: str | None = None) -> list[FilmAnalysis]:
    """Analyse a batch of films with one model: decode, screen, warn, predict, and explain when ``method`` is given.

    Parameters
    ----------
    model : LoadedModel or CamEngine
        A registry model (:func:`cxr_core.models.manifest.load_model`), or the engine of an in-memory model
        (then there is no card: no model warnings, and the image checks alone screen unless ``screener``).
    films : sequence of XRay, bytes or path
    method : {"gradcam", "gradcam++", "random"} or None
        Heatmap method; None or ``"none"``: scores only.
    target : str or int, optional
        Class the heatmap explains (default: each film's top class).
    allow_ood : bool
        Expert override: score refused films anyway (``overridden``); the caller logs it
        (:meth:`FilmAnalysis.override_record`).
    screener : Screener, optional
        Default: :func:`cxr_core.safety.screening.screener` of ``model`` (made once per model).
    engine : CamEngine, optional
        Default: :func:`cam_engine` of ``model``, made only when a method is asked.
    model_pixels : sequence of (H, W) ndarray, optional
        What the model reads instead of each film's own pixels (the audit's ``--mask-markers``);
        screening and warnings always read the film.
    name : str, optional
        Model name for a bare engine (a LoadedModel's card names it).

    Returns
    -------
    list of FilmAnalysis
        In the order of ``films``.

    Raises
    ------
    CXRError
        A film that cannot be decoded, an unknown method or target, a detector that does not match its card.
    """
    from dataclasses import replace

    from cxr_core.explain.cam import CamEngine, CamUnavailableError, METHODS

    if method not in NO_CAM and method not in METHODS:
        raise CXRError(f"CAM method {method!r} unknown; expected one of {', '.join(METHODS)} or none")
    if model_pixels is not None and len(model_pixels) != len(films):
        raise CXRError(f"model_pixels has {len(model_pixels)} images for {len(films)} films")
    xrays = [_decode(f) for f in films]
    screened = screen_films(model, xrays, screener=screener, name=name)
    bare = isinstance(model, CamEngine)
    run = [i for i, a in enumerate(screened) if a.screening.ok or allow_ood]
    predictions: dict[int, object] = {}
    cams: dict[int, object] = {}
    cam_error = ""
    if run and method not in NO_CAM:
        if engine is None:
            try:
                engine = model if bare else cam_engine(model)
            except CamUnavailableError as exc:
                cam_error = str(exc)
        if engine is not None:
            images = [np.asarray(model_pixels[i] if model_pixels is not None else xrays[i].pixels) for i in run]
            results = engine.run_arrays(images, method=method, target=target, batch_size=batch_size)
            cams = dict(zip(run, results))
            predictions = {i: r.prediction for i, r in cams.items()}
    if run and not predictions:
        predictions = dict(zip(run, _predict(model, engine, bare, [
            np.asarray(model_pixels[i]) if model_pixels is not None else xrays[i].pixels for i in run], batch_size)))
    return [replace(a, prediction=predictions[i], cam=cams.get(i), cam_error=cam_error,
                    overridden=not a.screening.ok) if i in predictions else a for i, a in enumerate(screened)]


def _predict(model, engine, bare: bool, images: Sequence[np.ndarray], batch_size: int) -> list:
    """Temperature-scaled predictions without a heatmap (the registry card's temperature, or the engine's)."""
    from cxr_core.models.predict import Prediction, card_temperature, predict_arrays, scale_temperature

    if bare:
        net, spec, classes, temperature = model.model, model.spec, model.classes, model.temperature
    else:
        net, spec, classes, temperature = model.model, model.spec, model.card.classes, card_temperature(model.card)
    raw = predict_arrays(net, spec, images, batch_size=batch_size)
    shown = scale_temperature(raw, temperature)
    return [Prediction(tuple(classes), s, r, float(temperature)) for s, r in zip(shown, raw)]


def analyse(model, film, *, method: str | None = None, target: str | int | None = None, allow_ood: bool = False,
            screener=None, engine=None) -> FilmAnalysis:
    """:func:`analyse_films` of one film (an ``XRay``, file bytes or a path).

    Examples
    --------
    >>> result = analyse(load_model("demo-efficientnetv2b0"), "film.png", method="gradcam")  # doctest: +SKIP
    >>> result.refused, result.prediction.predicted, result.cam.heatmap.shape  # doctest: +SKIP
    (False, 'Normal', (1024, 1024))
    >>> analyse(loaded, "holiday.jpg").reasons  # doctest: +SKIP
    ('This is a colour picture (a photograph or a figure), not an X-ray.',)
    """
    return analyse_films(model, [film], method=method, target=target, allow_ood=allow_ood, screener=screener,
                         engine=engine)[0]


__all__ = ["NO_CAM", "FilmAnalysis", "analyse", "analyse_films", "cam_engine", "screen_films"]
