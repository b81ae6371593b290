"""Patient-level train/val/test split of a slice manifest: stable, stratified, deterministic.

The split table has one row per study (the manifest's ``patient_id``, the folder name), and all
studies of one patient (``brain_tumor.ingest.naming.patient_of``: the study id without its date)
share a split: patients, not studies, are placed. A previous split (of an ancestor version) is
carried over patient by patient, so a new study of a known patient joins that patient's split;
should a previous split hold two studies of one patient in different splits, the earliest split
in (train, val, test) order wins for all of them (a study a model trained on never lands in an
evaluation split), and each move is logged and listed in the result's ``attrs["moved"]``.
"""

from __future__ import annotations

import hashlib
import logging
import numbers
from dataclasses import dataclass

import pandas as pd

from brain_tumor.ingest.naming import patient_of

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("patient_id", "institution", "label")
SPLIT_COLUMNS = ("patient_id", "split", "institution", "slices", "tumor_slices")


class SplitError(ValueError):
    """The data cannot be split as asked (too few patients / tumor slices)."""


@dataclass(frozen=True)
class SplitConfig:
    """Target fractions (in patients) per split, seed, and the tumor-slice floor per split."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    seed: int = 42
    min_tumor_slices: int = 1

    def __post_init__(self) -> None:
        """Reject fractions outside (0, 1) or not summing to 1, and non-integer or negative ints."""
        for name in SPLITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
                raise ValueError(f"SplitConfig.{name} must be a fraction in (0, 1), got {value!r}")
        total = self.train + self.val + self.test
        if abs(total - 1) > 1e-6:
            raise ValueError(
                f"SplitConfig fractions must sum to 1, got train={self.train!r} + val={self.val!r}"
                f" + test={self.test!r} = {total!r}"
            )
        for name in ("seed", "min_tumor_slices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"SplitConfig.{name} must be an integer, got {value!r}")
        if self.min_tumor_slices < 0:
            raise ValueError(
                f"SplitConfig.min_tumor_slices must be >= 0, got {self.min_tumor_slices!r}"
            )

    def fraction(self, split: str) -> float:
        """Target fraction of patients for one split name."""
        return float(getattr(self, split))


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Raise ValueError naming the columns of `columns` that `frame` lacks."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} is missing column(s) {missing}; got columns {list(frame.columns)}"
        )


def _patients(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: patient_id, institution (most frequent), slices, tumor_slices."""
    _require_columns(manifest, MANIFEST_COLUMNS, "manifest")
    for column in ("patient_id", "institution", "label"):
        if manifest[column].isna().any():
            missing = int(manifest[column].isna().sum())
            raise ValueError(f"manifest has {missing} row(s) without {column}")
    labels = manifest["label"]
    bad = ~labels.isin([0, 1])
    if bad.any():
        got = sorted(set(labels[bad]), key=repr)[:5]
        raise ValueError(f"manifest label must be 0 or 1, got {got}")
    rows = pd.DataFrame(
        {
            "patient_id": manifest["patient_id"].astype(str).to_numpy(),
            "institution": manifest["institution"].astype(str).to_numpy(),
            "label": labels.astype(int).to_numpy(),
        }
    )
    by_site = rows.groupby(["patient_id", "institution"]).size().reset_index(name="n")
    multi = by_site["patient_id"][by_site["patient_id"].duplicated()].unique()
    if len(multi):
        logger.warning("%d patient(s) span several institutions; using the most frequent: %s",
                       len(multi), list(multi[:5]))
    site = by_site.sort_values(["patient_id", "n", "institution"], ascending=[True, False, True])
    site = site.drop_duplicates("patient_id").set_index("patient_id")["institution"]
    grouped = rows.groupby("patient_id", sort=True)["label"]
    table = pd.DataFrame({"slices": grouped.size(), "tumor_slices": grouped.sum()})
    table.insert(0, "institution", site.reindex(table.index))
    return table.rename_axis("patient_id").reset_index()


def _previous_splits(previous: pd.DataFrame) -> dict[str, str]:
    """Map patient_id -> split from a prior assign_split output, validating it."""
    _require_columns(previous, ("patient_id", "split"), "previous")
    unknown = sorted(set(previous["split"]) - set(SPLITS), key=repr)
    if unknown:
        raise ValueError(
            f"previous has unknown split name(s) {unknown}; expected one of {list(SPLITS)}"
        )
    ids = previous["patient_id"].astype(str)
    if ids.duplicated().any():
        twice = sorted(set(ids[ids.duplicated()]))[:5]
        raise ValueError(f"previous lists patient(s) more than once: {twice}")
    return dict(zip(ids, previous["split"], strict=True))


def carry_previous(previous: pd.DataFrame) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Patient -> split from a previous split table keyed by study ids, and the studies moved.

    Each study id maps to its patient (``patient_of``). A patient whose studies were in different
    splits gets the earliest of them in (train, val, test) order; every study that changes split
    is returned as ``{"patient", "study_id", "from", "to"}`` and logged.
    """
    by_patient: dict[str, dict[str, str]] = {}
    for study, split in _previous_splits(previous).items():
        by_patient.setdefault(patient_of(study), {})[study] = split
    splits: dict[str, str] = {}
    moved: list[dict[str, str]] = []
    for patient, studies in sorted(by_patient.items()):
        splits[patient] = min(studies.values(), key=SPLITS.index)
        moved += [{"patient": patient, "study_id": study, "from": split, "to": splits[patient]}
                  for study, split in sorted(studies.items()) if split != splits[patient]]
    for move in moved:
        logger.warning("patient %s had studies in several splits: study %s moves from %s to %s",
                       move["patient"], move["study_id"], move["from"], move["to"])
    return splits, moved


def _by_patient(studies: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: patient_id (the patient), institution, slices, tumor_slices."""
    ranked = studies.sort_values(["patient", "slices", "institution"],
                                 ascending=[True, False, True])
    site = ranked.drop_duplicates("patient").set_index("patient")["institution"]
    sums = studies.groupby("patient", sort=True)[["slices", "tumor_slices"]].sum()
    sums.insert(0, "institution", site.reindex(sums.index))
    return sums.rename_axis("patient_id").reset_index()


