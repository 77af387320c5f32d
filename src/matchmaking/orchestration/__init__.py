"""Orchestration: what the Airflow DAGs in ``dags/`` call.

``config`` (the pipeline configuration, light enough for DAG parsing), ``tasks`` (the task
bodies) and ``projects`` (running the MLflow Projects of ``mlproject/``).
"""
