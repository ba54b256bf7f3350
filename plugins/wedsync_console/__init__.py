"""The backup console: a dashboard in the Airflow UI and an HTTP API, served by the api-server (issue 11)."""
