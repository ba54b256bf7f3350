"""One backup's capture of the files: validate every row's object, store new content once, list the state.

Each row of the files table names an object that must exist in the bucket with the recorded size and
SHA-256. An object unchanged since the last capture (same checksum, same size and ETag in the bucket) is
not read again; a new or changed one is read once, streamed, and checked while it is stored. A missing or
corrupt source object is reported and the state keeps its last good version, so the corruption is never
copied over the good content.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from wedsync_backup.crypto import DataKey, Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.files import content
from wedsync_backup.files.source import (
    LOOK_UP,
    ExportSnapshot,
    FileRow,
    Listed,
    file_rows,
    joined,
    listing,
    looked_up,
)
from wedsync_backup.files.state import (
    STATUS_KEPT,
    STATUS_MISSING,
    STATUS_OK,
    FileEntry,
    files_captures,
    read_state,
    state_at,
    write_state,
)
from wedsync_backup.heap import give_back
from wedsync_backup.manifest import FilesSection, Manifest, StoredObject
from wedsync_backup.pg import PgTarget
from wedsync_backup.policy import FilesPolicy
from wedsync_backup.repository import committed_manifests, seal_pending
from wedsync_backup.storage.base import Storage
from wedsync_backup.storage.s3 import S3Storage

log = logging.getLogger(__name__)
MAX_PROBLEMS_LISTED = 100


@dataclass
class FilesWorld:
    """Where a capture reads from and writes to; ``storages``: every target, the primary first."""

    source_db: PgTarget
    files: FilesPolicy
    bucket: S3Storage
    storages: list[Storage]
    keyring: Keyring
    stored_content: Callable[[str], StoredObject | None] | None = None  # the catalog's record of a content
    workers: int = 4  # objects read, stored and verified at once
    snapshot: ExportSnapshot | None = None  # the database export's snapshot: the files table is read in it
    wedding_ids: list[str] | None = None  # a wedding backup's scope: only these weddings' files (None: all)


@dataclass
class _Tally:
    objects: int = 0
    bytes: int = 0
    changed: int = 0
    uploaded: list[StoredObject] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


PROGRESS_EVERY_S = 30.0  # a long capture (thousands of photos) says how far it is at this pace


@dataclass
class _Progress:
    """The capture's progress line in the task log: objects checked, bytes, new ones stored, elapsed, rate."""

    started: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)

    def tick(self, tally: _Tally) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        log.info(
            "Files: %d objects checked (%.1f MB), %d new stored on every target (%.1f MB), %d problems, "
            "%.0f s elapsed, %.1f MB/s",
            tally.objects,
            tally.bytes / 2**20,
            len(tally.uploaded),
            sum(o.plain_bytes for o in tally.uploaded) / 2**20,
            len(tally.problems),
            elapsed,
            tally.bytes / 2**20 / elapsed,
        )


