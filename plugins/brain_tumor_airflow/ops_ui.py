"""The brain-tumor ops pages in the Airflow UI (Airflow 3.1+ plugin API, no Flask).

A FastAPI app mounted by the API server under ``/brain-tumor`` (``fastapi_apps``) and four
entries of the UI's navigation that show its pages in Airflow's frame (``external_views``,
under Plugins → Brain tumor). The app checks Airflow's login itself (``ui/auth.py``).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from brain_tumor_airflow.ui.app import PREFIX, create_app

CATEGORY = "Brain tumor"
PAGES = (("Models", "models"), ("Gate decisions", "gates"), ("Trends", "trends"),
         ("Scoring", "scoring"))


class BrainTumorOpsPlugin(AirflowPlugin):
    """Models, gate decisions, trends and scoring batches of the brain-tumor detector."""

    name = "brain_tumor_ops"
    fastapi_apps = [{"app": create_app(), "url_prefix": PREFIX, "name": "brain-tumor ops"}]
    external_views = [{"name": label, "href": f"{PREFIX}/{page}", "category": CATEGORY,
                       "url_route": f"brain-tumor-{page}", "destination": "nav"}
                      for label, page in PAGES]
