"""Operators for the hourly incremental: find the chain, capture, then (after commit) release the slot."""

from __future__ import annotations

from typing import Any

from wedsync_backup.errors import ConfigError, IntegrityError
from wedsync_backup.incremental import capture_incremental, schema_fingerprint
from wedsync_backup.logical.slot import advance_slot, check_logical_decoding, drop_slot, wedsync_slots
from wedsync_backup.pitr import chain_of
from wedsync_backup.policy import Policy
from wedsync_backup.repository import committed_manifests, read_manifest
from wedsync_backup.rule321 import check_321, enforce_321
from wedsync_backup.watermark import WARNING as WATERMARK_WARNING
from wedsync_backup.watermark import capture_watermark

from wedsync_airflow.connections import catalog, keyring, pg_target
from wedsync_airflow.operators.backup import backup_id_for, load_pending_manifest, retention_until
from wedsync_airflow.operators.base import WedSyncOperator, run_id_of
from wedsync_airflow.preconditions import skip_until_first_full
from wedsync_airflow.targets import build_storage, build_targets


def chain_work(policy: Policy) -> dict[str, Any]:
    """Which chain this run works on: the oldest full backup whose slot is still alive.

    When a newer full exists, this run closes the older chain: it captures up to the newer full's
    consistent LSN (so the two chains meet with no gap and no overlap) and then drops the old slot.
    """
    source = pg_target(policy.source_conn_id, "source")
    manifests = committed_manifests(build_storage(policy.primary))
    fulls = sorted(
        (m for m in manifests if m.backup_type == "full" and m.consistent_point.get("slot")),
        key=lambda m: m.consistent_point["time"],
    )
    live = {s.name: s for s in wedsync_slots(source)}
    for i, full in enumerate(fulls):
        slot = full.consistent_point["slot"]
        if slot not in live:
            continue
        chain = chain_of(full, manifests)
        parent = chain[-1] if chain else full
        newer = fulls[i + 1] if i + 1 < len(fulls) else None
        return {
            "full": full.backup_id,
            "parent": parent.backup_id,
            "chain": [full.backup_id, *(m.backup_id for m in chain)],
            "slot": slot,
            "retained_wal_bytes": live[slot].retained_wal_bytes,
            "closing": newer is not None,
            "upto_lsn": newer.consistent_point["lsn"] if newer else None,
            "fingerprint": full.extra.get("schema_fingerprint"),
        }
    raise ConfigError(
        "No incremental chain to continue",
        "no committed full backup on the primary has a live replication slot",
        "run backup_daily_full: each full backup starts a chain",
    )


