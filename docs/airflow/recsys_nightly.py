"""Airflow DAG: the recsys-spark night as one spark-submit of ``jobs/nightly.py``, then the Redis export.

Copy it into the DAGs folder of an Airflow with the Spark provider
(``apache-airflow-providers-apache-spark``), point ``RECSYS_HOME`` at a checkout where
``make dist`` has run, and set the ``spark_default`` connection to your master (yarn, k8s://...).

Why one task for the whole night rather than one per stage: the nightly job decides which stages
to run from the table commits, and records the night as one ``runs`` row. A failed night is simply
retried: finished stages are found current and skipped, so a retry redoes only what was left.
``max_active_runs=1`` keeps two nights from training at once.
"""

import os
from datetime import datetime, timedelta

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

HOME = os.environ.get("RECSYS_HOME", "/opt/recsys-spark")
CONFIG = os.environ.get("RECSYS_CONFIG", f"{HOME}/conf/cluster.toml")

#: What every task passes to spark-submit: the library zip, the config, the driver's Python.
SUBMIT = {
    "conn_id": "spark_default",
    "py_files": f"{HOME}/dist/recsys_spark.zip",
    "application_args": ["--config", CONFIG],
    "conf": {"spark.pyspark.python": f"{HOME}/.venv/bin/python"},
    "driver_memory": "4g",
}

with DAG(
    dag_id="recsys_nightly",
    schedule="30 2 * * *",  # the README's cron line: 02:30 every night
    start_date=datetime(2026, 12, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=15)},
    tags=["recsys-spark"],
) as dag:
    nightly = SparkSubmitOperator(task_id="nightly", application=f"{HOME}/jobs/nightly.py", **SUBMIT)
    # the hot rows for the services: a new Redis version, switched to in one step
    export_redis = SparkSubmitOperator(task_id="export_redis", application=f"{HOME}/jobs/export_redis.py", **SUBMIT)
    nightly >> export_redis
