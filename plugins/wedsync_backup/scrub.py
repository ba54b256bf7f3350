"""Scrub and self-healing: re-verify retained copies over a cycle of days and repair the damaged ones.

Every day the scrub re-reads the copies checked longest ago (never checked first), within a daily byte budget,
so that every retained copy is checked at least once per ``cycle_days``. A copy is checked like at backup
time: its manifest (byte for byte the one the catalog recorded), then every object's size, sha256 and
decryption on read. A damaged or missing copy is repaired from another copy that verifies now: ciphertext is
copied (no key needed, nothing decrypted to disk), the manifest rewritten, and the copy verified again. Each
finding and repair is a ``backup_tests`` row (integrity_check). A backup with no intact copy left is marked
``damaged`` and alerts loudly. A target that cannot be reached is reported, never taken for damage.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from wedsync_backup import alerts
from wedsync_backup.alerts import Alert
from wedsync_backup.backup_tests import BackupTest, record_test
from wedsync_backup.catalog import Catalog
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import CryptoError, IntegrityError, WedSyncError
from wedsync_backup.files.check import SCRUB_SAMPLE, ContentScrub, scrub_contents
from wedsync_backup.manifest import Manifest, manifest_key
from wedsync_backup.replicate import replicate
from wedsync_backup.storage.base import Storage
from wedsync_backup.verify import verify_copy

log = logging.getLogger(__name__)
MB = 1 << 20
# A copy failing with one of these is damaged; any other error (a target down) is not taken for damage.
DAMAGE = (IntegrityError, CryptoError)


@dataclass
class CopyCheck:
    backup_id: str
    target: str
    intact: bool
    finding: str | None = None  # what was wrong (None: intact when first read)
    repaired_from: str | None = None
    unreachable: bool = False  # could not be checked (target down): not damage
    bytes_read: int = 0
    other_damage: dict[str, str] = field(default_factory=dict)  # other copies found bad while seeking a source

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ScrubResult:
    budget_bytes: int
    bytes_read: int = 0
    checks: list[CopyCheck] = field(default_factory=list)
    damaged_backups: list[str] = field(default_factory=list)
    not_reached: int = 0  # copies due that the budget left for the next days
    warnings: list[str] = field(default_factory=list)
    contents: ContentScrub | None = None  # the shared content store of the files component

    @property
    def repaired(self) -> list[CopyCheck]:
        return [c for c in self.checks if c.repaired_from]

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "bytes_read": self.bytes_read,
            "copies_checked": len(self.checks),
            "intact": sum(1 for c in self.checks if c.intact and not c.finding),
            "repaired": [f"{c.backup_id} on {c.target} from {c.repaired_from}" for c in self.repaired],
            "unreachable": [f"{c.backup_id} on {c.target}" for c in self.checks if c.unreachable],
            "damaged_backups": self.damaged_backups,
            "not_reached": self.not_reached,
            "warnings": self.warnings,
            "contents": self.contents.as_dict() if self.contents else None,
        }


# --- what to check today ---------------------------------------------------------------------------------
def scrub_queue(cat: Catalog, targets: list[str], only: set[str] | None = None) -> list[dict[str, Any]]:
    """Every retained (backup, target) pair with its size and last check, checked longest ago first."""
    with cat.connect() as conn:
        return conn.execute(
            """
            SELECT b.backup_id, t.target AS target_name, COALESCE(b.compressed_size_bytes, 0) AS stored_bytes,
                   b.checksum, b.status,
                   (SELECT max(x.tested_at) FROM backup_tests x WHERE x.backup_id = b.backup_id
                       AND x.test_type = 'integrity_check' AND x.target_name = t.target) AS last_checked
            FROM backup_operations b CROSS JOIN unnest(%(targets)s::text[]) AS t(target)
            WHERE b.status IN ('completed', 'damaged') AND b.pruned_at IS NULL
              AND (%(only)s::text[] IS NULL OR b.backup_id = ANY(%(only)s))
            ORDER BY last_checked NULLS FIRST, b.completed_at, b.backup_id, array_position(%(targets)s, t.target)
            """,
            {"targets": targets, "only": sorted(only) if only else None},
        ).fetchall()


def plan_today(
    queue: list[dict[str, Any]], *, cycle_days: int, budget_bytes: int, now: datetime
) -> tuple[list[dict[str, Any]], list[str]]:
    """Today's share of the cycle: the stalest copies until a 1/cycle_days share is read, never past the budget.

    Copies overdue (not checked within the cycle) are taken first whatever the share, budget permitting.
    """
    total = sum(q["stored_bytes"] for q in queue)
    share = math.ceil(total / cycle_days) if queue else 0
    warnings = []
    if share > budget_bytes:
        days = math.ceil(total / budget_bytes)
        warnings.append(
            f"checking all {total // MB} MB of retained copies takes {days} days at the daily budget of "
            f"{budget_bytes // MB} MB, longer than the {cycle_days}-day cycle: raise scrub.daily_budget_mb"
        )
    due = now - timedelta(days=cycle_days)
    picked, used = [], 0
    for q in queue:
        overdue = q["last_checked"] is None or q["last_checked"] <= due
        if used >= share and not overdue:
            break
        if used + q["stored_bytes"] > budget_bytes and picked:
            break
        picked.append(q)
        used += q["stored_bytes"]
    return picked, warnings


# --- checking and repairing one copy ---------------------------------------------------------------------
def _manifest_bytes(storage: Storage, backup_id: str, checksum: str) -> bytes:
    """The copy's manifest, which must be byte for byte the one the catalog recorded."""
    key = manifest_key(backup_id)
    if not storage.exists(key):
        raise IntegrityError(f"The manifest of {backup_id} is missing on {storage.name}", fix="repair the copy")
    data = storage.get_bytes(key)
    if hashlib.sha256(data).hexdigest() != checksum:
        raise IntegrityError(
            f"The manifest of {backup_id} on {storage.name} is not the one the catalog recorded",
            f"sha256 {hashlib.sha256(data).hexdigest()[:16]}... instead of {checksum[:16]}...",
            "repair the copy",
        )
    return data


