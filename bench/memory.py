"""Peak memory of the first full backup (issue 9): the ``backup_daily_full`` backup task, in a process of its own.

    .venv/bin/python -m bench.memory --weddings 200000 --files 2500 --runs 1 --plugins /tmp/base/plugins
    .venv/bin/python -m bench.memory --hold --work /tmp/mem        # set up once, keep it until Ctrl-C, then:
    .venv/bin/python -m bench.memory --attach /tmp/mem --runs 2 [--env WEDSYNC_FILES_BUCKET=] [--env K=V]

A throwaway PostgreSQL cluster holds the demo schema seeded as ``bench.weddings`` seeds it (``--full`` weddings
with the whole demo data set, a light tail up to ``--weddings``) and the catalog; a moto server holds the files
bucket (``--files`` demo objects, a few hundred bytes each, with matching rows; the other files rows are deleted)
and the S3 target; the GCS emulator is the offsite target; the primary is a local directory. Each run is a FIRST
full backup (its own primary directory, buckets and catalog database), run as the DAG runs it: the preflight
(``backup.begin``) in one process (the DAG's one task runs it first, in the same process; apart here so that an
older checkout's plugins can be measured too; it holds little memory), then the backup task (``full_backup``:
export with every copy written at once, the files capture, verify every copy, commit, prune; no configurations
component) in another, through the Airflow hooks (``wedsync_airflow.targets.build_storage``), as the task does.
``--plugins DIR`` also runs the backup with another checkout's plugins (``git archive <commit> plugins include |
tar -x -C DIR/..``), interleaved with this checkout's (before it; after it with ``--plugins-after``: a later backup
of a set-up is slower, the GCS emulator holding more objects). ``--env WEDSYNC_FILES_BUCKET=`` leaves the files out
(a run of ~15 s).

Figures, from the backup process: its peak RSS as the task logs it (``ru_maxrss`` of the process itself), the
peak before the backup starts (imports and storages built), and the peak in each phase (sampled from
``/proc/self/status`` every 10 ms; the phase is named by the last log line of ``wedsync_backup``).
``logs/timeline-<run>.txt`` lists every log line and every new high of the resident set with the threads then
alive; ``--env BENCH_TRACEMALLOC=1`` prints Python's largest allocations at their peak into the backup's log.
The Airflow task adds its runner (about 200 MB in the bench's stack, ~190 MB here before the backup) to the
same work.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import resource
import secrets
import shutil
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
FILES_BUCKET = "memory-files"
START, END = "<!-- memory:start -->", "<!-- memory:end -->"
SOURCE_DB = "wedsync"
PHASES = (  # (phase, the start of a wedsync_backup log message that begins it)
    ("export", "Exporting "),
    ("files capture", "Content store:"),
    ("after the files", "Files of "),
)


# --- the child: one stage ---------------------------------------------------------------------------------------
def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PhasePeaks(logging.Handler):
    """The resident set's peak per phase of the backup, the phase named by the last matching log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.timeline: list[str] = []  # every log line with the resident set and its peak so far (MB)

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.timeline.append(f"{_rss_kb() >> 10} {peak >> 10} {record.getMessage()[:80]}")
        for phase, prefix in PHASES:
            if msg.startswith(prefix):
                self.phase = phase

    def _sample(self) -> None:
        top, started = 0, time.monotonic()
        while not self._stop.wait(0.01):
            rss = _rss_kb()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            if rss > top + 1024:  # each new high (by 1 MB or more), with the threads then alive
                top = rss
                names = sorted(t.name.split("_")[0] for t in threading.enumerate())
                self.timeline.append(f"{rss >> 10} {top >> 10} +{time.monotonic() - started:.2f}s high; {names}")

    def __enter__(self) -> PhasePeaks:
        logging.getLogger("wedsync_backup").addHandler(self)
        logging.getLogger("wedsync_backup").setLevel(logging.INFO)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        logging.getLogger("wedsync_backup").removeHandler(self)


