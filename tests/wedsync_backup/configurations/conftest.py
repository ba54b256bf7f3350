"""The module-scoped backup with a configurations component (fixtures.py)."""

from tests.wedsync_backup.configurations.fixtures import backed  # noqa: F401
