"""The demo wedding database: schema plus a fast, deterministic, server-side seeder.

The rows are generated inside PostgreSQL (include/sql/demo/seed.sql); Python only splits the weddings into
ranges and runs them on a few connections at once, so a 2 GB benchmark database takes about a minute.

    python -m devstack.demo --dsn "host=127.0.0.1 port=5432 user=postgres dbname=wedsync" --size-mb 2048
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "plugins") not in sys.path:  # `python -m devstack.demo` from the repo root
    sys.path.append(str(REPO_ROOT / "plugins"))

from wedsync_backup.errors import ConfigError, WedSyncError  # noqa: E402

SQL_DIR = REPO_ROOT / "include" / "sql" / "demo"
SCHEMA_SQL = SQL_DIR / "schema.sql"
SEED_SQL = SQL_DIR / "seed.sql"

# Must match demo.weddings_per_unit() in seed.sql.
WEDDINGS_PER_UNIT = 80
# Measured on PostgreSQL 15: pg_database_size ~= EMPTY_DB_MB + MB_PER_UNIT * scale (scale >= 1); the empty
# schema alone is ~9.4 MB (template database ~7.5 MB + ~30 relations with their indexes).
MB_PER_UNIT = 9.5
EMPTY_DB_MB = 10.5
# The scale the tests use: 20 weddings, 3,000 guests, about 13 MB in total, well under a second.
TEST_SCALE = 0.25
# Weddings per transaction: small enough to show progress, big enough to keep per-statement overhead low.
CHUNK_WEDDINGS = 400

# Tables whose row counts the CLI reports.
COUNTED_TABLES = (
    "public.weddings",
    "public.guests",
    "public.timeline_events",
    "public.files",
    "public.payments",
    "public.communications",
    "audit.audit_logs",
    "platform.event_logs",
)


@dataclass(frozen=True)
class SeedResult:
    """What seed_demo did, for printing and for benchmarks."""

    scale: float
    weddings: int
    workers: int
    seconds: float
    database_bytes: int
    row_counts: dict[str, int] = field(default_factory=dict)


def weddings_for_scale(scale: float) -> int:
    """Same rule as demo.weddings_for_scale() in SQL: at least one wedding."""
    return max(1, round(scale * WEDDINGS_PER_UNIT))


def scale_for_megabytes(mb: float) -> float:
    """Scale that makes pg_database_size roughly ``mb`` megabytes (never below one wedding)."""
    if mb <= 0:
        raise ConfigError(f"Demo size {mb} MB is not possible", "the size must be positive", "pass e.g. 10")
    return max((mb - EMPTY_DB_MB) / MB_PER_UNIT, 1 / WEDDINGS_PER_UNIT)


def _connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise ConfigError(
            "Cannot connect to the demo database",
            str(exc).strip(),
            "check that PostgreSQL is running and the DSN (host, port, user, dbname) is right",
        ) from exc


def _run_file(conn: psycopg.Connection, path: Path) -> None:
    try:
        conn.execute(path.read_text(encoding="utf-8"))
    except psycopg.Error as exc:
        conn.rollback()
        raise WedSyncError(
            f"Loading {path.name} into the demo database failed",
            str(exc).strip(),
            "use an empty database for the schema (or drop the existing demo objects) and try again",
        ) from exc


def create_demo_schema(dsn: str) -> None:
    """Create the demo platform schema (tables, types, views, policies) in an empty database."""
    with _connect(dsn) as conn:
        _run_file(conn, SCHEMA_SQL)


def has_demo_schema(dsn: str) -> bool:
    with _connect(dsn) as conn:
        return conn.execute("SELECT to_regclass('public.weddings') IS NOT NULL").fetchone()[0]


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size - 1, n)) for lo in range(1, n + 1, size)]


def _seed_range(dsn: str, lo: int, hi: int) -> None:
    with _connect(dsn) as conn:
        conn.execute("SELECT demo.seed_weddings(%s, %s)", (lo, hi))


def row_counts(dsn: str, tables: Sequence[str] = COUNTED_TABLES) -> dict[str, int]:
    with _connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def seed_demo(
    dsn: str,
    scale: float | int,
    *,
    workers: int | None = None,
    counts: bool = False,
    chunk_weddings: int = CHUNK_WEDDINGS,
) -> SeedResult:
    """Replace the demo data with the data set for ``scale`` (deterministic: same scale, same rows).

    The schema must exist (create_demo_schema). ``workers`` sessions load disjoint wedding ranges at once;
    ids are computed, not drawn from sequences, so parallelism never changes the rows.
    """
    if not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"Demo scale {scale!r} is not usable", "it must be a positive number", "pass e.g. 1")
    n = weddings_for_scale(scale)
    ranges = _chunks(n, max(1, chunk_weddings))
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    workers = max(1, min(workers, len(ranges)))
    started = time.monotonic()
    with _connect(dsn) as conn:
        if not conn.execute("SELECT to_regclass('public.weddings') IS NOT NULL").fetchone()[0]:
            raise ConfigError(
                "The demo database has no demo schema",
                "public.weddings does not exist",
                "run create_demo_schema(dsn) (or the CLI without --skip-schema) first",
            )
        _run_file(conn, SEED_SQL)
        conn.execute("SELECT demo.seed_base(%s)", (n,))
    if workers == 1:
        for lo, hi in ranges:
            _seed_range(dsn, lo, hi)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_seed_range, dsn, lo, hi) for lo, hi in ranges]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise WedSyncError(
                        "Seeding the demo weddings failed",
                        str(fut.exception()).strip(),
                        "re-run seed_demo; it starts from scratch",
                    ) from fut.exception()
    with _connect(dsn) as conn:
        conn.execute("SELECT demo.seed_finish()")
        conn.commit()
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    seconds = time.monotonic() - started
    return SeedResult(
        scale=float(scale),
        weddings=n,
        workers=workers,
        seconds=seconds,
        database_bytes=size,
        row_counts=row_counts(dsn) if counts else {},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("WEDSYNC_DEMO_DSN"), help="libpq DSN or URL")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=float, help=f"scale factor; 1 = {WEDDINGS_PER_UNIT} weddings, ~10 MB")
    size.add_argument("--size-mb", type=float, help="target pg_database_size in MB")
    parser.add_argument("--workers", type=int, default=None, help="parallel sessions (default: CPUs, max 4)")
    parser.add_argument("--skip-schema", action="store_true", help="do not create the schema if missing")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn (or WEDSYNC_DEMO_DSN) is required")
    scale = args.scale if args.scale is not None else scale_for_megabytes(args.size_mb)
    try:
        if not args.skip_schema and not has_demo_schema(args.dsn):
            create_demo_schema(args.dsn)
            print(f"created the demo schema from {SCHEMA_SQL}")
        result = seed_demo(args.dsn, scale, workers=args.workers, counts=True)
    except WedSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"seeded {result.weddings} weddings (scale {result.scale:g}) with {result.workers} worker(s) "
        f"in {result.seconds:.1f} s; database size {result.database_bytes / 2**20:.1f} MB"
    )
    for table, count in result.row_counts.items():
        print(f"  {table:<26} {count:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
