"""One film of a batch as the review page's summary table and its CSV show it.

Plain records, no Streamlit: the page fills a :class:`SummaryRow` per film (top model score,
refusal, warnings) and writes :meth:`SummaryRow.page_row` to the table, :meth:`SummaryRow.csv_row`
to the download (through :mod:`cxr_core.io.csv_safe`).
"""

from __future__ import annotations

from dataclasses import dataclass


def plain_text(note: str) -> str:
    """A page note without its Markdown emphasis, for a table cell or CSV."""
    return note.replace("**", "")


@dataclass(frozen=True)
class SummaryRow:
    """One film of a batch, as the review page's summary table and its CSV show it.

    ``refused`` is "yes" (screened out as not a frontal chest X-ray), "no", or "not checked"
    (model output hidden, or the model could not run); ``reason`` says why.
    """

    film: str  # cxr_core.io.film_facts.film_label: the only film name that leaves the page
    name: str  # the file name, shown on the page only
    top_class: str = ""
    score: float | None = None  # top model score in [0, 1]
    refused: str = "no"
    reason: str = ""
    warnings: tuple[str, ...] = ()

    def page_row(self) -> dict:
        return {"Film": self.film, "File": self.name, "Top model score": self.top_class,
                "Score (%)": None if self.score is None else round(100 * self.score, 1), "Refused": self.refused,
                "Reason": self.reason, "Warnings": len(self.warnings), "Warning details": " | ".join(self.warnings)}

    def csv_row(self, model: str) -> dict:
        return {"film": self.film, "model": model, "top_class": self.top_class,
                "top_score_percent": "" if self.score is None else f"{100 * self.score:.1f}",
                "refused": self.refused, "reason": self.reason, "warnings_count": len(self.warnings),
                "warnings": " | ".join(self.warnings)}
