"""The real-data benchmarks' plumbing at a tiny size: ``bench/quality.py run`` through its own
SeaweedFS on a small synthetic kaggle_3m folder, then ``bench/clinical_formats.py --refit``,
``bench/ood.py --refit`` and ``bench/postprocess_ablation.py`` on the model version it left, and
``bench/quality.py seg-ablation`` on the dataset version it ingested.
The figures mean nothing at this size; what is checked is that each script runs on what the
previous one left and reports what its docstring promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import free_port, free_port_base

REPO = Path(__file__).resolve().parents[3]
TINY = {"backbone": "tiny", "image_size": 32, "epochs": 1, "seg_epochs": 1, "seg_depth": 2,
        "seg_base_filters": 4, "batch_size": 8, "warmup_epochs": 0, "bootstrap_samples": 20}


def _bench(script: str, *args: str, env: dict, cwd: Path) -> dict:
    """Run a bench script with --json; its figures (the test fails with its log otherwise)."""
    out = cwd / f"{script}.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, "--json",
                          str(out)], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 0, f"{script} failed:\n{run.stderr[-4000:]}"
    return json.loads(out.read_text())


def _black_background(root: Path) -> None:
    """Zero the synthetic slices outside the head, as the real kaggle_3m slices are: the
    clinical intensity rule finds its window in the head's histogram, not in background noise."""

    from brain_tumor.ingest.imaging import decode_image, encode_tiff
    from brain_tumor.scoring.readers import is_slice_name

    for path in root.rglob("*.tif"):
        if is_slice_name(path.name):
            image = decode_image(path.read_bytes())
            image[image.max(axis=-1) < 20] = 0
            path.write_bytes(encode_tiff(image))


@pytest.fixture(scope="module")
def bench_home(tmp_path_factory):
    """A synthetic kaggle_3m folder (256 px like the real one) and what ``quality.py run`` left
    for it: (folder, home, environment, the run's figures)."""
    from brain_tumor.devtools.synth import SynthSpec, make_export

    work = tmp_path_factory.mktemp("bench")
    data = make_export(work / "kaggle_3m", SynthSpec(patients=10, slices=6, size=256, seed=3,
                                                     tumor_free_patients=1)).root
    _black_background(data)
    base = free_port_base(40000, 50000, "the benchmark's SeaweedFS")
    env = {**os.environ, "BENCH_S3_PORT": str(free_port()), "BENCH_S3_PORT_BASE": str(base),
           "PYTHONUNBUFFERED": "1"}
    env.pop("BRAIN_TUMOR_WEIGHTS", None)
    sets = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]
    home = work / "home"
    result = _bench("quality.py", "run", str(data), "--profile", "cpu", "--home", str(home),
                    *sets, env=env, cwd=work)
    return data, home, env, result


def test_quality_run_trains_and_evaluates_through_the_pipeline(bench_home):
    _, home, _, result = bench_home
    assert result["model_version"].startswith("m-") and result["dataset_version"].startswith("ds-")
    assert result["home"] == str(home.resolve())
    assert sum(s["patients"] for s in result["split"]) == 10
    assert {s["split"] for s in result["split"]} == {"train", "val", "test"}
    assert result["epochs_run"] == {"classifier": 1, "segmenter": 1}
    assert result["weights"] == "none" and result["settings"]["backbone"] == "tiny"
    headline = result["headline"]
    assert headline["model_version"] == result["model_version"]
    assert 0.0 <= headline["dice_per_patient_mean"] <= 1.0
    assert set(result["timings_s"]) == {"upload_s", "ingest_s", "train_s", "evaluate_s"}


def test_clinical_formats_scores_every_format_with_a_refitted_reference(bench_home):
    data, home, env, run = bench_home
    out = _bench("clinical_formats.py", str(data), "--model-version", run["model_version"],
                 "--home", str(home), "--engine", "onnx", "--refit", env=env, cwd=home.parent)
    assert out["ood_reference"] == "refitted by this run" and out["patients"] == 10
    formats = out["formats"]
    assert not any(formats["rejected"].values()), formats["rejected"]
    assert formats["tiff_all"]["patients"] == 10
    for fmt, base in (("dicom", "tiff_mapped"), ("nifti", "tiff_mapped"), ("tiff_mapped", "tiff")):
        fig = formats[f"{fmt}_all"]
        assert fig["compared_with"] == base and fig["slices"] == 60
        assert 0 <= fig["labels_differing"] <= 60
        assert 0 <= fig["flagged_out_of_distribution"] <= 10
    reduced = out["reduced_sequences_validation"]
    assert set(reduced) == {"full", "t1_pre_filled", "t1_post_filled", "both_filled"}
    assert reduced["both_filled"]["channels_filled"] == ["t1_pre", "t1_post"]
    assert len(out["per_patient"]) == 10


