"""The wedding backup command: begin -> export_batch (mapped per batch) -> seal -> replicate -> verify -> commit.

begin finds the due weddings (date proximity from the SOURCE's wedding table, wedding_backup_settings, ids
asked for by name), opens the run's ONE catalog row (type ``wedding``), starts the snapshot holder and leaves
a small authenticated plan on the primary (the batches, the snapshot id, the wrapped data key). Each batch
task exports its weddings in that snapshot into one bundle (an encrypted piece per wedding). seal releases
the snapshot and writes the pending manifest (typed ``weddings`` section); replicate, verify and commit are the backup
protocol's own phases (``commands/backup.py``), so a wedding backup counts only when every copy is verified.
mark_failed releases the snapshot and marks the row failed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from wedsync_backup.commands import backup
from wedsync_backup.commands.files_backup import add_files, held_snapshot
from wedsync_backup.commands.resources import NothingToDo, Resources, RunRef
from wedsync_backup.crypto import DataKey
from wedsync_backup.errors import ConfigError, IntegrityError
from wedsync_backup.files.source import ExportSnapshot
from wedsync_backup.manifest import Manifest, StoredObject, WeddingEntry, WeddingsSection, backup_prefix
from wedsync_backup.repository import begin_attempt, seal_pending
from wedsync_backup.weddings.due import DueWedding, due_weddings
from wedsync_backup.weddings.export import BatchWedding
from wedsync_backup.weddings.export import export_batch as export_weddings
from wedsync_backup.weddings.phases import DEFAULTS
from wedsync_backup.weddings.slice import discover_slice
from wedsync_backup.weddings.snapshot import hold_snapshot, import_snapshot, release_snapshot

log = logging.getLogger(__name__)
TIER = "wedding"


def plan_key(backup_id: str) -> str:
    return f"{backup_prefix(backup_id)}wedding-plan.json"


def batch_key(backup_id: str, batch_no: int) -> str:
    return f"{backup_prefix(backup_id)}wedding-batches/{batch_no:05d}.json"


@dataclass
class WeddingBegin:
    backup_id: str
    batches: list[int]  # batch numbers: what the export is mapped over
    weddings: int
    phases: dict[str, int]
    warnings: list[str]
    fresh: bool
    all_targets: list[str] = field(default_factory=list)
    replica_targets: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "weddings": self.weddings, "batches": len(self.batches),
                "phases": self.phases, "warnings": self.warnings}  # fmt: skip


def _offsite_warnings(res: Resources, due: list[DueWedding]) -> list[str]:
    """From 30 days out a wedding needs an offsite copy: refused without one unless 3-2-1 is not enforced."""
    needing = [d.wedding_id for d in due if DEFAULTS[d.phase].offsite_required]
    if not needing or any(t.site != res.policy.source_site for t in res.policy.targets):
        return []
    text = f"weddings {', '.join(needing[:5])}{'...' if len(needing) > 5 else ''} are within 30 days"
    if res.policy.rule_321.enforce:
        raise ConfigError("No offsite target for weddings that need one", text, "add an offsite target to the policy")
    return [f"No offsite copy although {text}; running because rule_321.enforce is false"]


def _retention_until(res: Resources, due: list[DueWedding], now: datetime) -> datetime | None:
    """The longest retention any of the run's weddings asks for (None: one of them is permanent)."""
    days = [res.policy.weddings.retention_for(d.retention_policy) for d in due]
    if any(d is None for d in days):
        return None
    return now + timedelta(days=max(d for d in days if d is not None))


