"""Shared fixtures: real PostgreSQL, S3 (moto server) and GCS (emulator) over the wire, alert receivers."""

from tests.fixtures.airflow import stack  # noqa: F401
from tests.fixtures.alerts import alert_inbox, alert_servers  # noqa: F401
from tests.fixtures.backups import demo_source, module_catalog, module_targets  # noqa: F401
from tests.fixtures.postgres import empty_db, pg_cluster  # noqa: F401
from tests.fixtures.stack import local_stack  # noqa: F401
from tests.fixtures.storage import gcs_server, s3_server, storage_policy, storage_targets  # noqa: F401
