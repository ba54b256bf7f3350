"""Real, tiny photo and document bytes for the demo's files rows, in the local stack's files bucket.

Every ``public.files`` row gets an object at its ``storage_path``: a valid JPEG (an 8x8 baseline image with
the path in a comment), PNG or PDF, a few hundred bytes each and different for every path, and its row's
``size_bytes`` and ``checksum`` (SHA-256) are set to match. Generation is pure stdlib and cheap; uploads run
on a few threads.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg_bytes(label: str) -> bytes:
    """An 8x8 grey baseline JPEG (one-code Huffman tables, DC-only block) carrying ``label`` as a comment."""
    jfif = _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    dqt = _segment(0xDB, b"\x00" + bytes([1] * 64))
    sof = _segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")
    one_code = b"\x01" + bytes(15) + b"\x00"  # one code of length 1 for symbol 0
    dht = _segment(0xC4, b"\x00" + one_code + b"\x10" + one_code)
    sos = _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    com = _segment(0xFE, label.encode()[:60000])
    return b"\xff\xd8" + jfif + com + dqt + sof + dht + sos + b"\x3f" + b"\xff\xd9"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(label: str, size: int = 16) -> bytes:
    """A ``size``x``size`` RGB gradient PNG whose colours derive from ``label``."""
    r, g, b = hashlib.sha256(label.encode()).digest()[:3]
    rows = b"".join(
        b"\x00" + b"".join(bytes([(r + x * 8) % 256, (g + y * 8) % 256, b]) for x in range(size)) for y in range(size)
    )
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def pdf_bytes(label: str) -> bytes:
    """A one-page PDF that prints ``label``."""
    text = label.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def object_for(path: str) -> bytes:
    """The demo bytes for a storage path, by its extension."""
    if path.endswith(".pdf"):
        return pdf_bytes(f"WedSync demo document {path}")
    if path.endswith(".png"):
        return png_bytes(path)
    return jpeg_bytes(f"WedSync demo photo {path}")


def seed_files(dsn: str, s3_client: Any, bucket: str, *, workers: int = 8) -> int:
    """Upload an object for every files row and make the row's size and checksum match; returns the count."""
    with psycopg.connect(dsn) as conn:
        paths = [r[0] for r in conn.execute("SELECT DISTINCT storage_path FROM public.files")]
        sized = []
        with ThreadPoolExecutor(workers) as pool:
            for path, data in zip(paths, pool.map(lambda p: _put(s3_client, bucket, p), paths), strict=True):
                sized.append((len(data), hashlib.sha256(data).digest(), path))
        with conn.cursor() as cur:
            cur.executemany("UPDATE public.files SET size_bytes = %s, checksum = %s WHERE storage_path = %s", sized)
    return len(paths)


def _put(client: Any, bucket: str, path: str) -> bytes:
    data = object_for(path)
    client.put_object(Bucket=bucket, Key=path, Body=data)
    return data
