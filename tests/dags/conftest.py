"""DAG tests use the Airflow fixtures of tests/conftest.py (airflow_db, dagbag, get_dag,
task_settings)."""
