"""Heatmap agreement: how well each model's heatmap agrees with the experts' marks in a reading session."""

import logging
import math

import streamlit as st

from cxr_core import agreement
from cxr_core.agreement import reports
from cxr_core.agreement.session_scores import BASELINE, CONSENSUS_READERS, SessionScoresError, diagnosis, excluded_note
from cxr_core.errors import CXRError
from ui import agreement as agr
from ui import common
from cxr_core.io.plain_text import md_escape
from ui import auth as ui_auth
from ui import trail

ui_auth.require_page("page:agreement")  # the login form, or a refusal, for anyone else

st.title("Heatmap agreement")
st.caption(
    "This page shows how well each model's heatmap agrees with where the experts marked disease in a reading "
    "session: per image, class, model and reader, with a random heatmap scored the same way beside each model. "
    "Conventions follow CheXlocalize (heatmap upsampled to the film, min-max normalised, binarised; Normal readings "
    "reported apart); published Grad-CAM-versus-radiologist mean IoU is about 0.1-0.3. Each heatmap explains the "
    "class the expert gave (the model's top class where the model lacks it). Model scores are not diagnoses."
)

# --- who is looking, which session ----------------------------------------------------------------
sessions = dict(agr.agreement_sessions())
if not sessions:
    st.info("No reading sessions yet. An administrator creates them on the **Reading sessions** page.")
    st.stop()
models = agr.agreement_models()
if not models:
    st.error("No model is installed, so there are no heatmaps to compare. Run `make demo-model` or see the Models "
             "page.")
    st.stop()

top = st.columns([2, 3, 2])
session_name = top[0].selectbox("Session", list(sessions), key=agr.AGREEMENT_SESSION,
                                format_func=lambda n: n + (" (blind)" if sessions[n] else ""))
try:
    view = agr.agreement_view(session_name)
except CXRError as err:
    st.error(f"Nothing is shown: {err}", icon=":material/visibility_off:")
    st.stop()
if view.reader is None:  # not reached behind the login; the gate is stricter then
    st.caption("Viewing as: nobody logged in. Images still being read blind by anyone are left out.")
else:
    st.caption(f"Viewing as **{md_escape(view.reader)}** ({view.role}), the logged-in user: films you still read "
               "blind are left out of everything on this page and its downloads.")
if view.hidden:
    whose = "in your own blind readings" if view.reader else "in someone's blind reading"
    st.info(f"{len(view.hidden)} image(s) of this session are left out: they are still pending {whose}, and model "
            "output for them stays hidden until the reading is submitted.", icon=":material/visibility_off:")

chosen = top[1].multiselect("Models", list(models), default=list(models)[:1], key=agr.AGREEMENT_MODELS)
method = top[2].radio("Heatmap method", list(common.METHOD_LABELS), format_func=common.METHOD_LABELS.get,
                      key=agr.AGREEMENT_METHOD, horizontal=True)
if not chosen:
    st.info("Choose at least one model.")
    st.stop()

data = agr.agreement_data(session_name, view)
if data.excluded:
    st.info(excluded_note(data.excluded), icon=":material/block:")
time_rows = agr.agreement_times(data)
timed = next((t["n"] for t in time_rows if t["reader"] is None), 0)
with st.expander(f"Time per case ({timed} timed reading(s), every reader of the session)"):
    st.caption("From the film first being shown to the reading being submitted (server clock), every submitted "
               "version, revisions and exclusions included; median and interquartile range. Versions with no "
               "recorded start are counted as untimed, never guessed.")
    if time_rows:
        st.dataframe([{"reader": t["reader"] or "all readers", "timed": t["n"], "untimed": t["untimed"],
                       "median (s)": t["median_s"], "IQR (s)": t["iqr_s"], "25th percentile (s)": t["q1_s"],
                       "75th percentile (s)": t["q3_s"]} for t in time_rows], hide_index=True)
        trail.download("Time per case (CSV)", lambda: reports.times_csv(time_rows),
                       f"times-{session_name}.csv".replace(" ", "_").replace("/", "_"), "text/csv",
                       action="export:agreement", detail=f"time per case of session {session_name!r}",
                       key="agreement_times_csv")
    else:
        st.caption("No submitted reading yet.")
if not data.readings:
    st.info("No submitted reading to compare with yet in this session (or none you may see).")
    st.stop()

# --- films a model does not analyse (the one analysis path: cxr_core.analysis) ----------------------
override = st.checkbox("Score films a model refuses as not a frontal chest X-ray (expert override; this is logged)",
                       key=agr.AGREEMENT_OVERRIDE)
