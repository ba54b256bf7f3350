"""Where a proximity run's ``seal`` spends its time, with the files component on (issue 9), before and after.

    git archive <before-commit> plugins include | tar -x -C /tmp/seal_base
    .venv/bin/python -m bench.wedding_seal --weddings 200000 --due 500 --files-per-wedding 5 --runs 3 \
        --before /tmp/seal_base

The set-up of ``bench.weddings`` (throwaway cluster, moto, GCS emulator, the demo schema with ``--full`` full
weddings and a light tail up to ``--weddings``, ``--due`` of them dated within the proximity window) plus what
the user view has: an object in the files bucket (moto) for every files row of the full weddings (30 each), then
every files row deleted but ``--files-per-wedding`` of each due wedding (the objects stay in the bucket: 30,000
objects, 2,500 rows), and a first full backup (it stores those files in the content store; made by the
``--before`` code when given, so that code reads it). Then ``--runs`` proximity runs with the ``--before``
code (a checkout's ``plugins``/``include``), then ``--runs`` with this one (``--after``), each run its own
process with every phase in it; ``seal`` is timed alone. Each code's first run is profiled (cProfile, the top
``--top`` functions by cumulative time printed; ``--profile FILE`` keeps the stats): profiling slows it, the
plain runs give the times. Prints one ``RUN {json}`` line per run."""

from __future__ import annotations

import argparse
import base64
import cProfile
import hashlib
import io
import json
import logging
import os
import pstats
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_ROOT = Path(os.environ.get("WEDSYNC_BENCH_CODE", REPO_ROOT))  # the plugins a stage runs (before/after)
if str(CODE_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(CODE_ROOT / "plugins"))

import psycopg  # noqa: E402
from wedsync_backup.catalog import Catalog  # noqa: E402
from wedsync_backup.commands import backup  # noqa: E402
from wedsync_backup.commands import wedding_backup as cmd  # noqa: E402
from wedsync_backup.commands.full_backup import full_backup  # noqa: E402
from wedsync_backup.commands.resources import Resources, RunRef  # noqa: E402
from wedsync_backup.crypto import Keyring  # noqa: E402
from wedsync_backup.pg import PgTarget  # noqa: E402
from wedsync_backup.policy import load_policy  # noqa: E402
from wedsync_backup.storage.base import Storage  # noqa: E402
from wedsync_backup.storage.s3 import S3Storage  # noqa: E402

from bench.stages import build_storage  # noqa: E402
from bench.weddings import CATALOG_DB, SOURCE_DB, WeddingBench  # noqa: E402
from devstack.files_seed import _put  # noqa: E402

FILES_BUCKET = "wedsync-bench-files"


