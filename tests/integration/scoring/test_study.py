"""brain_tumor.scoring (study, readers, writers, overlay): studies scored with the session model."""

from __future__ import annotations

import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from brain_tumor.devtools.synth import SynthSpec, make_export
from brain_tumor.scoring import study as score
from brain_tumor.scoring.overlay import FOOTER, contact_sheet, encode_png, overlay
from brain_tumor.scoring.readers import upload_study
from brain_tumor.settings import Settings
from brain_tumor.store.incoming import IncomingStore
from brain_tumor.store.schemas import validate_record, validate_table
from brain_tumor.store.scores import ScoreStore
from brain_tumor.store.storage import ObjectStore


def _upload_study(store: ObjectStore, settings: Settings, tmp_path: Path, study_id: str,
                  **spec: object) -> list[str]:
    """Write a one-patient synthetic export, upload its non-mask slices as a study, seal it."""
    values: dict = {"patients": 1, "slices": 6, "size": 32, "seed": 5, "tumor_free_patients": 0,
                    "tumor_fraction": 0.5, **spec}
    root = make_export(tmp_path / study_id, SynthSpec(**values)).root
    keys = []
    for path in sorted(root.rglob("*.tif")):
        if path.name.endswith("_mask.tif"):
            continue
        key = IncomingStore(store, settings).prefix(study_id) + path.relative_to(root).as_posix()
        store.put(key, path.read_bytes())
        keys.append(key)
    IncomingStore(store, settings).seal(study_id)
    return keys


def _listing(store: ObjectStore, prefix: str) -> dict[str, tuple[int, str]]:
    return {o.key: (o.size, o.etag) for o in store.list(prefix)}


