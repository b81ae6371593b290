"""Hostile ids and names: a trailing newline, an id too long for its keys, a prefix too long.

Every id is checked in full before the first key is built from it, so a refused id writes
nothing: not an incoming object, not an export file, not a ledger entry, not a score.
"""

from __future__ import annotations

import uuid

import pytest

from brain_tumor.cli import main
from brain_tumor.devtools.synth import SynthSpec, make_export, make_studies
from brain_tumor.ingest.naming import MAX_SLICE_NUMBER, BadName, parse_slice_path
from brain_tumor.scoring.readers import check_file_name, is_slice_name
from brain_tumor.settings import SettingsError, load_settings, settings_to_env
from brain_tumor.store import ids
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.scores import ScoreStore
from brain_tumor_airflow.ui import data as ui_data

NEWLINE_IDS = ["nl\n", "x\n", "a\r", "a\nb", "a\x00", " a", "a "]
LONG_ID = "a" * 300
PATIENT = "TCGA_CS_4941_19960909"


@pytest.mark.parametrize("bad", [*NEWLINE_IDS, LONG_ID, "a" * (ids.MAX_ID_LENGTH + 1)])
def test_the_id_rule_matches_whole_strings_of_bounded_length(bad):
    assert not ids.is_key_id(bad) and not ids.is_study_id(bad)
    for check in (ids.check_study_id, ids.check_export_id, ids.check_model_version):
        with pytest.raises(ids.InvalidId, match="received|invalid"):
            check(bad)
    assert ids.is_study_id("a" * ids.MAX_ID_LENGTH)


def test_long_id_error_says_how_long():
    with pytest.raises(ids.InvalidId, match=r"\(300 characters\)") as err:
        ids.check_study_id(LONG_ID)
    assert "1-128" in str(err.value) and len(str(err.value)) < 400


@pytest.mark.parametrize("name", [f"{PATIENT}/{PATIENT}_1.tif\n", f"{PATIENT}/{PATIENT}_1.tif\r",
                                  f"{PATIENT}/{PATIENT}_1_mask.tif\n",
                                  f"{PATIENT}/{PATIENT}_\u0661.tif"])
def test_ingest_names_match_whole_names(name):
    with pytest.raises(BadName):
        parse_slice_path(name)


@pytest.mark.parametrize("name", ["a_1.tif\n", "a_1.tiff\n", "a_\u0661.tif", "a_1.tif\nb"])
def test_scoring_slice_names_match_whole_names(name):
    assert not is_slice_name(name)


@pytest.mark.parametrize("name", ["x.png\n", "a.png\r", "é.png", "../x.png"])
def test_ui_png_names_match_whole_names(name):
    with pytest.raises(ui_data.NotFound):
        ui_data.check_png_name(name)
    assert ui_data.check_png_name("roc.png") == "roc.png"


def test_prefixes_must_leave_room_for_ids():
    with pytest.raises(SettingsError, match=r"s3_root \+ exports_prefix must be at most 512"):
        load_settings(env={"BRAIN_TUMOR_S3_ROOT": "r/" * 253})  # 506 + 8 bytes
    with pytest.raises(SettingsError, match="received 514 bytes"):  # 253 characters
        load_settings(env={"BRAIN_TUMOR_S3_ROOT": "é" * 253})
    # the longest prefix the rule allows, and the longest keys ids and names make under it
    ok = load_settings(env={"BRAIN_TUMOR_S3_ROOT": "r" * (512 - len("registry/"))})
    mv, sid = "m" * ids.MAX_ID_LENGTH, "s" * ids.MAX_ID_LENGTH
    scores = ScoreStore(None, ok)  # type: ignore[arg-type]
    longest = [scores.output_key(mv, sid, f"overlays/{MAX_SLICE_NUMBER}.png"),
               scores.quarantine_key(mv, sid), scores.done_key(mv, sid),
               IncomingStore(None, ok).prefix(sid) + "n" * ids.MAX_NAME_BYTES]  # type: ignore[arg-type]
    assert max(len(k.encode()) for k in longest) <= ids.MAX_KEY_BYTES


@pytest.fixture
def cli_env(settings, store, monkeypatch):
    for key, value in settings_to_env(settings).items():
        monkeypatch.setenv(key, value)
    return settings


def _all_keys(store) -> list[str]:
    return [o.key for o in store.list("")]


@pytest.mark.parametrize("study_id", ["nl\n", LONG_ID])
def test_submit_refuses_the_id_and_uploads_nothing(cli_env, store, tmp_path, capsys, study_id):
    folder = make_studies(tmp_path / "studies", SynthSpec(patients=1, slices=2, size=16))[0]
    assert main(["submit", str(folder), "--study-id", study_id]) == 1
    err = capsys.readouterr().err
    assert "invalid study id" in err and "1-128" in err
    assert _all_keys(store) == []


def test_submit_checks_file_names_fit_in_keys():
    name = "é" * 120 + "_7.tif"  # 246 bytes
    assert check_file_name(name) == name
    with pytest.raises(ValueError, match="at most 255 bytes, received 258 bytes"):
        check_file_name("é" * 126 + "_8.tif")


@pytest.mark.parametrize("export_id", ["x\n", LONG_ID])
def test_upload_refuses_the_id_and_writes_nothing(cli_env, store, tmp_path, capsys, export_id):
    root = make_export(tmp_path / "e", SynthSpec(patients=1, slices=2, size=16)).root
    assert main(["upload", str(root), "--export-id", export_id]) == 1
    assert "invalid export id" in capsys.readouterr().err
    assert _all_keys(store) == []
    assert main(["ingest", export_id]) == 1
    assert _all_keys(store) == []


@pytest.mark.parametrize("study_id", ["nl\n", LONG_ID])
def test_score_refuses_the_id_and_writes_nothing(trained, study_id):
    from brain_tumor.ml.predict import load_model_version
    from brain_tumor.scoring.study import score_study
    from brain_tumor.store.storage import ObjectStore

    model_settings, record = trained
    settings = model_settings.model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    model = load_model_version(ObjectStore.from_settings(model_settings), model_settings,
                               record["model_version"])
    with pytest.raises(ids.InvalidId, match="invalid study id"):
        score_study(store, settings, model, study_id)
    assert _all_keys(store) == []


@pytest.mark.parametrize("bad", ["../m-1", "m-1\n", "a/b"])
def test_promote_and_score_refuse_a_model_version_outside_the_id_rule(cli_env, capsys, bad):
    from brain_tumor.cli import main

    assert main(["registry", "promote", bad]) == 1
    assert "model version id" in capsys.readouterr().err
    assert main(["score", "--model-version", bad]) == 1
    assert "model version id" in capsys.readouterr().err