class IncrementalPreflightOperator(WedSyncOperator):
    """Catalog, targets, 3-2-1; the chain to continue; slot safety; schema changes. Pushes the plan."""

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(lambda: self._run(context))

    def _run(self, context: Any) -> dict[str, Any]:
        policy = self.policy()
        cat = catalog(policy)
        cat.migrate()
        verdict = check_321(policy)
        warnings = enforce_321(verdict)
        keyring(policy.encryption_conn_id)
        source = pg_target(policy.source_conn_id, "source")
        why = check_logical_decoding(source)
        mode = policy.incremental.mode(why)
        if mode == "none":
            raise ConfigError(
                "The source cannot feed the incremental tier",
                why or "incremental backups are disabled in the policy",
                "set wal_level=logical and give the backup user REPLICATION, then run backup_daily_full; "
                "or set incremental.fallback: updated_at in the policy (it does not capture deletes)",
            )
        skip_until_first_full(policy)  # a fresh installation: skip (green), saying what starts the chain
        if mode == "watermark":
            return self._watermark_plan(context, policy, cat, verdict.as_dict(), warnings)
        for storage in build_targets(policy):
            storage.check()
        limit = policy.incremental.max_retained_wal_mb << 20
        dropped: list[str] = []
        for s in wedsync_slots(source):
            self.log.info("Slot %s retains %.1f MB of WAL on the source", s.name, s.retained_wal_bytes / 2**20)
            if s.retained_wal_bytes > limit:
                if policy.incremental.drop_slot_over_threshold:
                    drop_slot(source, s.name)
                    dropped.append(s.name)
                    cat.audit(
                        "slot_dropped",
                        actor=f"airflow:{self.dag_id}",
                        details={"slot": s.name, "retained_wal_bytes": s.retained_wal_bytes},
                    )
                    self.log.error(
                        "!!! Dropped slot %s: it retained %d bytes of WAL (limit %d). Its chain has "
                        "ended; the next backup_daily_full starts a new one",
                        s.name,
                        s.retained_wal_bytes,
                        limit,
                    )
                else:
                    raise ConfigError(
                        f"Replication slot {s.name} keeps {s.retained_wal_bytes >> 20} MB of WAL on the source",
                        f"the limit is incremental.max_retained_wal_mb = {policy.incremental.max_retained_wal_mb}",
                        "find why incrementals stopped (see earlier runs); to give up the chain set "
                        "incremental.drop_slot_over_threshold: true, or drop the slot and run backup_daily_full",
                    )
        try:
            work = chain_work(policy)
        except ConfigError:
            if not dropped:
                raise
            # the only chain was given up for the source's sake: the next full backup starts a new one
            work = {
                "full": None,
                "parent": None,
                "chain": [],
                "slot": dropped[0],
                "closing": False,
                "upto_lsn": None,
                "fingerprint": None,
                "retained_wal_bytes": 0,
                "dropped": dropped,
            }
        action = "close" if work["closing"] else "capture"
        if work["slot"] in dropped:
            action = "end_chain"
        if not work["closing"] and work["fingerprint"]:
            now_fp = schema_fingerprint(source, policy.exclude_schemas)
            if now_fp != work["fingerprint"]:
                action = "end_chain"
        backup_id = backup_id_for(context, "incremental")
        if action == "end_chain":
            reason = "slot dropped: too much retained WAL" if work["slot"] in dropped else "schema change"
            drop_slot(source, work["slot"])
            cat.audit(
                "chain_ended",
                actor=f"airflow:{self.dag_id}",
                details={"reason": reason, "full": work["full"], "last": work["parent"]},
            )
            self.log.error(
                "!!! The chain of full backup %s ends at %s (%s). A new full backup is triggered; moments "
                "between them cannot be restored exactly",
                work["full"],
                work["parent"],
                reason,
            )
        else:
            cat.start_backup(
                backup_id=backup_id,
                backup_type="incremental",
                created_by=f"airflow:{self.dag_id}",
                rule_321=verdict.as_dict(),
                warnings=warnings,
                retention_until=retention_until(policy, "incremental"),
                dag_id=self.dag_id,
                run_id=run_id_of(context),
                parent_backup_id=work["parent"],
            )
        ti = context["ti"]
        ti.xcom_push(key="backup_id", value=backup_id)
        ti.xcom_push(key="action", value=action)
        return {**work, "action": action, "backup_id": backup_id, "warnings": warnings}

    def _watermark_plan(
        self, context: Any, policy: Policy, cat: Any, verdict: dict[str, Any], warnings: list[str]
    ) -> dict[str, Any]:
        """The fallback chain: the newest committed full backup and the incrementals after it."""
        manifests = committed_manifests(build_storage(policy.primary))
        fulls = sorted((m for m in manifests if m.backup_type == "full"), key=lambda m: m.consistent_point["time"])
        if not fulls:
            raise ConfigError("No full backup to continue from", fix="run backup_daily_full first")
        full = fulls[-1]
        chain = chain_of(full, manifests)
        parent = chain[-1] if chain else full
        self.log.warning("!!! %s", WATERMARK_WARNING)
        backup_id = backup_id_for(context, "incremental")
        cat.start_backup(
            backup_id=backup_id,
            backup_type="incremental",
            created_by=f"airflow:{self.dag_id}",
            rule_321=verdict,
            warnings=[*warnings, WATERMARK_WARNING],
            retention_until=retention_until(policy, "incremental"),
            dag_id=self.dag_id,
            run_id=run_id_of(context),
            parent_backup_id=parent.backup_id,
        )
        ti = context["ti"]
        ti.xcom_push(key="backup_id", value=backup_id)
        ti.xcom_push(key="action", value="capture")
        return {
            "method": "watermark",
            "action": "capture",
            "backup_id": backup_id,
            "full": full.backup_id,
            "parent": parent.backup_id,
            "chain": [full.backup_id, *(m.backup_id for m in chain)],
            "slot": None,
            "closing": False,
            "upto_lsn": None,
            "captures_deletes": False,
            "warnings": [*warnings, WATERMARK_WARNING],
        }