def stage(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    from wedsync_airflow.targets import build_storage
    from wedsync_backup.catalog import Catalog
    from wedsync_backup.commands import backup
    from wedsync_backup.commands.full_backup import full_backup
    from wedsync_backup.commands.resources import Resources, RunRef
    from wedsync_backup.crypto import Keyring
    from wedsync_backup.pg import PgTarget
    from wedsync_backup.policy import load_policy

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s %(message)s")
    source = PgTarget(port=cfg["port"], user=cfg["user"], dbname=SOURCE_DB, label="wedsync_source")
    ring = Keyring(base64.b64decode(cfg["master_key"]))
    res = Resources(
        policy=load_policy(),
        open_storage=build_storage,
        open_catalog=lambda: Catalog(PgTarget(port=cfg["port"], user=cfg["user"], dbname=cfg["catalog_db"]).conninfo()),
        open_database=lambda conn_id, role: source,
        open_keyring=lambda _: ring,
    )
    run = RunRef("backup_daily_full", cfg["run_id"], datetime.fromisoformat(cfg["due_at"]))
    if name == "begin":
        return {"backup_id": backup.begin(res, run).backup_id}
    res.all_storages()  # the clients built, as the task has them before its work
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.monotonic()
    traced = os.environ.get("BENCH_TRACEMALLOC") == "1"  # Python's own allocations too (slows the backup)
    if traced:
        import tracemalloc

        tracemalloc.start(8)
        best: list[Any] = [0, None]
        done = threading.Event()

        def watch() -> None:  # a snapshot at (about) the peak of Python's allocations
            while not done.wait(0.05):
                current = tracemalloc.get_traced_memory()[0]
                if current > best[0] + (1 << 20):
                    best[:] = [current, tracemalloc.take_snapshot()]

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    with PhasePeaks() as peaks:
        result = full_backup(res, cfg["backup_id"], run)
    extra: dict[str, Any] = {}
    if traced:
        done.set()
        watcher.join()
        extra["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
        if best[1] is not None:
            for stat in best[1].statistics("traceback")[:12]:
                print(f"{stat.size / 2**20:.1f} MB in {stat.count} blocks:", *stat.traceback.format()[-8:], sep="\n  ")
    return extra | {
        "seconds": round(time.monotonic() - t, 1),
        "rss_before_mb": round(before / 1024, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "phase_peaks_mb": {k: round(v / 1024, 1) for k, v in peaks.peaks.items()},
        "timeline": peaks.timeline,
        "stored_bytes": result.exported.stored_bytes,
        "objects": result.exported.objects,
    }


# --- the parent: set-up and runs -------------------------------------------------------------------------------
def seed(cluster: Any, s3: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The demo schema as bench.weddings seeds it, then ``--files`` files rows kept, each with its object."""
    import psycopg

    from bench.weddings import seed_scaled
    from devstack.demo import create_demo_schema
    from devstack.files_seed import seed_files

    dsn = cluster.dsn(SOURCE_DB)
    t = time.monotonic()
    create_demo_schema(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_scaled(conn, args.full, args.weddings)
        conn.execute("DELETE FROM files WHERE id NOT IN (SELECT id FROM files ORDER BY id LIMIT %s)", (args.files,))
        conn.execute("VACUUM (ANALYZE)")
    files = seed_files(dsn, s3.client(), FILES_BUCKET)
    with psycopg.connect(dsn, autocommit=True) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        rows = conn.execute(
            "SELECT sum(n_live_tup)::bigint FROM pg_stat_user_tables WHERE schemaname NOT IN ('demo')"
        ).fetchone()[0]
        weddings = conn.execute("SELECT count(*) FROM weddings").fetchone()[0]
    return {
        "weddings": weddings,
        "rows": rows,
        "database_mb": size / 2**20,
        "files": files,
        "seconds": time.monotonic() - t,
    }


def one_run(i: int, label: str, plugins: Path, base: dict[str, Any], env: dict[str, str], work: Path,
            cluster: Any, s3: Any, gcs: Any) -> dict[str, Any]:  # fmt: skip
    from bench.run_bench import run_one

    tag = f"{i}-{label}"
    unique = secrets.token_hex(3)  # two --attach runs at once never share a bucket or catalog
    s3_bucket, gcs_bucket, catalog = f"memory-s3-{i}-{unique}", f"memory-gcs-{i}-{unique}", f"catalog_{i}_{unique}"
    s3.create_bucket(s3_bucket)
    gcs.create_bucket(gcs_bucket)
    cluster.create_database(catalog)
    cfg = {**base, "catalog_db": catalog, "run_id": f"memory__{tag}", "due_at": datetime.now(UTC).isoformat()}
    env = {
        **env,
        "AIRFLOW_CONN_BACKUP_PRIMARY": json.dumps({"conn_type": "fs", "extra": {"path": str(work / f"primary-{i}")}}),
        "WEDSYNC_BACKUP_S3_BUCKET": s3_bucket,
        "WEDSYNC_BACKUP_GCS_BUCKET": gcs_bucket,
        "PYTHONPATH": os.pathsep.join([str(plugins), str(REPO_ROOT)]),
    }
    out: dict[str, Any] = {}
    for name in ("begin", "backup"):
        path = work / f"cfg-{tag}.json"
        path.write_text(json.dumps(cfg))
        cmd = [sys.executable, "-m", "bench.memory", "--stage", name, "--cfg", str(path)]
        m = run_one(f"{name}-{tag}", cmd, env, work / "logs")
        lines = (work / "logs" / f"{name}-{tag}.log").read_text().splitlines()
        result = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
        cfg |= result
        out = result | {"wall_s": round(m.seconds, 1), "wait4_peak_mb": round(m.peak_rss_kb / 1024, 1)}
    # every log line of the backup with the resident set then and the peak so far (MB): where it grew
    (work / "logs" / f"timeline-{tag}.txt").write_text("\n".join(out.pop("timeline", [])) + "\n")
    shutil.rmtree(work / f"primary-{i}", ignore_errors=True)
    with cluster_conn(cluster) as conn:  # the replication slot the full backup started its chain with
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
    return out


def cluster_conn(cluster: Any) -> Any:
    import psycopg

    return psycopg.connect(cluster.dsn(SOURCE_DB), autocommit=True)


def _services(held: dict[str, Any]) -> tuple[Any, Any, Any]:
    from devstack.postgres import Cluster
    from devstack.services import GcsEmulator, MotoServer

    cluster = Cluster(Path(held["datadir"]), port=held["base"]["port"])
    return cluster, MotoServer(port=held["s3_port"]), GcsEmulator(port=held["gcs_port"])


def run_versions(held: dict[str, Any], versions: dict[str, Path], runs: int, first: int, work: Path,
                 extra_env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """``runs`` first full backups with each plugins directory, interleaved (load drifts alike for each)."""
    cluster, s3, gcs = _services(held)
    out: dict[str, list[dict[str, Any]]] = {label: [] for label in versions}
    i = first
    for _ in range(runs):
        for label, plugins in versions.items():
            i += 1
            r = one_run(i, label.split()[0], plugins, held["base"], held["env"] | extra_env, work, cluster, s3, gcs)
            print(f"{label}: {json.dumps(r)}", flush=True)
            out[label].append(r)
    return out


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    from bench.weddings import PG_SETTINGS
    from devstack.postgres import Cluster
    from devstack.services import GcsEmulator, MotoServer

    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    cluster = Cluster(work / "pg" / "data", settings=dict(PG_SETTINGS)).start()
    s3, gcs = MotoServer().start(), GcsEmulator().start()
    try:
        s3.create_bucket(FILES_BUCKET)
        cluster.create_database(SOURCE_DB)
        seeded = seed(cluster, s3, args)
        print(f"seeded: {seeded}", flush=True)
        held = {
            "datadir": str(work / "pg" / "data"),
            "s3_port": s3.port,
            "gcs_port": gcs.port,
            "seeded": seeded,
            "base": {
                "port": cluster.port,
                "user": cluster.user,
                "master_key": base64.b64encode(os.urandom(32)).decode(),
            },
            "env": {
                **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN", "WEDSYNC_"))},
                **gcs.env(),
                "AIRFLOW_CONN_BACKUP_SECONDARY_S3": s3.airflow_conn_json(),
                "AIRFLOW_CONN_BACKUP_OFFSITE_GCS": gcs.airflow_conn_json(),
                "AIRFLOW_CONN_WEDSYNC_FILES": s3.airflow_conn_json(),
                "WEDSYNC_FILES_BUCKET": FILES_BUCKET,
            },
        }
        (work / "held.json").write_text(json.dumps(held))
        if args.hold:  # keep the set-up for --attach runs until interrupted
            print(f"holding the set-up: --attach {work}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
            return seeded, {}
        return seeded, run_versions(held, versions_of(args), args.runs, 0, work, {})
    finally:
        s3.stop()
        gcs.stop()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def versions_of(args: argparse.Namespace) -> dict[str, Path]:
    versions = {"this checkout": REPO_ROOT / "plugins"}
    if args.plugins:  # first, unless --plugins-after: a later run finds more objects in the GCS emulator
        other = {f"plugins {args.plugins}": Path(args.plugins).resolve()}
        versions = {**versions, **other} if args.plugins_after else {**other, **versions}
    return versions


def render(seeded: dict[str, Any], runs: dict[str, list[dict[str, Any]]], command: str) -> str:
    lines = [
        START,
        "## Peak memory of the full backup (issue 9: every task's peak RSS <= 300 MB)",
        "",
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({os.cpu_count()} CPUs, shared): "
        f"{seeded['weddings']:,} weddings, {seeded['rows']:,} rows, {seeded['database_mb']:.1f} MB database, "
        f"{seeded['files']:,} files in the files bucket.",
        "",
        "| Code | Run | Backup (s) | RSS before (MB) | Peak (MB) | Peak - before (MB) | Export peak | Files peak | "
        "Verify/commit peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rs in runs.items():
        for n, r in enumerate(rs, 1):
            p = r["phase_peaks_mb"]
            lines.append(
                f"| {label} | {n} | {r['seconds']} | {r['rss_before_mb']} | {r['peak_mb']} | "
                f"{r['peak_mb'] - r['rss_before_mb']:.1f} | {p.get('export', 0)} | {p.get('files capture', 0)} | "
                f"{p.get('after the files', 0)} |"
            )
    lines.append("")
    for label, rs in runs.items():
        added = statistics.median(r["peak_mb"] - r["rss_before_mb"] for r in rs)
        secs = statistics.median(r["seconds"] for r in rs)
        lines.append(f"- {label}: median peak added by the backup {added:.1f} MB, median backup time {secs} s.")
    return "\n".join([*lines, "", END]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weddings", type=int, default=200_000)
    p.add_argument("--full", type=int, default=1000, help="weddings with the whole demo data set")
    p.add_argument("--files", type=int, default=2500)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--plugins", help="also run the backup with this plugins directory (e.g. an older checkout's)")
    p.add_argument("--plugins-after", action="store_true", help="run --plugins after this checkout, not before")
    p.add_argument("--work", default=str(REPO_ROOT / "bench" / "work" / "memory"))
    p.add_argument("--keep", action="store_true")
    p.add_argument("--results", help="write the report's section into this file (e.g. bench/RESULTS.md)")
    p.add_argument("--hold", action="store_true", help="set up, then wait (Ctrl-C ends it) for --attach runs")
    p.add_argument("--attach", metavar="WORK", help="run against the set-up a --hold run keeps in WORK")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for the backup")
    p.add_argument("--stage", choices=["begin", "backup"], help=argparse.SUPPRESS)
    p.add_argument("--cfg", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        print(json.dumps(stage(args.stage, json.loads(Path(args.cfg).read_text()))), flush=True)
        return 0
    command = ".venv/bin/python -m bench.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.attach:
        work = Path(args.attach).resolve()
        held = json.loads((work / "held.json").read_text())
        first = len(list((work / "logs").glob("begin-*.log")))
        extra = dict(kv.split("=", 1) for kv in args.env)
        seeded, runs = held["seeded"], run_versions(held, versions_of(args), args.runs, first, work, extra)
    else:
        seeded, runs = measure(args)
    if not runs:
        return 0
    text = render(seeded, runs, command.strip())
    print(text)
    if args.results:
        from bench.user_view import write_section

        write_section(Path(args.results), text, START, END)
    return 0


if __name__ == "__main__":
    if "--stage" not in sys.argv:  # a stage finds the plugins it runs through PYTHONPATH
        sys.path.insert(0, str(REPO_ROOT / "plugins"))
    sys.exit(main())