def begin(
    res: Resources,
    run: RunRef,
    *,
    wedding_ids: list[str] | None = None,
    reason: str | None = None,
    now: datetime | None = None,
) -> WeddingBegin:
    """Check everything, choose the due weddings, open the catalog row, hold the snapshot, plan the batches.

    ``wedding_ids`` (backup_wedding_now): exactly those weddings; an unknown id is refused by name before
    anything is written. Without them: the weddings the proximity tier says are due; none is NothingToDo.
    """
    now = now or datetime.now(UTC)
    checked = backup.check_setup(res)
    wp = res.policy.weddings
    cat = res.catalog()
    source = res.source()
    with source.connect(autocommit=True) as conn:
        discover_slice(conn, wp)  # a policy that does not fit the source fails here, before anything is written
        if wedding_ids:
            due = due_weddings(conn, wp, [], {}, now, requested=wedding_ids)
        else:
            settings = cat.wedding_settings()
            near = due_weddings(conn, wp, settings, {}, now)
            due = due_weddings(conn, wp, settings, cat.last_wedding_backups([d.wedding_id for d in near]), now)
    if not due:
        raise NothingToDo("No wedding is due for a backup in this run")
    warnings = [*checked.warnings, *_offsite_warnings(res, due)]
    backup_id = run.backup_id("wedding")
    fresh = cat.start_backup(
        backup_id=backup_id,
        backup_type="wedding",
        created_by=run.actor,
        rule_321=checked.rule_321.as_dict(),
        warnings=warnings,
        retention_until=_retention_until(res, due, now),
        dag_id=run.dag_id,
        run_id=run.run_id,
        reason=reason,
        components=[{"wedding_ids": [d.wedding_id for d in due]}],  # what the console's wedding view matches
    )
    targets = [list(res.policy.target_names), [t.name for t in res.policy.replicas]]
    phases: dict[str, int] = {}
    for d in due:
        phases[d.phase] = phases.get(d.phase, 0) + 1
    if not fresh:
        log.info("Wedding backup %s is already completed", backup_id)
        return WeddingBegin(backup_id, [], len(due), phases, warnings, False, *targets)
    primary = res.primary()
    begin_attempt(primary, backup_id)  # a retried begin starts clean
    data_key = res.keyring().new_data_key(backup_id)
    held = hold_snapshot(source, backup_id)
    size = wp.batch_size
    batches = [due[i : i + size] for i in range(0, len(due), size)]
    plan = {
        "backup_id": backup_id,
        "snapshot": held.as_dict(),
        "encryption": data_key.manifest_section(),
        "requested": list(wedding_ids or []),
        "batches": [
            [
                {
                    "wedding_id": d.wedding_id,
                    "wedding_date": d.wedding_date.isoformat() if d.wedding_date else None,
                    "phase": d.phase,
                    "retention_policy": d.retention_policy,
                }
                for d in b
            ]
            for b in batches
        ],
    }
    body = json.dumps(plan, sort_keys=True).encode()
    primary.put_bytes(plan_key(backup_id), json.dumps({"plan": plan, "mac": data_key.mac(body)}).encode())
    log.info("Wedding backup %s: %d weddings in %d batches, snapshot %s (%s)", backup_id, len(due),
             len(batches), held.snapshot, ", ".join(f"{k} {v}" for k, v in sorted(phases.items())))  # fmt: skip
    return WeddingBegin(backup_id, list(range(len(batches))), len(due), phases, warnings, True, *targets)


def _plan(res: Resources, backup_id: str) -> tuple[dict[str, Any], DataKey]:
    """The run's plan from the primary, authenticated under the backup's data key."""
    doc = json.loads(res.primary().get_bytes(plan_key(backup_id)))
    plan = doc["plan"]
    data_key = res.keyring().unwrap(plan["encryption"]["wrapped_key"], backup_id)
    if data_key.mac(json.dumps(plan, sort_keys=True).encode()) != doc.get("mac") or plan["backup_id"] != backup_id:
        raise IntegrityError(
            f"The plan of wedding backup {backup_id} failed authentication",
            "it was edited or belongs to another run",
            "re-run the DAG",
        )
    return plan, data_key


def export_batch(res: Resources, backup_id: str, batch_no: int) -> dict[str, Any]:
    """Export one batch's weddings from the run's snapshot to the primary (one bundle, a piece per wedding)."""
    plan, data_key = _plan(res, backup_id)
    if not 0 <= batch_no < len(plan["batches"]):
        raise ConfigError(f"Wedding backup {backup_id} has no batch {batch_no}", fix="re-run the DAG")
    weddings = [BatchWedding(**w) for w in plan["batches"][batch_no]]
    source = res.source()
    with source.connect(autocommit=False) as conn:  # the slice as the snapshot sees the schema
        import_snapshot(conn, plan["snapshot"]["snapshot"], backup_id)
        wedding_slice = discover_slice(conn, res.policy.weddings)
        conn.rollback()
    entries, bundle = export_weddings(
        source,
        res.primary(),
        data_key,
        backup_id=backup_id,
        batch_no=batch_no,
        snapshot=plan["snapshot"]["snapshot"],
        wedding_slice=wedding_slice,
        weddings=weddings,
        zstd_level=res.policy.zstd_level,
    )
    index = {
        "backup_id": backup_id,
        "batch": batch_no,
        "weddings": [asdict(e) for e in entries],
        "bundle": asdict(bundle) if bundle else None,
    }
    res.primary().put_bytes(batch_key(backup_id, batch_no), json.dumps(index).encode())
    return {
        "batch": batch_no,
        "weddings": len(entries),
        "rows": sum(e.rows for e in entries),
        "stored_bytes": bundle.stored_bytes if bundle else 0,
    }


