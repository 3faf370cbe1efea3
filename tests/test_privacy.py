"""No identifying text leaves the app (issue 15): a synthetic patient name planted in a file name, in DICOM tags
and burned into the pixels is absent from the database file, every export format, ``predict --out`` and the logs;
films are named ``film-<8 hex of the pixel hash>`` instead. Migration 0006 pseudonymises names stored before."""

from __future__ import annotations

import json
import logging
import sqlite3

import cv2
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import inspect, select, update

from conftest import FIXTURES
from cxr_core import annotation as ann
from cxr_core import auth, storage
from cxr_core.cli import main
from cxr_core.io.film_facts import film_label
from cxr_core.io.imaging import load_xray
from cxr_core.safety import intake
from cxr_core.safety.ood import OODDecision
from dicom_factory import make_dicom

NAME = "DOE_JANE_4711_19700101"
PIECES = (NAME, "DOE_JANE", "DOE^JANE", "Doe^Jane", "4711_19700101")  # the name and recognisable pieces of it
PASSWORD = "privacy test admin password"
CHEST = FIXTURES / "cxr" / "covid_hannover_b343e657.png"


def burned_in_chest() -> np.ndarray:
    """The chest fixture (uint16) with the name and a birth date burned into its top-left corner."""
    pixels = np.array(Image.open(CHEST).convert("L"), dtype=np.uint8)
    cv2.putText(pixels, NAME, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1, cv2.LINE_AA)
    cv2.putText(pixels, "DOB 1970-01-01", (8, 44), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1, cv2.LINE_AA)
    return pixels.astype(np.uint16) * 257


def identified_dicom() -> bytes:
    """A DICOM whose name fields, IDs and free text all carry the name."""
    return make_dicom(burned_in_chest(), PatientName=NAME.replace("_", "^", 1), PatientID=NAME,
                      OtherPatientIDs=NAME, AccessionNumber=NAME[-16:], StudyDescription=f"chest of {NAME}",
                      ImageComments=f"patient {NAME}")


def leaks(data: bytes) -> list[str]:
    """The pieces of the name found in ``data`` (any case, UTF-8 or UTF-16)."""
    low = data.lower()
    return [p for p in PIECES for enc in ("utf-8", "utf-16-le") if p.lower().encode(enc) in low]