def resources(cfg: dict[str, Any]) -> Resources:
    """The default policy with the files component on, its targets and files bucket from ``cfg``."""
    policy = load_policy(env={"WEDSYNC_FILES_BUCKET": FILES_BUCKET})
    source = PgTarget(port=cfg["port"], dbname=SOURCE_DB, label="wedsync_source")
    ring = Keyring(base64.b64decode(cfg["master_key"]))

    def storage(t: Any) -> Storage:
        if t.name == "files-source":
            import boto3

            client = boto3.client("s3", endpoint_url=cfg["s3_endpoint"], aws_access_key_id="testing",
                                  aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
            return S3Storage(client, FILES_BUCKET, "", name="files-source", medium="object-storage", site="bench-s3")
        return build_storage(cfg, t.name)

    catalog = f"host=127.0.0.1 port={cfg['port']} user={cfg['user']} dbname={CATALOG_DB}"
    return Resources(
        policy=policy,
        open_storage=storage,
        open_catalog=lambda: Catalog(catalog),
        open_database=lambda conn_id, role: source,
        open_keyring=lambda conn_id: ring,
    )


class SealBench(WeddingBench):
    def start(self) -> None:
        super().start()
        self.s3.create_bucket(FILES_BUCKET)

    def seed_bucket(self) -> dict[str, Any]:
        t = time.monotonic()
        dsn = self.source().conninfo()
        client = self.s3.client()
        with psycopg.connect(dsn, autocommit=True) as conn:
            paths = [r[0] for r in conn.execute("SELECT DISTINCT storage_path FROM public.files")]
            with ThreadPoolExecutor(4) as pool:  # devstack.files_seed's objects; the rows updated in one statement
                datas = list(pool.map(lambda p: _put(client, FILES_BUCKET, p), paths))
            conn.execute("CREATE TEMP TABLE sized (path text, size bigint, sha bytea)")
            with conn.cursor().copy("COPY sized FROM STDIN") as cp:
                for path, data in zip(paths, datas, strict=True):
                    cp.write_row((path, len(data), hashlib.sha256(data).digest()))
            conn.execute(
                "UPDATE files f SET size_bytes = s.size, checksum = s.sha FROM sized s WHERE s.path = f.storage_path"
            )
            objects = len(paths)
            conn.execute(  # as bench.weddings_user_view --files-per-wedding
                "DELETE FROM files f USING (SELECT id, row_number() OVER (PARTITION BY wedding_id ORDER BY id) AS n"
                " FROM files) r WHERE f.id = r.id AND (f.wedding_id > %s OR r.n > %s)",
                (self.args.due, self.args.files_per_wedding),
            )
            rows = conn.execute("SELECT count(*) FROM files").fetchone()[0]  # type: ignore[index]
            conn.execute("VACUUM (ANALYZE) files")
        return {"bucket_objects": objects, "files_rows": rows, "seconds": round(time.monotonic() - t, 1)}


def _profiled(fn: Any, top: int, keep: str | None) -> tuple[Any, float, str]:
    prof = cProfile.Profile()
    t = time.monotonic()
    out = prof.runcall(fn)
    took = time.monotonic() - t
    if keep:
        prof.dump_stats(keep)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
    return out, took, s.getvalue()


def full_run(cfg: dict[str, Any]) -> dict[str, Any]:
    """The first full backup (it stores the files in the content store), by the code the first runs use."""
    res, t = resources(cfg), time.monotonic()
    run = RunRef("backup_daily_full", f"scheduled__{uuid.uuid4().hex[:8]}", datetime.fromisoformat(cfg["now"]))
    begun = backup.begin(res, run)
    full_backup(res, begun.backup_id, run)
    return {"full_backup_s": round(time.monotonic() - t, 1), "code": str(CODE_ROOT)}


def proximity_run(cfg: dict[str, Any], n: int, profiled: bool) -> dict[str, Any]:
    """One proximity run, every phase in this process (a stage), ``seal`` timed alone (and profiled: cProfile
    slows the task's own thread, so a profiled run's time is longer than a plain one's)."""
    res = resources(cfg)
    now = datetime.fromisoformat(cfg["now"]) + timedelta(minutes=16 * n)  # the same weddings due again
    run = RunRef("backup_wedding_proximity", f"scheduled__{uuid.uuid4().hex[:8]}", now)
    times: dict[str, float] = {}
    t = time.monotonic()
    begun = cmd.begin(res, run, now=now)
    times["begin"] = time.monotonic() - t
    t = time.monotonic()
    for batch in begun.batches:
        cmd.export_batch(res, begun.backup_id, batch)
    times["export_batches (serial)"] = time.monotonic() - t
    if profiled:
        keep = f"{cfg['profile']}.{n}" if cfg.get("profile") else None
        sealed, times["seal"], stats = _profiled(lambda: cmd.seal(res, begun.backup_id, run), cfg["top"], keep)
        print(stats, flush=True)
    else:
        t = time.monotonic()
        sealed = cmd.seal(res, begun.backup_id, run)
        times["seal"] = time.monotonic() - t
    t = time.monotonic()
    for name in begun.replica_targets:
        backup.replicate(res, begun.backup_id, sealed.manifest_sha256, name)
    checks = [backup.verify(res, begun.backup_id, sealed.manifest_sha256, name) for name in begun.all_targets]
    backup.commit(res, begun.backup_id, sealed.manifest_sha256, checks, tier="wedding")
    times["replicate+verify+commit"] = time.monotonic() - t
    times = {k: round(v, 2) for k, v in times.items()}
    out = {"run": n, "code": str(CODE_ROOT), "profiled": profiled, "backup_id": begun.backup_id}
    return out | {"weddings": begun.weddings, **times}


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "stage":  # stage <config.json> <run number, 0: the full backup> [profile]
        _logging()
        cfg, n = json.loads(Path(argv[1]).read_text()), int(argv[2])
        out = full_run(cfg) if n == 0 else proximity_run(cfg, n, argv[3:] == ["profile"])
        print("RUN " + json.dumps(out), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weddings", type=int, default=200_000)
    p.add_argument("--full", type=int, default=1_000)
    p.add_argument("--due", type=int, default=500)
    p.add_argument("--files-per-wedding", type=int, default=5)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--before", help="a checkout of the code before the change: its runs go first, then --runs more")
    p.add_argument("--after", default=str(REPO_ROOT), help="the code of the last --runs runs (default: this one)")
    p.add_argument("--top", type=int, default=40, help="functions of the seal profile printed")
    p.add_argument("--profile", help="keep each run's seal profile as FILE.<run>")
    p.add_argument("--work", default=str(REPO_ROOT / "bench" / "work" / "wedding_seal"))
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    _logging()
    b = SealBench(args)
    b.start()
    try:
        now = datetime.now(UTC)
        print(f"seeded {b.seed(now)}", flush=True)
        print(f"files {b.seed_bucket()}", flush=True)
        cfg = {"port": b.cluster.port, "user": b.cluster.user, "master_key": base64.b64encode(os.urandom(32)).decode(),
               "primary_dir": str(b.work / "primary"), "s3_endpoint": b.s3.endpoint, "s3_bucket": "wedsync-bench-s3",
               "gcs_bucket": "wedsync-bench-gcs", "now": now.isoformat(), "top": args.top,
               "profile": args.profile}  # fmt: skip
        b.write_cfg(cfg)
        os.environ.update(b.gcs.env())
        resources(cfg).catalog().migrate()
        codes = [args.before] * (args.runs if args.before else 0) + [args.after] * args.runs
        first = {args.before: 1, args.after: 1 + (args.runs if args.before else 0)}  # each code's first run
        plan = [(0, codes[0], False)] + [(n, c, n == first[c]) for n, c in enumerate(codes, 1)]
        for n, code, profiled in plan:  # each code's first run profiled, the others timed plain
            env = {**os.environ, "WEDSYNC_BENCH_CODE": code, "PYTHONPATH": str(REPO_ROOT)}
            argv_ = [sys.executable, "-m", "bench.wedding_seal", "stage", str(b.cfg_path), str(n)]
            done = subprocess.run([*argv_, *(["profile"] if profiled else [])], env=env, check=False, cwd=REPO_ROOT)
            if done.returncode:  # the set-up took minutes: the next runs still go
                print(f"run {n} ({code}) failed with exit status {done.returncode}", flush=True)
    finally:
        b.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
