"""A Google Cloud Storage bucket as a backup target.

An object of at most 8 MiB is written in one request at commit; a larger one uses a resumable upload
session sent in fixed-size chunks. Memory stays bounded by about two chunks (the client's buffer and the
chunk it sends); the object only appears on commit (the session finalised), and abort sends nothing or
cancels the session. Reads are ranged requests of one chunk each. Both work the same against real GCS and
gcp-storage-emulator.

Memory: bytes held for one request are kept as the pieces written (shared with a tee's other writers) and
joined once to send; chunks are 4 MiB (16, then 8 before) and ranged reads 4 MiB (8 before). A writer peaks
at about two chunks, when the client's buffer hands one to its request (bench/memory.py measures the full backup).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

from google.api_core import exceptions as gexc
from google.auth.exceptions import GoogleAuthError
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY
from requests.exceptions import RequestException

from wedsync_backup.errors import MissingTargetError, StorageError
from wedsync_backup.heap import bound_buffers
from wedsync_backup.storage.base import READ_CHUNK, BucketStorage, ObjectInfo, ObjectWriter, unreachable_at_check

CHUNK_SIZE = 4 << 20  # a multiple of 256 KiB; a writer holds about two (a full backup runs three at once)
SINGLE_REQUEST_MAX = 8 << 20  # an object up to this size is sent in one request, not a resumable session
READ_AHEAD = 4 << 20  # one ranged request fetches this much; read() hands it out in chunk_size pieces
DELETE_BATCH = 100  # the GCS batch API takes at most 100 calls per request
BUCKET_ENV = "WEDSYNC_BACKUP_GCS_BUCKET"
PROBE_PREFIX = ".wedsync-check-"
CHECK_TIMEOUT = 5.0  # seconds preflight keeps trying to reach the endpoint before it fails
# Everything the client raises for a failed call: API errors, raw upload/download errors, network.
_ERRORS = (
    gexc.GoogleAPIError,
    InvalidResponse,
    DataCorruption,
    RequestException,
    GoogleAuthError,
    ConnectionError,
)


class GCSWriter(ObjectWriter):
    """Bytes are held up to ``single_request_max``: an object no larger (a wedding's object, a photo) is sent
    in ONE request at commit; a larger one opens a resumable session and streams chunk by chunk. Memory stays
    bounded by about one chunk either way, and nothing is published before commit."""

    def __init__(self, storage: GCSStorage, key: str) -> None:
        self._s = storage
        self._full = storage._full(key)
        self._blob = storage._bucket.blob(self._full, chunk_size=storage.chunk_size)
        if storage.storage_class:  # e.g. ARCHIVE for the weekly archive: set at upload, no rewrite later
            self._blob.storage_class = storage.storage_class
        self._pieces: list[bytes] = []  # what is held for one request, as written (no copy)
        self._held = 0
        self._w: Any = None  # the resumable session's writer, once the bytes outgrow one chunk
        self._done = False

    def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError(f"Writer for gs://{self._s.bucket}/{self._full} is already closed", fix="open a new one")
        try:
            if self._w is None and self._held + len(data) <= self._s.single_request_max:
                self._pieces.append(data if isinstance(data, bytes) else bytes(data))
                self._held += len(data)
                return
            if self._w is None:
                # Retrying resumable chunks is safe: the session knows how many bytes it has.
                self._w = self._blob.open("wb", ignore_flush=True, retry=DEFAULT_RETRY)
                self._pieces.reverse()
                while self._pieces:  # each piece dropped once the client's buffer has it
                    self._w.write(self._pieces.pop())
                self._held = 0
            self._w.write(data)
        except BaseException as e:
            self.abort()
            if isinstance(e, _ERRORS):
                raise self._s._error("upload", self._full, e) from e
            raise

    def commit(self) -> None:
        if self._done:
            return
        try:
            if self._w is None:  # one request; retrying it re-sends the same whole object
                body = b"".join(self._pieces)
                self._pieces.clear()
                self._blob.upload_from_string(body, retry=DEFAULT_RETRY)
            else:
                self._w.close()  # uploads the last chunk and finalises the session
        except BaseException as e:
            self.abort()
            if isinstance(e, _ERRORS):
                raise self._s._error("finish uploading", self._full, e) from e
            raise
        self._done = True
        self._pieces.clear()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._pieces.clear()
        if self._w is None:
            return  # nothing was sent
        try:
            # Cancels the resumable session (a DELETE on its URL) and closes the buffer, so neither
            # this call nor garbage collection can ever finalise a partial object.
            self._w.terminate()
        except Exception:
            with contextlib.suppress(Exception):
                self._w._buffer.close()

    def __del__(self) -> None:
        # A writer dropped without commit() must never publish anything; without this, the
        # BlobWriter's own __del__ (io.IOBase) would close() and so finalise a partial object.
        try:
            if not self._done:
                self.abort()
        except Exception:
            pass


class GCSStorage(BucketStorage):
    """Objects live in ``bucket`` under ``prefix/``; ``client`` is a google.cloud.storage.Client."""

    kind = "gcs"
    storage_class: str | None = None  # objects written get this class (None: the bucket's default)

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        name: str,
        medium: str,
        site: str,
        conn_id: str = "",
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        super().__init__(name=name, medium=medium, site=site)
        if chunk_size <= 0 or chunk_size % (256 << 10):
            raise ValueError("GCS chunk_size must be a positive multiple of 256 KiB")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.conn_id = conn_id
        self.chunk_size = chunk_size
        self.single_request_max = min(chunk_size, SINGLE_REQUEST_MAX)
        bound_buffers()  # chunks freed go back to the kernel (heap.py)
        self._bucket = client.bucket(bucket)

    @property
    def endpoint(self) -> str:
        conn = getattr(self.client, "_connection", None)
        return str(getattr(conn, "API_BASE_URL", "") or "https://storage.googleapis.com")

    def _no_bucket(self) -> StorageError:
        return MissingTargetError(
            f"GCS bucket '{self.bucket}' does not exist ({self._where()})",
            f"endpoint {self.endpoint}",
            f"create the bucket, or set {BUCKET_ENV} (or targets.{self.name}.bucket) to an existing one",
        )

    def _bucket_exists(self) -> bool:
        try:
            return self.client.lookup_bucket(self.bucket) is not None
        except Exception:
            return True  # unknown: report the original error instead

    def _error(self, what: str, full_key: str, e: BaseException) -> StorageError:
        conn = self.conn_id or "the GCS connection"
        if isinstance(e, gexc.RetryError) and e.cause is not None:
            e = e.cause  # the client gave up retrying: classify what it kept running into
        status = getattr(getattr(e, "response", None), "status_code", 0)
        if isinstance(e, InvalidResponse) and status:
            e = gexc.from_http_status(status, str(e))
        where = f"Cannot {what} gs://{self.bucket}/{full_key} ({self._where()})"
        if isinstance(e, gexc.NotFound) and not self._bucket_exists():
            return self._no_bucket()
        if isinstance(e, gexc.Unauthorized | gexc.Forbidden | GoogleAuthError):
            return StorageError(
                where,
                f"GCS at {self.endpoint} refused the credentials ({e})",
                f"check the key file / service account and its bucket permissions in connection {conn}",
                transient=False,
            )
        if isinstance(e, gexc.GoogleAPIError):
            # 5xx, throttling (429) and timeouts pass; another 4xx is a request no retry will change
            passes = isinstance(e, gexc.ServerError | gexc.TooManyRequests | gexc.RetryError | gexc.DeadlineExceeded)
            return StorageError(
                where,
                f"GCS at {self.endpoint} answered: {e}",
                "the task is retried; if it persists check the service status"
                if passes
                else "check the request against the bucket's settings",
                transient=passes,
            )
        return StorageError(
            where,
            f"GCS endpoint {self.endpoint} is unreachable ({e})",
            f"check the network, connection {conn} and STORAGE_EMULATOR_HOST if you use an emulator",
        )

    # --- writing ---------------------------------------------------------------------------------
    def writer(self, key: str) -> ObjectWriter:
        return GCSWriter(self, key)

    # --- reading ---------------------------------------------------------------------------------
    def read(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        return self._chunks(self._blob(key), self._full(key), chunk_size)

    def read_range(self, key: str, start: int, length: int, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        return self._chunks(self._blob(key), self._full(key), chunk_size, start, length)

    def _blob(self, key: str) -> Any:
        full = self._full(key)
        try:
            blob = self._bucket.get_blob(full)
        except _ERRORS as e:
            raise self._error("read", full, e) from e
        if blob is None:
            raise StorageError(
                f"Backup object {self.url(key)} does not exist ({self._where()})",
                fix="check the key, or whether retention already deleted it",
            )
        return blob

    def _chunks(
        self, blob: Any, full: str, chunk_size: int, start: int = 0, length: int | None = None
    ) -> Iterator[bytes]:
        # Ranged reads of at most READ_AHEAD bytes each (no more than the range asked for), pinned to the generation
        # we looked up, so an object overwritten mid-read fails instead of mixing two versions.
        end = int(blob.size) if length is None else min(int(blob.size), start + length)
        if start >= end:
            return
        try:
            with blob.open(
                "rb",
                chunk_size=min(max(chunk_size, READ_AHEAD), end - start),
                if_generation_match=blob.generation,
                retry=DEFAULT_RETRY,
            ) as f:
                f.seek(start)
                while start < end and (data := f.read(min(chunk_size, end - start))):
                    start += len(data)
                    yield data
        except _ERRORS as e:
            raise self._error("read", full, e) from e

    def size(self, key: str) -> int | None:
        full = self._full(key)
        try:
            blob = self._bucket.get_blob(full)
        except _ERRORS as e:
            raise self._error("look up", full, e) from e
        return None if blob is None else int(blob.size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        try:
            for blob in self.client.list_blobs(self._bucket, prefix=full or None):
                key = self._rel(blob.name)
                if not key.startswith(PROBE_PREFIX):
                    yield ObjectInfo(key, int(blob.size))
        except _ERRORS as e:
            raise self._error("list", full, e) from e

    # --- deleting --------------------------------------------------------------------------------
    def delete(self, keys: list[str]) -> None:
        fulls = [self._full(k) for k in keys]
        for i in range(0, len(fulls), DELETE_BATCH):
            batch = fulls[i : i + DELETE_BATCH]
            try:
                with self.client.batch(raise_exception=False) as b:
                    for full in batch:
                        self._bucket.delete_blob(full)
            except _ERRORS as e:
                raise self._error("delete objects under", batch[0], e) from e
            responses = getattr(b, "_responses", [])  # set by Batch.finish() on exit
            failed = [r for r in responses if not r.ok and r.status_code != 404]
            if failed:
                raise StorageError(
                    f"Could not delete {len(failed)} object(s) from gs://{self.bucket} ({self._where()})",
                    f"first answer: {failed[0].status_code} {failed[0].text[:200]}",
                    "check the connection's delete permission and any retention policy on the bucket",
                )

    # --- describing ------------------------------------------------------------------------------
    def url(self, key: str = "") -> str:
        path = "/".join(p for p in (self.prefix, key) if p)
        return f"gs://{self.bucket}/{path}"

    def check(self) -> None:
        try:
            found = self.client.lookup_bucket(self.bucket, retry=DEFAULT_RETRY.with_timeout(CHECK_TIMEOUT))
        except _ERRORS as e:
            error = self._error("reach", "", e)
            raise (unreachable_at_check(error) if error.transient else error) from e
        if found is None:
            raise self._no_bucket()
        probe = self._full(f"{PROBE_PREFIX}{secrets.token_hex(6)}")
        try:
            self._bucket.blob(probe).upload_from_string(b"wedsync")
            self._bucket.blob(probe).delete()
        except _ERRORS as e:
            raise self._error("write a probe object to", probe, e) from e
