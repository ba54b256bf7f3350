"""The backup command: begin -> export -> replicate (per replica) -> verify (per target) -> commit; mark_failed.

Every phase is idempotent and takes only ids and checksums from the phases before it (XCom-sized), never
files: a phase may run on another machine, or again after a crash. The incremental command reuses
replicate, verify, commit and mark_failed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg

from wedsync_backup.backup_id import parse_backup_id
from wedsync_backup.chain_source import prepare_chain_source
from wedsync_backup.commands.files_backup import add_files, export_snapshot
from wedsync_backup.commands.resources import NothingToDo, Resources, RunRef, retention_until
from wedsync_backup.errors import ConfigError, IntegrityError
from wedsync_backup.export import ExportOptions, run_export
from wedsync_backup.logical.ddl import capture_state
from wedsync_backup.logical.slot import check_logical_decoding, drop_slot, ensure_replica_identity, slot_name_for
from wedsync_backup.manifest import FULL_TYPES, ChainSection, Manifest, Provenance, StoredObject, manifest_key
from wedsync_backup.parallel import each_object
from wedsync_backup.policy import Policy
from wedsync_backup.replicate import replicate as copy_backup
from wedsync_backup.repository import begin_attempt, pending_manifest_bytes, write_commit_marker
from wedsync_backup.rule321 import Rule321Verdict, check_321, enforce_321
from wedsync_backup.storage.base import Storage
from wedsync_backup.storage.tee import TeeStorage
from wedsync_backup.verify import verify_copy
from wedsync_backup.watermark import WARNING as WATERMARK_WARNING

log = logging.getLogger(__name__)
OBJECT_WORKERS = 8


# --- shared checks -----------------------------------------------------------------------------------------
@dataclass
class Checked:
    """What every preflight establishes before anything is written: the catalog is migrated, the 3-2-1
    verdict, and that the key, the source and every target answer."""

    rule_321: Rule321Verdict
    warnings: list[str]


def check_setup(res: Resources, *, targets: bool = True) -> Checked:
    """Migrations, 3-2-1 verdict (refused unless the policy allows it), key, source, every target."""
    applied = res.catalog().migrate()
    if applied:
        log.info("Catalog migrations applied: %s", ", ".join(applied))
    verdict = check_321(res.policy)
    warnings = enforce_321(verdict)
    for w in warnings:
        log.warning("!!! %s", w)
    res.keyring()
    with res.source().connect(autocommit=True) as conn:
        conn.execute("SELECT 1")
    if targets:
        check_targets(res)
    return Checked(verdict, warnings)


def check_targets(res: Resources) -> None:
    """Every target answers: the bucket or directory exists and is writable. Side by side: each check is a few
    round trips to its service (a safety snapshot runs them while the tables in scope are locked)."""
    storages = res.all_storages()
    list(each_object(check_target, storages, len(storages)))


def check_target(storage: Storage) -> Storage:
    """One target answers (see ``check_targets``)."""
    storage.check()
    log.info("Target %s ok: %s (%s, %s)", storage.name, storage.url(), storage.medium, storage.site)
    return storage


def load_pending_manifest(res: Resources, backup_id: str, manifest_sha256: str) -> Manifest:
    """The manifest the export left on the primary, checked against the checksum the export reported."""
    data = pending_manifest_bytes(res.primary(), backup_id)
    got = hashlib.sha256(data).hexdigest()
    if got != manifest_sha256:
        raise IntegrityError(
            f"The manifest of {backup_id} on the primary target changed after the export",
            f"sha256 {got} instead of {manifest_sha256}",
            "re-run the backup",
        )
    return Manifest.from_bytes(data, source=f"manifest of {backup_id} on primary")


def provenance_of(res: Resources, backup_id: str, run: RunRef, tier: str) -> Provenance:
    """What begin recorded for the backup (who, why, the 3-2-1 verdict, warnings, retention), for its manifest."""
    row = res.catalog().get_backup(backup_id)
    if row is None:  # begin always opens the row; a hand-run export still says what it knows
        verdict = check_321(res.policy)
        until = retention_until(res.policy, tier)
        return Provenance(
            created_by=run.actor,
            dag_id=run.dag_id,
            run_id=run.run_id,
            rule_321=verdict.as_dict(),
            warnings=enforce_321(verdict),
            retention_until=until.isoformat() if until else None,
        )
    until = row.get("retention_until")
    return Provenance(
        created_by=row["created_by"],
        dag_id=row.get("dag_id") or run.dag_id,
        run_id=row.get("run_id") or run.run_id,
        reason=row.get("reason"),
        rule_321=row.get("rule_321"),
        warnings=list(row.get("warnings") or []),
        retention_until=until.isoformat() if until else None,
    )


# --- phases ------------------------------------------------------------------------------------------------
@dataclass
class BeginResult:
    backup_id: str
    rule_321: dict[str, Any]
    warnings: list[str]
    fresh: bool  # False: the backup is already completed (a duplicate trigger); later phases find it committed
    all_targets: list[str] = field(default_factory=list)
    replica_targets: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "rule_321": self.rule_321, "warnings": self.warnings}


def begin(
    res: Resources,
    run: RunRef,
    *,
    backup_type: str = "full",
    tier: str = "full",
    reason: str | None = None,
    targets: bool = True,
) -> BeginResult:
    """Preflight of a full (or manual) backup: check everything, then open its catalog row (in progress).
    ``targets=False``: the caller checks each target itself before it writes there (a safety snapshot)."""
    checked = check_setup(res, targets=targets)
    backup_id = run.backup_id(backup_type)
    warnings = list(checked.warnings)
    if backup_type in FULL_TYPES:  # the chain this backup starts: DDL capture installed, large objects warned of
        warnings += prepare_chain_source(res.policy, res.catalog(), res.source(), actor=run.actor, backup_id=backup_id)
    fresh = res.catalog().start_backup(
        backup_id=backup_id,
        backup_type=backup_type,
        created_by=run.actor,
        rule_321=checked.rule_321.as_dict(),
        warnings=warnings,
        retention_until=retention_until(res.policy, tier),
        dag_id=run.dag_id,
        run_id=run.run_id,
        reason=reason,
    )
    if not fresh:
        log.info("Backup %s is already completed; the later phases will find it committed", backup_id)
    names = list(res.policy.target_names)
    return BeginResult(
        backup_id, checked.rule_321.as_dict(), warnings, fresh, names, [t.name for t in res.policy.replicas]
    )


@dataclass
class ExportResult:
    backup_id: str
    manifest_sha256: str
    tables: int
    tables_by_priority: dict[str, int]
    rows: int
    plain_bytes: int
    stored_bytes: int
    objects: int
    lsn: str | None
    files_problems: list[str] = field(default_factory=list)  # missing/corrupt source files (kept as before)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chain_start(res: Resources, backup_id: str, run: RunRef) -> tuple[ChainSection, str | None]:
    """How this full backup starts the incremental chain: the section for its manifest, and the slot to
    export in (None unless the chain uses logical decoding)."""
    policy, source = res.policy, res.source()
    why = check_logical_decoding(source)
    mode = policy.incremental.mode(why)
    if mode == "logical":
        changed = ensure_replica_identity(source, policy.exclude_schemas)
        if changed:
            log.warning("Set REPLICA IDENTITY FULL on tables without a primary key: %s", changed)
            res.catalog().audit(
                "replica_identity_full", actor=run.actor, backup_id=backup_id, details={"tables": changed}
            )
        slot = slot_name_for(backup_id)
        # the schema fingerprint is read by the export, in the very snapshot the data comes from
        return ChainSection("logical", slot, None, changed, ddl_capture=capture_state(source).as_dict()), slot
    if mode == "watermark":
        log.warning(
            "!!! Incrementals after this backup use the %s watermark: %s",
            policy.incremental.watermark_column,
            WATERMARK_WARNING,
        )
    elif policy.incremental.enabled:
        log.warning("!!! No incremental chain starts with this backup: %s", why)
    return ChainSection(mode), None


def export_options(policy: Policy, slot: str | None = None) -> ExportOptions:
    """How the policy says to export (workers, compression, schemas, priorities); ``slot``: a chain's start."""
    return ExportOptions(
        workers=policy.export_workers,
        zstd_level=policy.zstd_level,
        exclude_schemas=policy.exclude_schemas,
        priority_of=policy.priority_of,
        slot=slot,
    )


