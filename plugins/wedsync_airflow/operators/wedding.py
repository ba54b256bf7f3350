"""Adapters for the wedding tier over ``wedsync_backup.commands.wedding_backup``.

begin -> export_batch (mapped per batch of weddings) -> seal; then the backup protocol's replicate, verify and
commit operators (operators/backup.py); mark_failed releases the run's snapshot and marks the row failed.
"""

from __future__ import annotations

from typing import Any

from wedsync_backup.commands import wedding_backup as cmd
from wedsync_backup.errors import ConfigError

from wedsync_airflow.operators.backup import MarkBackupFailedOperator
from wedsync_airflow.operators.command import CommandOperator


def _ids(value: Any) -> list[str] | None:
    """The wedding_ids param as a list of strings (a rendered template may hand over a list or one id)."""
    if value in (None, "", "None", []):
        return None
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"wedding_ids must be a list of wedding ids, not {value!r}", fix='pass e.g. ["1042"]')
    return [str(v).strip() for v in value]


class WeddingBeginOperator(CommandOperator):
    """Choose the due weddings (or exactly ``wedding_ids``), open the run's catalog row, hold the snapshot.

    Returns the batch numbers (what export_batch is mapped over); pushes XComs ``backup_id`` and ``summary``.
    """

    template_fields = (*CommandOperator.template_fields, "wedding_ids", "reason")

    def __init__(self, *, wedding_ids: Any = None, reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wedding_ids = wedding_ids
        self.reason = reason

    def execute(self, context: Any) -> list[int]:
        begun = self.call(
            lambda: cmd.begin(
                self.build_resources(),
                self.run_of(context),
                wedding_ids=_ids(self.wedding_ids),
                reason=self.reason or None,
            )
        )
        ti = context["ti"]
        ti.xcom_push(key="backup_id", value=begun.backup_id)
        ti.xcom_push(key="summary", value=begun.summary())
        self.log.info("%s", begun.summary())
        return begun.batches


class WeddingBatchOperator(CommandOperator):
    """Export one batch of weddings from the run's snapshot into one bundle, a piece per wedding (mapped)."""

    template_fields = (*CommandOperator.template_fields, "backup_id", "batch_no")

    def __init__(self, *, backup_id: str, batch_no: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.batch_no = batch_no

    def execute(self, context: Any) -> dict[str, Any]:
        return self.call(lambda: cmd.export_batch(self.build_resources(), self.backup_id, int(self.batch_no)))


class WeddingSealOperator(CommandOperator):
    """Release the snapshot and write the pending manifest. Pushes ``manifest_sha256``."""

    template_fields = (*CommandOperator.template_fields, "backup_id")

    def __init__(self, *, backup_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id

    def execute(self, context: Any) -> dict[str, Any]:
        sealed = self.call(lambda: cmd.seal(self.build_resources(), self.backup_id, self.run_of(context)))
        context["ti"].xcom_push(key="manifest_sha256", value=sealed.manifest_sha256)
        return sealed.as_dict()


class MarkWeddingBackupFailedOperator(MarkBackupFailedOperator):
    """Runs when any step failed: the snapshot is released, the catalog row says failed."""

    mark_failed = staticmethod(cmd.mark_failed)