class CaptureIncrementalOperator(WedSyncOperator):
    """Capture the chain's pending changes to the primary (pending manifest). Pushes ``manifest_sha256``."""

    template_fields = (*WedSyncOperator.template_fields, "backup_id", "plan")

    def __init__(self, *, backup_id: str, plan: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if self.plan["action"] == "end_chain":
            raise AirflowSkipException("The chain ended (schema change): a new full backup starts the next one")
        return self.guarded(lambda: self._run(context))

    def _run(self, context: Any) -> dict[str, Any]:
        policy = self.policy()
        primary = build_storage(policy.primary)
        parent = read_manifest(primary, self.plan["parent"])
        if self.plan.get("method") == "watermark":
            manifest = capture_watermark(
                pg_target(policy.source_conn_id, "source"),
                primary,
                keyring(policy.encryption_conn_id),
                backup_id=self.backup_id,
                parent=parent,
                chain=self.plan["chain"],
                column=policy.incremental.watermark_column,
                exclude_schemas=policy.exclude_schemas,
                zstd_level=policy.zstd_level,
                extra={"dag_id": self.dag_id, "run_id": run_id_of(context)},
            )
        else:
            manifest = capture_incremental(
                pg_target(policy.source_conn_id, "source"),
                primary,
                keyring(policy.encryption_conn_id),
                backup_id=self.backup_id,
                parent=parent,
                chain=self.plan["chain"],
                slot=self.plan["slot"],
                zstd_level=policy.zstd_level,
                upto_lsn=self.plan.get("upto_lsn"),
                extra={"dag_id": self.dag_id, "run_id": run_id_of(context), "closes_chain": self.plan["closing"]},
            )
        sha = manifest.sha256()  # of exactly the bytes left on the primary
        context["ti"].xcom_push(key="manifest_sha256", value=sha)
        return {
            "backup_id": self.backup_id,
            "manifest_sha256": sha,
            "changes": manifest.extra["changes"],
            "transactions": manifest.extra["transactions"],
            "start_lsn": manifest.extra.get("start_lsn"),
            "end_lsn": manifest.extra.get("end_lsn"),
            "stored_bytes": manifest.stored_bytes,
            "captures_deletes": manifest.extra.get("captures_deletes", True),
        }


class ReleaseSlotOperator(WedSyncOperator):
    """After the incremental is committed on every target: advance the slot to its end (or drop a closed one)."""

    template_fields = (*WedSyncOperator.template_fields, "backup_id", "manifest_sha256", "plan")

    def __init__(self, *, backup_id: str, manifest_sha256: str, plan: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.manifest_sha256 = manifest_sha256
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(self._run)

    def _run(self) -> dict[str, Any]:
        policy = self.policy()
        row = catalog(policy).get_backup(self.backup_id)
        if not row or row.get("status") != "completed":
            raise IntegrityError(
                f"Incremental {self.backup_id} is not completed in the catalog",
                "the slot may only move once the incremental is safe on every target",
                "see the commit task",
            )
        manifest = load_pending_manifest(policy, self.backup_id, self.manifest_sha256)
        source = pg_target(policy.source_conn_id, "source")
        slot = self.plan["slot"]
        if slot is None:  # watermark chain: no slot to move
            return {"slot": None, "method": "watermark"}
        if self.plan["closing"]:
            drop_slot(source, slot)
            self.log.info(
                "Chain of %s closed at %s; slot %s dropped", self.plan["full"], manifest.extra["end_lsn"], slot
            )
            return {"slot": slot, "dropped": True}
        if manifest.extra.get("end_lsn"):
            advance_slot(source, slot, manifest.extra["end_lsn"])
        self.log.info("Slot %s advanced to %s", slot, manifest.extra.get("end_lsn"))
        return {"slot": slot, "advanced_to": manifest.extra.get("end_lsn")}
