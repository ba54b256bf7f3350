"""The one storage interface every target implements (local disk, S3, GCS).

Keys are ``/``-separated paths relative to the target's root (bucket + prefix, or directory). Writers are
atomic: an object becomes visible only when its writer commits, so a crash never leaves a half object
under its final key.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from wedsync_backup.errors import StorageError

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectWriter(abc.ABC):
    """Streams one object. Use as a context manager: commits on success, aborts on error."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the object visible under its key (replacing any previous one)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; the key keeps whatever it had before."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Storage(abc.ABC):
    """A backup target.

    ``name`` is its role in the policy (primary, secondary, offsite), ``medium`` the kind of media it is
    on (for the 3-2-1 rule: disk, object-storage, tape...), ``site`` where it physically is.
    """

    kind: str = "abstract"

    def __init__(self, *, name: str, medium: str, site: str) -> None:
        self.name = name
        self.medium = medium
        self.site = site

    # --- writing -------------------------------------------------------------------------------
    @abc.abstractmethod
    def writer(self, key: str) -> ObjectWriter:
        """Return an atomic streaming writer for ``key``."""

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as w:
            w.write(data)

    # --- reading -------------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """Stream the object's bytes; raises StorageError if it does not exist."""

    def read_range(self, key: str, start: int, length: int, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """Stream ``length`` bytes from ``start`` (fewer when the object ends first: callers check sizes);
        raises StorageError if it does not exist. One piece of a bundle (many small parts in one object, as
        pgBackRest's repo-bundle does) is read without the rest. Backends override this with a ranged
        request; this fallback reads past the bytes before ``start``."""
        skip, left = start, length
        for piece in self.read(key, chunk_size):
            if skip >= len(piece):
                skip -= len(piece)
                continue
            piece = piece[skip : skip + left]
            skip, left = 0, left - len(piece)
            if piece:
                yield piece
            if left <= 0:
                return

    def _nothing_of(self, key: str) -> Iterator[bytes]:
        """An empty range of ``key``: nothing to read, but a missing object is still an error."""
        if self.size(key) is None:
            raise StorageError(
                f"Backup object {self.url(key)} does not exist ({self.name})",
                fix="check the key, or whether retention already deleted it",
            )
        return iter(())

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.read(key))

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in no particular order."""

    # --- deleting ------------------------------------------------------------------------------
    @abc.abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete the objects; keys that do not exist are ignored."""

    # --- describing ----------------------------------------------------------------------------
    @abc.abstractmethod
    def url(self, key: str = "") -> str:
        """Human-readable location, e.g. ``s3://bucket/prefix/key``; recorded in the catalog."""

    @abc.abstractmethod
    def check(self) -> None:
        """Prove the target is reachable and writable; raise StorageError naming what to fix."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.url()}>"


def unreachable_at_check(error: StorageError) -> StorageError:
    """A target that cannot be reached when preflight first checks it: before any work this is a set-up
    fault (a wrong endpoint, a missing network route), so preflight fails at once, naming it. The same fault
    in the middle of the work (the endpoint answered before) is transient and retried."""
    error.transient = False
    return error


class BucketStorage(Storage):
    """An object store (S3, GCS): keys live under ``prefix`` in a bucket reached through ``conn_id``."""

    prefix: str = ""
    conn_id: str = ""

    def _full(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise StorageError(
                f"Invalid object key '{key}' for target {self.name}",
                "keys are non-empty relative '/'-separated paths",
                "this is a bug in the caller; report it",
            )
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _where(self) -> str:
        conn = f", connection {self.conn_id}" if self.conn_id else ""
        return f"target {self.name}{conn}"
