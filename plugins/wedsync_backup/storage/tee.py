"""Write every object to the primary and, at the same time, to every replica: copies made during the export.

The full backup's export streams its ciphertext through a ``TeeStorage``, so when the export ends every copy
exists, without a replicate pass that reads the primary back and uploads it again. Each replica gets its
own thread fed from a small bounded queue: memory stays bounded (a few chunks per replica), and a slow
replica slows the export instead of piling data up. An object is committed on a replica only when its whole
stream arrived, and on the primary only after every replica committed it; a failure on any target aborts
the object everywhere it was not yet committed and fails the export, whose retry starts the backup again
on every target (``repository.begin_attempt`` on each). The copies still count only once each one is read
back and verified.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

from wedsync_backup.storage.base import READ_CHUNK, ObjectInfo, ObjectWriter, Storage

LANE_DEPTH = 4  # chunks (about 1 MiB each) waiting per replica
_END, _ABORT = object(), object()


class _Lane:
    """One replica's writer, fed by the export's thread through a bounded queue, written by its own thread."""

    def __init__(self, storage: Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.error: BaseException | None = None
        self._queue: queue.Queue[object] = queue.Queue(LANE_DEPTH)
        self._thread = threading.Thread(target=self._run, name=f"tee-{storage.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        writer: ObjectWriter | None = None
        item: object = None
        try:
            writer = self.storage.writer(self.key)
            while True:
                item = self._queue.get()
                if item is _END:
                    writer.commit()
                    return
                if item is _ABORT:
                    writer.abort()
                    return
                writer.write(item)  # type: ignore[arg-type]
        except BaseException as e:  # handed to the export's thread, which raises it
            self.error = e
            if writer is not None:
                with contextlib.suppress(Exception):  # the original error is the one to report
                    writer.abort()
            while item is not _END and item is not _ABORT:  # unblock the producer until it stops
                item = self._queue.get()

    def put(self, data: bytes) -> None:
        self._raise()
        self._queue.put(data)

    def finish(self) -> None:
        self._queue.put(_END)
        self._thread.join()
        self._raise()

    def cancel(self) -> None:
        self._queue.put(_ABORT)
        self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


class TeeWriter(ObjectWriter):
    def __init__(self, primary: Storage, replicas: list[Storage], key: str) -> None:
        self._primary = primary.writer(key)
        self._lanes = [_Lane(r, key) for r in replicas]

    def write(self, data: bytes) -> None:
        for lane in self._lanes:
            lane.put(data)
        self._primary.write(data)

    def commit(self) -> None:
        try:
            for lane in self._lanes:
                lane.finish()
        except BaseException:
            self.abort()
            raise
        self._primary.commit()

    def abort(self) -> None:
        for lane in self._lanes:
            if lane.error is None:
                lane.cancel()
        self._primary.abort()


class TeeStorage(Storage):
    """The primary, with every object written also streamed to ``replicas``.

    Reads, sizes and listings are the primary's; small metadata written with ``put_bytes`` (the pending
    manifest) stays on the primary, where the later phases read it; deletes apply to every target.
    """

    def __init__(self, primary: Storage, replicas: list[Storage]) -> None:
        super().__init__(name=primary.name, medium=primary.medium, site=primary.site)
        self.kind = primary.kind
        self.primary = primary
        self.replicas = replicas

    def writer(self, key: str) -> ObjectWriter:
        return TeeWriter(self.primary, self.replicas, key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.primary.put_bytes(key, data)

    def read(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        return self.primary.read(key, chunk_size)

    def read_range(self, key: str, start: int, length: int, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        return self.primary.read_range(key, start, length, chunk_size)

    def size(self, key: str) -> int | None:
        return self.primary.size(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.primary.list(prefix)

    def delete(self, keys: list[str]) -> None:
        for storage in (self.primary, *self.replicas):
            storage.delete(keys)

    def url(self, key: str = "") -> str:
        return self.primary.url(key)

    def check(self) -> None:
        for storage in (self.primary, *self.replicas):
            storage.check()
