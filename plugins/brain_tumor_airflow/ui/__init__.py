"""The ops monitoring pages (models, gate decisions, trends, scoring) served inside Airflow."""