def _check(storage: Storage, backup_id: str, checksum: str, keyring: Keyring) -> tuple[bytes, int]:
    """Verify one copy completely; returns its manifest bytes and the bytes read. Raises on any fault."""
    data = _manifest_bytes(storage, backup_id, checksum)
    manifest = Manifest.from_bytes(data, source=f"manifest of {backup_id} on {storage.name}")
    result = verify_copy(manifest, storage, keyring)
    return data, result.stored_bytes + len(data)


def scrub_copy(storages: dict[str, Storage], name: str, backup_id: str, checksum: str, keyring: Keyring) -> CopyCheck:
    """Check the ``name`` copy; when it is damaged, repair it from another copy that verifies now."""
    storage = storages[name]
    check = CopyCheck(backup_id, name, intact=False)
    try:
        _, check.bytes_read = _check(storage, backup_id, checksum, keyring)
        check.intact = True
        return check
    except WedSyncError as e:
        if not isinstance(e, DAMAGE):
            check.unreachable, check.finding = True, str(e)
            log.error("Scrub could not check %s on %s: %s", backup_id, name, e)
            return check
        check.finding = str(e)
        log.error("Scrub: the %s copy of %s is damaged: %s", name, backup_id, e)
    for other_name, other in storages.items():
        if other_name == name:
            continue
        try:
            data, n = _check(other, backup_id, checksum, keyring)
            check.bytes_read += n
        except WedSyncError as e:
            log.warning("Scrub: %s on %s cannot serve as the source of a repair: %s", backup_id, other_name, e)
            if isinstance(e, DAMAGE):
                check.other_damage[other_name] = str(e)
            continue
        manifest = Manifest.from_bytes(data, source=f"manifest of {backup_id} on {other_name}")
        try:
            copied = replicate(manifest, other, storage)
            storage.put_bytes(manifest_key(backup_id), data)
            _, n = _check(storage, backup_id, checksum, keyring)
        except WedSyncError as e:
            log.error("Scrub: repairing %s on %s from %s failed: %s", backup_id, name, other_name, e)
            continue
        check.bytes_read += n + copied.bytes_copied
        check.intact, check.repaired_from = True, other_name
        log.warning(
            "Scrub repaired %s on %s from %s (%d objects rewritten)", backup_id, name, other_name, copied.copied
        )
        return check
    return check


# --- catalog updates -------------------------------------------------------------------------------------
def record_copy_state(cat: Catalog, check: CopyCheck) -> None:
    if check.unreachable:
        return
    with cat.connect() as conn:
        conn.execute(
            "UPDATE backup_replicas SET verified = %(ok)s, error = %(err)s, updated_at = now(),"
            " verified_at = CASE WHEN %(ok)s THEN now() ELSE verified_at END"
            " WHERE backup_id = %(b)s AND target_name = %(t)s",
            {
                "ok": check.intact,
                "err": None if check.intact else (check.finding or "damaged")[:2000],
                "b": check.backup_id,
                "t": check.target,
            },
        )


def mark_damaged(cat: Catalog, backup_id: str, findings: dict[str, str], *, actor: str) -> bool:
    """No intact copy is left: the backup becomes ``damaged`` (not restorable). True if this call did it."""
    with cat.connect() as conn:
        row = conn.execute(
            "UPDATE backup_operations SET status = 'damaged', damaged_at = now(), error = %s"
            " WHERE backup_id = %s AND status = 'completed' RETURNING backup_id",
            (("no intact copy left: " + "; ".join(f"{t}: {e}" for t, e in findings.items()))[:4000], backup_id),
        ).fetchone()
    if row:
        cat.audit("backup_damaged", actor=actor, backup_id=backup_id, details={"findings": findings})
    return row is not None


