import json
import re
from pathlib import Path

import pandas as pd
import pytest

from brain_tumor.settings import load_settings
from brain_tumor.store.registry import Registry
from brain_tumor.store.schemas import (
    SCHEMA_VERSION,
    SCHEMAS,
    SchemaError,
    describe_markdown,
    validate_record,
    validate_table,
)
from brain_tumor.store.storage import ObjectStore

DOC = Path(__file__).resolve().parents[3] / "docs" / "schemas.md"


def test_docs_are_generated_from_the_schemas():
    assert DOC.read_text().strip() == describe_markdown().strip(), \
        "docs/schemas.md is stale: run `brain-tumor schemas > docs/schemas.md`"


def test_every_pipeline_object_has_a_schema():
    for name in ("manifest", "quarantine", "split", "metrics", "gate_result", "registry_event",
                 "champion", "study_summary", "batch_summary", "dataset", "ledger_entry"):
        assert name in SCHEMAS


def test_table_validation_names_the_problem():
    good = pd.DataFrame({"patient_id": ["p"], "split": ["train"], "institution": ["CS"],
                         "slices": [3], "tumor_slices": [1]})
    assert list(validate_table("split", good.iloc[:, ::-1]).columns) == list(good.columns)
    with pytest.raises(SchemaError, match=r"missing columns \['tumor_slices'\]"):
        validate_table("split", good.drop(columns="tumor_slices"))
    with pytest.raises(SchemaError, match="split.slices: expected int"):
        validate_table("split", good.assign(slices=["three"]))
    with pytest.raises(SchemaError, match="null"):
        validate_table("split", good.assign(split=[None]))


def test_record_validation_names_the_problem():
    rec = {"version": "ds-1", "updated_at": "2026-01-01T00:00:00+00:00"}
    assert validate_record("dataset_head", rec) is rec
    with pytest.raises(SchemaError, match="missing field 'version'"):
        validate_record("dataset_head", {"updated_at": "x"})
    with pytest.raises(SchemaError, match="expected str, received int"):
        validate_record("dataset_head", {**rec, "version": 3})
    with pytest.raises(SchemaError, match="expected a JSON object"):
        validate_record("dataset_head", [rec])
    with pytest.raises(SchemaError, match="no record schema"):
        validate_record("manifest", rec)


def test_records_carry_the_schema_version():
    written = validate_record("dataset_head", {"version": "ds-1", "updated_at": "t"})
    assert written["schema_version"] == SCHEMA_VERSION == 1
    assert validate_record("dataset_head", dict(written)) == written
    with pytest.raises(SchemaError, match="reads version 1, received 2"):
        validate_record("dataset_head", {**written, "schema_version": 2})
    with pytest.raises(SchemaError, match="received '1'"):
        validate_record("dataset_head", {**written, "schema_version": "1"})
    for schema in SCHEMAS.values():
        documented = [c.name for c in schema.fields]
        assert ("schema_version" in documented) == (not schema.table), schema.name


def test_a_record_written_before_schema_version_reads_as_version_1():
    old = json.loads('{"model_version": "m-1", "event": "registry/events/00000001.json", '
                     '"updated_at": "2025-01-01T00:00:00+00:00"}')
    assert validate_record("champion", old)["schema_version"] == 1


def test_registry_event_location_is_the_key_the_registry_writes():
    settings = load_settings(env={})
    registry = Registry(ObjectStore.from_settings(settings), settings)  # no request is made
    key = registry.event_key(7)[len(registry.events_prefix):]
    location = SCHEMAS["registry_event"].location
    assert location.startswith("registry/events/")
    pattern = re.escape(location.rsplit("/", 1)[1]).replace(re.escape("<seq:08d>"), r"\d{8}")
    assert re.fullmatch(pattern, key), (location, key)
