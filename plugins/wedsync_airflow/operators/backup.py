"""Adapters for the backup tiers over ``wedsync_backup.commands.backup`` and ``.prune``.

The phases the incremental tier runs as tasks of their own (replicate, verify, commit, prune: one phase each),
the full backup's one task (``FullBackupOperator``: every phase, the preflight first), and mark_failed for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wedsync_backup.commands import backup as cmd
from wedsync_backup.commands.full_backup import preflight_and_full_backup
from wedsync_backup.commands.prune import prune

from wedsync_airflow.operators.command import CommandOperator


class FullBackupOperator(CommandOperator):
    """The whole full backup in one task (``commands.full_backup.preflight_and_full_backup``): preflight (every
    check before anything is written, then the catalog row), export with every copy written at once, the
    configurations component (connections and variables read here, through Airflow), verify every copy,
    commit, prune. Pushes ``backup_id`` as soon as the row is open, and ``manifest_sha256``."""

    template_fields = (*CommandOperator.template_fields, "backup_type", "reason")

    def __init__(
        self, *, backup_type: str = "full", tier: str = "full", reason: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.backup_type = backup_type
        self.tier = tier
        self.reason = reason

    def execute(self, context: Any) -> dict[str, Any]:
        from wedsync_airflow.configurations import gather_bundle

        ti = context["ti"]
        result = self.call(
            lambda: preflight_and_full_backup(
                self.build_resources(),
                self.run_of(context),
                backup_type=self.backup_type or "full",
                tier=self.tier,
                reason=self.reason or None,  # an unset param renders as ""
                configurations=lambda: gather_bundle(self.policy_path),
                on_begun=lambda begun: ti.xcom_push(key="backup_id", value=begun.backup_id),
            )
        )
        ti.xcom_push(key="manifest_sha256", value=result.exported.manifest_sha256)
        return result.as_dict()


class ReplicateOperator(CommandOperator):
    """Copy the backup's ciphertext from the primary to one other target (mapped per target)."""

    template_fields = (*CommandOperator.template_fields, "backup_id", "manifest_sha256", "target_name")

    def __init__(self, *, backup_id: str, manifest_sha256: str, target_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.manifest_sha256 = manifest_sha256
        self.target_name = target_name

    def execute(self, context: Any) -> dict[str, Any]:
        return self.call(
            lambda: cmd.replicate(self.build_resources(), self.backup_id, self.manifest_sha256, self.target_name)
        )


class VerifyOperator(CommandOperator):
    """Verify one copy: size, checksum and decryption of every object (mapped per target)."""

    template_fields = (*CommandOperator.template_fields, "backup_id", "manifest_sha256", "target_name")

    def __init__(
        self, *, backup_id: str, manifest_sha256: str, target_name: str, deep: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.manifest_sha256 = manifest_sha256
        self.target_name = target_name
        self.deep = deep

    def execute(self, context: Any) -> dict[str, Any]:
        return self.call(
            lambda: cmd.verify(
                self.build_resources(), self.backup_id, self.manifest_sha256, self.target_name, deep=self.deep
            )
        )


class CommitBackupOperator(CommandOperator):
    """Write the manifest (the commit marker) on every verified target, then the catalog's completed row."""

    template_fields = (*CommandOperator.template_fields, "backup_id", "manifest_sha256", "verifications")

    def __init__(
        self,
        *,
        backup_id: str,
        manifest_sha256: str,
        verifications: Sequence[dict[str, Any]],
        tier: str = "full",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.manifest_sha256 = manifest_sha256
        self.verifications = verifications
        self.tier = tier

    def execute(self, context: Any) -> dict[str, Any]:
        result = self.call(
            lambda: cmd.commit(
                self.build_resources(), self.backup_id, self.manifest_sha256, list(self.verifications), tier=self.tier
            )
        )
        return result.as_dict()


class MarkBackupFailedOperator(CommandOperator):
    """Runs when any step failed: the catalog row says failed (never completed), with the failed tasks.

    ``backup_id`` empty: the run's own backup id (``backup_type`` says which), as the backup task made it;
    skipped when no row was opened (the preflight failed before anything was written)."""

    template_fields = (*CommandOperator.template_fields, "backup_id", "backup_type")
    mark_failed = staticmethod(cmd.mark_failed)  # the tier's mark_failed command

    def __init__(self, *, backup_id: str | None = None, backup_type: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.backup_type = backup_type

    def execute(self, context: Any) -> None:
        backup_id = self.backup_id
        if backup_id in (None, "", "None") and self.backup_type:
            backup_id = self.run_of(context).backup_id(self.backup_type)
        self.call(lambda: self.mark_failed(self.build_resources(), backup_id))


class PruneOperator(CommandOperator):
    """Apply retention on every target; never the newest complete backup; abandoned attempts too."""

    template_fields = (*CommandOperator.template_fields, "backup_type")

    def __init__(
        self, *, backup_type: str = "full", tier: str = "full", abandoned_after_hours: int = 48, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.backup_type = backup_type
        self.tier = tier
        self.abandoned_after_hours = abandoned_after_hours

    def execute(self, context: Any) -> dict[str, Any]:
        result = self.call(
            lambda: prune(
                self.build_resources(),
                backup_type=self.backup_type,
                tier=self.tier,
                abandoned_after_hours=self.abandoned_after_hours,
            )
        )
        return result.as_dict()