def test_ood_refit_and_postprocess_ablation_run_on_the_same_model(bench_home):
    data, home, env, run = bench_home
    ood = _bench("ood.py", str(data), "--model-version", run["model_version"], "--home",
                 str(home), "--engine", "onnx", "--refit", env=env, cwd=home.parent)
    from brain_tumor.devtools.synth_foreign import FOREIGN_KINDS

    assert ood["model_version"] == run["model_version"]
    assert ood["reference"] == "refitted by this run"
    test_patients = next(s["patients"] for s in run["split"] if s["split"] == "test")
    assert ood["test_patients"] == test_patients == len(ood["patients"])
    assert 0 <= ood["test_slices_flagged"] <= ood["test_slices"]
    assert set(ood["foreign_flagged_share"]) == set(FOREIGN_KINDS)
    assert all(0.0 <= v <= 1.0 for v in ood["foreign_flagged_share"].values())
    ablation = _bench("postprocess_ablation.py", "--model-version", run["model_version"],
                      "--home", str(home), "--test", "--flip", env=env, cwd=home.parent)
    assert ablation["model_version"] == run["model_version"]
    assert ablation["dataset_version"] == run["dataset_version"]
    rules = [row["rule"] for row in ablation["rows"]]
    assert any(rule.startswith("flip TTA") for rule in rules) and len(rules) > 2
    assert "| rule |" in ablation["markdown"]


def test_seg_ablation_compares_unet_arms_on_validation_patients_only(bench_home):
    data, home, env, run = bench_home
    sets = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]
    out = _bench("quality.py", "seg-ablation", str(data), "--home", str(home), "--arm",
                 "baseline", "--arm", "seg_context=1", "--seg-epochs", "1", *sets, env=env,
                 cwd=home.parent)
    assert out["dataset_version"] == run["dataset_version"]
    val_patients = next(s["patients"] for s in run["split"] if s["split"] == "val")
    train_slices = next(s["slices"] for s in run["split"] if s["split"] == "train")
    assert out["val_patients"] == val_patients and out["train_slices"] == train_slices
    assert out["arms_planned"] == 2
    first, second = out["arms"]
    assert first["arm"] == {} and second["arm"] == {"seg_context": "1"}
    for arm in out["arms"]:
        assert arm["epochs_run"] == 1 and len(arm["val_patient_dice_by_epoch"]) == 1
        assert len(arm["per_patient"]) == val_patients
        assert 0.0 <= arm["val_patient_dice_mean"] <= 1.0
    diff = second["difference_to_first"]
    per_patient = [second["per_patient"][p] - first["per_patient"][p] for p in first["per_patient"]]
    assert abs(diff["mean"] - sum(per_patient) / len(per_patient)) < 1e-3
    assert diff["patients_better"] + diff["patients_worse"] <= val_patients


def test_split_csv_and_the_model_free_check_on_its_test_patients(bench_home, tmp_path):
    data, home, env, run = bench_home
    written = _bench("quality.py", "split-csv", "--home", str(home), "--out",
                     str(tmp_path / "split.csv"), env=env, cwd=home.parent)
    assert written["dataset_version"] == run["dataset_version"]
    assert written["patients"] == {s["split"]: s["patients"] for s in run["split"]}
    rows = (tmp_path / "split.csv").read_text().splitlines()
    assert rows[0] == "patient_id,split" and len(rows) == 11
    # eight training patients, so the study detector and the geometry criterion are fitted too
    patients = sorted(line.split(",")[0] for line in rows[1:])
    (tmp_path / "split8.csv").write_text("patient_id,split\n" + "".join(
        f"{p},{'train' if i < 8 else 'val' if i == 8 else 'test'}\n"
        for i, p in enumerate(patients)))
    out = _bench("ood.py", str(data), "--split", str(tmp_path / "split8.csv"), "--size", "32",
                 env=env, cwd=tmp_path)
    from brain_tumor.devtools.synth_foreign import FOREIGN_KINDS

    assert out["model_version"] is None and out["train_patients"] == 8
    assert out["test_patients"] == 1 and [p["patient"] for p in out["patients"]] == patients[9:]
    assert set(out["bounds"]) == {"input", "study", "geometry"}
    assert "predict_s" not in out and out["reference"].startswith("refitted")
    assert 0 <= out["test_slices_flagged"] <= out["test_slices"] == 6
    assert set(out["foreign_flagged_share"]) == set(FOREIGN_KINDS)


@pytest.mark.parametrize(("arm", "reason"), [("seg_contex=1", "seg_contex"),
                                             ("seg_encoder=backbone", "U-Net alone")])
def test_seg_ablation_refuses_a_bad_arm_before_anything_runs(tmp_path, arm, reason):
    run = subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "seg-ablation",
                          str(tmp_path / "no-such-export"), "--home", str(tmp_path / "home"),
                          "--arm", "baseline", "--arm", arm], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode != 0 and reason in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "home").exists()  # no server started, nothing ingested