def export_storage(res: Resources, backup_id: str, copies: bool) -> Storage:
    """Where the export writes: the primary, and with ``copies`` every replica at the same time (each
    cleared first of what an interrupted attempt left, unless the backup is already committed)."""
    primary = res.primary()
    if not copies:
        return primary
    replicas = [res.storage(t.name) for t in res.policy.replicas]
    if not primary.exists(manifest_key(backup_id)):
        for replica in replicas:
            begin_attempt(replica, backup_id)
    return TeeStorage(primary, replicas)


def export(
    res: Resources,
    backup_id: str,
    run: RunRef,
    *,
    backup_type: str = "full",
    tier: str = "full",
    copies: bool = False,
    on_stored: Callable[[StoredObject], None] | None = None,
) -> ExportResult:
    """Export one consistent snapshot to the primary; the manifest stays pending until commit.

    ``copies``: write every replica's copy during the export too (no replicate phase needed after it).
    ``on_stored``: told of each table part once every target holds it (to read it back while the export
    goes on)."""
    policy = res.policy
    chain, slot = chain_start(res, backup_id, run) if backup_type in FULL_TYPES else (None, None)
    snapshot = export_snapshot(res)  # the files table is read in the export's snapshot, after it
    try:
        manifest = run_export(
            res.source(),
            export_storage(res, backup_id, copies),
            res.keyring(),
            backup_id=backup_id,
            backup_type=backup_type,
            options=replace(
                export_options(policy, slot), on_snapshot=snapshot.attach if snapshot else None, on_stored=on_stored
            ),
            chain=chain,
            provenance=provenance_of(res, backup_id, run, tier),
        )
        # the files component (photos, documents): commands/files_backup.py
        manifest = add_files(res, manifest, snapshot)
    finally:
        if snapshot is not None:
            snapshot.close()
    by_priority: dict[str, int] = {}
    for t in manifest.tables:
        by_priority[t.priority] = by_priority.get(t.priority, 0) + 1
    return ExportResult(
        backup_id=backup_id,
        manifest_sha256=manifest.sha256(),  # of exactly the bytes left on the primary
        tables=len(manifest.tables),
        tables_by_priority=by_priority,
        rows=manifest.total_rows,
        plain_bytes=manifest.plain_bytes,
        stored_bytes=manifest.stored_bytes,
        objects=len(manifest.objects()),
        lsn=manifest.point.lsn,
        files_problems=list(manifest.files.problems) if manifest.files else [],
    )


