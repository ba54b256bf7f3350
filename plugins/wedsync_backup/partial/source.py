"""Where a partial restore's rows come from, chosen by mode, and a database to read them in.

- a full backup, plus its chain up to the chosen moment (``latest``, ``point_in_time``, or ``backup_id`` of a
  full): restored into a scratch database on the target's server with the restore and replay engines, then
  read from there with the same SQL that reads the live database (the wedding's slice, or whole tables);
- a wedding backup (``backup_id``, or ``latest`` when it is newer than the chain's last capture): each
  wedding's object, read alone (``read_wedding_slice``), straight into the stage, its parent rows included;
- a ``pre_restore`` safety snapshot (``backup_id``): its rows are decrypted straight into the stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from wedsync_backup.crypto import Keyring
from wedsync_backup.drill import scratch_database, scratch_name
from wedsync_backup.errors import ConfigError, IntegrityError
from wedsync_backup.manifest import Manifest, RestoreScope, TableEntry
from wedsync_backup.partial.request import WEDDING_ONLY
from wedsync_backup.pg import PgTarget
from wedsync_backup.pitr import ChainPlan, plan_chain, restore_to_point
from wedsync_backup.repository import committed_manifests, read_manifest
from wedsync_backup.restore import check_objects_present, verify_manifest_mac
from wedsync_backup.storage.base import Storage
from wedsync_backup.weddings.export import SliceSection, read_wedding_object, read_wedding_slice

SCRATCH_PREFIX = "wedsync_partial_"
FULL_TYPES = ("full", "archive", "manual")


@dataclass
class BackupRows:
    """A full backup (+ chain) to read rows from in a scratch database, a wedding backup, or a snapshot."""

    storage: Storage
    chain: ChainPlan | None = None
    snapshot: Manifest | None = None
    weddings: Manifest | None = None  # a wedding backup

    @property
    def manifest(self) -> Manifest:
        found = self.chain.full if self.chain is not None else self.snapshot or self.weddings
        assert found is not None
        return found

    @property
    def by_wedding(self) -> bool:
        """Rows come per wedding: a piece of a wedding backup's bundle, or a wedding-only safety snapshot's object."""
        return self.weddings is not None or bool(self.snapshot and self.scope.scope == WEDDING_ONLY)

    def sections(self, keyring: Keyring, wedding: str) -> Iterator[SliceSection]:
        """One wedding's tables, section by section (by_wedding sources only; their manifest is authenticated)."""
        if self.weddings is not None:
            return read_wedding_slice(self.storage, keyring, self.weddings.backup_id, wedding, manifest=self.weddings)
        entry = next(e for e in self.scope.weddings if e.wedding_id == wedding)
        return read_wedding_object(self.storage, keyring, self.manifest.backup_id, entry)

    def holds(self) -> set[str]:
        """The weddings a wedding backup or a wedding-only snapshot holds (empty for a full backup)."""
        if self.weddings is not None and self.weddings.weddings is not None:
            return {w.wedding_id for w in self.weddings.weddings.weddings}
        if self.snapshot is not None and self.snapshot.restore_scope is not None:
            return set(self.snapshot.restore_scope.wedding_ids)
        return set()

    @property
    def scope(self) -> RestoreScope:
        assert self.snapshot is not None and self.snapshot.restore_scope is not None
        return self.snapshot.restore_scope

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        out: dict[str, Any] = {"backup_id": m.backup_id, "backup_type": m.backup_type, "consistent_time": m.point.time}
        if self.chain is not None:
            out.update(self.chain.as_dict())
        return out

    def moment(self) -> datetime | None:
        """The moment the rows are from: the chosen time, the chain's last change, or the backup's own."""
        if self.chain is not None and self.chain.until is not None:
            return self.chain.until
        last = (self.chain.last_captured if self.chain is not None else None) or self.manifest.point.time
        return datetime.fromisoformat(last) if last else None

    def data_loss_minutes(self) -> float | None:
        """Point in time: from the chosen moment to the last captured change; otherwise: since the rows' moment."""
        if self.chain is not None and self.chain.until is not None:
            last = self.chain.last_captured or self.manifest.point.time
            if not last:
                return None
            return round(max(0.0, (datetime.fromisoformat(last) - self.chain.until).total_seconds() / 60), 1)
        at = self.moment()
        return None if at is None else round((datetime.now(UTC) - at).total_seconds() / 60, 1)

    def entry(self, schema: str, name: str) -> TableEntry | None:
        return next((t for t in self.manifest.tables if (t.schema, t.name) == (schema, name)), None)


