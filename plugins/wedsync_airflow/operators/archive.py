"""Operators of the weekly offsite archive (core: wedsync_backup.archive)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from wedsync_backup.archive import archive_setup, prune_archives, run_archive
from wedsync_backup.assurance_policy import load_assurance
from wedsync_backup.commands.backup import export_options
from wedsync_backup.commands.files_backup import OFF_WARNING, files_world

from wedsync_airflow.connections import catalog, keyring, pg_target
from wedsync_airflow.operators.base import WedSyncOperator, run_id_of
from wedsync_airflow.resources import airflow_resources, run_ref
from wedsync_airflow.targets import build_storage


class WeeklyArchiveOperator(WedSyncOperator):
    """Export, copy to the archive targets in their archive class under a lock, verify, commit, record."""

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(lambda: self._run(context))

    def _run(self, context: Any) -> dict[str, Any]:
        policy = self.policy()
        archive = load_assurance(self.policy_path or None).archive
        verdict, warnings = archive_setup(policy, archive)
        for w in warnings:
            self.log.warning("!!! archive: %s", w)
        cat = catalog(policy)
        cat.migrate()
        storages = [build_storage(policy.target(name)) for name in archive.targets]
        for s in storages:
            s.check()
        files = files_world(airflow_resources(policy)) if policy.files.enabled else None
        if files is None:
            self.log.warning("!!! %s", OFF_WARNING)
        return run_archive(
            cat,
            pg_target(policy.source_conn_id, "source"),
            storages,
            keyring(policy.encryption_conn_id),
            backup_id=run_ref(context).backup_id("archive"),
            archive=archive,
            options=export_options(policy),
            verdict=verdict,
            warnings=warnings,
            now=datetime.now(UTC),
            actor=f"airflow:{self.dag_id}",
            dag_id=self.dag_id,
            run_id=run_id_of(context),
            roles={name: policy.target(name).role for name in archive.targets},
            files=files,
        )


class PruneArchivesOperator(WedSyncOperator):
    """Remove archives past the archive retention from every archive target (never the newest)."""

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(self._run)

    def _run(self) -> dict[str, Any]:
        policy = self.policy()
        archive = load_assurance(self.policy_path or None).archive
        storages = [build_storage(policy.target(name)) for name in archive.targets]
        pruned = prune_archives(catalog(policy), storages, retention_days=archive.retention_days, now=datetime.now(UTC))
        self.log.info("Archive retention (%d days) pruned: %s", archive.retention_days, pruned)
        return {"retention_days": archive.retention_days, "pruned": pruned}
