"""Fixtures of the scoring integration tests: the session's trained model version, loaded once a
module, and a fresh bucket for each test's studies and scores (the model's bucket stays
read-only)."""

from __future__ import annotations

import uuid

import pytest

from brain_tumor.ml.predict import LoadedModel, load_model_version
from brain_tumor.settings import Settings
from brain_tumor.store.storage import ObjectStore


@pytest.fixture(scope="module")
def model(trained) -> LoadedModel:
    """The session's model version, loaded once for the module."""
    settings, record = trained
    return load_model_version(ObjectStore.from_settings(settings), settings,
                              record["model_version"])


@pytest.fixture
def env(trained) -> tuple[Settings, ObjectStore]:
    """Settings and store of a fresh bucket for studies and scores."""
    settings = trained[0].model_copy(update={"s3_bucket": f"t-{uuid.uuid4().hex[:16]}"})
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    return settings, store
