"""What a command needs from the outside world, built by its caller (an Airflow adapter, a test, a script).

Commands never read connections themselves: the caller hands them factories, so a command builds only
the storages and databases its phase needs, and a missing connection fails at the phase that needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from wedsync_backup.backup_id import make_backup_id
from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring
from wedsync_backup.pg import PgTarget
from wedsync_backup.policy import Policy, TargetPolicy
from wedsync_backup.storage.base import Storage


class NothingToDo(Exception):
    """A phase that has nothing to do in this run (a dry run, an ended chain): the adapter skips the task."""


@dataclass(frozen=True)
class Resources:
    """The policy plus factories for everything a command touches."""

    policy: Policy
    open_storage: Callable[[TargetPolicy], Storage]
    open_catalog: Callable[[], Catalog]
    open_database: Callable[[str, str], PgTarget]  # (connection id, what it is for) -> database
    open_keyring: Callable[[str], Keyring]  # connection id -> master keys

    def storage(self, target_name: str) -> Storage:
        return self.open_storage(self.policy.target(target_name))

    def primary(self) -> Storage:
        return self.open_storage(self.policy.primary)

    def all_storages(self) -> list[Storage]:
        """Every target of the policy, primary first."""
        return [self.open_storage(t) for t in self.policy.targets]

    def catalog(self) -> Catalog:
        return self.open_catalog()

    def source(self) -> PgTarget:
        return self.open_database(self.policy.source_conn_id, "source")

    def keyring(self) -> Keyring:
        return self.open_keyring(self.policy.encryption_conn_id)


@dataclass(frozen=True)
class RunRef:
    """The run a command works for: it names the backup and is recorded with it."""

    dag_id: str
    run_id: str
    due_at: datetime  # when the run was due (its logical date): part of the backup id
    triggered_by: str | None = None

    @property
    def actor(self) -> str:
        return f"airflow:{self.dag_id}"

    def backup_id(self, backup_type: str) -> str:
        """Stable per run, so every retry of every task works on the same backup."""
        return make_backup_id(backup_type, f"{self.dag_id}|{self.run_id}", self.due_at)


def retention_until(policy: Policy, tier: str, now: datetime | None = None) -> datetime | None:
    """When a backup of ``tier`` made now may be pruned (None: the policy sets no retention)."""
    t = policy.tiers.get(tier)
    return (now or datetime.now(UTC)) + timedelta(days=t.retention_days) if t else None
