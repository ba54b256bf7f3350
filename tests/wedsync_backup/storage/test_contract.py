"""One contract for every storage target: local disk, S3 (moto server) and GCS (emulator), over the wire."""

from __future__ import annotations

import gc
import hashlib
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from wedsync_airflow.targets import build_storage
from wedsync_backup.errors import StorageError
from wedsync_backup.policy import Policy
from wedsync_backup.storage import GCSStorage, LocalStorage, S3Storage
from wedsync_backup.storage.base import Storage
from wedsync_backup.storage.local import STALE_PARTIAL_SECONDS

from tests.fixtures.storage import StorageTargets

MiB = 1 << 20


@pytest.fixture(params=["primary", "secondary", "offsite"], ids=["local", "s3", "gcs"])
def store(request: pytest.FixtureRequest, storage_policy: Policy) -> Storage:
    """One fresh target of the default policy, built through its Airflow connection and hook."""
    return build_storage(storage_policy.target(request.param))


def blocks(total: int, block: int = MiB, seed: bytes = b"wedsync") -> Iterator[bytes]:
    """Deterministic pseudo-random data, generated block by block (never whole in memory)."""
    n = 0
    i = 0
    while n < total:
        size = min(block, total - n)
        head = hashlib.sha256(seed + i.to_bytes(8, "big")).digest()
        yield (head * (size // len(head) + 1))[:size]
        n += size
        i += 1


def sha(chunks: Iterator[bytes]) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for c in chunks:
        h.update(c)
        n += len(c)
    return h.hexdigest(), n


def keys(store: Storage, prefix: str = "") -> set[str]:
    return {o.key for o in store.list(prefix)}


# --- the contract ------------------------------------------------------------------------------------


def test_small_round_trip(store: Storage) -> None:
    store.put_bytes("daily/2026-01-01/manifest.json", b'{"ok": true}')
    assert store.get_bytes("daily/2026-01-01/manifest.json") == b'{"ok": true}'
    assert store.size("daily/2026-01-01/manifest.json") == 12
    assert store.exists("daily/2026-01-01/manifest.json")


def test_empty_object(store: Storage) -> None:
    store.put_bytes("empty", b"")
    assert store.size("empty") == 0
    assert store.get_bytes("empty") == b""


def test_multipart_round_trip_streams(store: Storage) -> None:
    total = 40 * MiB + 12345  # several 8 MiB parts/chunks plus a ragged tail
    with store.writer("big/table.zst.enc") as w:
        for b in blocks(total):
            w.write(b)
    assert store.size("big/table.zst.enc") == total
    chunks = store.read("big/table.zst.enc", chunk_size=4 * MiB)
    sizes: list[int] = []

    def tracked() -> Iterator[bytes]:
        for c in chunks:
            sizes.append(len(c))
            yield c

    assert sha(tracked()) == sha(blocks(total))
    assert max(sizes) <= 4 * MiB  # streamed, not whole


def test_overwrite_replaces(store: Storage) -> None:
    store.put_bytes("k", b"first version")
    store.put_bytes("k", b"second")
    assert store.get_bytes("k") == b"second"
    assert store.size("k") == 6


@pytest.mark.parametrize("size", [10, 17 * MiB], ids=["small", "past-one-part"])
def test_abort_leaves_nothing_and_keeps_previous(store: Storage, size: int) -> None:
    store.put_bytes("kept", b"previous")
    for key in ("kept", "new"):
        with pytest.raises(RuntimeError, match="boom"), store.writer(key) as w:
            for b in blocks(size):
                w.write(b)
            raise RuntimeError("boom")
    assert store.get_bytes("kept") == b"previous"
    assert store.size("new") is None
    assert keys(store) == {"kept"}


def test_explicit_abort_and_dropped_writer_publish_nothing(store: Storage) -> None:
    w = store.writer("aborted")
    w.write(b"x" * (17 * MiB))
    w.abort()
    w = store.writer("dropped")
    w.write(b"y" * 1000)
    del w
    gc.collect()
    assert keys(store) == set()


def test_list_with_prefix(store: Storage) -> None:
    for k, data in {"a/1": b"1", "a/2": b"22", "ab/3": b"333", "b/4": b"4444", "top": b"t"}.items():
        store.put_bytes(k, data)
    assert {(o.key, o.size) for o in store.list()} == {
        ("a/1", 1),
        ("a/2", 2),
        ("ab/3", 3),
        ("b/4", 4),
        ("top", 1),
    }
    assert keys(store, "a/") == {"a/1", "a/2"}
    assert keys(store, "a") == {"a/1", "a/2", "ab/3"}
    assert keys(store, "nothing/") == set()


def test_delete(store: Storage) -> None:
    store.put_bytes("d/1", b"1")
    store.put_bytes("d/2", b"2")
    store.delete(["d/1", "d/missing", "never/was"])  # missing keys are fine
    assert keys(store) == {"d/2"}
    store.delete([])
    store.delete(["d/2"])
    assert keys(store) == set()


def test_read_range(store: Storage) -> None:
    """One piece of a bundle without the rest: exact bytes, whatever the chunk size; short at the end."""
    data = bytes(range(256)) * 40  # 10,240 bytes
    store.put_bytes("bundle", data)
    for start, length, chunk in [(0, 10, 4096), (1000, 5000, 1024), (10_000, 240, 64), (5, 0, 1024)]:
        got = list(store.read_range("bundle", start, length, chunk))
        assert b"".join(got) == data[start : start + length]
        assert all(len(p) <= chunk for p in got)
    assert b"".join(store.read_range("bundle", 10_000, 1_000)) == data[10_000:]  # past the end: what is there
    with pytest.raises(StorageError, match="no/such/key"):
        list(store.read_range("no/such/key", 0, 10))


def test_missing_object(store: Storage) -> None:
    assert store.size("no/such/key") is None
    assert not store.exists("no/such/key")
    with pytest.raises(StorageError, match="no/such/key"):
        list(store.read("no/such/key"))


def test_check_passes_and_leaves_no_trace(store: Storage) -> None:
    store.check()
    assert keys(store) == set()


def test_url_names_the_location(store: Storage) -> None:
    url = store.url("x/y")
    assert url.endswith("/x/y")
    assert url.split("://")[0] in {"file", "s3", "gs"}


# --- a target that is not there ------------------------------------------------------------------------


def _broken(store: Storage, tmp_path: Path) -> tuple[Storage, str]:
    """The same kind of target pointing at a bucket/directory that does not exist."""
    kw = {"name": store.name, "medium": store.medium, "site": store.site, "conn_id": "conn_x"}
    if isinstance(store, LocalStorage):
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        return LocalStorage(blocker / "backups", **kw), str(blocker / "backups")
    if isinstance(store, S3Storage):
        return S3Storage(store.client, "wedsync-missing-bucket", "p", **kw), "wedsync-missing-bucket"
    assert isinstance(store, GCSStorage)
    return GCSStorage(store.client, "wedsync-missing-bucket", "p", **kw), "wedsync-missing-bucket"


def test_check_on_missing_bucket_or_dir(store: Storage, tmp_path: Path) -> None:
    broken, name = _broken(store, tmp_path)
    with pytest.raises(StorageError) as e:
        broken.check()
    assert name in str(e.value)
    assert "conn_x" in str(e.value)
    assert "To fix" in str(e.value)
    with pytest.raises(StorageError, match=name):
        broken.put_bytes("k", b"data")


def test_local_check_creates_missing_root(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path / "deep" / "root", name="primary", medium="disk", site="here")
    s.check()
    assert (tmp_path / "deep" / "root").is_dir()
    assert list((tmp_path / "deep" / "root").iterdir()) == []


def test_local_rejects_escaping_keys(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path, name="primary", medium="disk", site="here")
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b", ""):
        with pytest.raises(StorageError, match="Invalid object key"):
            s.put_bytes(bad, b"x")


def test_local_temp_files_are_hidden_and_cleaned(storage_targets: StorageTargets) -> None:
    s = storage_targets.primary
    assert isinstance(s, LocalStorage)
    w = s.writer("t/obj")
    w.write(b"half")
    assert keys(s) == set()  # the partial file exists on disk but is not an object
    assert any(p.name.startswith(".obj.partial-") for p in (s.root / "t").iterdir())
    w.abort()
    assert list((s.root / "t").iterdir()) == []


def test_local_delete_removes_a_killed_writers_stale_partial(storage_targets: StorageTargets) -> None:
    """A SIGKILLed task leaves a partial file beside its objects; pruning the backup must not leave its folder."""
    s = storage_targets.primary
    assert isinstance(s, LocalStorage)
    s.put_bytes("b1/obj", b"x")
    stale, fresh = s.root / "b1" / ".schema.partial-aaaa", s.root / "b2" / ".schema.partial-bbbb"
    fresh.parent.mkdir()
    for f in (stale, fresh):
        f.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * STALE_PARTIAL_SECONDS,) * 2)
    s.put_bytes("b2/obj", b"y")
    s.delete(["b1/obj", "b2/obj"])
    assert not (s.root / "b1").exists()  # the stale partial went with the folder
    assert fresh.exists()  # a recent one may belong to a live writer: kept