def object_workers(manifest: Manifest) -> int:
    """Objects copied or verified at once: many small ones (a wedding backup or a wedding-only safety
    snapshot: one per wedding) in parallel."""
    return OBJECT_WORKERS if manifest.weddings is not None or manifest.restore_scope is not None else 1


def replicate(res: Resources, backup_id: str, manifest_sha256: str, target_name: str) -> dict[str, Any]:
    """Copy the backup's ciphertext from the primary to one replica target (never needs the key)."""
    manifest = load_pending_manifest(res, backup_id, manifest_sha256)
    return copy_backup(manifest, res.primary(), res.storage(target_name), workers=object_workers(manifest)).as_dict()


def verify(
    res: Resources, backup_id: str, manifest_sha256: str, target_name: str, *, deep: bool = False
) -> dict[str, Any]:
    """Check one copy: every object's size and sha256, and decryption of every chunk."""
    manifest = load_pending_manifest(res, backup_id, manifest_sha256)
    storage = res.storage(target_name)
    result = verify_copy(manifest, storage, res.keyring(), deep=deep, workers=object_workers(manifest)).as_dict()
    result["manifest_sha256"] = manifest_sha256
    return result


@dataclass
class CommitResult:
    backup_id: str
    status: str
    copies: int
    rows: int
    stored_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def commit(
    res: Resources,
    backup_id: str,
    manifest_sha256: str,
    verifications: Sequence[dict[str, Any]],
    *,
    tier: str = "full",
) -> CommitResult:
    """Only when every target's copy is verified: the manifest (commit marker) on every target, read back,
    then the catalog's completed row with one replica row per target."""
    policy = res.policy
    replicas = [dict(v) for v in verifications]
    by_name = {r["target_name"]: r for r in replicas}
    missing = [name for name in policy.target_names if not by_name.get(name, {}).get("verified")]
    if missing:
        raise IntegrityError(
            f"Backup {backup_id} is not verified on {', '.join(missing)}",
            "a backup counts only when every copy is verified",
            "see the verify task of that target",
        )
    manifest = load_pending_manifest(res, backup_id, manifest_sha256)
    write_commit_marker(manifest, res.all_storages(), pending_on=res.primary())
    for r in replicas:
        r.setdefault("location", "")
        if isinstance(r.get("verified_at"), str):
            r["verified_at"] = datetime.fromisoformat(r["verified_at"])
    recorded = manifest.provenance_info.retention_until  # set when the backup began
    until = datetime.fromisoformat(recorded) if recorded else retention_until(policy, tier)
    res.catalog().complete_backup(manifest, manifest_sha256, replicas, until, roles=policy.roles())
    log.info("%s", completion_summary(manifest, len(replicas)))
    return CommitResult(backup_id, "completed", len(replicas), manifest.total_rows, manifest.stored_bytes)


