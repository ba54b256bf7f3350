"""Shared fixtures: real PostgreSQL, S3 (moto server) and GCS (emulator) over the wire, alert receivers."""

from tests.fixtures.airflow import stack  # noqa: F401
from tests.fixtures.alerts import alert_inbox, alert_servers  # noqa: F401
from tests.fixtures.backups import demo_source, module_catalog, module_targets  # noqa: F401
from tests.fixtures.postgres import empty_db, pg_cluster  # noqa: F401
from tests.fixtures.stack import local_stack  # noqa: F401
from tests.fixtures.storage import gcs_server, s3_server, storage_policy, storage_targets  # noqa: F401

# Parallel runs (pytest-xdist, ./scripts/test.sh): each test file stays on one worker, so its module fixtures (a
# seeded source, a backup) are built once; a group of files whose session fixture is expensive stays together on
# one worker too: the console's stack with a real backup, and the session's local stack (tests/fixtures/stack.py,
# a minute or two to start). (A scheduler of our own: xdist's loadgroup marks do not reach its scheduler under
# pytest 9.)
_ONE_WORKER_GROUPS = (
    ("tests/wedsync_console/",),
    ("tests/devstack/test_stack.py", "tests/faults/test_stack_task_kill.py"),
)


def pytest_xdist_make_scheduler(config, log):  # type: ignore[no-untyped-def]
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((group[0] for group in _ONE_WORKER_GROUPS for p in group if path.startswith(p)), path)

    return FileScheduling(config, log)


def pytest_collection_modifyitems(items):  # type: ignore[no-untyped-def]
    """Tests marked ``restarts_stack`` (the shared local stack restarted onto Celery) run after every other test:
    the others sharing the stack need it as it started (LocalExecutor). Tests marked ``adds_a_backup`` run after
    the other tests of the console, which expect its first backup to be the newest."""
    for marker in ("adds_a_backup", "restarts_stack"):
        last = [i for i in items if i.get_closest_marker(marker)]
        items[:] = [i for i in items if not i.get_closest_marker(marker)] + last
