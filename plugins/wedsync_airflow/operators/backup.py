"""Operators for the backup tiers: preflight -> export -> replicate -> verify -> commit -> prune."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException
from wedsync_backup.errors import ConfigError, IntegrityError, StorageError
from wedsync_backup.export import ExportOptions, run_export
from wedsync_backup.incremental import schema_fingerprint
from wedsync_backup.logical.slot import (
    check_logical_decoding,
    drop_slot,
    ensure_replica_identity,
    slot_name_for,
    wedsync_slots,
)
from wedsync_backup.manifest import Manifest, manifest_key, pending_manifest_key
from wedsync_backup.policy import Policy
from wedsync_backup.replicate import replicate
from wedsync_backup.repository import committed_manifests, pending_manifest_bytes
from wedsync_backup.retention import delete_backup, incomplete_backup_ids, select_prunable
from wedsync_backup.rule321 import check_321, enforce_321
from wedsync_backup.verify import verify_copy
from wedsync_backup.watermark import WARNING as WATERMARK_WARNING

from wedsync_airflow.connections import catalog, keyring, pg_target
from wedsync_airflow.operators.base import WedSyncOperator, run_id_of
from wedsync_airflow.preconditions import completion_summary
from wedsync_airflow.targets import build_storage, build_targets


def make_backup_id(backup_type: str, dag_id: str, run_id: str, at: datetime) -> str:
    """Stable per DAG run, so every retry of every task works on the same backup."""
    digest = hashlib.sha256(f"{dag_id}|{run_id}".encode()).hexdigest()[:8]
    return f"{backup_type}-{at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{digest}"


def backup_id_for(context: Any, backup_type: str) -> str:
    """The backup id of this DAG run (from its run id and the moment it was due)."""
    dag_run = context["dag_run"]
    at = getattr(dag_run, "run_after", None) or getattr(dag_run, "logical_date", None) or datetime.now(UTC)
    return make_backup_id(backup_type, context["ti"].dag_id, run_id_of(context), at)


def retention_until(policy: Policy, tier: str) -> datetime | None:
    """When a backup of ``tier`` made now may be pruned (None: the policy sets no retention)."""
    t = policy.tiers.get(tier)
    return datetime.now(UTC) + timedelta(days=t.retention_days) if t else None


def load_pending_manifest(policy: Policy, backup_id: str, manifest_sha256: str) -> Manifest:
    """The manifest the export left on the primary, checked against the checksum passed by XCom."""
    data = pending_manifest_bytes(build_storage(policy.primary), backup_id)
    got = hashlib.sha256(data).hexdigest()
    if got != manifest_sha256:
        raise IntegrityError(
            f"The manifest of {backup_id} on the primary target changed after the export",
            f"sha256 {got} instead of {manifest_sha256}",
            "re-run the backup",
        )
    return Manifest.from_bytes(data, source=f"manifest of {backup_id} on primary")


class BackupPreflightOperator(WedSyncOperator):
    """Migrations, 3-2-1 verdict, connectivity of source, catalog, key and every target; opens the row.

    Pushes XComs ``backup_id``, ``replica_targets`` and ``all_targets`` for the mapped downstream tasks.
    """

    template_fields = (*WedSyncOperator.template_fields, "backup_type", "reason")

    def __init__(
        self, *, backup_type: str = "full", tier: str = "full", reason: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.backup_type = backup_type
        self.tier = tier
        self.reason = reason

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(lambda: self._run(context))

    def _run(self, context: Any) -> dict[str, Any]:
        policy = self.policy()
        cat = catalog(policy)
        applied = cat.migrate()
        if applied:
            self.log.info("Catalog migrations applied: %s", ", ".join(applied))
        verdict = check_321(policy)
        warnings = enforce_321(verdict)
        for w in warnings:
            self.log.warning("!!! %s", w)
        keyring(policy.encryption_conn_id)
        with pg_target(policy.source_conn_id, "source").connect(autocommit=True) as conn:
            conn.execute("SELECT 1")
        for storage in build_targets(policy):
            storage.check()
            self.log.info("Target %s ok: %s (%s, %s)", storage.name, storage.url(), storage.medium, storage.site)

        backup_id = backup_id_for(context, self.backup_type)
        fresh = cat.start_backup(
            backup_id=backup_id,
            backup_type=self.backup_type,
            created_by=f"airflow:{self.dag_id}",
            rule_321=verdict.as_dict(),
            warnings=warnings,
            retention_until=retention_until(policy, self.tier),
            dag_id=self.dag_id,
            run_id=run_id_of(context),
            reason=self.reason,
        )
        if not fresh:
            self.log.info("Backup %s is already completed; downstream tasks will find it committed", backup_id)
        ti = context["ti"]
        names = [t.name for t in policy.targets]
        ti.xcom_push(key="backup_id", value=backup_id)
        ti.xcom_push(key="all_targets", value=names)
        ti.xcom_push(key="replica_targets", value=names[1:])
        return {"backup_id": backup_id, "rule_321": verdict.as_dict(), "warnings": warnings}


class ExportOperator(WedSyncOperator):
    """Consistent, prioritized, parallel export streamed to the primary target. Pushes ``manifest_sha256``."""

    template_fields = (*WedSyncOperator.template_fields, "backup_id")

    def __init__(self, *, backup_id: str, backup_type: str = "full", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.backup_type = backup_type

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(lambda: self._run(context))

    def _run(self, context: Any) -> dict[str, Any]:
        policy = self.policy()
        primary = build_storage(policy.primary)
        source = pg_target(policy.source_conn_id, "source")
        slot = None
        extra: dict[str, Any] = {"dag_id": self.dag_id, "run_id": run_id_of(context)}
        if self.backup_type == "full":
            why = check_logical_decoding(source)
            mode = policy.incremental.mode(why)
            if mode == "logical":
                slot = slot_name_for(self.backup_id)
                changed = ensure_replica_identity(source, policy.exclude_schemas)
                if changed:
                    self.log.warning("Set REPLICA IDENTITY FULL on tables without a primary key: %s", changed)
                    catalog(policy).audit(
                        "replica_identity_full",
                        actor=f"airflow:{self.dag_id}",
                        backup_id=self.backup_id,
                        details={"tables": changed},
                    )
                extra["replica_identity_full_set"] = changed
                extra["schema_fingerprint"] = schema_fingerprint(source, policy.exclude_schemas)
            elif mode == "watermark":
                self.log.warning(
                    "!!! Incrementals after this backup use the %s watermark: %s",
                    policy.incremental.watermark_column,
                    WATERMARK_WARNING,
                )
            elif policy.incremental.enabled:
                self.log.warning("!!! No incremental chain starts with this backup: %s", why)
            extra["chain"] = mode
        manifest = run_export(
            source,
            primary,
            keyring(policy.encryption_conn_id),
            backup_id=self.backup_id,
            backup_type=self.backup_type,
            options=ExportOptions(
                workers=policy.export_workers,
                zstd_level=policy.zstd_level,
                exclude_schemas=policy.exclude_schemas,
                priority_of=policy.priority_of,
                slot=slot,
            ),
            extra=extra,
        )
        sha = manifest.sha256()  # of exactly the bytes left on the primary
        context["ti"].xcom_push(key="manifest_sha256", value=sha)
        by_priority: dict[str, int] = {}
        for t in manifest.tables:
            by_priority[t.priority] = by_priority.get(t.priority, 0) + 1
        return {
            "backup_id": self.backup_id,
            "manifest_sha256": sha,
            "tables": len(manifest.tables),
            "tables_by_priority": by_priority,
            "rows": manifest.total_rows,
            "plain_bytes": manifest.plain_bytes,
            "stored_bytes": manifest.stored_bytes,
            "objects": len(manifest.objects()),
            "lsn": manifest.consistent_point["lsn"],
        }


class ReplicateOperator(WedSyncOperator):
    """Copy the backup's ciphertext from the primary to one other target (mapped per target)."""

    template_fields = (*WedSyncOperator.template_fields, "backup_id", "manifest_sha256", "target_name")

    def __init__(self, *, backup_id: str, manifest_sha256: str, target_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.manifest_sha256 = manifest_sha256
        self.target_name = target_name

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(self._run)

    def _run(self) -> dict[str, Any]:
        policy = self.policy()
        manifest = load_pending_manifest(policy, self.backup_id, self.manifest_sha256)
        src = build_storage(policy.primary)
        dst = build_storage(policy.target(self.target_name))
        return replicate(manifest, src, dst).as_dict()


class VerifyOperator(WedSyncOperator):
    """Verify one copy: size, checksum and decryption of every object (mapped per target)."""

    template_fields = (*WedSyncOperator.template_fields, "backup_id", "manifest_sha256", "target_name")

    def __init__(
        self, *, backup_id: str, manifest_sha256: str, target_name: str, deep: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.manifest_sha256 = manifest_sha256
        self.target_name = target_name
        self.deep = deep

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(self._run)

    def _run(self) -> dict[str, Any]:
        policy = self.policy()
        manifest = load_pending_manifest(policy, self.backup_id, self.manifest_sha256)
        storage = build_storage(policy.target(self.target_name))
        result = verify_copy(manifest, storage, keyring(policy.encryption_conn_id), deep=self.deep)
        out = result.as_dict()
        out["manifest_sha256"] = self.manifest_sha256
        return out


class CommitBackupOperator(WedSyncOperator):
    """Write the manifest (the commit marker) on every verified target, then the catalog's completed row."""

    template_fields = (*WedSyncOperator.template_fields, "backup_id", "manifest_sha256", "verifications")

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
        return self.guarded(self._run)

    def _run(self) -> dict[str, Any]:
        policy = self.policy()
        replicas = [dict(v) for v in self.verifications]
        by_name = {r["target_name"]: r for r in replicas}
        missing = [t.name for t in policy.targets if not by_name.get(t.name, {}).get("verified")]
        if missing:
            raise IntegrityError(
                f"Backup {self.backup_id} is not verified on {', '.join(missing)}",
                "a backup counts only when every copy is verified",
                "see the verify task of that target",
            )
        manifest = load_pending_manifest(policy, self.backup_id, self.manifest_sha256)
        data = manifest.to_bytes()  # byte for byte what the export wrote: its sha256 is the XCom's
        for target in policy.targets:
            storage = build_storage(target)
            storage.put_bytes(manifest_key(self.backup_id), data)
            if storage.get_bytes(manifest_key(self.backup_id)) != data:
                raise StorageError(
                    f"The manifest of {self.backup_id} did not read back intact from {target.name}",
                    fix="check the target and re-run this task",
                )
        primary = build_storage(policy.primary)
        primary.delete([pending_manifest_key(self.backup_id)])
        for r in replicas:
            r.setdefault("location", "")
            if isinstance(r.get("verified_at"), str):
                r["verified_at"] = datetime.fromisoformat(r["verified_at"])
        catalog(policy).complete_backup(manifest, self.manifest_sha256, replicas, retention_until(policy, self.tier))
        self.log.info("%s", completion_summary(manifest, len(replicas)))
        return {
            "backup_id": self.backup_id,
            "status": "completed",
            "copies": len(replicas),
            "rows": manifest.total_rows,
            "stored_bytes": manifest.stored_bytes,
        }


class MarkBackupFailedOperator(WedSyncOperator):
    """Runs when any step failed: the catalog row says failed (never completed), with the failed tasks."""

    template_fields = (*WedSyncOperator.template_fields, "backup_id")

    def __init__(self, *, backup_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id

    def execute(self, context: Any) -> None:
        if self.backup_id in (None, "", "None"):
            raise AirflowSkipException(
                "Preflight failed before a backup was started: nothing to mark. See the preflight task's log"
            )
        reason = "a backup step failed: see the failed task's log for what to fix"
        policy = self.policy()
        catalog(policy).fail_backup(self.backup_id, reason)
        if self.backup_id.startswith("full-"):
            # a chain that never committed must not keep WAL on the source
            drop_slot(pg_target(policy.source_conn_id, "source"), slot_name_for(self.backup_id))
        self.log.error("Backup %s marked failed; no copy of it counts until a new run completes", self.backup_id)


class PruneOperator(WedSyncOperator):
    """Apply retention on every target; never the newest complete backup; abandoned attempts too."""

    template_fields = (*WedSyncOperator.template_fields, "backup_type")

    def __init__(
        self, *, backup_type: str = "full", tier: str = "full", abandoned_after_hours: int = 48, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.backup_type = backup_type
        self.tier = tier
        self.abandoned_after_hours = abandoned_after_hours

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(self._run)

    def _run(self) -> dict[str, Any]:
        policy = self.policy()
        tier = policy.tiers.get(self.tier)
        if tier is None:
            raise ConfigError(f"The policy has no tier '{self.tier}'", fix=f"add tiers.{self.tier}.retention_days")
        cat = catalog(policy)
        now = datetime.now(UTC)
        running = {r["backup_id"] for r in cat.list_in_progress()}
        pruned: dict[str, list[str]] = {}
        for storage in build_targets(policy):
            manifests = committed_manifests(storage)
            ids = select_prunable(manifests, now=now, retention_days=tier.retention_days, backup_type=self.backup_type)
            for backup_id in ids:
                delete_backup(storage, backup_id)
            pruned[storage.name] = ids
            committed = {m.backup_id for m in manifests}
            for backup_id in incomplete_backup_ids(storage, committed, running):
                if _age_hours(backup_id, now) > self.abandoned_after_hours:
                    delete_backup(storage, backup_id)
                    self.log.info("Removed abandoned attempt %s from %s", backup_id, storage.name)
        for backup_id in sorted({i for ids in pruned.values() for i in ids}):
            cat.delete_backup_rows(backup_id)
        if self.backup_type == "full":
            self._drop_stale_slots(policy, running)
        self.log.info("Retention (%d days) pruned: %s", tier.retention_days, pruned)
        return {"retention_days": tier.retention_days, "pruned": pruned}

    def _drop_stale_slots(self, policy: Policy, running: set[str]) -> None:
        """Slots whose chain can never be continued keep WAL on the source for nothing: drop them.

        That is a slot of no committed full backup (and no running one), or of a full that two newer fulls have
        superseded (the hourly tier closes a chain as soon as the next full exists).
        """
        source = pg_target(policy.source_conn_id, "source")
        fulls = sorted(
            (m for m in committed_manifests(build_storage(policy.primary)) if m.consistent_point.get("slot")),
            key=lambda m: m.consistent_point["time"],
        )
        keep = {m.consistent_point["slot"] for m in fulls[-2:]} | {slot_name_for(b) for b in running}
        for s in wedsync_slots(source):
            if s.name not in keep:
                drop_slot(source, s.name)
                self.log.warning("!!! Dropped replication slot %s: no chain can continue from it", s.name)


def _age_hours(backup_id: str, now: datetime) -> float:
    try:
        stamp = datetime.strptime(backup_id.split("-")[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except (IndexError, ValueError):
        return 0.0
    return (now - stamp).total_seconds() / 3600
