from pathlib import Path

import pandas as pd
import pytest

from brain_tumor.store.schemas import (
    SCHEMAS,
    SchemaError,
    describe_markdown,
    validate_record,
    validate_table,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "schemas.md"


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
