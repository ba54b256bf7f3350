"""An S3 (or S3-compatible: MinIO, moto, Ceph) bucket as a backup target.

Writes stream as a multipart upload holding at most one part in memory, and only become visible when
the upload completes; an aborted writer aborts the multipart upload so no half object (and no billed
orphan parts) remains.

Memory: a part is held as the pieces written (the very bytes objects, shared with a tee's other writers),
joined into one body only to send it and dropped at once: a writer holds about one part (PART_SIZE, 5 MiB)
while it uploads, where a growing 16 MiB buffer plus its copy for the request held two (~35 MB per writer;
bench/memory.py measures the full backup).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)

from wedsync_backup.errors import MissingTargetError, StorageError
from wedsync_backup.heap import bound_buffers
from wedsync_backup.storage.base import READ_CHUNK, BucketStorage, ObjectInfo, ObjectWriter, unreachable_at_check

PART_SIZE = 5 << 20  # S3's smallest: a writer holds one part, and a full backup runs three writers at once
# Every part carries a CRC32 that S3 verifies, declared up front as s3transfer does (an upload whose
# parts carry checksums the upload did not declare can be refused by the Complete call).
CHECKSUM = "CRC32"
MAX_PARTS = 10_000
DELETE_BATCH = 1000
BUCKET_ENV = "WEDSYNC_BACKUP_S3_BUCKET"
PROBE_PREFIX = ".wedsync-check-"
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
# Answers a retry outlives: throttling, timeouts and server-side faults (every 5xx).
_PASSING = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "InternalError"}
# Failures to talk to the endpoint at all (refused, reset, timed out): transient once work has begun.
_NETWORK = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, HTTPClientError)


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _passes(e: ClientError) -> bool:
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return status >= 500 or status == 429 or _code(e) in _PASSING


class S3Writer(ObjectWriter):
    """Holds up to one part (the pieces written); the first full part turns the write into a multipart upload."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._s = storage
        self._key = storage._full(key)
        self._pieces: list[bytes] = []
        self._held = 0  # bytes in _pieces
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    def _part_size(self) -> int:
        # Grow parts after every 2,500 so a huge object still fits S3's 10,000-part limit (~293 GiB).
        return self._s.part_size << min(3, len(self._parts) // 2500)

    def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError(f"Writer for s3://{self._s.bucket}/{self._key} is already closed", fix="open a new one")
        while data:
            room = self._part_size() - self._held
            if len(data) <= room and isinstance(data, bytes):
                piece, data = data, b""  # kept as it is: no copy
            else:
                view = memoryview(data)
                piece, data = bytes(view[:room]), view[room:]
            self._pieces.append(piece)
            self._held += len(piece)
            if self._held >= self._part_size():
                self._flush_part()

    def _take(self) -> bytes:
        """The held pieces joined into one request body, and let go at once: while the part is sent it exists
        once (a bytes body, not a file-like one: botocore would then wait for a 100-continue on every request)."""
        body = b"".join(self._pieces)
        self._pieces = []
        self._held = 0
        return body

    def _flush_part(self) -> None:
        s = self._s
        try:
            if self._upload_id is None:
                resp = s._call(
                    "start uploading",
                    self._key,
                    s.client.create_multipart_upload,
                    Key=self._key,
                    ChecksumAlgorithm=CHECKSUM,
                )
                self._upload_id = resp["UploadId"]
            number = len(self._parts) + 1
            if number > MAX_PARTS:
                raise StorageError(
                    f"Object s3://{s.bucket}/{self._key} is too large for one S3 multipart upload",
                    f"more than {MAX_PARTS} parts",
                    "split the data into several objects or raise the part size",
                )
            resp = s._call(
                "upload a part of",
                self._key,
                s.client.upload_part,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=self._take(),
                ChecksumAlgorithm=CHECKSUM,
            )
        except BaseException:
            self.abort()
            raise
        part: dict[str, Any] = {"PartNumber": number, "ETag": resp["ETag"]}
        if resp.get(f"Checksum{CHECKSUM}"):
            part[f"Checksum{CHECKSUM}"] = resp[f"Checksum{CHECKSUM}"]
        self._parts.append(part)

    def commit(self) -> None:
        if self._done:
            return
        s = self._s
        try:
            if self._upload_id is None:
                s._call("upload", self._key, s.client.put_object, Key=self._key, Body=self._take())
            else:
                if self._held:
                    self._flush_part()
                s._call(
                    "finish uploading",
                    self._key,
                    s.client.complete_multipart_upload,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._pieces.clear()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._pieces.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            # Never hide the error that made us abort; a bucket lifecycle rule
            # (AbortIncompleteMultipartUpload) cleans up what we could not.
            with contextlib.suppress(ClientError, BotoCoreError):
                self._s.client.abort_multipart_upload(Bucket=self._s.bucket, Key=self._key, UploadId=upload_id)

    def __del__(self) -> None:
        # A writer dropped without commit() must never publish anything.
        try:
            if not self._done:
                self.abort()
        except Exception:
            pass


class S3Storage(BucketStorage):
    """Objects live in ``bucket`` under ``prefix/``; ``client`` is a boto3 S3 client (e.g. from S3Hook)."""

    kind = "s3"

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
        part_size: int = PART_SIZE,
    ) -> None:
        super().__init__(name=name, medium=medium, site=site)
        if part_size < 5 << 20:
            raise ValueError("S3 parts must be at least 5 MiB")
        bound_buffers()  # parts freed go back to the kernel (heap.py)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.conn_id = conn_id
        self.part_size = part_size

    @property
    def endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", "") or "the default AWS endpoint")

    def _error(self, what: str, full_key: str, e: Exception) -> StorageError:
        """Turn a boto error into one an administrator can act on."""
        conn = self.conn_id or "the S3 connection"
        if isinstance(e, ClientError):
            code = _code(e)
            if code in _NO_BUCKET:
                return self._no_bucket()
            if code in _DENIED:
                return StorageError(
                    f"Cannot {what} s3://{self.bucket}/{full_key} ({self._where()})",
                    f"S3 at {self.endpoint} refused the credentials ({code})",
                    f"check the access key, secret and permissions in connection {conn}",
                    transient=False,
                )
            passes = _passes(e)
            return StorageError(
                f"Cannot {what} s3://{self.bucket}/{full_key} ({self._where()})",
                f"S3 at {self.endpoint} answered {code}: {e.response.get('Error', {}).get('Message', e)}",
                "the task is retried; if it persists check the service status"
                if passes
                else "check the request against the bucket's policy and settings",
                transient=passes,
            )
        if isinstance(e, NoCredentialsError):
            return StorageError(
                f"Cannot {what} s3://{self.bucket}/{full_key} ({self._where()})",
                "no AWS credentials were found",
                f"set login/password (access key/secret) or a role in connection {conn}",
                transient=False,
            )
        if isinstance(e, _NETWORK):
            return StorageError(
                f"Cannot {what} s3://{self.bucket}/{full_key} ({self._where()})",
                f"S3 endpoint {self.endpoint} is unreachable ({e})",
                f"check the network and 'endpoint_url' in connection {conn} (mid-work, the task is retried first)",
            )
        return StorageError(
            f"Cannot {what} s3://{self.bucket}/{full_key} ({self._where()})",
            f"the S3 client refused the request ({type(e).__name__}: {e})",
            f"check 'endpoint_url', 'region_name' and the other settings of connection {conn}",
            transient=False,
        )

    def _no_bucket(self) -> StorageError:
        return MissingTargetError(
            f"S3 bucket '{self.bucket}' does not exist ({self._where()})",
            f"endpoint {self.endpoint}",
            f"create the bucket, or set {BUCKET_ENV} (or targets.{self.name}.bucket) to an existing one",
        )

    def _call(self, what: str, full_key: str, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kw)
        except (ClientError, BotoCoreError) as e:
            raise self._error(what, full_key, e) from e

    # --- writing ---------------------------------------------------------------------------------
    def writer(self, key: str) -> ObjectWriter:
        return S3Writer(self, key)

    # --- reading ---------------------------------------------------------------------------------
    def read(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        return self._get(key, chunk_size)

    def read_range(self, key: str, start: int, length: int, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        if length <= 0:
            return self._nothing_of(key)
        return self._get(key, chunk_size, Range=f"bytes={start}-{start + length - 1}")

    def _get(self, key: str, chunk_size: int, **kw: Any) -> Iterator[bytes]:
        full = self._full(key)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=full, **kw)
        except ClientError as e:
            if _code(e) in _MISSING:
                raise StorageError(
                    f"Backup object {self.url(key)} does not exist ({self._where()})",
                    fix="check the key, or whether retention already deleted it",
                ) from e
            if _code(e) == "InvalidRange":  # a range past the end: nothing there (callers check sizes)
                return iter(())
            raise self._error("read", full, e) from e
        except BotoCoreError as e:
            raise self._error("read", full, e) from e
        return self._chunks(resp["Body"], full, chunk_size)

    def _chunks(self, body: Any, full: str, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(chunk_size)
        except (ClientError, BotoCoreError) as e:
            raise self._error("read", full, e) from e
        finally:
            body.close()

    def size(self, key: str) -> int | None:
        head = self.head(key)
        return None if head is None else int(head["ContentLength"])

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD response (size, ETag, metadata), None when it does not exist."""
        full = self._full(key)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as e:
            if _code(e) in _MISSING:
                return None
            raise self._error("look up", full, e) from e
        except BotoCoreError as e:
            raise self._error("look up", full, e) from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    key = self._rel(obj["Key"])
                    if not key.startswith(PROBE_PREFIX):
                        yield ObjectInfo(key, int(obj["Size"]))
        except (ClientError, BotoCoreError) as e:
            raise self._error("list", full, e) from e

    # --- deleting --------------------------------------------------------------------------------
    def delete(self, keys: list[str]) -> None:
        fulls = [self._full(k) for k in keys]
        for i in range(0, len(fulls), DELETE_BATCH):
            batch = fulls[i : i + DELETE_BATCH]
            resp = self._call(
                "delete objects under",
                batch[0],
                self.client.delete_objects,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = [e for e in resp.get("Errors", []) if e.get("Code") not in _MISSING]
            if errors:
                first = errors[0]
                raise StorageError(
                    f"Could not delete {len(errors)} object(s) from s3://{self.bucket} ({self._where()})",
                    f"first: {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".strip(),
                    "check the connection's delete permission and any object lock on the bucket",
                )

    # --- describing ------------------------------------------------------------------------------
    def url(self, key: str = "") -> str:
        path = "/".join(p for p in (self.prefix, key) if p)
        return f"s3://{self.bucket}/{path}"

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if _code(e) in {"404", "NoSuchBucket", "NotFound"}:
                raise self._no_bucket() from e
            raise self._error("reach", "", e) from e
        except BotoCoreError as e:
            raise unreachable_at_check(self._error("reach", "", e)) from e
        probe = self._full(f"{PROBE_PREFIX}{secrets.token_hex(6)}")
        self._call("write a probe object to", probe, self.client.put_object, Key=probe, Body=b"wedsync")
        self._call("delete the probe object", probe, self.client.delete_object, Key=probe)
