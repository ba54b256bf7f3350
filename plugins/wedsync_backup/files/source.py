"""The platform's files: the rows of the table that describes them, joined with the bucket that holds them.

Both sides are streamed in the same (byte) order and merge-joined, so a bucket of millions of objects is
never held in memory: the table through a server-side cursor, the bucket page by page.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from wedsync_backup.errors import ConfigError
from wedsync_backup.pg import PgTarget
from wedsync_backup.policy import FilesPolicy
from wedsync_backup.storage.s3 import S3Storage


@dataclass(frozen=True)
class FileRow:
    """What the database says about one object: it must exist with this size and SHA-256."""

    path: str
    sha256: str
    size: int | None
    wedding_id: str | None


@dataclass(frozen=True)
class Listed:
    """What the bucket says about one object."""

    size: int
    etag: str


def _qualified(table: str) -> sql.Composable:
    schema, _, name = table.rpartition(".")
    return sql.Identifier(schema or "public", name)


class ExportSnapshot:
    """The files table as the database export sees it: a transaction that imported the export's snapshot.

    A snapshot can be imported only while the export holds it, but the files capture runs after the export
    (for as long as the uploads take). ``attach`` is called by the export inside its snapshot; the imported
    transaction then outlives it, so a files row committed after the snapshot is in neither the tables nor
    the file state."""

    def __init__(self, source: PgTarget) -> None:
        self.source = source
        self.conn: psycopg.Connection | None = None
        self.snapshot: str | None = None

    def attach(self, snapshot: str) -> None:
        self.close()
        conn = self.source.connect(autocommit=False)
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            # idle in this transaction between the import and the capture's read: never cut off for it
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        except BaseException:
            conn.close()
            raise
        self.conn, self.snapshot = conn, snapshot

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


@contextlib.contextmanager
def _reading(source: PgTarget, snapshot: ExportSnapshot | None) -> Iterator[psycopg.Connection]:
    """The connection the files table is read on: the export's snapshot if attached, else a new transaction."""
    if snapshot is not None and snapshot.conn is not None:
        yield snapshot.conn  # already inside the imported snapshot's transaction
        return
    with source.connect() as conn, conn.transaction():
        yield conn


def file_rows(
    source: PgTarget,
    files: FilesPolicy,
    wedding_ids: list[str] | None = None,
    snapshot: ExportSnapshot | None = None,
) -> Iterator[FileRow]:
    """Every row of the files table, by path in byte order (one per path), streamed; in the export's
    ``snapshot`` when one is attached (the same rows the backup's tables hold)."""
    cols = [files.path_column, files.checksum_column, files.size_column, files.wedding_column]
    query = sql.SQL(
        'SELECT DISTINCT ON ({p} COLLATE "C") {cols} FROM {t} WHERE {p} IS NOT NULL {w} ORDER BY {p} COLLATE "C"'
    )
    where = sql.SQL("")
    if wedding_ids is not None:
        where = sql.SQL("AND {}::text = ANY(%s)").format(sql.Identifier(files.wedding_column))
    q = query.format(
        p=sql.Identifier(files.path_column),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
        t=_qualified(files.table),
        w=where,
    )
    with _reading(source, snapshot) as conn:
        try:
            cur = conn.cursor(name="wedsync_files")
            cur.itersize = 2000
            cur.execute(q, ([str(w) for w in wedding_ids],) if wedding_ids is not None else None)
        except Exception as e:
            raise ConfigError(
                f"Cannot read the files table {files.table} in {source.describe()}",
                str(e).splitlines()[0],
                "set files.table and its *_column keys in the backup policy to the table that describes the "
                "platform's objects",
            ) from e
        for path, checksum, size, wedding in cur:
            yield FileRow(
                str(path).lstrip("/"),  # object keys are relative to the bucket
                _hex(checksum),
                int(size) if size is not None else None,
                None if wedding is None else str(wedding),
            )


def listing(bucket: S3Storage) -> Iterator[tuple[str, Listed]]:
    """Every object of the files bucket (key relative to its prefix), in key (byte) order, with its ETag."""
    full = f"{bucket.prefix}/" if bucket.prefix else ""
    pages = bucket.client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket, Prefix=full)
    for page in pages:
        for o in page.get("Contents", []):
            yield o["Key"][len(full) :], Listed(int(o["Size"]), str(o.get("ETag", "")).strip('"'))


LOOK_UP = Listed(-1, "")  # placeholder: the row's object is looked up on its own (looked_up), not listed


def looked_up(bucket: S3Storage, path: str) -> Listed | None:
    """One object's size and ETag (HEAD), None when it is missing: a few weddings' files are found this way
    without listing a bucket that holds every wedding's."""
    head = bucket.head(path)
    return None if head is None else Listed(int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))


def joined(rows: Iterator[FileRow], listed: Iterator[tuple[str, Listed]]) -> Iterator[tuple[FileRow, Listed | None]]:
    """Each row with its object in the bucket (None: missing). Objects no row describes are not backed up."""
    nxt = next(listed, None)
    for row in rows:
        key = row.path.encode()
        while nxt is not None and nxt[0].encode() < key:
            nxt = next(listed, None)
        yield row, (nxt[1] if nxt is not None and nxt[0] == row.path else None)


def _hex(checksum: object) -> str:
    """The recorded SHA-256 as lowercase hex, whether the column is bytea or text."""
    if isinstance(checksum, bytes | bytearray | memoryview):
        return bytes(checksum).hex()
    return str(checksum or "").strip().lower()