def test_s3_abort_leaves_no_multipart_upload(storage_targets: StorageTargets) -> None:
    s = storage_targets.secondary
    assert isinstance(s, S3Storage)
    w = s.writer("big")
    w.write(b"z" * (17 * MiB))  # the first part is uploaded: a multipart upload exists
    assert s.client.list_multipart_uploads(Bucket=s.bucket).get("Uploads")
    w.abort()
    assert not s.client.list_multipart_uploads(Bucket=s.bucket).get("Uploads")


# --- memory stays bounded ------------------------------------------------------------------------------


def _peak_while_writing(store: Storage, total: int) -> int:
    block = b"\x5a" * MiB
    gc.collect()
    tracemalloc.start()
    try:
        with store.writer("huge") as w:
            for _ in range(total // MiB):
                w.write(bytes(memoryview(block)))  # a new object each time, as a stream's chunks are
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_s3_write_200mib_memory_bounded(storage_targets: StorageTargets) -> None:
    s = storage_targets.secondary
    peak = _peak_while_writing(s, 200 * MiB)
    assert s.size("huge") == 200 * MiB
    assert peak < 20 * MiB, f"peak {peak / MiB:.1f} MiB"  # an 8 MiB part and its joined body (16 measured)


def test_gcs_write_64mib_memory_bounded(storage_targets: StorageTargets) -> None:
    s = storage_targets.offsite
    peak = _peak_while_writing(s, 64 * MiB)
    assert s.size("huge") == 64 * MiB
    assert peak < 24 * MiB, f"peak {peak / MiB:.1f} MiB"  # the client's 8 MiB buffer and the chunk sent (18)
