"""Helpers shared by the test modules (importable as `support`: tests/ is on the pythonpath)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import pytest

if TYPE_CHECKING:
    from brain_tumor.settings import Settings

#: under CI=true every test must run: a missing service fails it instead of skipping it
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """A service or tool a test needs is missing: fail under CI=true, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"CI=true and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


#: training settings small enough for two CPU cores: one tiny model per session
TINY_TRAINING = {
    "backbone": "tiny", "image_size": 32, "batch_size": 16, "epochs": 6, "seg_epochs": 6,
    "seg_depth": 2, "seg_base_filters": 8, "learning_rate": 3e-3, "seg_learning_rate": 3e-3,
    "warmup_epochs": 0, "bootstrap_samples": 50, "io_workers": 4,
}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ports_free(base: int) -> bool:
    """Whether SeaweedFS's internal ports numbered from base (and their gRPC ports, 10000
    above) are all free."""
    for port in [*range(base, base + 7), *range(base + 10000, base + 10007)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_base(low: int, high: int, what: str = "SeaweedFS") -> int:
    """A random base in [low, high) whose SeaweedFS port range is free (``ports_free``); the
    test fails naming ``what`` when 50 tries find none."""
    rng = random.Random()
    base = next((b for b in (rng.randrange(low, high) for _ in range(50)) if ports_free(b)), None)
    if base is None:
        pytest.fail(f"no free port range for {what} between {low} and {high}")
    return base


def copy_model(src: Settings, version: str, dst: Settings, as_version: str | None = None) -> str:
    """Publish a copy of model version (its files and model.json) in dst's bucket; returns its id.

    Under another id (``as_version``) the copy stands for a second model with the same weights.
    """
    from brain_tumor.store.modelstore import MODEL_FILES, ModelStore
    from brain_tumor.store.storage import ObjectStore

    source, target = ObjectStore.from_settings(src), ObjectStore.from_settings(dst)
    target.ensure_bucket()
    new = as_version or version
    record = {**ModelStore(source, src).record(version), "model_version": new}
    for name in (*MODEL_FILES, *(("ood.npz",) if record.get("ood") else ())):
        target.put(ModelStore(target, dst).key(new, name),
                   source.get(ModelStore(source, src).key(version, name)))
    target.put_json(ModelStore(target, dst).key(new, "model.json"), record)
    return new


def own_dataset(base: Settings, bucket: str, home: Path, **changes: object
                ) -> tuple[Settings, str]:
    """``base`` with its own bucket and home (and ``changes``), holding a small synthetic
    dataset version, ingested and split: (settings, dataset version). For tests that train
    models of their own beside the session's ``trained`` one, whose bucket is read-only."""
    from brain_tumor import steps
    from brain_tumor.devtools.synth import SynthSpec, make_export
    from brain_tumor.ingest.exports import upload_export

    settings = base.model_copy(update={"s3_bucket": bucket, "home": home, **changes})
    store = steps.open_store(settings)
    store.ensure_bucket()
    root = make_export(home / "export", SynthSpec(patients=10, slices=6, size=32, seed=3,
                                                  tumor_free_patients=1)).root
    upload_export(store, settings, root, export_id="e1")
    version = steps.ingest(settings, ["e1"])["dataset_version"]
    steps.split(settings, version)
    return settings, version


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate a server a test started; kill it if it does not stop within timeout."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_tiff_study(folder: Path, images: list[np.ndarray], name: str = "REF") -> Path:
    """Write H x W x 3 uint8 slices as a TIFF study folder (``<name>_<N>.tif``, N from 1)."""
    from brain_tumor.ingest.imaging import encode_tiff

    folder.mkdir(parents=True, exist_ok=True)
    for n, image in enumerate(images, start=1):
        (folder / f"{name}_{n}.tif").write_bytes(encode_tiff(np.asarray(image)))
    return folder


def assert_frames_on_sources(seg: object, sources: list) -> None:
    """Each frame of a DICOM SEG lies on the source instance it references: same position, and
    the sources' orientation."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0]
                        .ReferencedSOPInstanceUID]
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                   source.ImagePositionPatient)
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               sources[0].ImageOrientationPatient)
