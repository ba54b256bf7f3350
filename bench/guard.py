"""Benchmark of the incremental capture's change guard: what the schema-shape checks cost it.

The guard reads every decoded line of an incremental (``logical/guard.py``). With the objects of the chain's
verified point known (``logical/objects.py``), it also parses the columns of each table's first full row in
every transaction and compares them with the table's recorded shape. The worst case is many one-row
transactions (one parse per transaction); this feeds N synthetic transactions of one INSERT and one UPDATE
through the guard, without and with the recorded objects, interleaved, best CPU time of each (no database,
no I/O).

    .venv/bin/python -m bench.guard --transactions 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

from wedsync_backup.logical.guard import ChangeGuard  # noqa: E402
from wedsync_backup.logical.objects import SchemaObjects  # noqa: E402

OBJECTS = SchemaObjects(
    frozenset({"relation:1"}),
    {"relation:1": ("public", "guests")},
    {"relation:1": ("id[integer]", "name[text]", "seat[integer]")},
)


def lines(n: int) -> Iterator[tuple[str, str, str]]:
    for i in range(n):
        x = str(1000 + i)
        yield "0/1", x, f"BEGIN {x}"
        yield "0/1", x, f"table public.guests: INSERT: id[integer]:{i} name[text]:'guest {i}' seat[integer]:{i % 50}"
        yield "0/1", x, f"table public.guests: UPDATE: id[integer]:{i} name[text]:'guest {i}' seat[integer]:1"
        yield "0/1", x, f"COMMIT {x} (at 2026-11-29 12:00:00.{i % 999999:06d}+00)"


def run(n: int, objects: SchemaObjects | None) -> float:
    guard = ChangeGuard("v2:x", set(), set(), set(), objects)
    started = time.process_time()  # CPU time: waiting for a core on a shared machine does not count
    for line in lines(n):
        guard.feed(*line)
    return time.process_time() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transactions", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    n = args.transactions
    print(f"load before: {os.getloadavg()[0]:.2f}")
    contenders = {"without the recorded objects": None, "with the shape checks": OBJECTS}
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(args.rounds):  # interleaved, best of each: the machine is shared
        for label, objects in contenders.items():
            best[label] = min(best[label], run(n, objects))
    for label, s in best.items():
        print(f"| {label} | {n:,} | {2 * n:,} | {s:.2f} | {2 * n / s:,.0f} |")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
