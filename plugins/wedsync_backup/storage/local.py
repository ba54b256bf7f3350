"""A directory on a local (or mounted) disk as a backup target.

Objects are written to a hidden temp file beside their final path and renamed into place on commit, so a
crash leaves at most a ``.partial-`` file that :meth:`LocalStorage.list` never shows.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from wedsync_backup.errors import StorageError
from wedsync_backup.storage.base import READ_CHUNK, ObjectInfo, ObjectWriter, Storage

PARTIAL_MARK = ".partial-"
STALE_PARTIAL_SECONDS = 3600  # no writer of ours keeps one file open for an hour without writing
PROBE_PREFIX = ".wedsync-check-"
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_SETUP = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _is_internal(filename: str) -> bool:
    """Temp files of unfinished writers and check() probes: never objects."""
    return filename.startswith(".") and (PARTIAL_MARK in filename or filename.startswith(PROBE_PREFIX))


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk too."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalWriter(ObjectWriter):
    def __init__(self, storage: LocalStorage, key: str, path: Path) -> None:
        self._storage = storage
        self._key = key
        self._path = path
        self._tmp = path.parent / f".{path.name}{PARTIAL_MARK}{secrets.token_hex(6)}"
        self._file: BinaryIO | None = None
        self._done = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        except OSError as e:
            raise storage._error(f"Cannot start writing {path}", e) from e

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise StorageError(f"Writer for {self._path} is already closed", fix="open a new writer")
        try:
            self._file.write(data)
        except OSError as e:
            raise self._storage._error(f"Cannot write {self._path}", e) from e

    def commit(self) -> None:
        if self._done:
            return
        f, self._file = self._file, None
        try:
            assert f is not None
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(self._tmp, self._path)
        except OSError as e:
            self._discard(f)
            raise self._storage._error(f"Cannot save {self._path}", e) from e
        self._done = True
        _fsync_dir(self._path.parent)

    def abort(self) -> None:
        if self._done:
            return
        f, self._file = self._file, None
        self._discard(f)

    def _discard(self, f: BinaryIO | None) -> None:
        self._done = True
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        self._tmp.unlink(missing_ok=True)

    def __del__(self) -> None:
        # A writer dropped without commit() must never publish anything.
        try:
            if not self._done:
                self.abort()
        except Exception:
            pass


class LocalStorage(Storage):
    """Objects are files under ``root``; keys are their ``/``-separated relative paths."""

    kind = "local"

    def __init__(self, root: Path | str, *, name: str, medium: str, site: str, conn_id: str = "") -> None:
        super().__init__(name=name, medium=medium, site=site)
        self.root = Path(root).expanduser().absolute()
        self.conn_id = conn_id

    # --- helpers ---------------------------------------------------------------------------------
    def _where(self) -> str:
        conn = f", connection {self.conn_id}" if self.conn_id else ""
        return f"target {self.name}{conn}"

    def _error(self, what: str, err: OSError) -> StorageError:
        other = f", or point connection {self.conn_id} (extra 'path') at another directory" if self.conn_id else ""
        if err.errno in _FULL:
            return StorageError(
                f"{what} ({self._where()}): the disk is full",
                f"{err.strerror}; {self._space()}",
                f"free space on the disk of {self.root} (or let retention prune old backups){other}",
                transient=False,
            )
        if err.errno in _SETUP:
            return StorageError(
                f"{what} ({self._where()})",
                err.strerror or str(err),
                f"check the directory exists and the backup user may write there{other}",
                transient=False,
            )
        return StorageError(
            f"{what} ({self._where()})", err.strerror or str(err), f"check the disk and the directory{other}"
        )

    def _space(self) -> str:
        """How much room the target's file system has, for the error that says it is full."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return "free space unknown"
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        return f"{_mib(free)} free of {_mib(total)} on the file system of {self.root}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(
                f"Invalid object key '{key}' for {self._where()}",
                "keys are relative '/'-separated paths without empty, '.' or '..' parts",
                "this is a bug in the caller; report it",
            )
        if _is_internal(parts[-1]):
            raise StorageError(
                f"Invalid object key '{key}' for {self._where()}",
                "the name is reserved for temporary files",
                "use another name",
            )
        return self.root.joinpath(*parts)

    # --- writing ---------------------------------------------------------------------------------
    def writer(self, key: str) -> ObjectWriter:
        return LocalWriter(self, key, self._path(key))

    # --- reading ---------------------------------------------------------------------------------
    def read(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        return self._chunks(self._open(key), self._path(key), chunk_size)

    def read_range(self, key: str, start: int, length: int, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        f = self._open(key)
        f.seek(start)
        return self._chunks(f, self._path(key), chunk_size, length)

    def _open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")  # closed by the generator that reads it
        except FileNotFoundError as e:
            raise StorageError(
                f"Backup object {path} does not exist ({self._where()})",
                fix="check the key, or whether retention already deleted it",
            ) from e
        except OSError as e:
            raise self._error(f"Cannot read {path}", e) from e

    def _chunks(self, f: BinaryIO, path: Path, chunk_size: int, length: int | None = None) -> Iterator[bytes]:
        left = -1 if length is None else length
        with f:
            while left:
                try:
                    data = f.read(chunk_size if left < 0 else min(chunk_size, left))
                except OSError as e:
                    raise self._error(f"Cannot read {path}", e) from e
                if not data:
                    return
                left = left - len(data) if left > 0 else left
                yield data

    def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._error(f"Cannot stat {path}", e) from e
        return st.st_size if path.is_file() else None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Start walking at the deepest directory the prefix names, not at the root.
        head, _, _ = prefix.rpartition("/")
        if any(p in ("", ".", "..") for p in head.split("/")) and head:
            return
        start = self.root.joinpath(*head.split("/")) if head else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            base = Path(dirpath).relative_to(self.root).as_posix()
            for fn in sorted(filenames):
                if _is_internal(fn):
                    continue
                key = fn if base == "." else f"{base}/{fn}"
                if not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, fn)).st_size
                except FileNotFoundError:
                    continue  # deleted while we walked
                yield ObjectInfo(key, size)

    # --- deleting --------------------------------------------------------------------------------
    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except IsADirectoryError:
                continue
            except OSError as e:
                raise self._error(f"Cannot delete {path}", e) from e
            self._prune_empty_dirs(path.parent)

    def _prune_empty_dirs(self, d: Path) -> None:
        """Remove directories emptied by delete() so old backups leave no skeleton behind, with the stale
        partial files a killed writer left in them (older than STALE_PARTIAL_SECONDS: not a live writer's)."""
        while d != self.root and self.root in d.parents:
            self._drop_stale_partials(d)
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    @staticmethod
    def _drop_stale_partials(d: Path) -> None:
        cutoff = time.time() - STALE_PARTIAL_SECONDS
        try:
            stale = [e for e in os.scandir(d) if PARTIAL_MARK in e.name and e.is_file() and e.stat().st_mtime < cutoff]
        except OSError:
            return
        for entry in stale:
            Path(entry.path).unlink(missing_ok=True)

    # --- describing ------------------------------------------------------------------------------
    def url(self, key: str = "") -> str:
        return f"file://{self.root}/{key}" if key else f"file://{self.root}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(f"Backup directory {self.root} cannot be created", e) from e
        if not self.root.is_dir():
            raise StorageError(
                f"Backup path {self.root} is not a directory ({self._where()})",
                fix=f"point connection {self.conn_id or '(fs)'} (extra 'path') at a directory",
            )
        probe = self.root / f"{PROBE_PREFIX}{secrets.token_hex(6)}"
        try:
            probe.write_bytes(b"wedsync")
            probe.unlink()
        except OSError as e:
            probe.unlink(missing_ok=True)
            raise self._error(f"Backup directory {self.root} is not writable", e) from e
