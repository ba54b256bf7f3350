"""Benchmark of the files component: a full backup of a files bucket, against a plain boto3 copy to disk.

    .venv/bin/python -m bench.files --objects 500                 # ~1.3 GB of objects, 100 KB - 5 MB each
    .venv/bin/python -m bench.files --objects 10000 --results bench/RESULTS_FILES.md   # the issue's scale

One run: a throwaway PostgreSQL cluster (source with a ``public.files`` table, catalog), a moto S3 server (the
files bucket and the secondary target), a GCS emulator (offsite, on disk) and a local primary. ``--objects``
random (incompressible, like photos) objects of ``--min-kb``..``--max-kb`` go into the files bucket with matching
rows. Timed, each as its own process (wall time, peak RSS from ``os.wait4``):

- ``boto3 copy``: ``download_file`` of every object to a local directory (what a user would script);
- first full backup (every phase in the DAG's order: begin, export + files, replicate, verify, commit): each
  object read once, checked against its row's SHA-256, encrypted, stored on the primary, copied to S3 and GCS,
  and every copy verified;
- then 1% new objects, and a second full backup (only those are uploaded).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

from bench.run_bench import run_one  # noqa: E402
from devstack.postgres import Cluster  # noqa: E402
from devstack.services import GcsEmulator, MotoServer  # noqa: E402

FILES_BUCKET, S3_BUCKET, GCS_BUCKET = "bench-files", "bench-backups-s3", "bench-backups-gcs"
FILES_SQL = (
    "CREATE TABLE public.files (id bigserial PRIMARY KEY, wedding_id bigint NOT NULL, "
    "storage_path text NOT NULL, size_bytes bigint NOT NULL, checksum bytea NOT NULL)"
)


class DiskMotoServer(MotoServer):
    """moto with every object's bytes in a temporary file (its spooled buffer rolls over at once), not in RAM:
    the issue's 10,000 objects are more than this machine's memory holds twice."""

    def _proc_env(self) -> dict[str, str]:
        return {**super()._proc_env(), "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": "1"}


# --- the child process: one full backup ------------------------------------------------------------------
def backup_stage(cfg: dict[str, Any], label: str) -> None:
    """One full backup through the core commands, as the DAG runs them; prints its files section."""
    from wedsync_airflow.targets import build_storage
    from wedsync_backup.catalog import Catalog
    from wedsync_backup.commands import backup
    from wedsync_backup.commands.full_backup import full_backup
    from wedsync_backup.commands.resources import Resources, RunRef
    from wedsync_backup.crypto import Keyring
    from wedsync_backup.pg import PgTarget
    from wedsync_backup.policy import load_policy
    from wedsync_backup.repository import read_manifest

    def db(conn_id: str, role: str) -> PgTarget:
        return PgTarget(port=cfg["port"], user=cfg["user"], dbname=cfg["source_db"], label=conn_id)

    res = Resources(
        policy=load_policy(),
        open_storage=build_storage,
        open_catalog=lambda: Catalog(PgTarget(port=cfg["port"], user=cfg["user"], dbname="catalog").conninfo()),
        open_database=db,
        open_keyring=lambda _: Keyring(base64.b64decode(cfg["master_key"])),
    )
    run = RunRef("backup_daily_full", f"bench__{label}", datetime.now(UTC))
    t0 = time.monotonic()
    begun = backup.begin(res, run)  # the DAG's preflight task
    t1 = time.monotonic()
    full_backup(res, begun.backup_id, run)  # its backup task: export with every copy, verify all, commit, prune
    t2 = time.monotonic()
    m = read_manifest(res.primary(), begun.backup_id)
    assert m.files is not None
    print(
        json.dumps(
            {
                "backup_id": m.backup_id,
                "backup_s": round(t2 - t0, 1),
                "backup_task_s": round(t2 - t1, 1),
                **{k: getattr(m.files, k) for k in ("objects", "bytes", "new_objects", "new_bytes")},
                "problems": len(m.files.problems),
            }
        )
    )


def copy_stage(cfg: dict[str, Any]) -> None:
    """The baseline: boto3 download_file of every object to a local directory."""
    import boto3

    client = boto3.client(
        "s3", endpoint_url=cfg["s3_endpoint"], aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1"
    )
    out = Path(cfg["work"]) / "plain-copy"
    n = size = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=FILES_BUCKET):
        for o in page.get("Contents", []):
            dest = out / o["Key"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(FILES_BUCKET, o["Key"], str(dest))
            n, size = n + 1, size + o["Size"]
    print(json.dumps({"objects": n, "bytes": size}))


# --- the parent: set-up, runs, report ------------------------------------------------------------------------
def add_objects(s3: MotoServer, dsn: str, start: int, count: int, args: argparse.Namespace) -> int:
    """``count`` random objects with matching rows; returns their bytes."""
    import psycopg

    rng = random.Random(start)
    lo, hi = args.min_kb * 1024, args.max_kb * 1024
    if args.sizes == "log-uniform":  # as many objects between 100 KB and 1 MB as between 1 MB and 10 MB
        sizes = [int(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(count)]
    else:
        sizes = [rng.randint(lo, hi) for _ in range(count)]
    client = s3.client()

    def put(i: int) -> tuple[int, str, int, bytes]:
        data = os.urandom(sizes[i - start])
        path = f"weddings/{i % 97}/photos/IMG_{i:06d}.jpg"
        client.put_object(Bucket=FILES_BUCKET, Key=path, Body=data)
        return i % 97, path, len(data), hashlib.sha256(data).digest()

    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(put, range(start, start + count)))
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO public.files (wedding_id, storage_path, size_bytes, checksum) VALUES (%s,%s,%s,%s)", rows
        )
    return sum(r[2] for r in rows)


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    cluster = Cluster(work / "pg" / "data", settings={"fsync": "off"}).start()
    # two S3 servers (the files bucket, the backup target), each keeping objects in temporary files on disk:
    # one open file per object, and the machine allows 20,000 per process
    files_s3, s3 = DiskMotoServer().start(), DiskMotoServer().start()
    gcs = GcsEmulator(data_dir=work / "gcs").start()
    try:
        files_s3.create_bucket(FILES_BUCKET)
        s3.create_bucket(S3_BUCKET)
        gcs.create_bucket(GCS_BUCKET)
        for db in ("source", "catalog"):
            cluster.create_database(db)
        cluster.psql(dbname="source", input=FILES_SQL + ";")
        cfg = {
            "port": cluster.port,
            "user": cluster.user,
            "source_db": "source",
            "work": str(work),
            "s3_endpoint": files_s3.endpoint,
            "master_key": base64.b64encode(os.urandom(32)).decode(),
        }
        (work / "cfg.json").write_text(json.dumps(cfg))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN", "WEDSYNC_"))},
            **gcs.env(),
            "AIRFLOW_CONN_BACKUP_PRIMARY": json.dumps({"conn_type": "fs", "extra": {"path": str(work / "primary")}}),
            "AIRFLOW_CONN_BACKUP_SECONDARY_S3": s3.airflow_conn_json(),
            "AIRFLOW_CONN_BACKUP_OFFSITE_GCS": gcs.airflow_conn_json(),
            "AIRFLOW_CONN_WEDSYNC_FILES": files_s3.airflow_conn_json(),
            "WEDSYNC_BACKUP_S3_BUCKET": S3_BUCKET,
            "WEDSYNC_BACKUP_GCS_BUCKET": GCS_BUCKET,
            "WEDSYNC_FILES_BUCKET": FILES_BUCKET,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT)]),
        }
        dsn = cluster.dsn("source")
        t = time.monotonic()
        total = add_objects(files_s3, dsn, 0, args.objects, args)
        seeded = time.monotonic() - t
        me = [sys.executable, "-m", "bench.files", "--stage"]
        runs: dict[str, Any] = {}
        for name, stage in (("boto3 copy to disk", "copy"), ("first full backup", "first")):
            runs[name] = _run(name, [*me, stage, "--work", str(work)], env, work)
            shutil.rmtree(work / "plain-copy", ignore_errors=True)  # disk: the backup's copies need the room
        new = max(1, args.objects // 100)
        new_bytes = add_objects(files_s3, dsn, args.objects, new, args)
        runs["second full backup (+1% objects)"] = _run("second", [*me, "second", "--work", str(work)], env, work)
        return {
            "objects": args.objects,
            "bytes": total,
            "seed_seconds": seeded,
            "new": new,
            "new_bytes": new_bytes,
            "runs": runs,
            "min_kb": args.min_kb,
            "sizes": args.sizes,
            "max_kb": args.max_kb,
        }
    finally:
        files_s3.stop()
        s3.stop()
        gcs.stop()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(name: str, cmd: list[str], env: dict[str, str], work: Path) -> dict[str, Any]:
    before = load()
    m = run_one(name.split()[0], cmd, env, work / "logs")
    out = (work / "logs" / f"{name.split()[0]}.log").read_text().strip().splitlines()
    result = next((json.loads(line) for line in reversed(out) if line.startswith("{")), {})
    return {
        "seconds": m.seconds,
        "peak_rss_mb": m.peak_rss_kb / 1024,
        "load_before": before,
        "load_after": load(),
        "result": result,
    }


def render(r: dict[str, Any], command: str) -> str:
    runs = r["runs"]
    first, second = runs["first full backup"]["seconds"], runs["second full backup (+1% objects)"]["seconds"]
    plain = runs["boto3 copy to disk"]["seconds"]
    mb = r["bytes"] / 1e6
    lines = [
        "## Files component (issue 12)",
        "",
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs (shared). "
        f"{r['objects']} objects of {r['min_kb']} KB-{r['max_kb'] // 1024} MB ({r.get('sizes', 'uniform')} "
        "sizes; random bytes, like photos), "
        f"{mb:.0f} MB in all; then {r['new']} new objects ({r['new_bytes'] / 1e6:.1f} MB).",
        "",
        "| Run | Wall time (s) | MB/s | Peak RSS (MB) | Load (1 min) before/after | Result |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, m in runs.items():
        lines.append(
            f"| {name} | {m['seconds']:.1f} | {mb / m['seconds']:.1f} | {m['peak_rss_mb']:.0f} | "
            f"{m['load_before']} / {m['load_after']} | {json.dumps(m['result'])} |"
        )
    r1, r2 = runs["first full backup"]["result"], runs["second full backup (+1% objects)"]["result"]
    ratio, in_ratio = second / first, r2["backup_s"] / r1["backup_s"]
    lines += [
        "",
        f"- First backup vs a plain boto3 copy to local disk: {first / plain:.1f}x its time (process wall time; "
        f"the backup itself, begin to commit in the process: {r1['backup_s']} s). The backup reads each object "
        "once, checks its SHA-256, encrypts it, writes it to the primary, copies it to S3 and GCS and reads every "
        "copy back to verify it; the copy only downloads.",
        f"- Second full backup after 1% new objects: {in_ratio:.1%} of the first's time begin to commit "
        f"({r2['backup_s']} s vs {r1['backup_s']} s), {ratio:.1%} in process wall time (which adds the Python and "
        f"Airflow-provider imports): {'meets' if in_ratio <= 0.05 else 'MISSES'} the <= 5% target at this scale. "
        "It is the whole full backup (the database export of the files table, catalog, the manifest on three "
        "targets), whose fixed cost does not shrink with the objects.",
        "- Peak RSS: the process's largest resident set (`os.wait4`); objects are streamed (an S3 part buffer "
        "is at most 8 MB per worker).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=500)
    p.add_argument("--min-kb", type=int, default=100)
    p.add_argument("--max-kb", type=int, default=5120)
    p.add_argument("--sizes", choices=["uniform", "log-uniform"], default="uniform", help="object size distribution")
    p.add_argument("--work", default=str(REPO_ROOT / "bench" / "work" / "files"))
    p.add_argument("--results", default=None, help="append the report to this file")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--stage", choices=["copy", "first", "second"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        cfg = json.loads((Path(args.work) / "cfg.json").read_text())
        copy_stage(cfg) if args.stage == "copy" else backup_stage(cfg, args.stage)
        return 0
    command = ".venv/bin/python -m bench.files " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(measure(args), command.strip())
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