def mark_restorable(cat: Catalog, backup_id: str, *, actor: str) -> bool:
    """A damaged backup with a copy proven intact again (a target came back) is completed again."""
    with cat.connect() as conn:
        row = conn.execute(
            "UPDATE backup_operations SET status = 'completed', damaged_at = NULL, error = NULL"
            " WHERE backup_id = %s AND status = 'damaged' RETURNING backup_id",
            (backup_id,),
        ).fetchone()
    if row:
        cat.audit("backup_restorable_again", actor=actor, backup_id=backup_id)
    return row is not None


# --- the command -----------------------------------------------------------------------------------------
def run_scrub(
    cat: Catalog,
    storages: dict[str, Storage],
    keyring: Keyring,
    *,
    cycle_days: int,
    budget_bytes: int,
    now: datetime,
    notify: Callable[[Alert], object],
    tested_by: str,
    dag_id: str | None = None,
    run_id: str | None = None,
    only: set[str] | None = None,
    content_sample: int = SCRUB_SAMPLE,
) -> ScrubResult:
    """Check today's share of copies, repair what can be repaired, record everything, alert damage.

    Then (unless ``only`` names backups) the files' shared content store on every target: existence and size
    of every content object, ``content_sample`` of them per target read back in full (rotating by day)."""
    queue = scrub_queue(cat, list(storages), only)
    picked, warnings = plan_today(queue, cycle_days=cycle_days, budget_bytes=budget_bytes, now=now)
    result = ScrubResult(budget_bytes, not_reached=len(queue) - len(picked), warnings=warnings)
    for w in warnings:
        log.warning("!!! %s", w)
    log.info("Scrub: %d of %d retained copies today (budget %d MB)", len(picked), len(queue), budget_bytes // MB)
    by_backup: dict[str, list[CopyCheck]] = {}
    for q in picked:
        check = scrub_copy(storages, q["target_name"], q["backup_id"], q["checksum"], keyring)
        result.checks.append(check)
        result.bytes_read += check.bytes_read
        by_backup.setdefault(q["backup_id"], []).append(check)
        record_copy_state(cat, check)
        for other, finding in check.other_damage.items():
            record_copy_state(cat, CopyCheck(check.backup_id, other, intact=False, finding=finding))
        record_test(
            cat,
            BackupTest(
                backup_id=check.backup_id,
                test_type="integrity_check",
                target_name=check.target,
                success=check.intact or check.unreachable,
                test_environment=f"target {check.target} ({storages[check.target].url()})",
                tested_by=tested_by,
                errors_found=[check.finding] if check.finding else [],
                data_samples_verified=None,
                notes=_note(check),
                details={"bytes_read": check.bytes_read, "repaired_from": check.repaired_from},
                dag_id=dag_id,
                run_id=run_id,
            ),
        )
        if check.repaired_from:
            notify(
                alerts.copy_repaired(
                    backup_id=check.backup_id,
                    target=check.target,
                    source=check.repaired_from,
                    finding=check.finding or "",
                )
            )
    for backup_id, checks in by_backup.items():
        status = next(q["status"] for q in picked if q["backup_id"] == backup_id)
        if any(c.intact for c in checks):
            if status == "damaged":
                mark_restorable(cat, backup_id, actor=tested_by)
            continue
        if _all_copies_bad(cat, backup_id, storages):
            findings = {c.target: c.finding or "damaged" for c in checks}
            result.damaged_backups.append(backup_id)
            if mark_damaged(cat, backup_id, findings, actor=tested_by):
                notify(alerts.backup_damaged(backup_id=backup_id, findings=findings))
    if only is None:
        result.contents = scrub_contents(cat.contents(), storages, keyring, now=now, sample=content_sample)
        result.bytes_read += result.contents.bytes_read
        for repaired in result.contents.repaired:
            log.warning("Scrub repaired content object %s", repaired)
        if result.contents.lost:
            notify(alerts.content_lost(objects=result.contents.lost, findings=result.contents.findings))
    cat.audit("scrub", actor=tested_by, details=result.as_dict())
    return result


def _all_copies_bad(cat: Catalog, backup_id: str, storages: dict[str, Storage]) -> bool:
    """Every copy of the backup is recorded damaged (an unreachable or unchecked one still counts as good)."""
    with cat.connect() as conn:
        rows = conn.execute(
            "SELECT target_name, verified FROM backup_replicas WHERE backup_id = %s", (backup_id,)
        ).fetchall()
    return bool(rows) and not any(r["verified"] for r in rows if r["target_name"] in storages)


def _note(check: CopyCheck) -> str:
    if check.unreachable:
        return f"could not be checked (target unreachable): {check.finding}"
    if check.repaired_from:
        return f"damaged, repaired from the {check.repaired_from} copy and verified again"
    if check.intact:
        return "intact: manifest, sizes, sha256 and decryption of every object"
    return "damaged and NOT repaired: no other copy verifies"
