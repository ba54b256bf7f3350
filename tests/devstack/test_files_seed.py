"""The local stack's files seed: real JPEG/PNG/PDF bytes in the files bucket, rows matching them."""

from __future__ import annotations

import hashlib

import psycopg

from devstack.files_seed import jpeg_bytes, object_for, pdf_bytes, png_bytes, seed_files
from devstack.postgres import Cluster
from devstack.services import MotoServer
from tests.fixtures.storage import unique_bucket


def test_generated_files_are_real_and_distinct() -> None:
    assert jpeg_bytes("a").startswith(b"\xff\xd8\xff\xe0") and jpeg_bytes("a").endswith(b"\xff\xd9")
    assert png_bytes("a").startswith(b"\x89PNG\r\n\x1a\n") and png_bytes("a") != png_bytes("b")
    assert pdf_bytes("a").startswith(b"%PDF-1.4") and pdf_bytes("a").rstrip().endswith(b"%%EOF")
    assert object_for("x/a.jpg") != object_for("x/b.jpg")


def test_seed_uploads_an_object_per_row_and_fixes_the_rows(
    pg_cluster: Cluster, empty_db: str, s3_server: MotoServer
) -> None:
    dsn, bucket = pg_cluster.dsn(empty_db), unique_bucket("files")
    s3_server.create_bucket(bucket)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE public.files (storage_path text, size_bytes bigint, checksum bytea)")
        conn.execute(
            "INSERT INTO public.files VALUES ('w/1/photos/IMG_0001.jpg', 9, '\\x00'),"
            " ('w/1/documents/c.pdf', 9, '\\x00')"
        )
    assert seed_files(dsn, s3_server.client(), bucket, workers=2) == 2
    with psycopg.connect(dsn) as conn:
        for path, size, checksum in conn.execute("SELECT * FROM public.files"):
            data = s3_server.client().get_object(Bucket=bucket, Key=path)["Body"].read()
            assert (size, bytes(checksum)) == (len(data), hashlib.sha256(data).digest())
