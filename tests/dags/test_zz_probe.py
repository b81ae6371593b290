import time
from airflow.dag_processing.dagbag import DagBag
from tests.dags.test_retrain_nightly import *  # noqa

def test_probe_retries(airflow_db, task_settings, exports):
    upload(task_settings, exports["export-bad"], "export-bad")
    bag = DagBag(dag_folder="dags/retrain_nightly.py")
    dag = bag.dags["retrain_nightly"]
    t = time.time()
    dr = dag.test()
    print("STATE", dr.state, {ti.task_id: ti.state for ti in dr.get_task_instances()}, time.time() - t)