class Capture:
    def __init__(self, world: FilesWorld, previous: dict[str, FileEntry]) -> None:
        self.w = world
        self.previous = previous
        started = time.monotonic()
        self.present = {s.name: content.present(s) for s in world.storages}
        log.info(
            "Content store: %s objects, listed in %.1f s",
            ", ".join(f"{len(p)} on {name}" for name, p in self.present.items()),
            time.monotonic() - started,
        )
        self.known: dict[str, StoredObject] = {}
        self.keys: dict[str, str] = {}  # content hash -> its data key, as the states record it
        for e in previous.values():
            if e.restorable and e.stored_sha256:
                self.known.setdefault(str(e.sha256), e.content())
            if e.sha256 and e.data_key:
                self.keys.setdefault(e.sha256, e.data_key)
        self.tally = _Tally()
        self._guard = threading.Lock()
        self._content_locks: dict[str, threading.Lock] = {}

    @property
    def primary(self) -> Storage:
        return self.w.storages[0]

    # --- one row ---------------------------------------------------------------------------------
    def entry_for(self, row: FileRow, listed: Listed | None) -> FileEntry:
        prev = self.previous.get(row.path)
        if listed is None:
            return self._keep(row, prev, "missing from the files bucket")
        if (
            prev is not None
            and prev.status == STATUS_OK
            and prev.sha256 == row.sha256
            and prev.etag == listed.etag
            and prev.size == listed.size
            and any(self.present[s.name].get(row.sha256) == prev.stored_bytes for s in self.w.storages)
        ):
            self._everywhere(prev.content())
            return replace(prev, wedding_id=row.wedding_id)
        try:
            obj = self._store(row, listed)
        except content.SourceMismatch as e:
            return self._keep(row, prev, f"corrupt ({e})")
        return FileEntry(
            row.path,
            row.sha256,
            obj.plain_bytes,
            row.wedding_id,
            listed.etag,
            obj.stored_bytes,
            obj.stored_sha256,
            data_key=self.keys.get(row.sha256),
        )

    def _unchanged_row(self, row: FileRow) -> FileEntry | None:
        """A scoped capture's row that its previous entry already describes (same checksum and size, content
        stored): that entry, without asking the bucket. The whole captures (the hourly incremental's, the daily
        full's) check every object in the bucket; a scoped one every 15 minutes asks only about new or changed
        rows, so its weddings' unchanged photos cost no request at all."""
        prev = self.previous.get(row.path)
        if prev is None or prev.status != STATUS_OK or prev.sha256 != row.sha256:
            return None
        if row.size is not None and prev.size != row.size:
            return None
        if not any(self.present[s.name].get(row.sha256) == prev.stored_bytes for s in self.w.storages):
            return None
        self._everywhere(prev.content())
        return replace(prev, wedding_id=row.wedding_id)

    def _keep(self, row: FileRow, prev: FileEntry | None, why: str) -> FileEntry:
        if prev is not None and prev.restorable:
            self.tally.problems.append(f"{row.path}: {why}; the last good version (sha256 {prev.sha256}) is kept")
            self._everywhere(prev.content())
            return replace(prev, status=STATUS_KEPT, wedding_id=row.wedding_id)
        self.tally.problems.append(f"{row.path}: {why}; no good version was ever captured")
        return FileEntry(row.path, None, None, row.wedding_id, status=STATUS_MISSING)

    def _store(self, row: FileRow, listed: Listed) -> StoredObject:
        if row.size is not None and listed.size != row.size:
            raise content.SourceMismatch(f"the bucket holds {listed.size} bytes, the files table says {row.size}")
        sha, w = row.sha256, self.w
        if sha in self.present[self.primary.name]:
            content.hash_source(w.bucket, row.path, sha, row.size)  # validated, but never uploaded again
            obj = self._stored(sha, listed.size)
        else:
            obj, self.keys[sha] = content.upload(w.bucket, row.path, sha, row.size, self.primary, w.keyring)
            content.verify_content(obj, self.primary, w.keyring)
            self.present[self.primary.name][sha] = obj.stored_bytes
            self.tally.uploaded.append(obj)
            self.known[sha] = obj
        self._everywhere(obj)
        return obj

    def _stored(self, sha: str, size: int) -> StoredObject:
        if sha not in self.known:
            lookup = self.w.stored_content
            found = lookup(sha) if lookup is not None else None
            self.known[sha] = found or content.stored_info(self.primary, sha, size, self.w.keyring)
        return self.known[sha]

    def _everywhere(self, obj: StoredObject) -> None:
        """Every target holds the content object (a target that lost it gets a verified copy)."""
        sha = obj.plain_sha256
        missing = [s for s in self.w.storages if self.present[s.name].get(sha) != obj.stored_bytes]
        if not missing:
            return
        have = next((s for s in self.w.storages if s not in missing), None)
        if have is None:
            raise IntegrityError(
                f"Content object {content.content_key(sha)} is on no target any more",
                "it was removed outside WedSync Backup",
                "run a full backup: the object is stored again from the files bucket if it is still intact there",
            )
        content.replicate_content(obj, have, missing, self.w.keyring)
        for s in missing:
            self.present[s.name][sha] = obj.stored_bytes

    def _entry_alone(self, row: FileRow, listed: Listed | None) -> FileEntry:
        """entry_for, with no other worker on the same content at once (it is stored once, by one of them).
        ``LOOK_UP`` (a scoped capture): the row's object is asked for only when the row is new or changed."""
        with self._guard:
            lock = self._content_locks.setdefault(row.sha256, threading.Lock())
        try:
            with lock:
                if listed is LOOK_UP:
                    kept = self._unchanged_row(row)
                    if kept is not None:
                        return kept
                    listed = looked_up(self.w.bucket, row.path)
                return self.entry_for(row, listed)
        finally:
            give_back(max(0, listed.size) if listed else 0)  # freed buffers back to the kernel: the RSS stays flat

    def _with_objects(self, rows: Iterator[FileRow]) -> Iterator[tuple[FileRow, Listed | None]]:
        """Each row with its object: the whole bucket listed and merge-joined, or, for a scoped capture (a few
        weddings' files in a bucket of every wedding's), each new or changed row's object looked up alone."""
        if self.w.wedding_ids is None:
            return joined(rows, listing(self.w.bucket))
        return ((row, LOOK_UP) for row in rows)

    def _in_order(self, pairs: Iterable[tuple[FileRow, Listed | None]]) -> Iterator[tuple[FileRow, FileEntry]]:
        """Each row's entry, ``workers`` objects at a time, in row order (a bounded window: memory stays flat)."""
        workers = max(1, self.w.workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="files") as pool:
            window: deque[tuple[FileRow, Future[FileEntry]]] = deque()
            for row, listed in pairs:
                window.append((row, pool.submit(self._entry_alone, row, listed)))
                if len(window) >= 4 * workers:
                    r, f = window.popleft()
                    yield r, f.result()
            while window:
                r, f = window.popleft()
                yield r, f.result()

    # --- the whole capture -------------------------------------------------------------------------
    def entries(self, delta: bool) -> Iterator[FileEntry]:
        """The state lines: every file (a full capture) or what changed since the previous one (a delta)."""
        seen: set[str] = set()
        progress = _Progress()
        rows = file_rows(self.w.source_db, self.w.files, self.w.wedding_ids, snapshot=self.w.snapshot)
        for row, entry in self._in_order(self._with_objects(rows)):
            seen.add(row.path)
            if entry.restorable:
                self.tally.objects += 1
                self.tally.bytes += int(entry.size or 0)
            progress.tick(self.tally)
            prev = self.previous.get(row.path)
            differs = prev is None or prev.line() != entry.line()
            self.tally.changed += int(differs)
            if differs or not delta:
                yield entry
        for path in sorted(set(self.previous) - seen):
            self.tally.changed += 1
            if delta:
                yield FileEntry(path, None, None, deleted=True)