try:
    refused = {name: agr.agreement_refused(session_name, view, models[name]) for name in chosen}
except CXRError as err:
    st.error(f"The session's films could not be screened: {err}")
    st.stop()
if override:
    logging.getLogger("cxr_core.safety.screening").warning(
        "agreement page, session %r: out-of-distribution refusal overridden by %s", session_name,
        common.current_reader_name() or "an unnamed user")
    trail.once("refusal_override", None, f"agreement page: session {session_name!r}, films refused as not a frontal "
               "chest X-ray scored anyway", ("agreement", session_name))
n_refused = sum(len(rows) for rows in refused.values())
if n_refused:
    with st.expander(f"Not analysed ({n_refused}): films that do not look like a frontal chest X-ray",
                     icon=":material/block:"):
        st.caption("These films get no heatmap and are in no number below or in the exports, which list them "
                   "with the same reasons.")
        st.dataframe([{"film": r["image_id"], "model": r["model"], "reasons": " | ".join(r["reasons"]),
                       "details": " | ".join(d for d in r["details"] if d)}
                      for rows in refused.values() for r in rows], hide_index=True)

# --- heatmaps not yet computed --------------------------------------------------------------------
missing = {name: agr.agreement_missing(data, models[name], method, refused[name]) for name in chosen}
if any(missing.values()):
    total = sum(missing.values())
    st.warning(f"{total} heatmap(s) are not computed yet ({', '.join(f'{n}: {k}' for n, k in missing.items() if k)}), "
               f"{common.METHOD_LABELS[method]} and the random baseline. Readings without one are left out below.",
               icon=":material/pending:")
    if st.button(f"Compute the {total} missing heatmap(s)", key="agreement_compute", icon=":material/play_arrow:"):
        bar = st.progress(0.0, text="Computing heatmaps...")
        try:
            for name in chosen:
                if missing[name]:
                    agr.agreement_compute(data, models[name], method, progress=lambda d, t, n=name: bar.progress(
                        d / max(t, 1), text=f"{n}: {d} of {t} heatmaps"), refused=refused[name])
        except CXRError as err:
            st.error(f"Heatmaps could not be computed: {err}")
            st.stop()
        st.rerun()

# --- threshold, rule and filters (recomputed live) ------------------------------------------------
controls = st.columns([2, 2, 2, 3])
kind = controls[0].radio("Binarise heatmaps by", list(agr.THRESHOLD_KINDS), format_func=agr.THRESHOLD_KINDS.get,
                         key=agr.AGREEMENT_THRESHOLD)
fixed = controls[1].slider("Fixed threshold", 0.05, 0.95, 0.5, 0.05, key=agr.AGREEMENT_FIXED, disabled=kind != "fixed",
                           help="keeps pixels of the min-max normalised heatmap above this value")
top_k = controls[1].slider("Top k% of pixels", 1, 50, 15, 1, key=agr.AGREEMENT_TOP, disabled=kind != "top")
rule = controls[2].radio("Empty-mask rule", agreement.RULES, format_func=agr.RULE_LABELS.get, key=agr.AGREEMENT_RULE,
                         help="True positives only leaves an image out of IoU and Dice when the expert or the "
                              "heatmap mask is empty; Full scores a one-sided empty mask as 0.")
threshold = agr.threshold_spec(kind, fixed, top_k)
try:
    pairsets, all_scores = agr.agreement_scores(session_name, view, [models[n] for n in chosen], method, threshold,
                                                rule, refused)
except (CXRError, SessionScoresError) as err:
    st.error(str(err))
    st.stop()
if not all_scores:
    st.info("No heatmap is computed for these readings yet: compute them above.")
    st.stop()
scored = {s.image_id for s in all_scores}
trail.output_shown("agreement", [r.image_sha for r in data.readings if r.image_id in scored],
                   f"{', '.join(chosen)}: {method} heatmaps against expert marks (session {session_name!r})")
