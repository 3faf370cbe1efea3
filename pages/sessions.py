"""Reading sessions (administrators): create blind sessions for existing users, follow each reader's progress."""

import streamlit as st

from cxr_core import auth, storage
from cxr_core.config import get_settings
from cxr_core.errors import CXRError
from cxr_core.safety import intake, redaction
from cxr_core.safety.screening import refusal_lines
from ui import common, sessions
from cxr_core.io import server_paths
from cxr_core.io.film_facts import film_label
from cxr_core.io.plain_text import md_escape
from ui import auth as ui_auth

me = ui_auth.require_page("page:sessions")  # the login form, or a refusal, for anyone else

st.title("Reading sessions")
st.caption(
    "This page is for administrators: it lists the readers (users who may annotate), creates reading sessions "
    "(a set of chest X-rays that each assigned reader annotates in their own shuffled order) and shows how far each "
    "reader has got. Each film is screened first, as the review page screens it: films that do not look like a "
    "frontal chest X-ray are flagged and left out unless you keep them. It shows no model output. Model scores are "
    "not diagnoses, and in a blind session readers see none until they submit."
)
flash = st.session_state.pop(sessions.SESSIONS_FLASH, None)
if flash:
    st.success(flash, icon=":material/check_circle:")

# --- readers: the users whose role may annotate (users are added on the Users page) ----------------
with common.reading() as s:
    users = {u.name: u for u in auth.list_users(s)}
    readers = [r for r in storage.list_readers(s)
               if r.name in users and not users[r.name].disabled and auth.can(r.role, "page:annotate")]
st.subheader(f"Readers ({len(readers)})")
if readers:
    st.dataframe({"Name": [r.name for r in readers], "Role": [r.role for r in readers]},
                 hide_index=True)  # plain text cells: a name is never rendered as markdown
else:
    st.info("No readers yet: add users with the role sme on the **Users** page.")
st.caption("Readers are the enabled users whose role may annotate (sme, admin). Add users, change roles and disable "
           "accounts on the **Users** page.")
by_name = {r.name: r.id for r in readers}

