"""Reading sessions (administrators): add readers, create blind sessions, follow each reader's progress."""

import streamlit as st

import ui_state as ui
from cxr_core import annotation as ann
from cxr_core import storage
from cxr_core.config import get_settings
from cxr_core.errors import CXRError

st.title("Reading sessions")
st.caption(
    "This page is for administrators: it lists the readers, creates reading sessions (a set of chest X-rays that "
    "each assigned reader annotates in their own shuffled order) and shows how far each reader has got. It shows "
    "no model output. Model scores are not diagnoses, and in a blind session readers see none until they submit."
)
flash = st.session_state.pop(ui.SESSIONS_FLASH, None)
if flash:
    st.success(flash, icon=":material/check_circle:")

# --- readers --------------------------------------------------------------------------------------
with ui.db().begin() as s:
    readers = storage.list_readers(s)
st.subheader(f"Readers ({len(readers)})")
if readers:
    st.table({"Name": [r.name for r in readers], "Role": [r.role for r in readers]})
else:
    st.info("No readers yet. Add yourself as an administrator first, then the experts who will read.")
with st.form("sessions_add_reader", clear_on_submit=True, border=True):
    name_col, role_col = st.columns([3, 1])
    new_name = name_col.text_input("New reader's name", key=ui.SESSIONS_NEW_READER)
    new_role = role_col.selectbox("Role", storage.ROLES, index=1, key=ui.SESSIONS_NEW_ROLE,
                                  help="sme: a subject-matter expert who annotates; admin: creates sessions; "
                                       "reviewer: reviews results.")
    if st.form_submit_button("Add reader", icon=":material/person_add:"):
        try:
            with ui.db().begin() as s:
                storage.add_reader(s, new_name, new_role)
        except CXRError as err:
            st.error(str(err))
        else:
            st.session_state[ui.SESSIONS_FLASH] = f"Added {new_name.strip()} ({new_role})."
            st.rerun()

admins = {r.name: r.id for r in readers if r.role == "admin"}
by_name = {r.name: r.id for r in readers}

# --- a new session --------------------------------------------------------------------------------
st.subheader("New reading session")
if not admins:
    st.info("Add a reader with the role **admin** to create sessions.")
else:
    admin = st.selectbox("Created by (administrator)", list(admins), key=ui.SESSIONS_ADMIN)
    session_name = st.text_input("Session name", key=ui.SESSIONS_NAME, placeholder="e.g. Blind read, batch 1")
    blind = st.checkbox("Blind: readers see no model output for an image until they submit their reading",
                        value=True, key=ui.SESSIONS_BLIND)
    source = st.radio("Images from", ["Uploaded files", "Bundled samples", "A folder on the server"],
                      key=ui.SESSIONS_SOURCE, horizontal=True)
    samples_dir = get_settings().samples_dir
    uploads, sample_files, folder = [], None, ""
    if source == "Uploaded files":
        uploads = st.file_uploader("Chest X-rays (PNG, JPEG, TIFF or DICOM)", accept_multiple_files=True,
                                   key=ui.SESSIONS_UPLOADS) or []
    elif source == "Bundled samples":
        samples = ui.list_samples()
        if samples:
            sample_files = st.multiselect(
                "Samples", [x["file"] for x in samples], default=[x["file"] for x in samples], key=ui.SESSIONS_SAMPLES,
                format_func=lambda f: f"{f} (labelled {next(x.get('label', '?') for x in samples if x['file'] == f)})",
            )
        else:
            st.info(f"No bundled samples are installed ({samples_dir / 'samples.json'} is missing or empty). "
                    "Upload files or use a folder instead.")
    else:
        folder = st.text_input("Folder on the server", key=ui.SESSIONS_FOLDER, placeholder="/data/study/batch1",
                               help="Every PNG, JPEG, TIFF or DICOM file directly in this folder.")
    chosen = st.multiselect("Readers", list(by_name), key=ui.SESSIONS_READERS,
                            format_func=lambda n: f"{n} ({next(r.role for r in readers if r.name == n)})")
    shuffle = st.checkbox("Shuffle the order of the images for each reader", value=True, key=ui.SESSIONS_SHUFFLE)

    if st.button("Create session", type="primary", icon=":material/add_circle:"):
        try:
            with st.spinner("Reading the images..."):
                if source == "Uploaded files":
                    images = ann.read_uploads((f.name, f.getvalue()) for f in uploads)
                elif source == "Bundled samples":
                    images = ann.read_samples(samples_dir, sample_files)
                else:
                    images = (ann.read_folder(folder) if folder.strip()
                              else ann.SessionImages([], [], ["no folder given"]))
            for line in images.errors:
                st.warning(f"Skipped: {line}", icon=":material/broken_image:")
            if not chosen:
                raise CXRError("no readers chosen; a session needs at least one reader")
            with ui.db().begin() as s:
                created = ann.create_session_from_xrays(
                    s, name=session_name, images=images, reader_ids=[by_name[n] for n in chosen], blind=blind,
                    created_by=admins[admin], shuffle=shuffle,
                )
                count = len(images.xrays)
        except CXRError as err:
            st.error(f"Session not created: {err}")
        else:
            st.session_state[ui.SESSIONS_FLASH] = (
                f"Created session {created.name!r}: {count} image(s), {len(chosen)} reader(s)"
                + (", each in their own order." if shuffle else ", all in the same order."))
            st.rerun()

# --- sessions and progress ------------------------------------------------------------------------
with ui.db().begin() as s:
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
        st.markdown(f"**{x.name}**: {'blind' if x.blind else 'not blind'}, {total} image(s), "
                    f"created {x.created_at:%Y-%m-%d %H:%M} UTC")
        for r, q in queues:
            st.progress(q.progress, text=f"{r.name}: {q.progress_text}")
        if unassigned:
            add_col, button_col = st.columns([3, 1], vertical_alignment="bottom")
            more = add_col.multiselect("Add readers", [r.name for r in unassigned], key=f"sessions_assign::{x.id}")
            if button_col.button("Assign", key=f"sessions_assign_button::{x.id}", disabled=not more):
                with ui.db().begin() as s:
                    for n in more:
                        storage.assign_reader(s, x.id, by_name[n])
                st.session_state[ui.SESSIONS_FLASH] = f"Assigned {', '.join(more)} to {x.name!r}."
                st.rerun()