classes = sorted({s.target for s in all_scores})
readers = sorted({s.reader for s in all_scores} - set(CONSENSUS_READERS))
pseudo = [c for c in CONSENSUS_READERS if any(s.reader == c for s in all_scores)]
with controls[3]:
    pick_classes = st.multiselect("Expert's class", classes, default=classes,
                                  key=agr.agreement_filter_key(agr.AGREEMENT_CLASSES, session_name, classes))
    pick_readers = st.multiselect("Reader", readers, default=readers,
                                  key=agr.agreement_filter_key(agr.AGREEMENT_READERS, session_name, readers))
    pick_consensus = st.multiselect(
        "Consensus of the readers", pseudo, default=[], key=agr.agreement_filter_key(agr.AGREEMENT_CONSENSUS,
                                                                                    session_name, pseudo),
        disabled=not pseudo, placeholder="none" if pseudo else "needs a film read by two or more readers",
        help="Score the heatmaps against a consensus of the readers of each film two or more read, as an extra "
             "reader: majority vote (pixels more than half of them marked; a tie is left out) or STAPLE "
             "(probability >= 0.5). Not chosen by default, so the numbers do not count each reader twice. "
             "Readers are never compared with their own consensus, and diagnosis kappa leaves it out.")
chosen_readers = {*pick_readers, *pick_consensus}
scores = [s for s in all_scores if s.target in pick_classes and s.reader in chosen_readers]
if not scores:
    st.info("No scores for this choice of classes and readers.")
    st.stop()
n_images = len({s.image_id for s in scores})
st.caption(f"{n_images} image(s), {len(pick_readers)} reader(s)"
           f"{' and ' + ', '.join(pick_consensus) if pick_consensus else ''}; "
           f"threshold **{threshold}**, rule **{rule}**. "
           f"{len(data.unread)} visible image(s) have no submitted reading yet.")


# --- summary cards --------------------------------------------------------------------------------
def _summary(rows):
    groups = [g for g in agreement.aggregate(rows, by=("model", "method")) if not g.normal]
    return groups[0].metrics if groups else None


def _value(iv) -> str:
    return "–" if iv is None or not math.isfinite(iv.mean) else f"{iv.mean:.3f}"


keep = {(s.model, s.method, s.image_id, s.reader) for s in scores}
st.subheader("Summary (mean, 95% bootstrap interval)")
for pairs in [p for p in pairsets if p.method != BASELINE]:
    name = pairs.model.name
    own = _summary([s for s in scores if s.model == name and s.method == method])
    base = _summary([s for s in scores if s.model == name and s.method == BASELINE])
    kappa = diagnosis(pairs, lambda k, n=name: (n, method, k.image_id, k.reader) in keep)
    with st.container(border=True):
        st.markdown(f"**{name}** · {common.METHOD_LABELS[method]}, beside a random heatmap")
        cards = st.columns(4)
        for col, (metric, label) in zip(cards, (("iou", "mIoU"), ("hit", "Hit rate"), ("mass", "Relevance mass"))):
            iv = own[metric] if own else None
            biv = base[metric] if base else None
            delta = (f"{iv.mean - biv.mean:+.3f} vs random" if iv and biv and math.isfinite(iv.mean)
                     and math.isfinite(biv.mean) else None)
            col.metric(label, _value(iv), delta=delta, delta_color="normal" if delta else "off")
            col.caption(f"95% CI {agr.format_ci(iv)}, n={iv.n if iv else 0}; random {agr.format_interval(biv)}")
        if kappa is None:
            cards[3].metric("Diagnosis kappa", "–")
            cards[3].caption("No reading with a definite class.")
        else:
            iv = agreement.Interval(kappa.kappa, kappa.kappa_lo, kappa.kappa_hi, kappa.n)
            cards[3].metric("Diagnosis kappa", _value(iv))
            cards[3].caption(f"95% CI {agr.format_ci(iv)}; expert's class vs model's top class, agreement "
                             f"{kappa.agreement:.0%} of {kappa.n} readings")

normal = [g for g in agreement.aggregate(scores, by=("model", "method")) if g.normal]
if normal:
    st.markdown("**Normal readings, reported apart** (no lesion to localise; not in the means above)")
    st.dataframe([{"model": g.group["model"], "method": g.group["method"], "readings": g.n_images,
                   **{label: agr.format_interval(g.metrics[m]) for m, label in (("iou", "IoU"), ("mass", "mass"))}}
                  for g in normal], hide_index=True)

# --- distributions and tables ---------------------------------------------------------------------
st.subheader("Distributions per model and class")
metric = st.segmented_control("Metric", list(agr.METRIC_LABELS), format_func=agr.METRIC_LABELS.get, default="iou",
                              key=agr.AGREEMENT_METRIC) or "iou"