def completion_summary(manifest: Manifest, copies: int) -> str:
    """The commit log line: tables and rows for a full backup, changes and transactions for an incremental."""
    m = manifest
    if m.backup_type == "incremental":
        x = m.extra
        what = (
            f"{x.get('changes', 0)} changes in {x.get('transactions', 0)} transactions"
            f" (LSN {x.get('start_lsn')} -> {x.get('end_lsn')})"
        )
        if x.get("closes_chain"):
            what += ", closing the chain of its full backup"
    else:
        what = f"{len(m.tables)} tables, {m.total_rows} rows"
    return f"Backup {m.backup_id} completed: {what}, {m.stored_bytes} bytes stored x {copies} verified copies"


def mark_failed(res: Resources, backup_id: str | None) -> bool:
    """After any failed phase: the row says failed (never completed). A full's slot is dropped: a chain
    that never committed must not keep WAL on the source."""
    nothing = "Preflight failed before a backup was started: nothing to mark. See the failed task's log"
    if backup_id in (None, "", "None"):
        raise NothingToDo(nothing)
    assert backup_id is not None
    try:
        catalog = res.catalog()
        opened = catalog.get_backup(backup_id) is not None
    except (ConfigError, psycopg.errors.UndefinedTable) as e:  # no catalog set up: the preflight stopped there
        raise NothingToDo(f"{nothing} (the catalog: {e})") from e
    if not opened:  # no row, so neither a slot nor an object: the preflight failed before it opened one
        raise NothingToDo(nothing)
    changed = catalog.fail_backup(backup_id, "a backup step failed: see the failed task's log for what to fix")
    parts = parse_backup_id(backup_id)
    if parts is not None and parts.backup_type in FULL_TYPES:
        drop_slot(res.source(), slot_name_for(backup_id))
    log.error("Backup %s marked failed; no copy of it counts until a new run completes", backup_id)
    return changed