@dataclass
class SealResult:
    backup_id: str
    manifest_sha256: str
    weddings: int
    rows: int
    stored_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seal(res: Resources, backup_id: str, run: RunRef) -> SealResult:
    """Every batch done: release the snapshot, then the pending manifest with its typed weddings section."""
    plan, data_key = _plan(res, backup_id)
    files_snapshot = held_snapshot(res, plan["snapshot"]["snapshot"])  # imported before the holder goes
    try:
        return _seal(res, backup_id, run, plan, data_key, files_snapshot)
    finally:
        if files_snapshot is not None:
            files_snapshot.close()


def _seal(
    res: Resources,
    backup_id: str,
    run: RunRef,
    plan: dict[str, Any],
    data_key: DataKey,
    files_snapshot: ExportSnapshot | None,
) -> SealResult:
    primary = res.primary()
    source = res.source()
    release_snapshot(source, backup_id)
    entries: list[WeddingEntry] = []
    bundles: list[StoredObject] = []
    for n in range(len(plan["batches"])):
        key = batch_key(backup_id, n)
        if not primary.exists(key):
            raise IntegrityError(
                f"Batch {n} of wedding backup {backup_id} has not exported", fix="re-run its export_batch task"
            )
        doc = json.loads(primary.get_bytes(key))
        entries += [WeddingEntry.from_dict(w) for w in doc["weddings"]]
        bundles += [StoredObject(**doc["bundle"])] if doc.get("bundle") else []
    wp = res.policy.weddings
    with source.connect(autocommit=True) as conn:
        wedding_slice = discover_slice(conn, wp)
        info = conn.execute(
            "SELECT current_database(), current_setting('server_version'),"
            " (SELECT system_identifier::text FROM pg_control_system())"
        ).fetchone()
    snap = plan["snapshot"]
    manifest = Manifest(
        backup_id=backup_id,
        backup_type="wedding",
        created_at=snap["time"],
        source={"database": info[0], "server_version": info[1], "system_identifier": info[2], "label": source.label},
        consistent_point={k: snap[k] for k in ("snapshot", "lsn", "txid_snapshot", "time")},
        encryption=plan["encryption"],
        compression={"algorithm": "zstd", "level": res.policy.zstd_level},
        schema={},
        weddings=WeddingsSection(
            root=wedding_slice.root.display,
            key=wp.key,
            time_zone=wp.time_zone,
            tables=[f"{t.schema}.{t.name}" for t in wedding_slice.tables],
            parents=[f"{t.schema}.{t.name}" for t in wedding_slice.parents],
            weddings=entries,
            requested=list(plan["requested"]),
            bundles=bundles,
        ),
        provenance=backup.provenance_of(res, backup_id, run, TIER),
    )
    seal_pending(primary, manifest, data_key)
    # the weddings' photos and documents (their files rows only, not the whole bucket), in the run's snapshot
    manifest = add_files(res, manifest, files_snapshot, wedding_ids=[e.wedding_id for e in entries])
    sha = manifest.sha256()
    primary.delete([plan_key(backup_id), *(batch_key(backup_id, n) for n in range(len(plan["batches"])))])
    return SealResult(backup_id, sha, len(entries), manifest.total_rows, manifest.stored_bytes)


def mark_failed(res: Resources, backup_id: str | None) -> bool:
    """After any failed phase: the snapshot is released and the row says failed (never completed)."""
    if backup_id not in (None, "", "None"):
        release_snapshot(res.source(), str(backup_id))
    return backup.mark_failed(res, backup_id)


def backup_weddings(
    res: Resources, run: RunRef, *, wedding_ids: list[str] | None = None, reason: str | None = None,
    now: datetime | None = None,
) -> str:  # fmt: skip
    """Every phase in this process, in the DAG's order (scripts, tests, the bench); returns the backup id."""
    begun = begin(res, run, wedding_ids=wedding_ids, reason=reason, now=now)
    if not begun.fresh:
        return begun.backup_id
    try:
        for n in begun.batches:
            export_batch(res, begun.backup_id, n)
        sealed = seal(res, begun.backup_id, run)
        sha = sealed.manifest_sha256
        for name in begun.replica_targets:
            backup.replicate(res, begun.backup_id, sha, name)
        checks = [backup.verify(res, begun.backup_id, sha, name) for name in begun.all_targets]
        backup.commit(res, begun.backup_id, sha, checks, tier=TIER)
    except BaseException:
        mark_failed(res, begun.backup_id)
        raise
    return begun.backup_id
