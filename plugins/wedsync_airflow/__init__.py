"""Thin Airflow adapters: turn Airflow connections and provider hooks into wedsync_backup objects.

The core library (wedsync_backup) knows nothing of Airflow; everything Airflow-specific lives here.
"""
