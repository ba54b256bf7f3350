"""The incremental command: begin (which chain, slot safety, schema changes) -> capture -> [replicate, verify,
commit from the backup command] -> release (the slot moves only once the capture is safe everywhere).

A chain is a full backup plus the incrementals after it. With logical decoding each full backup creates a
replication slot in its own snapshot, so its change stream starts exactly where its data ends.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from wedsync_backup.chain_source import large_object_warning
from wedsync_backup.commands.backup import check_setup, check_targets, load_pending_manifest, provenance_of
from wedsync_backup.commands.files_backup import add_files
from wedsync_backup.commands.resources import NothingToDo, Resources, RunRef, retention_until
from wedsync_backup.errors import ConfigError, IntegrityError
from wedsync_backup.incremental import capture_incremental
from wedsync_backup.logical.ddl import fingerprint_version
from wedsync_backup.logical.slot import advance_slot, check_logical_decoding, drop_slot, wedsync_slots
from wedsync_backup.manifest import FULL_TYPES
from wedsync_backup.pg import PgTarget
from wedsync_backup.pitr import chain_of
from wedsync_backup.repository import committed_manifests, read_manifest
from wedsync_backup.schema_changes import record_outcome
from wedsync_backup.storage.base import Storage
from wedsync_backup.watermark import WARNING as WATERMARK_WARNING
from wedsync_backup.watermark import capture_watermark

log = logging.getLogger(__name__)
TIER = "incremental"


NO_FULL_YET = (
    "No full backup exists yet on the primary target ({url}), so there is no chain for an incremental to "
    "continue: this run skips. The first completed run of backup_daily_full (triggered by ./scripts/run.sh, "
    "by hand, or at its daily schedule) starts the chain; the next backup_hourly_incremental run continues it."
)


def require_a_full_backup(primary: Storage) -> None:
    """A fresh installation has no full backup yet: nothing is at risk that the first full will not cover, so
    the run has nothing to do (it skips, green) rather than failing."""
    if not any(m.backup_type in FULL_TYPES for m in committed_manifests(primary)):
        raise NothingToDo(NO_FULL_YET.format(url=primary.url()))


class NoChainToContinue(ConfigError):
    """No committed full backup has a live chain: the next full backup starts one."""


@dataclass
class IncrementalPlan:
    """What begin decided; travels to capture and release as a plain dict (XCom).

    ``action``: capture (continue the chain), close (capture up to the newer full's LSN, then drop the
    slot) or end_chain (schema change or slot given up: nothing captured, a new full backup is due).
    """

    action: str
    backup_id: str
    full: str | None
    parent: str | None
    chain: list[str]
    slot: str | None
    closing: bool = False
    upto_lsn: str | None = None
    fingerprint: str | None = None
    retained_wal_bytes: int = 0
    end_fingerprint: str | None = None  # closing: the newer full's schema, where this chain must end
    method: str = "logical"
    captures_deletes: bool = True
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IncrementalPlan:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class ChainWork:
    full: str
    parent: str
    chain: list[str]
    slot: str
    retained_wal_bytes: int
    closing: bool
    upto_lsn: str | None
    fingerprint: str | None
    end_fingerprint: str | None = None


def chain_work(res: Resources) -> ChainWork:
    """Which chain this run works on: the oldest full backup whose slot is still alive.

    When a newer full exists, this run closes the older chain: it captures up to the newer full's
    consistent LSN (so the two chains meet with no gap and no overlap) and then drops the old slot.
    """
    manifests = committed_manifests(res.primary())
    fulls = sorted(
        (m for m in manifests if m.backup_type in FULL_TYPES and m.point.slot),
        key=lambda m: m.point.time or m.created_at,
    )
    live = {s.name: s for s in wedsync_slots(res.source())}
    for i, full in enumerate(fulls):
        slot = full.point.slot
        if slot not in live:
            continue
        chain = chain_of(full, manifests)
        parent = chain[-1] if chain else full
        newer = fulls[i + 1] if i + 1 < len(fulls) else None
        started = full.chain_info
        fingerprint = started.schema_fingerprint if started else None
        return ChainWork(
            full=full.backup_id,
            parent=parent.backup_id,
            chain=[full.backup_id, *(m.backup_id for m in chain)],
            slot=slot,
            retained_wal_bytes=live[slot].retained_wal_bytes,
            closing=newer is not None,
            upto_lsn=newer.point.lsn if newer else None,
            fingerprint=fingerprint,
            # closing: the newer full's schema, as a fingerprint of this chain's own version
            end_fingerprint=(
                newer.chain_info.fingerprint(fingerprint_version(fingerprint)) if newer and newer.chain_info else None
            ),
        )
    raise NoChainToContinue(
        "No incremental chain to continue",
        "no committed full backup on the primary has a live replication slot",
        "run backup_daily_full: each full backup starts a chain",
    )


def _guard_retained_wal(res: Resources, source: PgTarget, run: RunRef) -> list[str]:
    """Slots keeping more WAL than the policy allows: fail loudly, or drop them when the policy says so."""
    inc = res.policy.incremental
    limit = inc.max_retained_wal_mb << 20
    dropped: list[str] = []
    for s in wedsync_slots(source):
        log.info("Slot %s retains %.1f MB of WAL on the source", s.name, s.retained_wal_bytes / 2**20)
        if s.retained_wal_bytes <= limit:
            continue
        if not inc.drop_slot_over_threshold:
            raise ConfigError(
                f"Replication slot {s.name} keeps {s.retained_wal_bytes >> 20} MB of WAL on the source",
                f"the limit is incremental.max_retained_wal_mb = {inc.max_retained_wal_mb}",
                "find why incrementals stopped (see earlier runs); to give up the chain set "
                "incremental.drop_slot_over_threshold: true, or drop the slot and run backup_daily_full",
            )
        drop_slot(source, s.name)
        dropped.append(s.name)
        res.catalog().audit(
            "slot_dropped", actor=run.actor, details={"slot": s.name, "retained_wal_bytes": s.retained_wal_bytes}
        )
        log.error(
            "!!! Dropped slot %s: it retained %d bytes of WAL (limit %d). Its chain has ended; the next "
            "backup_daily_full starts a new one",
            s.name,
            s.retained_wal_bytes,
            limit,
        )
    return dropped


def begin(res: Resources, run: RunRef) -> IncrementalPlan:
    """Preflight: checks, the chain to continue (or close, or end), and the catalog row of the incremental."""
    policy = res.policy
    checked = check_setup(res, targets=False)
    source = res.source()
    why = check_logical_decoding(source)
    mode = policy.incremental.mode(why)
    if mode == "none":
        raise ConfigError(
            "The source cannot feed the incremental tier",
            why or "incremental backups are disabled in the policy",
            "set wal_level=logical and give the backup user REPLICATION, then run backup_daily_full; "
            "or set incremental.fallback: updated_at in the policy (it does not capture deletes)",
        )
    require_a_full_backup(res.primary())
    if mode == "watermark":
        return _watermark_plan(res, run, checked.rule_321.as_dict(), checked.warnings)
    check_targets(res)
    dropped = _guard_retained_wal(res, source, run)
    backup_id = run.backup_id("incremental")
    try:
        w = chain_work(res)
        plan = IncrementalPlan(
            "close" if w.closing else "capture",
            backup_id,
            w.full,
            w.parent,
            w.chain,
            w.slot,
            w.closing,
            w.upto_lsn,
            w.fingerprint,
            w.retained_wal_bytes,
            w.end_fingerprint,
            dropped=dropped,
            warnings=checked.warnings,
        )
    except NoChainToContinue:
        if not dropped:
            raise
        # the only chain was given up for the source's sake: the next full backup starts a new one
        plan = IncrementalPlan("end_chain", backup_id, None, None, [], dropped[0], dropped=dropped)
    if plan.slot in dropped:
        plan.action = "end_chain"
    elif _legacy_chain(plan) and plan.action == "capture":
        # Schema changes are followed by the capture (captured DDL is replayed; at an uncaptured one the chain
        # ends right there). A chain whose full predates that cannot compare fingerprints: it ends now.
        plan.action = "end_chain"
    lo = large_object_warning(source)
    if lo:
        log.warning("!!! %s", lo)
        plan.warnings = [*plan.warnings, lo]
    if plan.action == "end_chain":
        _end_chain(res, source, plan, run)
    else:
        res.catalog().start_backup(
            backup_id=backup_id,
            backup_type="incremental",
            created_by=run.actor,
            rule_321=checked.rule_321.as_dict(),
            warnings=plan.warnings,
            retention_until=retention_until(policy, TIER),
            dag_id=run.dag_id,
            run_id=run.run_id,
            parent_backup_id=plan.parent,
        )
    return plan


def _legacy_chain(plan: IncrementalPlan) -> bool:
    """A chain started by a full backup whose schema fingerprint predates the DDL capture (this code cannot
    compute that kind of fingerprint again)."""
    return bool(plan.fingerprint) and fingerprint_version(plan.fingerprint) is None


def _end_chain(res: Resources, source: PgTarget, plan: IncrementalPlan, run: RunRef) -> None:
    reason = "slot dropped: too much retained WAL" if plan.slot in plan.dropped else "chain of an older version"
    if plan.slot:
        drop_slot(source, plan.slot)
    res.catalog().audit(
        "chain_ended", actor=run.actor, details={"reason": reason, "full": plan.full, "last": plan.parent}
    )
    log.error(
        "!!! The chain of full backup %s ends at %s (%s). A new full backup is triggered; moments between "
        "them cannot be restored exactly",
        plan.full,
        plan.parent,
        reason,
    )


def _watermark_plan(res: Resources, run: RunRef, verdict: dict[str, Any], warnings: list[str]) -> IncrementalPlan:
    """The fallback chain: the newest committed full backup and the incrementals after it."""
    manifests = committed_manifests(res.primary())
    fulls = sorted((m for m in manifests if m.backup_type in FULL_TYPES), key=lambda m: m.point.time or m.created_at)
    if not fulls:
        raise NoChainToContinue("No full backup to continue from", fix="run backup_daily_full first")
    full = fulls[-1]
    chain = chain_of(full, manifests)
    parent = chain[-1] if chain else full
    log.warning("!!! %s", WATERMARK_WARNING)
    backup_id = run.backup_id("incremental")
    warnings = [*warnings, WATERMARK_WARNING]
    res.catalog().start_backup(
        backup_id=backup_id,
        backup_type="incremental",
        created_by=run.actor,
        rule_321=verdict,
        warnings=warnings,
        retention_until=retention_until(res.policy, TIER),
        dag_id=run.dag_id,
        run_id=run.run_id,
        parent_backup_id=parent.backup_id,
    )
    return IncrementalPlan(
        "capture",
        backup_id,
        full.backup_id,
        parent.backup_id,
        [full.backup_id, *(m.backup_id for m in chain)],
        None,
        method="watermark",
        captures_deletes=False,
        warnings=warnings,
    )


@dataclass
class CaptureResult:
    backup_id: str
    manifest_sha256: str
    changes: int
    transactions: int
    start_lsn: str | None
    end_lsn: str | None
    stored_bytes: int
    captures_deletes: bool
    schema_changes: int = 0  # captured schema changes, replayed in place by a point-in-time restore
    chain_end: dict[str, Any] | None = None  # set when the chain ended at a change that cannot be replayed
    files_problems: list[str] = field(default_factory=list)  # missing/corrupt source files (kept as before)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def capture(res: Resources, backup_id: str, plan: IncrementalPlan, run: RunRef) -> CaptureResult:
    """Capture the chain's pending changes to the primary (manifest pending until commit)."""
    if plan.action == "end_chain":
        raise NothingToDo("The chain ended (its slot was given up): a new full backup starts the next one")
    policy = res.policy
    primary = res.primary()
    parent = read_manifest(primary, str(plan.parent))
    provenance = provenance_of(res, backup_id, run, TIER)
    if plan.method == "watermark":
        manifest = capture_watermark(
            res.source(),
            primary,
            res.keyring(),
            backup_id=backup_id,
            parent=parent,
            chain=plan.chain,
            column=policy.incremental.watermark_column,
            exclude_schemas=policy.exclude_schemas,
            zstd_level=policy.zstd_level,
            provenance=provenance,
        )
    else:
        manifest = capture_incremental(
            res.source(),
            primary,
            res.keyring(),
            backup_id=backup_id,
            parent=parent,
            chain=plan.chain,
            slot=str(plan.slot),
            zstd_level=policy.zstd_level,
            upto_lsn=plan.upto_lsn,
            extra={"closes_chain": plan.closing},
            provenance=provenance,
            exclude_schemas=policy.exclude_schemas,
            end_fingerprint=plan.end_fingerprint,
        )
        record_outcome(res.catalog(), manifest, actor=run.actor)
    manifest = add_files(res, manifest)  # files added or changed since the last capture (commands/files_backup.py)
    x, chain = manifest.extra, manifest.chain_info
    assert chain is not None
    return CaptureResult(
        backup_id=backup_id,
        manifest_sha256=manifest.sha256(),  # of exactly the bytes left on the primary
        changes=x["changes"],
        transactions=x["transactions"],
        start_lsn=chain.start_lsn,
        end_lsn=chain.end_lsn,
        stored_bytes=manifest.stored_bytes,
        captures_deletes=chain.captures_deletes,
        schema_changes=len(x.get("schema_changes") or []),
        chain_end=x.get("chain_end"),
        files_problems=list(manifest.files.problems) if manifest.files else [],
    )


def release(res: Resources, backup_id: str, manifest_sha256: str, plan: IncrementalPlan) -> dict[str, Any]:
    """Once the incremental is committed on every target: advance the slot to its end, or drop a closed one."""
    row = res.catalog().get_backup(backup_id)
    if not row or row.get("status") != "completed":
        raise IntegrityError(
            f"Incremental {backup_id} is not completed in the catalog",
            "the slot may only move once the incremental is safe on every target",
            "see the commit task",
        )
    manifest = load_pending_manifest(res, backup_id, manifest_sha256)
    if plan.slot is None:  # watermark chain: no slot to move
        return {"slot": None, "method": "watermark"}
    source = res.source()
    end_lsn = manifest.chain_info.end_lsn if manifest.chain_info else None
    if plan.closing or manifest.extra.get("chain_end"):
        drop_slot(source, plan.slot)
        log.info("Chain of %s closed at %s; slot %s dropped", plan.full, end_lsn, plan.slot)
        return {"slot": plan.slot, "dropped": True}
    if end_lsn:
        advance_slot(source, plan.slot, end_lsn)
    log.info("Slot %s advanced to %s", plan.slot, end_lsn)
    return {"slot": plan.slot, "advanced_to": end_lsn}
