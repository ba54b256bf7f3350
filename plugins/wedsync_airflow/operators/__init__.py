"""Custom operators: thin adapters from Airflow tasks to the wedsync_backup core library."""