# --- a new session --------------------------------------------------------------------------------
st.subheader("New reading session")
with st.container():  # created by the logged-in administrator (created_by, in the trail)
    session_name = st.text_input("Session name", key=sessions.SESSIONS_NAME, placeholder="e.g. Blind read, batch 1")
    blind = st.checkbox("Blind: readers see no model output for an image until they submit their reading",
                        value=True, key=sessions.SESSIONS_BLIND)
    source = st.radio("Images from", ["Uploaded files", "Bundled samples", "A folder on the server"],
                      key=sessions.SESSIONS_SOURCE, horizontal=True)
    samples_dir = get_settings().samples_dir
    files, why_none = [], ""
    if source == "Uploaded files":
        uploads = st.file_uploader("Chest X-rays (PNG, JPEG, TIFF or DICOM)", accept_multiple_files=True,
                                   key=sessions.SESSIONS_UPLOADS, max_upload_size=common.FILM_UPLOAD_MB) or []
        files = intake.from_uploads((f.name, f.getvalue()) for f in uploads)
    elif source == "Bundled samples":
        samples = common.list_samples()
        if samples:
            sample_files = st.multiselect(
                "Samples", [x["file"] for x in samples], default=[x["file"] for x in samples],
                key=sessions.SESSIONS_SAMPLES,
                format_func=lambda f: f"{f} (labelled {next(x.get('label', '?') for x in samples if x['file'] == f)})",
            )
            files, why_none = intake.from_samples(samples_dir, sample_files)
        else:
            st.info(f"No bundled samples are installed ({samples_dir / 'samples.json'} is missing or empty). "
                    "Upload files or use a folder instead.")
    else:
        folder = st.text_input("Folder on the server", key=sessions.SESSIONS_FOLDER, placeholder="/data/study/batch1",
                               help="Every PNG, JPEG, TIFF or DICOM file directly in this folder; only "
                                    + server_paths.roots_text() + ".")
        if folder.strip():
            try:
                files = intake.from_folder(server_paths.allowed_path(folder))
            except CXRError as err:
                st.error(str(err), icon=":material/folder_off:")
        else:
            why_none = "no folder given"

    # --- screening: each film as the review page screens it, before the session exists -------------
    screened, keep, redact = [], set(), set()
    if files:
        screening = sessions.sessions_screening()
        bar = st.empty()
        screened = sessions.sessions_screen(
            files, screening, progress=lambda done, todo, name: bar.progress(
                done / max(todo, 1), text=f"Screening file {done + 1} of {todo}"))
        bar.empty()
        flagged = [x for x in screened if x.flagged]
        unreadable = [x for x in screened if not x.readable]
        chest = len(screened) - len(flagged) - len(unreadable)
        st.markdown(f"**Screening of {len(screened)} file(s)**: {chest} chest film(s), {len(flagged)} flagged as not "
                    f"a frontal chest X-ray, {len(unreadable)} not readable.")
        st.caption(screening.description + " Flagged films are left out unless you keep them; the screening is "
                   "not a diagnosis and can be wrong either way.")
        if screening.problem:
            st.warning(screening.problem, icon=":material/warning:")
        st.dataframe({"Film": [x.film or "(none)" for x in screened], sessions.SESSIONS_FILE_COLUMN:
                      [x.name for x in screened], "Verdict": [x.verdict for x in screened],
                      "Reason": [server_paths.without_contents(x.reason) for x in screened]}, hide_index=True)
        st.caption(sessions.SESSIONS_NAMES_NOTE)
        for x in unreadable:
            st.warning(f"Your file **{md_escape(x.name)}** is not readable and is left out: "
                       f"{md_escape(server_paths.without_contents(x.error))}", icon=":material/broken_image:")
        for x in flagged:
            with st.container(border=True):
                pic, text = st.columns([1, 5])
                pic.image(x.thumb, caption=x.film)
                text.markdown(f"**{x.film}** (your file *{md_escape(x.name)}*) does not look like a frontal chest "
                              "X-ray:\n\n"  # the reasons, as everywhere
                              + "\n".join(f"- {r}" + (f" *({d})*" if d else "") for r, d in refusal_lines(x.decision)))
                if text.checkbox(f"Keep {x.film} in the session anyway", key=sessions.sessions_keep_key(x.ident)):
                    keep.add(x.ident)
        # --- burned-in text (names, dates of birth): outlined for review, blacked out before readers see it ----
        for x in [x for x in screened if x.readable and x.has_text]:
            with st.container(border=True):
                pic, text = st.columns([1, 5])
                pic.image(redaction.outline_boxes(x.thumb, x.text, x.size), caption=f"{x.film}: text outlined in red")
                text.markdown(f"**{x.film}** (your file *{md_escape(x.name)}*) has burned-in text in {len(x.text)} "
                              "place(s), outlined in red, which may name the patient. Blacked out, readers, galleries "
                              "and exports only ever get the film with black boxes over the outlined text; either "
                              "way, your choice and the boxes are recorded in the audit trail.")
                if text.checkbox(f"Black out the burned-in text on {x.film}", value=True,
                                 key=sessions.sessions_redact_key(x.ident)):
                    redact.add(x.ident)
    elif why_none and source != "Uploaded files":
        st.caption(f"No images yet: {why_none}.")

    chosen = st.multiselect("Readers", list(by_name), key=sessions.SESSIONS_READERS,
                            format_func=lambda n: f"{n} ({next(r.role for r in readers if r.name == n)})")
    shuffle = st.checkbox("Shuffle the order of the images for each reader", value=True, key=sessions.SESSIONS_SHUFFLE)
    going = len(intake.chosen(screened, keep))
    st.caption(f"{going} film(s) will go into the session.")

    if st.button("Create session", type="primary", icon=":material/add_circle:"):
        try:
            if not screened:
                raise CXRError(why_none or "no images chosen; upload files, pick samples or give a folder")
            if not chosen:
                raise CXRError("no readers chosen; a session needs at least one reader")
            with st.spinner("Storing the films..."), common.db().begin() as s:
                result = intake.create_session(
                    s, name=session_name, files=files, screened=screened, keep=keep,
                    reader_ids=[by_name[n] for n in chosen], blind=blind, created_by=me.id, shuffle=shuffle,
                    screened_by=screening.screened_by, by=me.name, redact=redact,
                )
                for x in screened:
                    if x.flagged and x.ident in keep:  # an expert override of the screening, in the trail
                        auth.record(s, me.name, "refusal_override", film_sha=x.image_sha or None,
                                    detail=f"sessions page: {film_label(x.image_sha)} kept in session "
                                           f"{result.session.name!r} although flagged as not a frontal chest X-ray")
                auth.record(s, me.name, "session_change", detail=(
                    f"created session {result.session.name!r} ({'blind' if blind else 'not blind'}): "
                    f"{result.stored} film(s), readers {', '.join(repr(n) for n in chosen)}"))
        except CXRError as err:
            st.error(f"Session not created: {err}")
        else:
            st.session_state[sessions.SESSIONS_FLASH] = (
                f"Created session {md_escape(repr(result.session.name))}: {result.stored} image(s), "
                f"{len(chosen)} reader(s)"
                + (", each in their own order." if shuffle else ", all in the same order.")
                + (" " + md_escape(result.summary()) if result.summary() else ""))
            st.rerun()

# --- sessions and progress ------------------------------------------------------------------------
with common.reading() as s:
    progress = []
    for x in storage.list_sessions(s):
        assigned = storage.session_readers(s, x.id)
        progress.append((x, [(r, storage.reader_queue(s, x.id, r.id)) for r in assigned],
                         [r for r in readers if r.id not in {a.id for a in assigned}]))
st.subheader(f"Sessions ({len(progress)})")
if not progress:
    st.caption("No sessions yet.")
for x, queues, unassigned in progress:
    total = queues[0][1].total if queues else 0
    with st.container(border=True):
        st.markdown(f"**{md_escape(x.name)}**: {'blind' if x.blind else 'not blind'}, {total} image(s), "
                    f"created {x.created_at:%Y-%m-%d %H:%M} UTC")
        for r, q in queues:
            st.progress(q.progress, text=f"{md_escape(r.name)}: {q.progress_text}")
        if unassigned:
            add_col, button_col = st.columns([3, 1], vertical_alignment="bottom")
            more = add_col.multiselect("Add readers", [r.name for r in unassigned], key=f"sessions_assign::{x.id}")
            if button_col.button("Assign", key=f"sessions_assign_button::{x.id}", disabled=not more):
                with common.db().begin() as s:
                    for n in more:
                        storage.assign_reader(s, x.id, by_name[n])
                    auth.record(s, me.name, "session_change",
                                detail=f"assigned {', '.join(repr(n) for n in more)} to session {x.name!r}")
                st.session_state[sessions.SESSIONS_FLASH] = (f"Assigned {md_escape(', '.join(more))} to "
                                                             f"{md_escape(repr(x.name))}.")
                st.rerun()
