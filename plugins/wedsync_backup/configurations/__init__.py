"""The configurations component: what rebuilds the backup system itself after a disaster that took Airflow.

Every full backup also stores, encrypted like every other object of the backup (crypto.py, the backup's
data key), the backup policy in force, the Airflow connections and variables the DAGs use (their secrets
included) and the configuration tables the policy names. They are objects of the backup like its tables:
listed in the manifest's ``configurations`` section, replicated to every target and verified with it.

Nothing here imports Airflow: the Airflow adapter gathers the connections and variables and hands them over
as plain data (``ConfigurationBundle``); ``python -m wedsync_backup.configurations restore`` brings them back
without any Airflow running.
"""
