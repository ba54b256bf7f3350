"""Shared fixtures: real PostgreSQL, S3 (moto server) and GCS (emulator) over the wire, alert receivers."""

from tests.fixtures.airflow import stack  # noqa: F401
from tests.fixtures.alerts import alert_inbox, alert_servers  # noqa: F401
from tests.fixtures.backups import demo_source, module_catalog, module_targets  # noqa: F401
from tests.fixtures.postgres import empty_db, pg_cluster  # noqa: F401
from tests.fixtures.stack import local_stack  # noqa: F401
from tests.fixtures.storage import gcs_server, s3_server, storage_policy, storage_targets  # noqa: F401

# Parallel runs (pytest-xdist, ./scripts/test.sh): each test file stays on one worker, so its module fixtures (a
# seeded source, a backup) are built once; a directory whose session fixture is expensive (the console's stack
# with a real backup) stays together on one worker too. (A scheduler of our own: xdist's loadgroup marks do
# not reach its scheduler under pytest 9.)
_ONE_WORKER_DIRS = ("tests/wedsync_console/",)


def pytest_xdist_make_scheduler(config, log):  # type: ignore[no-untyped-def]
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((d for d in _ONE_WORKER_DIRS if path.startswith(d)), path)

    return FileScheduling(config, log)
