"""Assets shared by the DAGs."""

from __future__ import annotations

from airflow.sdk import Asset

#: updated by retrain_nightly's `promote`; starts a batch_score run
CHAMPION = Asset(name="brain_tumor_champion")