CAPTURE_LOCK = 0x7765647379_6E63  # the advisory lock key ('wedsync'), on the source database


@contextlib.contextmanager
def capture_lock(source: PgTarget) -> Iterator[None]:
    """One files capture of a platform at a time (full, incremental, wedding, archive): two captures storing the
    same new content at once would each write it under a data key of its own, and one would then find the
    other's ciphertext where it had verified its own. The lock lives in a session of its own on the source: a
    killed task's session ends, and the lock with it."""
    with source.connect(autocommit=True) as conn:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (CAPTURE_LOCK,)).fetchone()[0]:  # type: ignore[index]
            log.info("Waiting for another backup's files capture to finish (they share the content store)")
            conn.execute("SELECT pg_advisory_lock(%s)", (CAPTURE_LOCK,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (CAPTURE_LOCK,))


def capture_files(
    world: FilesWorld,
    backup_id: str,
    data_key: DataKey,
    previous: dict[str, FileEntry],
    delta_of: str | None,
) -> tuple[FilesSection, list[StoredObject]]:
    """Capture the files into ``backup_id`` (its state object on the primary); returns the manifest section."""
    captured_at = datetime.now(UTC).isoformat()
    with capture_lock(world.source_db):
        cap = Capture(world, previous)  # lists the content store once the lock is ours: what it sees is settled
        state = write_state(world.storages[0], backup_id, cap.entries(delta_of is not None), data_key)
    t = cap.tally
    problems = t.problems[:MAX_PROBLEMS_LISTED]
    if len(t.problems) > MAX_PROBLEMS_LISTED:
        problems.append(f"... and {len(t.problems) - MAX_PROBLEMS_LISTED} more")
    for p in problems:
        log.warning("!!! Files: %s", p)
    log.info(
        "Files of %s: %d objects (%d bytes), %d changed, %d new contents uploaded (%d bytes), %d problems",
        backup_id,
        t.objects,
        t.bytes,
        t.changed,
        len(t.uploaded),
        sum(o.plain_bytes for o in t.uploaded),
        len(t.problems),
    )
    return FilesSection(
        state=state,
        captured_at=captured_at,
        objects=t.objects,
        bytes=t.bytes,
        new_objects=len(t.uploaded),
        new_bytes=sum(o.plain_bytes for o in t.uploaded),
        delta_of=delta_of,
        changed=t.changed,
        problems=problems,
        scope=None if world.wedding_ids is None else {"wedding_ids": sorted({str(w) for w in world.wedding_ids})},
    ), t.uploaded


class ContentRecord(Protocol):
    """Where captures are recorded (the catalog)."""

    def record_contents(self, stored: list[StoredObject], backup_id: str) -> None: ...

    def record_files_capture(self, backup_id: str, section: FilesSection) -> None: ...


def _base_capture(manifest: Manifest, manifests: list[Manifest]) -> str | None:
    """An incremental's delta base: the nearest ancestor in its chain that captured files."""
    by_id = {m.backup_id: m for m in manifests}
    at = manifest.parent_backup_id
    while at is not None and at in by_id:
        files = by_id[at].files
        if files is not None and files.whole:  # a wedding backup's scoped capture is never a delta base
            return at
        at = by_id[at].parent_backup_id
    return None


def _scoped_previous(
    storage: Storage, manifests: list[Manifest], base: str | None, wedding_ids: list[str], ring: Keyring
) -> dict[str, FileEntry]:
    """What a scoped capture compares with: the weddings' files at the last whole capture, then at the newest
    wedding backup's capture since (for the weddings it holds), so that unchanged objects are not read again."""
    wanted = {str(w) for w in wedding_ids}
    whole = state_at(storage, manifests, base, ring) if base else {}
    previous = {p: e for p, e in whole.items() if e.wedding_id in wanted}
    since = next((m.files.captured_at for m in manifests if m.backup_id == base and m.files), "")
    scoped = [
        m
        for m in manifests
        if m.files is not None
        and m.files.scope is not None
        and m.files.captured_at > since
        and wanted & set(m.files.scope.get("wedding_ids", []))
    ]
    if scoped:
        newest = max(scoped, key=lambda m: m.files.captured_at)  # type: ignore[union-attr]
        previous.update((e.path, e) for e in read_state(storage, newest, ring) if e.wedding_id in wanted)
    return previous


def capture_into(world: FilesWorld, manifest: Manifest, record: ContentRecord) -> Manifest:
    """Capture the files into ``manifest``'s backup (a delta for an incremental, the weddings' files for a scoped
    ``world``, else the whole state) and re-seal its pending manifest on ``world.storages[0]``; the catalog
    records what it stored."""
    primary, ring = world.storages[0], world.keyring
    manifests = committed_manifests(primary)
    if manifest.backup_type == "incremental":
        base = delta_of = _base_capture(manifest, manifests)
    else:
        captures = files_captures(manifests)  # whole captures only
        base, delta_of = (captures[-1].backup_id if captures else None), None
    previous: dict[str, FileEntry]
    if world.wedding_ids is not None:
        previous = _scoped_previous(primary, manifests, base, world.wedding_ids, ring)
    else:
        previous = state_at(primary, manifests, base, ring) if base else {}
    data_key = ring.unwrap(manifest.encryption["wrapped_key"], manifest.backup_id)
    section, uploaded = capture_files(world, manifest.backup_id, data_key, previous, delta_of)
    manifest.files = section
    seal_pending(primary, manifest, data_key)
    record.record_contents(uploaded, manifest.backup_id)
    record.record_files_capture(manifest.backup_id, section)
    return manifest