@pytest.fixture
def uploads(tmp_path):
    """The DICOM and a PNG copy of the same film under identifying names, as files on disk and as uploads."""
    dcm = tmp_path / f"{NAME}.dcm"
    dcm.write_bytes(identified_dicom())
    png = tmp_path / f"{NAME}_chest.png"
    Image.fromarray((burned_in_chest() // 257).astype(np.uint8)).save(png)
    return [dcm, png]


def test_film_label_is_the_one_name_a_film_gets(uploads):
    xray = load_xray(uploads[0])
    assert NAME in xray.name  # the decoder still knows where the film came from ...
    assert film_label(xray.sha256) == f"film-{xray.sha256[:8]}"
    assert not leaks(json.dumps(xray.metadata, default=str).encode())  # ... but keeps no identifying tag


def test_name_is_absent_from_database_exports_predict_outputs_and_logs(uploads, tmp_path, monkeypatch, use_registry,
                                                                        capsys, caplog):
    caplog.set_level(logging.DEBUG)
    db_file = tmp_path / "annotations.db"
    url = f"sqlite:///{db_file}"
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    monkeypatch.setenv("CXR_PASSWORD", PASSWORD)
    engine = storage.make_engine(url)
    factory = storage.session_factory(engine)

    # intake on the sessions page: uploads screened, flagged films kept by the administrator (logged)
    files = intake.from_uploads([(p.name, p.read_bytes()) for p in uploads])
    flag = lambda x: OODDecision(False, ["flagged so the administrator's override is logged"])  # noqa: E731
    screened = intake.screen_files(files, flag)
    assert all(x.readable and x.flagged for x in screened)
    with factory.begin() as s:
        admin = auth.create_user(s, "Admin", "admin", PASSWORD)
        reader = storage.add_reader(s, "Dr A", "sme")
        result = intake.create_session(s, name="Privacy", files=files, screened=screened,
                                       keep=[x.ident for x in screened], reader_ids=[reader.id],
                                       created_by=admin.id, screened_by="image checks", by="Admin")
        session_id = result.session.id
        shas = [x.image_sha for x in screened]
        stored = {i.sha256: i.original_name for i in s.scalars(select(storage.Image))}
    assert stored == {sha: film_label(sha) for sha in shas}  # the label, never the upload's name

    # a reading, as the review page stores it
    with factory.begin() as s:
        for sha in set(shas):
            h, w = storage.get_image(s, sha).height, storage.get_image(s, sha).width
            storage.submit_annotation(
                s, reader_id=reader.id, image_sha=sha, session_id=session_id, diagnosis="Normal", confidence=3,
                canvas_json={"objects": [{"type": "rect", "left": w // 4, "top": h // 4, "width": w // 3,
                                          "height": h // 3, "fill": "", "stroke": "#f00"}]},
                canvas_width=w, canvas_height=h, background_fit=ann.contain_fit(w, h, w, h), labels=["consolidation"],
                comment="looked at it")
    engine.dispose()

    # every export format of the report CLI
    exports = {}
    for fmt in ("csv", "json", "html", "coco"):
        out = tmp_path / f"report.{fmt}"
        assert main(["report", "--session", "Privacy", "--format", fmt, "--out", str(out), "--model", "tiny-effnet",
                     "--allow-ood", "--user", "Admin", "--gallery", "1"]) == 0
        exports[fmt] = out.read_bytes()
    for sha in set(shas):
        assert film_label(sha).encode() in exports["csv"]  # films are there, under their labels

    # predict --out, records and printed lines
    out_dir = tmp_path / "predicted"
    assert main(["predict", *map(str, uploads), "--model", "tiny-effnet", "--json", "--allow-ood",
                 "--out", str(out_dir)]) == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted({f"{film_label(shas[0])}.json", f"{film_label(shas[1])}.json"}
                           | ({f"{film_label(shas[0])}-2.json"} if shas[0] == shas[1] else set()))
    for p in out_dir.iterdir():
        exports[f"predict/{p.name}"] = p.read_bytes()
    assert main(["predict", str(uploads[0]), "--model", "tiny-effnet", "--allow-ood"]) == 0  # the text lines
    captured = capsys.readouterr()
    assert f"{film_label(shas[0])}: " in captured.out

    engine.dispose()
    on_disk = sorted(tmp_path.glob("annotations.db*"))  # the database and its write-ahead log, as they are now
    assert db_file in on_disk
    for path in on_disk:
        assert leaks(path.read_bytes()) == [], path.name
    for what, data in exports.items():
        assert leaks(data) == [], what
    assert leaks(captured.out.encode()) == [] and leaks(captured.err.encode()) == []
    assert leaks(caplog.text.encode()) == []
    assert "expert override" in caplog.text  # the override was logged ... under the film's label
    assert film_label(shas[0]) in caplog.text


def test_keep_names_is_the_researchers_explicit_choice(uploads, tmp_path, use_registry, capsys):
    out_dir = tmp_path / "named"
    assert main(["predict", "--keep-names", str(uploads[0]), "--model", "tiny-effnet", "--json", "--allow-ood",
                 "--out", str(out_dir)]) == 0
    assert [p.name for p in out_dir.iterdir()] == [f"{NAME}.json"]
    assert json.loads(capsys.readouterr().out)["file"] == str(uploads[0])


def _fill_0005_with_a_name(engine) -> tuple[str, str]:
    pixels = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    with storage.session_factory(engine).begin() as s:
        sha = storage.add_image(s, pixels).sha256
        unnamed = storage.add_image(s, pixels[::-1].copy()).sha256
    with engine.begin() as conn:
        conn.execute(update(storage.Image).where(storage.Image.sha256 == sha)
                     .values(original_name=f"{NAME}.dcm"))
    return sha, unnamed


def test_migration_0006_replaces_stored_file_names_by_film_labels(tmp_path):
    db_file = tmp_path / "m6.db"
    engine = storage.make_engine(f"sqlite:///{db_file}", migrate=False)
    try:
        storage.init_db(engine, "0005")
        sha, unnamed = _fill_0005_with_a_name(engine)
        engine.dispose()
        assert leaks(db_file.read_bytes())  # the name is really there before

        storage.init_db(engine)
        assert storage.current_revision(engine) == "0006"
        with storage.session_factory(engine)() as s:
            assert storage.get_image(s, sha).original_name == film_label(sha)
            assert storage.get_image(s, unnamed).original_name is None  # nothing to hide: left as it was
        engine.dispose()
        with sqlite3.connect(db_file) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert leaks(db_file.read_bytes()) == []  # not even in a free page

        with engine.begin() as conn:  # downgrade keeps the labels (the names are gone by design) and up again
            cfg = storage.alembic_config()
            cfg.attributes["connection"] = conn
            from alembic import command

            command.downgrade(cfg, "0005")
        assert storage.current_revision(engine) == "0005"
        assert "redactions" not in inspect(engine).get_table_names()
        storage.init_db(engine)
        assert "redactions" in inspect(engine).get_table_names()
        with storage.session_factory(engine)() as s:
            assert storage.get_image(s, sha).original_name == film_label(sha)
    finally:
        engine.dispose()