def choose_rows(
    mode: str,
    backup_id: str | None,
    until: datetime | None,
    storage: Storage,
    keyring: Keyring,
    wedding_ids: list[str] | None = None,
) -> BackupRows:
    """The backup the mode names, every manifest authenticated and every object present on ``storage``.
    ``latest`` for weddings: the newest wedding backup holding them all, when it is newer than the chain."""
    if mode == "backup_id":
        m = read_manifest(storage, str(backup_id))
        if m.backup_type in FULL_TYPES:
            rows = BackupRows(storage, chain=ChainPlan(m, [], None, None, m.point.time or ""))
        elif m.backup_type == "pre_restore" and m.restore_scope is not None:
            rows = BackupRows(storage, snapshot=m)
        elif m.backup_type == "wedding" and m.weddings is not None and wedding_ids:
            rows = BackupRows(storage, weddings=m)
        else:
            raise ConfigError(
                f"Backup {backup_id} is a {m.backup_type} backup, which this restore cannot read alone",
                "a partial restore reads a full backup (with its chain), a wedding backup (wedding-only) or a "
                "pre_restore safety snapshot",
                "use mode point_in_time (the moment it was taken) or name a full, wedding or pre_restore backup",
            )
    else:
        manifests = committed_manifests(storage)
        if not manifests:
            raise ConfigError(
                f"No completed backup on target {storage.name} ({storage.url()})",
                fix="pick another from_target, or run backup_daily_full first",
            )
        try:
            rows = BackupRows(storage, chain=plan_chain(manifests, until))
        except IntegrityError as e:
            raise ConfigError(e.what, e.why, e.fix) from e
        newest = newest_wedding_backup(manifests, wedding_ids or []) if until is None else None
        covered = rows.chain.covered_until if rows.chain is not None else None
        if newest is not None and (not covered or (newest.point.time or "") > covered):
            rows = BackupRows(storage, weddings=newest)
    for m in [rows.manifest, *(rows.chain.increments if rows.chain else [])]:
        verify_manifest_mac(m, keyring)
        check_objects_present(m, storage)
    return rows


def newest_wedding_backup(manifests: list[Manifest], wedding_ids: list[str]) -> Manifest | None:
    """The newest wedding backup that holds every one of ``wedding_ids`` (None without ids or such a backup)."""
    if not wedding_ids:
        return None
    found = [
        m
        for m in manifests
        if m.backup_type == "wedding"
        and m.weddings is not None
        and all(m.weddings.entry(w) is not None for w in wedding_ids)
    ]
    return max(found, key=lambda m: m.point.time or "", default=None)


def check_snapshot_fits(
    rows: BackupRows, scope: str, wedding_ids: list[str], tables: list[tuple[str, str]], data_types: list[str]
) -> None:
    """A safety snapshot is restored through the scope it was taken for, and holds what is asked of it."""
    if rows.weddings is not None:
        missing = [w for w in wedding_ids if w not in rows.holds()]
        if scope != WEDDING_ONLY or missing:
            raise ConfigError(
                f"Wedding backup {rows.weddings.backup_id} cannot restore "
                + (f"wedding(s) {', '.join(missing)}" if missing else f"scope {scope}"),
                f"it holds weddings {', '.join(sorted(rows.holds()))} (and is read by scope wedding-only only)",
                "pick a wedding backup that holds them (wedding_backups table), or mode point_in_time",
            )
        return
    if rows.snapshot is None:
        return
    held = rows.scope
    if held.scope != scope:
        raise ConfigError(
            f"Safety snapshot {rows.snapshot.backup_id} holds a {held.scope} restore's rows",
            f"this restore's scope is {scope}",
            f"restore it with scope {held.scope}",
        )
    if scope == WEDDING_ONLY:
        wider = held.data_types and (not data_types or not set(data_types) <= set(held.data_types))
        if wider:
            raise ConfigError(
                f"Safety snapshot {rows.snapshot.backup_id} holds only data types {', '.join(held.data_types)}",
                f"this restore asks for {', '.join(data_types) or 'the whole wedding'}",
                f"restore it with data_types {', '.join(held.data_types)} (or fewer)",
            )
        missing = [w for w in wedding_ids if w not in held.wedding_ids]
        if missing:
            raise ConfigError(
                f"Safety snapshot {rows.snapshot.backup_id} does not hold wedding(s) {', '.join(missing)}",
                f"it holds {', '.join(held.wedding_ids)}",
                "name those weddings, or pick the snapshot of the restore that changed these",
            )
    else:
        missing = [f"{s}.{n}" for s, n in tables if rows.entry(s, n) is None]
        if missing:
            raise ConfigError(
                f"Safety snapshot {rows.snapshot.backup_id} does not hold table(s) {', '.join(missing)}",
                f"it holds {', '.join(t.qualified for t in rows.snapshot.tables)}",
                "name tables it holds",
            )


@contextmanager
def backup_database(
    rows: BackupRows, keyring: Keyring, server: PgTarget, run_key: str, workers: int
) -> Iterator[psycopg.Connection | None]:
    """A connection to the full backup (+ chain) restored into a scratch database on ``server``, dropped
    afterwards; None for a snapshot, whose rows need no database."""
    if rows.chain is None:
        yield None
        return
    with scratch_database(server, scratch_name(run_key, SCRATCH_PREFIX), SCRATCH_PREFIX) as scratch:
        restore_to_point(rows.chain, rows.storage, keyring, scratch, workers=workers)
        with scratch.connect(autocommit=True) as conn:
            yield conn
