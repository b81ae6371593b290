"""The patient is TCGA_<inst>_<id>: all of a patient's studies share a split, and splits of
earlier dataset versions (keyed by study folder names) carry over patient by patient."""

import logging

import pandas as pd
import pytest

from brain_tumor.ingest.naming import parse_slice_path, patient_of
from brain_tumor.ingest.split import SplitConfig, assign_split, carry_previous

SITES = ("CS", "DU", "FG", "HT")


def manifest(studies: list[tuple[str, int, int]]) -> pd.DataFrame:
    """Slice manifest from (study_id, slices, tumor_slices); the institution is the 2nd token."""
    return pd.DataFrame([{"patient_id": sid, "institution": sid.split("_")[1],
                          "label": int(i < tumor)}
                         for sid, slices, tumor in studies for i in range(slices)])


def study(i: int, date: str = "19970101") -> str:
    return f"TCGA_{SITES[i % len(SITES)]}_{1000 + i}_{date}"


def test_patient_of_drops_the_study_date():
    assert patient_of("TCGA_CS_4941_19960909") == "TCGA_CS_4941"
    assert patient_of("TCGA_CS_4941") == "TCGA_CS_4941"  # already a patient
    assert patient_of("P0001") == "P0001"  # other ids are their own patient
    name = parse_slice_path("TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_3.tif")
    assert patient_of(name.patient_id) == "TCGA_CS_4941"


def test_all_studies_of_a_patient_land_in_one_split():
    rows = [(study(i), 4, 2) for i in range(40)]
    rows += [(study(i, "20010505"), 3, 1) for i in range(0, 40, 3)]  # second studies
    table = assign_split(manifest(rows), SplitConfig())
    assert len(table) == len(rows)  # one row per study, as the manifest keys them
    per_patient = table.groupby(table["patient_id"].map(patient_of))["split"].nunique()
    assert (per_patient == 1).all() and len(per_patient) == 40
    assert set(table["split"]) == {"train", "val", "test"}


def test_an_old_split_keyed_by_study_is_kept_and_new_studies_follow_their_patient():
    old_rows = [(study(i), 4, 2) for i in range(30)]
    old = assign_split(manifest(old_rows), SplitConfig())
    # The next version: a second study for every old patient, and ten new patients.
    new_rows = old_rows + [(study(i, "20030303"), 3, 1) for i in range(30)]
    new_rows += [(study(i), 4, 2) for i in range(30, 40)]
    new = assign_split(manifest(new_rows), SplitConfig(), previous=old)
    assert new.attrs["moved"] == []
    kept = new.set_index("patient_id")["split"]
    for sid, split in zip(old["patient_id"], old["split"], strict=True):
        assert kept[sid] == split  # every old study stays where it was
        assert kept[sid.replace("19970101", "20030303")] == split  # and its patient's new one
    assert set(new["patient_id"]) >= {study(i) for i in range(30, 40)}


def test_conflicting_old_split_moves_to_the_earliest_split_and_records_it(caplog):
    first, second = study(1), study(1, "20050505")
    previous = pd.DataFrame({"patient_id": [first, second, study(2), study(3)],
                             "split": ["test", "train", "val", "test"]})
    splits, moved = carry_previous(previous)
    assert splits == {patient_of(first): "train", patient_of(study(2)): "val",
                      patient_of(study(3)): "test"}
    assert moved == [{"patient": patient_of(first), "study_id": first, "from": "test",
                      "to": "train"}]
    rows = [(first, 3, 1), (second, 3, 1), (study(2), 3, 1), (study(3), 3, 1)]
    with caplog.at_level(logging.WARNING, logger="brain_tumor.ingest.split"):
        table = assign_split(manifest(rows), SplitConfig(min_tumor_slices=0), previous=previous)
    assert table.attrs["moved"] == moved
    assert f"study {first} moves from test to train" in caplog.text
    assert table.set_index("patient_id").loc[[first, second], "split"].tolist() == ["train"] * 2


@pytest.mark.parametrize("conflict", [False, True])
def test_gate_test_split_never_holds_the_champions_training_patients(conflict: bool):
    """The champion trained on version 1's train split; the candidate's version 2 is split from
    it. The gate scores both on version 2's test split: none of it may be a patient the champion
    trained on, whatever the later studies and whatever an old split's conflicts."""
    v1_rows = [(study(i), 4, 2) for i in range(30)]
    v1 = assign_split(manifest(v1_rows), SplitConfig())
    if conflict:  # an old split that put one patient's two studies apart
        test_study = v1.loc[v1["split"] == "test", "patient_id"].iloc[0]
        twin = test_study.replace("19970101", "19990909")
        v1 = pd.concat([v1, pd.DataFrame([{"patient_id": twin, "split": "train",
                                           "institution": twin.split("_")[1], "slices": 4,
                                           "tumor_slices": 2}])], ignore_index=True)
        v1_rows.append((twin, 4, 2))
    trained_on = {patient_of(s) for s in v1.loc[v1["split"] == "train", "patient_id"]}
    v2_rows = v1_rows + [(study(i, "20080808"), 2, 1) for i in range(0, 30, 2)]
    v2_rows += [(study(i), 4, 2) for i in range(30, 45)]
    v2 = assign_split(manifest(v2_rows), SplitConfig(), previous=v1)
    gate_test = {patient_of(s) for s in v2.loc[v2["split"] == "test", "patient_id"]}
    assert gate_test and not gate_test & trained_on
    assert bool(v2.attrs["moved"]) == conflict