st.plotly_chart(agr.distribution_figure(scores, metric), width="stretch", key="agreement_distribution")
with st.expander("Every group: model × method × class × reader"):
    st.dataframe([{**g.group, "normal": g.normal, "readings": g.n_images,
                   **{agr.METRIC_LABELS[m]: agr.format_interval(g.metrics[m]) for m in agreement.AGGREGATE_METRICS}}
                  for g in agreement.aggregate(scores, by=("model", "method", "target", "reader"))], hide_index=True)
shown_ids = {s.image_id for s in scores}
pairs_rr = [p for p in agr.agreement_reader_pairs(data, pick_readers, rule) if p.image_id in shown_ids]
with st.expander(f"Reader versus reader ({len(pairs_rr)} pairs)"):
    if pairs_rr:
        st.caption(f"Mean IoU between experts' masks: {agr.format_interval(agr.interval([p.iou for p in pairs_rr]))}")
        st.dataframe([{"image": p.image_id, "reader A": p.reader_a, "reader B": p.reader_b, "IoU": p.iou,
                       "Dice": p.dice} for p in pairs_rr], hide_index=True)
    else:
        st.caption("No image was marked by two or more of the chosen readers.")

# --- gallery --------------------------------------------------------------------------------------
st.subheader("Gallery")
st.markdown(f"<span style='color:rgb{reports.EXPERT_RGB}'>■</span> expert's outline &nbsp; "
            f"<span style='color:rgb{reports.HEATMAP_RGB}'>■</span> binarised heatmap's outline ({threshold})",
            unsafe_allow_html=True)
by_label = {f"{p.model.name} · {'random baseline' if p.method == BASELINE else common.METHOD_LABELS[p.method]}": p
            for p in pairsets}
g_cols = st.columns(3)
shown_pairs = by_label[g_cols[0].selectbox("Heatmaps of", list(by_label), key=agr.AGREEMENT_GALLERY_MODEL)]
order = g_cols[1].radio("Order", ["worst", "best"], key=agr.AGREEMENT_SORT, horizontal=True,
                        format_func=lambda o: {"worst": "Lowest IoU first", "best": "Highest IoU first"}[o])
rows = [s for s in scores if s.model == shown_pairs.model.name and s.method == shown_pairs.method]
ranked = sorted(rows, key=lambda s: (not math.isfinite(s.iou), s.iou if order == "worst" else -s.iou))  # NaN last
pages = max(1, math.ceil(len(ranked) / agr.GALLERY_PAGE))
page = g_cols[2].number_input(f"Page (of {pages})", 1, pages, 1, key=agr.AGREEMENT_PAGE) if pages > 1 else 1
on_page = ranked[(page - 1) * agr.GALLERY_PAGE: page * agr.GALLERY_PAGE]
for start in range(0, len(on_page), 4):  # row by row, so the order reads left to right
    for col, s in zip(st.columns(4), on_page[start:start + 4]):
        iou = "IoU –" if not math.isfinite(s.iou) else f"IoU {s.iou:.3f}"
        hit = "" if not math.isfinite(s.hit) else (" · hit" if s.hit else " · miss")
        mass = "" if not math.isfinite(s.mass) else f" · mass {s.mass:.2f}"
        col.image(agr.gallery_picture(view, shown_pairs, s),
                  caption=f"{s.image_id} · {s.reader} ({s.target}) · {iou}{hit}{mass}")
st.caption("IoU – : left out by the empty-mask rule (an empty expert or heatmap mask).")

# --- exports --------------------------------------------------------------------------------------
st.subheader("Export")
st.caption("Reports hold the scores shown above (this threshold, rule, and the chosen models, classes and readers).")
stem = f"agreement-{session_name}".replace(" ", "_").replace("/", "_")
exports = st.columns(4)
for col, (fmt, label, suffix, mime) in zip(exports, (
        ("csv", "CSV (one row per image × model × reader)", "csv", "text/csv"),
        ("json", "JSON (everything)", "json", "application/json"),
        ("html", "HTML report (opens offline)", "html", "text/html"),
        ("coco", "COCO (each drawn region, consensus and heatmap masks)", "coco.json", "application/json"))):
    trail.download(label, lambda fmt=fmt: agr.agreement_export(fmt, data, pairsets, scores, rule,
                                                                [r for rows in refused.values() for r in rows]),
                   f"{stem}.{suffix}", mime, key=f"agreement_export_{fmt}", container=col,
                   action="export:session_report" if fmt in ("json", "html") else "export:agreement",
                   detail=f"agreement {fmt} of session {session_name!r}, {len(scores)} score(s), threshold "
                          f"{threshold}, rule {rule}")