def _png(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img


def test_score_good_study_writes_every_output(env, model, tmp_path, monkeypatch):
    settings, store = env
    sid = f"study-{uuid.uuid4().hex[:8]}"
    keys = _upload_study(store, settings, tmp_path, sid)
    store.put(IncomingStore(store, settings).prefix(sid) + "notes.txt", b"ignored")
    IncomingStore(store, settings).seal(sid)
    puts: list[str] = []
    real_put = store.put
    monkeypatch.setattr(store, "put",
                        lambda key, data, **kw: puts.append(key) or real_put(key, data, **kw))

    result = score.score_study(store, settings, model, sid)

    assert result["status"] == "scored" and result["study_id"] == sid
    mv = model.version

    def out(name: str) -> str:
        return ScoreStore(store, settings).output_key(mv, sid, name)

    df = validate_table("scored_slices", store.get_parquet(out("slices.parquet")))
    assert len(df) == 6 and list(df["slice_index"]) == list(range(1, 7))
    assert list(df["source_key"]) == sorted(keys, key=lambda k: int(k.rsplit("_", 1)[1][:-4]))
    assert str(df["bbox_y0"].dtype) == "Int64"
    summary = validate_record("study_summary", store.get_json(out("summary.json")))
    assert summary["slices"] == 6
    assert summary["tumor_slices"] == int(df["label"].sum())
    assert summary["tumor_present"] == (summary["tumor_slices"] > 0)
    assert summary["tumor_volume_voxels"] == int(df["tumor_pixels"].sum())
    assert summary["max_probability"] == pytest.approx(float(df["probability"].max()))
    assert summary["dataset_version"] == model.record["dataset_version"]
    assert {k: v for k, v in result.items() if k not in ("status", "timings")} == summary
    tumor_idx = sorted(df.loc[df["label"] == 1, "slice_index"])
    assert tumor_idx, "no tumor found in a study with lesions: the mask and overlay checks need one"
    folder = out("") + "/"
    written = sorted(k[len(folder):] for k in _listing(store, folder))
    expected = sorted(["slices.parquet", "summary.json", "overview.png",
                       *(f"masks/{n}.png" for n in tumor_idx),
                       *(f"overlays/{n}.png" for n in tumor_idx)])
    assert written == expected
    for n in tumor_idx:
        mask = _png(store.get(out(f"masks/{n}.png")))
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
        row = df[df["slice_index"] == n].iloc[0]
        assert int((mask == 255).sum()) == row["tumor_pixels"]
        pic = _png(store.get(out(f"overlays/{n}.png")))
        assert pic.shape == (256 + 2 * 22, 256, 3)
    assert _png(store.get(out("overview.png"))).ndim == 3
    scores = ScoreStore(store, settings)
    assert puts[-2:] == [out("summary.json"), scores.done_key(mv, sid)]  # marker last
    assert ScoreStore(store, settings).done_key(mv, sid) == f"scores/{mv}/_done/{sid}.json"
    assert set(result["timings"]) == {"read_s", "model_s", "write_s"}
    assert ScoreStore(store, settings).is_done(mv, sid)
    assert ScoreStore(store, settings).result(mv, sid) == summary
    assert IncomingStore(store, settings).study_ids() == [sid]


def test_rerun_is_skipped_and_writes_nothing(env, model, tmp_path, monkeypatch):
    settings, store = env
    sid = "s.1"
    _upload_study(store, settings, tmp_path, sid)
    first = score.score_study(store, settings, model, sid)
    before = _listing(store, "")

    def refuse(*args, **kwargs):
        raise AssertionError("a skipped study must not write")

    read: list[str] = []
    real_get = store.get
    monkeypatch.setattr(store, "put", refuse)
    monkeypatch.setattr(store, "put_new", refuse)
    monkeypatch.setattr(store, "get", lambda key: read.append(key) or real_get(key))
    again = score.score_study(store, settings, model, sid)

    assert again["status"] == "skipped"
    assert {k: v for k, v in again.items() if k != "status"} == \
        {k: v for k, v in first.items() if k not in ("status", "timings")}
    assert read == [ScoreStore(store, settings).output_key(model.version, sid, "summary.json")]
    assert _listing(store, "") == before


def test_crash_before_done_leaves_no_result_and_rerun_completes(env, model, tmp_path, monkeypatch):
    settings, store = env
    sid = "crashy"
    _upload_study(store, settings, tmp_path, sid)
    real_put_new = store.put_new

    def crash(key, data, content_type=None):
        if "/_done/" in key:
            raise RuntimeError("simulated crash")
        return real_put_new(key, data, content_type=content_type)

    monkeypatch.setattr(store, "put_new", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        score.score_study(store, settings, model, sid)
    assert not ScoreStore(store, settings).is_done(model.version, sid)
    assert ScoreStore(store, settings).result(model.version, sid) is None

    monkeypatch.setattr(store, "put_new", real_put_new)
    result = score.score_study(store, settings, model, sid)
    assert result["status"] == "scored"
    assert ScoreStore(store, settings).result(model.version, sid) == \
        {k: v for k, v in result.items() if k not in ("status", "timings")}


@pytest.mark.parametrize(("bad", "reason"), [
    ("corrupt", "unreadable"), ("wrong_size", "wrong_size"), ("uint16", "not_uint8"),
    ("channels", "channels")])
def test_bad_slice_rejects_whole_study(env, model, tmp_path, bad, reason):
    settings, store = env
    sid = f"bad_{bad}"
    keys = _upload_study(store, settings, tmp_path, sid, slices=3, bad=(bad,))
    with pytest.raises(score.StudyRejected) as info:
        score.score_study(store, settings, model, sid)
    assert info.value.reason == reason
    record = store.get_json(ScoreStore(store, settings).quarantine_key(model.version, sid))
    assert record["reason"] == reason and record["study_id"] == sid
    assert record["model_version"] == model.version and record["detail"] and record["at"]
    assert record["files"] == [keys[-1]]  # the injected slice is number 4, after the 3 good ones
    assert ScoreStore(store, settings).output_names(model.version, sid) == []
    assert not ScoreStore(store, settings).is_done(model.version, sid)
    assert ScoreStore(store, settings).result(model.version, sid) is None


def test_fixed_study_scores_and_its_quarantine_record_goes(env, model, tmp_path):
    settings, store = env
    keys = _upload_study(store, settings, tmp_path, "fixme", slices=3, bad=("corrupt",))
    with pytest.raises(score.StudyRejected):
        score.score_study(store, settings, model, "fixme")
    store.delete(keys[-1])  # the sender re-uploads the study without the broken slice
    IncomingStore(store, settings).seal("fixme")

    assert score.score_study(store, settings, model, "fixme")["status"] == "scored"
    assert not store.exists(ScoreStore(store, settings).quarantine_key(model.version, "fixme"))


def test_upload_study_leaves_masks_out(env, tmp_path):
    from brain_tumor.devtools.synth import make_studies

    settings, store = env
    folder = make_studies(tmp_path / "s", SynthSpec(patients=1, slices=3, size=32, seed=1))[0]
    assert not list(folder.glob("*_mask.tif"))
    (folder / "extra_1_mask.tif").write_bytes(b"x")  # a mask that came along is not uploaded
    sid, count = upload_study(IncomingStore(store, settings), folder)
    assert (sid, count) == (folder.name, 3)
    assert sorted(o.key for o in store.list(IncomingStore(store, settings).prefix(sid))) == sorted(
        [f"incoming/{sid}/{p.name}" for p in folder.glob("*.tif") if "mask" not in p.name]
        + [f"incoming/{sid}/_manifest.json"])
    with pytest.raises(ValueError, match="no slice TIFFs"):
        upload_study(IncomingStore(store, settings), tmp_path)


def test_empty_study_is_rejected(env, model):
    settings, store = env
    prefix = IncomingStore(store, settings).prefix("empty1")
    store.put(prefix + "README.txt", b"no slices here")
    store.put(prefix + "P/P_1_mask.tif", b"masks are ignored")
    IncomingStore(store, settings).seal("empty1")
    with pytest.raises(score.StudyRejected) as info:
        score.score_study(store, settings, model, "empty1")
    assert info.value.reason == "empty"
    assert ScoreStore(store, settings).quarantine_record(model.version, "empty1")["files"] == []
    assert IncomingStore(store, settings).study_ids() == ["empty1"]


def test_duplicate_slice_numbers_are_rejected(env, model, tmp_path):
    settings, store = env
    keys = _upload_study(store, settings, tmp_path, "dup", slices=2)
    for key in keys:  # the same slices again, under a second patient folder
        copy = IncomingStore(store, settings).prefix("dup") + "OTHER/" + key.rsplit("/", 1)[1]
        store.put(copy, store.get(key))
    IncomingStore(store, settings).seal("dup")
    with pytest.raises(score.StudyRejected) as info:
        score.score_study(store, settings, model, "dup")
    assert info.value.reason == "duplicate" and len(info.value.files) == 4


@pytest.mark.parametrize("bad_id", ["", "a/b", "../x", "..", "a b", "quarantine", "_done",
                                    "batches", "é"])
def test_bad_study_id_raises(env, model, bad_id):
    settings, store = env
    with pytest.raises(ValueError, match="invalid study id"):
        score.score_study(store, settings, model, bad_id)
    with pytest.raises(ValueError):
        ScoreStore(store, settings).output_key(model.version, bad_id, "summary.json")


def test_overlay_and_contact_sheet():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (32, 40, 3), dtype=np.uint8)
    mask = np.zeros((32, 40), bool)
    mask[10:20, 12:25] = True
    pic = overlay(image, mask, (10, 12, 19, 24), 0.973, 1)
    assert pic.dtype == np.uint8 and pic.shape == (32 * 8 + 44, 40 * 8, 3)
    body = pic[22:-22]
    assert ((body == [255, 0, 0]).all(axis=-1)).any()  # red contour
    assert ((body == [255, 255, 0]).all(axis=-1)).any()  # yellow box
    plain = overlay(image, None, None, 0.1, 0)
    assert np.array_equal(plain[22:-22][::8, ::8, 0], image[..., 1])  # FLAIR background
    sheet = contact_sheet([pic, plain, pic], columns=2)
    assert sheet.shape == (2 * pic.shape[0] + 12, 2 * pic.shape[1] + 12, 3)
    decoded = _png(encode_png(pic))
    assert np.array_equal(decoded[..., ::-1], pic)  # RGB -> BGR handled
    assert FOOTER.startswith("Research use only")
    with pytest.raises(ValueError):
        contact_sheet([])
