"""Models: every registered model's card, test metrics in the study's format, whether its file checks out,
and the last recorded heatmap sanity check."""

import streamlit as st

from cxr_core.errors import CXRError
from cxr_core.explain.sanity import read_record as read_sanity_record
from cxr_core.models.status import checksum_line, missing_architectures
from cxr_core.models.zoo import DEFAULT_CLASSES
from ui import common, models
from ui import figures as fig
from ui import auth as ui_auth

ui_auth.require_page("page:models")  # the login form, or a refusal, for anyone else

st.title("Models")
st.caption(
    "This page shows each registered model's card: what it is, what it was trained on and under which licences, "
    "what it is meant for, how it scored on its test set, whether its file matches its recorded checksum, "
    "and whether its heatmaps passed the last recorded sanity check. "
    "Test metrics describe a test set, not your patients; model scores are not diagnoses."
)

flash = st.session_state.pop(models.MODELS_FLASH, None)
if flash:
    st.success(flash, icon=":material/check_circle:")
if ui_auth.allowed("model:register"):
    models.upload_form()

entries = common.registry()
if not entries:
    st.info("No model is registered yet. `make demo-model` builds the demo model; "
            "the list below says how to add others.")
per_class = st.toggle("Show per-class rows in the metrics tables", key=models.MODELS_PER_CLASS, persist_state="session")

for entry in entries:
    card = entry.card
    with st.container(border=True):
        st.subheader(entry.name + (" (demo)" if card is not None and card.demo else ""))
        ok, line = checksum_line(entry)
        if ok:
            st.success(line, icon=":material/verified:")
        else:
            st.error(line, icon=":material/gpp_bad:")
        if card is None:
            continue

        facts, use = st.columns([3, 2], gap="large")
        with facts:
            missing = [c for c in DEFAULT_CLASSES if c not in card.classes]
            st.table({
                "Fact": ["Architecture", "Classes", "Input size", "Preprocessing", "Grad-CAM layer", "Engine"],
                "Value": [card.architecture, ", ".join(card.classes), f"{card.input_size} x {card.input_size} pixels",
                          card.preprocessing, card.last_conv_layer, models.engine_text(entry)],
            }, hide_header=True)
            if missing:
                st.warning(f"No output for {', '.join(missing)}: this model can neither flag nor rule it out.",
                           icon=":material/warning:")
        with use:
            st.markdown(f"**Intended use:** {card.intended_use}")
            for note in card.notes:
                st.markdown(f"- {note}")

        with st.expander("Training data and licences"):
            if card.training_data:
                st.json(card.training_data, expanded=1)
            else:
                st.caption("The card does not describe its training data.")
            if card.licences:
                st.dataframe(card.licences, hide_index=True)
            else:
                st.caption("The card lists no data licences.")

        splits = fig.metric_splits(card.metrics)
        if not splits:
            st.caption("No test metrics in this card (run `python -m cxr_core evaluate --model "
                       f"{entry.name} --data DIR` to add them).")
        for split, metrics in splits.items():
            n = f", {metrics['n']} images" if isinstance(metrics.get("n"), int) else ""
            st.markdown(f"**Metrics on the {split} set{n}** (macro averages, 95% bootstrap intervals)")
            rows = fig.table2_rows(entry.name, metrics)
            st.dataframe(rows if per_class else rows[:1], hide_index=True)
            cm_col, roc_col = st.columns(2)
            if metrics.get("confusion_matrix"):
                cm_col.plotly_chart(fig.confusion_figure(metrics["confusion_matrix"], card.classes,
                                                         title=f"Confusion matrix ({split} set)"),
                                    key=f"models_cm::{entry.name}::{split}", config={"displayModeBar": False})
            if metrics.get("roc"):
                aucs = {c: v.get("auc") for c, v in (metrics.get("per_class") or {}).items()}
                roc_col.plotly_chart(fig.roc_figure(metrics["roc"], aucs), key=f"models_roc::{entry.name}::{split}",
                                     config={"displayModeBar": False})

        if card.calibration:
            st.markdown("**Calibration** (how well scores match how often the model is right)")
            cal_col, rel_col = st.columns(2)
            cal_col.dataframe(fig.scalar_rows(card.calibration), hide_index=True)
            series = fig.find_reliability(card.calibration)
            if series:
                rel_col.plotly_chart(fig.reliability_figure(series), key=f"models_reliability::{entry.name}",
                                     config={"displayModeBar": False})

        st.markdown("**Can its heatmaps be trusted?** (sanity checks, Adebayo et al. 2018; "
                    "deletion and insertion, Petsiuk et al. 2018)")
        how_to = (f"`python -m cxr_core sanity --model {entry.name} --data DIR --record` runs the checks on the films "
               "in DIR and keeps the result here.")
        try:
            record = read_sanity_record(entry.folder)
        except CXRError as err:
            st.warning(f"The stored sanity check cannot be read ({err}). {how_to}", icon=":material/warning:")
            record = None
        if record is None:
            st.caption(f"No sanity check recorded for this model. {how_to}")
            continue
        limit = record.get("threshold", {}).get("value", 0.5)
        st.caption(
            f"Recorded on {record.get('n_films', '?')} films of {record.get('data', '?')}. The model's weights were "
            "replaced by random ones, block by block from the output down; a heatmap that explains the model must "
            "then change. A method passes when the mean |Spearman rho| between its heatmaps before and after the "
            f"last step, and the upper end of its 95% interval, are below {limit}; it fails at {limit} or above."
        )
        if card.sha256 and record.get("model_sha256") not in (None, card.sha256):
            st.warning("This record was made with a different model file than the one registered now; run the "
                       "check again.", icon=":material/warning:")
        baseline = (record.get("random_baseline") or {}).get("faithfulness") or {}
        for method, result in record["methods"].items():
            label = common.METHOD_LABELS.get(method, method)
            verdict = str(result.get("verdict", "?"))
            text = f"{label}: {verdict} — {result.get('reason', '')}"
            if verdict == "pass":
                st.success(text, icon=":material/check_circle:")
            elif verdict == "fail":
                st.error(text, icon=":material/cancel:")
            else:
                st.warning(text, icon=":material/help:")
            chart_col, auc_col = st.columns([3, 2])
            if result.get("cascade"):
                chart_col.plotly_chart(
                    fig.sanity_cascade_figure(result["cascade"], limit, title=f"{label}: cascading randomisation"),
                    key=f"models_sanity::{entry.name}::{method}", config={"displayModeBar": False})
            auc_col.dataframe(fig.faithfulness_rows(result.get("faithfulness") or {}, baseline), hide_index=True)
            auc_col.caption("Deletion: pixels removed in heatmap order, the score should fall fast. Insertion: "
                            "pixels restored in heatmap order, it should rise fast. Compare with a random heatmap.")

missing_archs = missing_architectures(entries)
if missing_archs:
    st.subheader("Architectures without an installed model")
    for display_name, how in missing_archs:
        st.markdown(f"- **{display_name}**: {how}")