def _key(seed: int, patient_id: str) -> str:
    """Seeded pseudo-random sort key of one patient, independent of every other patient."""
    return hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()


def _place(patients: pd.DataFrame, is_new: pd.Series, config: SplitConfig) -> None:
    """Greedily place new patients, institution by institution, where the split deficit is largest.

    The deficit of a split is its target share of the patients placed so far minus what it has,
    counted both overall and within the patient's institution; using the running total (not the
    final one) interleaves the splits, so every institution is spread in proportion.
    """
    counts = {s: int((patients["split"] == s).sum()) for s in SPLITS}
    placed = sum(counts.values())
    new = patients[is_new].sort_values(["institution", "key"])
    for institution, group in new.groupby("institution", sort=True):
        mine = patients["institution"] == institution
        site = {s: int((mine & (patients["split"] == s)).sum()) for s in SPLITS}
        for index in group.index:
            placed += 1
            site_total = sum(site.values()) + 1
            best = max(SPLITS, key=lambda s: config.fraction(s) * (placed + site_total)
                       - counts[s] - site[s])
            patients.loc[index, "split"] = best
            counts[best] += 1
            site[best] += 1


def _ensure_tumor(patients: pd.DataFrame, is_new: pd.Series, config: SplitConfig) -> None:
    """Move new tumor-bearing patients until every split has min_tumor_slices tumor slices."""
    need = config.min_tumor_slices
    while True:
        tumor = patients.groupby("split")["tumor_slices"].sum().reindex(list(SPLITS), fill_value=0)
        short = [s for s in SPLITS if tumor[s] < need]
        if not short:
            return
        receiver = short[0]
        bearing = is_new & (patients["tumor_slices"] > 0)
        movable = patients[bearing & (patients["split"] != receiver)]
        left = tumor[movable["split"]].to_numpy() - movable["tumor_slices"].to_numpy()
        movable = movable[left >= need]
        if movable.empty:
            have = ", ".join(f"{s} has {int(tumor[s])}" for s in SPLITS)
            raise SplitError(
                f"cannot give every split {need} tumor slice(s): {have} (each needs {need}); "
                f"{int((patients['tumor_slices'] > 0).sum())} tumor-bearing patient(s), of which "
                f"{int(bearing.sum())} new and movable"
            )
        donor = max(movable["split"].unique(), key=lambda s: (tumor[s], -SPLITS.index(s)))
        candidates = movable[movable["split"] == donor].sort_values(["tumor_slices", "key"])
        enough = candidates[candidates["tumor_slices"] >= need - tumor[receiver]]
        pick = enough.index[0] if len(enough) else candidates.index[-1]
        patients.loc[pick, "split"] = receiver
        logger.debug("moved patient %s from %s to %s for tumor slices",
                     patients.loc[pick, "patient_id"], donor, receiver)
        # Send a new tumor-free patient back so patient counts stay on target.
        back = patients[is_new & (patients["split"] == receiver) & (patients["tumor_slices"] == 0)]
        if len(back):
            patients.loc[back.sort_values("key").index[0], "split"] = donor


def assign_split(
    manifest: pd.DataFrame, config: SplitConfig, previous: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Assign each manifest study to train/val/test, patient by patient; patients of `previous`
    keep their split (see the module docstring)."""
    studies = _patients(manifest)
    studies["patient"] = [patient_of(s) for s in studies["patient_id"]]
    patients = _by_patient(studies)
    if len(patients) < len(SPLITS):
        raise SplitError(f"need at least {len(SPLITS)} patients to split, got {len(patients)}")
    fixed, moved = carry_previous(previous) if previous is not None else ({}, [])
    dropped = sorted(set(fixed) - set(patients["patient_id"]))
    if dropped:
        logger.info("dropping %d patient(s) of the previous split no longer in the manifest: %s",
                    len(dropped), dropped[:5])
    patients["split"] = patients["patient_id"].map(fixed).astype(object)
    patients["key"] = [_key(config.seed, p) for p in patients["patient_id"]]
    is_new = patients["split"].isna()
    _place(patients, is_new, config)
    if config.min_tumor_slices > 0:
        _ensure_tumor(patients, is_new, config)
    studies["split"] = studies["patient"].map(patients.set_index("patient_id")["split"])
    result = studies[list(SPLIT_COLUMNS)].sort_values("patient_id", ignore_index=True)
    result = result.astype({"split": str, "slices": "int64", "tumor_slices": "int64"})
    counts = split_counts(result)
    logger.info("split %d studies of %d patients (%d new, %d kept): %s", len(result),
                len(patients), int(is_new.sum()), int((~is_new).sum()),
                counts["patients"].to_dict())
    result.attrs["moved"] = moved
    return result


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    """Patients, slices and tumor slices per split (index train/val/test)."""
    _require_columns(split, ("patient_id", "split", "slices", "tumor_slices"), "split table")
    unknown = sorted(set(split["split"]) - set(SPLITS), key=repr)
    if unknown:
        raise ValueError(
            f"split table has unknown split name(s) {unknown}; expected {list(SPLITS)}"
        )
    counts = split.groupby("split").agg(
        patients=("patient_id", "size"),
        slices=("slices", "sum"),
        tumor_slices=("tumor_slices", "sum"),
    )
    return counts.reindex(list(SPLITS), fill_value=0).astype("int64").rename_axis("split")
