"""Airflow-only parts of the brain-tumor project: operators (and, later, UI views)."""
