"""Speed as the user gets it: the DAG runs under the real scheduler, side by side with pg_dump / pg_restore.

    .venv/bin/python -m bench.user_view --scale 60            # ~600 MB demo database, ~10 min on 2 CPUs

Starts the local stack (``./scripts/run.sh`` on free ports in a throwaway state directory, LocalExecutor,
``--no-backup --no-files``: the database alone, as ``pg_dump`` sees it) with the demo database seeded at
``--scale``, pauses every DAG but the two it times, then in one run: ``pg_dump -Fc`` of the source and a
``backup_daily_full`` run; then ``--restores`` times each of ``pg_restore -j2`` (from that ``-Fc`` file) and an
``emergency_restore`` run (mode latest, from the primary), interleaved, each into a new empty database. A DAG
run's time is its first task's start to its last task's end (the task instances' own times, as the UI shows
them); the catalog window is the backup row's ``started_at`` to ``completed_at``. Each figure is written with
the 1-minute load average at its end.
The section "As the user gets it" of ``--results`` (bench/RESULTS.md) is replaced; the stack is stopped
and its state directory removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

import psycopg  # noqa: E402
from wedsync_backup.pg import find_tool  # noqa: E402

from devstack.airflow_env import RESTORE_TARGET  # noqa: E402
from devstack.postgres import Cluster  # noqa: E402
from devstack.testing import StackProcess, new_state_dir  # noqa: E402

FULL, RESTORE = "backup_daily_full", "emergency_restore"
SOURCE_DB = "wedsync"
START, END = "<!-- user-view:start -->", "<!-- user-view:end -->"
SETTLE_S = 1.0  # after a contender: its sessions end and the postmaster reaps them


def load() -> float:
    return os.getloadavg()[0]


def idle_core_seconds() -> float:
    """Core-seconds every CPU of the machine has spent idle since boot (/proc/stat: idle + iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[3] + fields[4]) / os.sysconf("SC_CLK_TCK")


class IdleTrack:
    """The machine's idle core-seconds sampled every 0.1 s on a thread, so that the idle time of an exact window
    (a DAG run's first task start to its last task end, by the task instances' own wall-clock times) can be
    read afterwards: read around a trigger, it would also count the scheduler's pick-up and the polling."""

    def __init__(self, interval: float = 0.1) -> None:
        self.samples: list[tuple[float, float]] = []  # (time.time(), idle core-seconds since boot)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while True:
            self.samples.append((time.time(), idle_core_seconds()))
            if self._stop.wait(interval):
                return

    def start(self) -> IdleTrack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, moment: float) -> float:
        """The idle counter at ``moment`` (epoch seconds), interpolated between the two samples around it."""
        samples = list(self.samples)
        for (t0, v0), (t1, v1) in itertools.pairwise(samples):
            if t0 <= moment <= t1:
                return v0 + (v1 - v0) * (moment - t0) / (t1 - t0) if t1 > t0 else v0
        return samples[-1][1] if moment > samples[-1][0] else samples[0][1]

    def between(self, start: float, end: float) -> float:
        return self.at(end) - self.at(start)


class ServerCpu:
    """CPU seconds the PostgreSQL server has used: the postmaster and every backend, live or ended (an ended
    backend's time is in the postmaster's children times). Read around a contender, the difference is the
    server work it caused (plus the stack's own small queries)."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir

    def used(self) -> float:
        import psutil

        postmaster = psutil.Process(int((self.datadir / "postmaster.pid").read_text().split()[0]))
        t = postmaster.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in postmaster.children():
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except psutil.NoSuchProcess:
                pass  # it ended between the listing and the read: its time is in the postmaster's now
        return total


def _ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


@dataclass
class Timed:
    """One contender's run: wall seconds and the 1-minute load average when it ended."""

    seconds: float
    load: float
    detail: dict[str, Any] = field(default_factory=dict)
    server_cpu: float | None = None  # PostgreSQL's CPU seconds meanwhile
    idle: float | None = None  # core-seconds the machine's CPUs were idle meanwhile


@dataclass
class DagRunTimes:
    """A DAG run as the user gets it: first task start to last task end, and each task's own duration."""

    seconds: float
    tasks: list[tuple[str, float, float]]  # (task, start offset, duration), in start order
    first: float = 0.0  # epoch seconds: the first task's start
    last: float = 0.0  # epoch seconds: the last task's end


def run_times(tis: list[dict[str, Any]]) -> DagRunTimes:
    ran = [t for t in tis if t.get("start_date") and t.get("end_date") and t.get("state") != "skipped"]
    first = min(_ts(t["start_date"]) for t in ran)  # type: ignore[type-var]
    last = max(_ts(t["end_date"]) for t in ran)  # type: ignore[type-var]
    tasks = []
    for t in sorted(ran, key=lambda t: t["start_date"]):
        name = t["task_id"] + (f"[{t['map_index']}]" if t.get("map_index", -1) >= 0 else "")
        start, end = _ts(t["start_date"]), _ts(t["end_date"])
        tasks.append((name, (start - first).total_seconds(), (end - start).total_seconds()))  # type: ignore[operator]
    return DagRunTimes((last - first).total_seconds(), tasks, first.timestamp(), last.timestamp())


class UserBench:
    # the database against pg_dump / pg_restore: no files bucket (pg_dump has no photos to copy)
    stack_args: tuple[str, ...] = ("--no-backup", "--no-files")

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.last_cpu: tuple[float, float] = (0.0, 0.0)
        self.idle = IdleTrack().start()  # a daemon thread: ended by stop(), or with the process
        self.stack = StackProcess(new_state_dir("wedsync-bench-"), scale=args.scale, extra_args=self.stack_args)
        self.work = Path(tempfile.mkdtemp(prefix="wedsync-bench-dumps-"))
        self.cluster: Cluster | None = None

    # --- set-up --------------------------------------------------------------------------------------------
    def start(self) -> None:
        print(f"starting the stack at scale {self.args.scale} in {self.stack.state_dir} ...", flush=True)
        self.stack.start(timeout=1800)
        self.cluster = Cluster(self.stack.state_dir / "pg", port=self.stack.ports["postgres"])
        for dag in self.stack.api.get("/api/v2/dags?limit=1000")["dags"]:  # nothing else competes for the CPUs
            paused = dag["dag_id"] not in (FULL, RESTORE)
            if dag["is_paused"] != paused:
                self.stack.api.patch(f"/api/v2/dags/{dag['dag_id']}", {"is_paused": paused})
        self._quiet()
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")

    def _quiet(self, timed: tuple[str, ...] = (FULL, RESTORE), timeout: float = 900) -> None:
        """End the runs the scheduler made before the pause (a paused DAG's run never finishes, and its running
        task goes on: a weekly archive's files capture holds the content store for many minutes), then wait
        until no run of the ``timed`` DAGs is queued or running."""
        api = self.stack.api
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = api.get("/api/v2/dags/~/dagRuns?limit=100&state=running&state=queued")["dag_runs"]
            for run in runs:
                if run["dag_id"] not in timed:
                    api.patch(f"/api/v2/dags/{run['dag_id']}/dagRuns/{run['dag_run_id']}", {"state": "failed"})
            if not [r for r in runs if r["dag_id"] in timed]:
                return
            time.sleep(2)

    def dsn(self, db: str = SOURCE_DB) -> str:
        assert self.cluster is not None
        return self.cluster.dsn(db)

    def tool(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            major = conn.info.server_version // 10000
        return str(find_tool(name, major))

    def checkpoint(self) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def source_info(self) -> dict[str, Any]:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
            tables = conn.execute(
                "SELECT count(*), sum(n_live_tup) FROM pg_stat_user_tables WHERE schemaname <> '_wedsync_backup'"
            ).fetchone()
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        return {"bytes": size, "tables": tables[0], "rows": int(tables[1] or 0), "version": version}  # type: ignore[index]

    # --- contenders ----------------------------------------------------------------------------------------
    def cpu(self, settle: bool = False) -> tuple[float, float]:
        """(PostgreSQL's CPU seconds, the machine's idle core-seconds). ``settle``: the idle figure now, the CPU
        figure once the contender's backends have ended and been reaped (their time only then joins the
        postmaster's children times)."""
        assert self.cluster is not None
        idle = idle_core_seconds()
        if settle:
            time.sleep(SETTLE_S)
        return ServerCpu(self.cluster.datadir).used(), idle

    def timed(self, cmd: list[str]) -> Timed:
        self.checkpoint()
        cpu, _ = self.cpu()
        started, wall = time.monotonic(), time.time()
        subprocess.run(cmd, check=True, capture_output=True)
        seconds, ended = time.monotonic() - started, time.time()
        cpu2, _ = self.cpu(settle=True)
        return Timed(seconds, load(), server_cpu=cpu2 - cpu, idle=self.idle.between(wall, ended))

    def pg_dump(self) -> Timed:
        out = self.work / "wedsync.dump"
        t = self.timed([self.tool("pg_dump"), "-Fc", "-f", str(out), f"--dbname={self.dsn()}"])
        t.detail["bytes"] = out.stat().st_size
        return t

    def pg_restore(self, n: int) -> Timed:
        db = f"bench_pg_restore_{n}"
        assert self.cluster is not None
        self.cluster.create_database(db, drop=True)
        t = self.timed([self.tool("pg_restore"), "-j2", f"--dbname={self.dsn(db)}", str(self.work / "wedsync.dump")])
        self.cluster.psql("-c", f'DROP DATABASE "{db}"')  # its autovacuum must not slow the next contender
        return t

    def dag_run(self, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, DagRunTimes, float]:
        self.checkpoint()
        self.last_cpu = self.cpu()
        run_id = self.stack.api.trigger(dag_id, conf)["dag_run_id"]
        run = self.stack.api.wait_for_run(dag_id, run_id, timeout=3600)
        cpu, _ = self.cpu(settle=True)
        if run["state"] != "success":
            raise RuntimeError(f"{dag_id} run {run_id} ended {run['state']}: see {self.stack.state_dir}/logs")
        times = run_times(self.stack.api.task_instances(dag_id, run_id))
        # the server's CPU from the trigger to the run seen ended (a little longer than the run: scheduling,
        # polling); the idle time of the run's own window, as its wall time
        self.last_cpu = (cpu - self.last_cpu[0], self.idle.between(times.first, times.last))
        return run_id, times, load()

    def full_backup(self) -> Timed:
        run_id, times, ld = self.dag_run(FULL)
        with psycopg.connect(self.dsn("backup_catalog"), autocommit=True) as conn:
            row = conn.execute(
                "SELECT backup_id, extract(epoch FROM completed_at - started_at) "
                "FROM backup_operations WHERE run_id = %s AND status = 'completed'",
                (run_id,),
            ).fetchone()
        if row is None:
            raise RuntimeError(f"{FULL} run {run_id} left no completed backup row")
        detail = {"run_id": run_id, "tasks": times.tasks, "backup_id": row[0], "catalog_window": float(row[1])}
        return Timed(times.seconds, ld, detail, *self.last_cpu)

    def emergency_restore(self) -> Timed:
        assert self.cluster is not None
        self.cluster.create_database(RESTORE_TARGET, drop=True)
        conf = {
            "mode": "latest",
            "target_conn_id": RESTORE_TARGET,
            "dry_run": False,
            "confirm": f"RESTORE {RESTORE_TARGET}",
            "reason": "bench: speed as the user gets it",
        }
        run_id, times, ld = self.dag_run(RESTORE, conf)
        with psycopg.connect(self.dsn("backup_catalog"), autocommit=True) as conn:
            row = conn.execute(
                "SELECT result FROM disaster_recovery_events WHERE dag_id = %s AND run_id = %s", (RESTORE, run_id)
            ).fetchone()
        result = (row[0] if row else None) or {}
        restore_task = next((d for name, _, d in times.tasks if name == "restore"), times.seconds)
        detail = {"run_id": run_id, "tasks": times.tasks, "rto_per_group": result.get("rto_per_group") or {}}
        detail["restore_seconds"] = result.get("seconds")
        detail["restore_task"] = restore_task
        self.cluster.psql("-c", f'DROP DATABASE "{RESTORE_TARGET}" WITH (FORCE)')
        self.cluster.create_database(RESTORE_TARGET)
        return Timed(times.seconds, ld, detail, *self.last_cpu)

    def stop(self) -> None:
        self.idle.stop()
        self.stack.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        if not self.args.keep:
            subprocess.run(["rm", "-rf", str(self.stack.state_dir)], check=False)


# --- the report ------------------------------------------------------------------------------------------------
def _cpu(t: Timed) -> str:
    if t.server_cpu is None or t.idle is None:
        return "|"
    return f"{t.server_cpu:.1f} | {t.idle:.1f}"


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**NO**"


def median_of(runs: list[Timed]) -> Timed:
    """The run whose time is the median (the lower middle one for an even count)."""
    return sorted(runs, key=lambda t: t.seconds)[(len(runs) - 1) // 2]


def render(args: argparse.Namespace, info: dict[str, Any], r: dict[str, Any]) -> str:
    dump, full = median_of(r["pg_dumps"]), median_of(r["fulls"])
    pgr, ours = r["pg_restore"], r["restores"]
    pgr_med = statistics.median(t.seconds for t in pgr)
    our_med = statistics.median(t.seconds for t in ours)
    window = full.detail["catalog_window"]
    cmd = (
        f".venv/bin/python -m bench.user_view --scale {args.scale:g} --backups {args.backups} "
        f"--restores {args.restores}"
    )
    out = [
        START,
        "## As the user gets it: the DAG runs under the real scheduler",
        "",
        f"Generated by `{cmd}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({r['minutes']:.1f} min). The local stack",
        "(`./scripts/run.sh` on free ports, LocalExecutor, every other DAG paused), demo database at scale",
        f"{args.scale:g}: {info['tables']} tables, {info['rows']:,} rows, pg_database_size "
        f"**{info['bytes'] / 1e6:,.1f} MB**, PostgreSQL {info['version']}. A DAG run is timed from its first task's",
        "start to its last task's end (the task instances' own times); the catalog window is the backup row's",
        "`started_at` to `completed_at`. Load is the 1-minute load average (2 CPUs, shared by other users) at",
        "the end of each figure. The stage view (each stage its own process, no Airflow) is the report above,",
        "from its own run (`bench.run_bench`, see its header): compare the ratios, not the seconds.",
        "",
        "| Backup | Run | Wall time (s) | load | catalog window (s) | PostgreSQL CPU (s) | idle CPU (core-s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[
            row
            for i, (d, f) in enumerate(zip(r["pg_dumps"], r["fulls"], strict=True), 1)
            for row in (
                f"| `pg_dump -Fc` ({d.detail['bytes'] / 1e6:,.1f} MB) | {i} | {d.seconds:.1f} | {d.load:.2f} | "
                f"| {_cpu(d)} |",
                f"| **`backup_daily_full` run** (3 copies, all verified, committed, pruned) | {i} | {f.seconds:.1f} "
                f"| {f.load:.2f} | {f.detail['catalog_window']:.1f} | {_cpu(f)} |",
            )
        ],
        "",
        "PostgreSQL CPU: the server's CPU seconds (postmaster and every backend) from the contender's start to its",
        "end (for a DAG run: from the trigger until the run is seen ended, so a little longer than the run), read",
        "1 s after it so that its ended sessions are counted; the stack's own sessions add a little. Idle",
        "CPU: the core-seconds the machine's 2 CPUs spent idle (or waiting for I/O) within the wall time of the",
        "row (for a DAG run: first task start to last task end; sampled every 0.1 s); whatever else runs on the",
        "machine counts as busy.",
        "",
        f"Medians: `pg_dump -Fc` {dump.seconds:.1f} s; `backup_daily_full` {full.seconds:.1f} s "
        f"({full.seconds / dump.seconds:.2f}x), its catalog window {window:.1f} s ({window / dump.seconds:.2f}x).",
        "The median `backup_daily_full` run, task by task (start offset from the first task, duration):",
        "",
        "| Task | Starts at (s) | Duration (s) |",
        "|---|---:|---:|",
        *[f"| {name} | {start:.1f} | {d:.1f} |" for name, start, d in full.detail["tasks"]],
        "",
        "| Restore, into an empty database | Run | Wall time (s) | load | critical usable at (s) "
        "| PostgreSQL CPU (s) | idle CPU (core-s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (p, o) in enumerate(zip(pgr, ours, strict=True), 1):
        rto = o.detail["rto_per_group"]
        crit = rto.get("critical")
        out.append(f"| `pg_restore -j2` (from the `-Fc` file) | {i} | {p.seconds:.1f} | {p.load:.2f} | | {_cpu(p)} |")
        out.append(
            f"| **`emergency_restore` run** (plan + restore) | {i} | {o.seconds:.1f} | {o.load:.2f} | "
            f"{crit if crit is not None else '-'} | {_cpu(o)} |"
        )
    med = median_of(ours)
    recorded = med.detail["rto_per_group"]  # jsonb keeps its own key order: show them in priority order
    rto = {g: recorded[g] for g in ("critical", "high", "standard") if g in recorded}
    crit = rto.get("critical")
    restore_s = med.detail.get("restore_seconds") or med.seconds
    share = crit / restore_s if crit is not None and restore_s else None
    # as the user sees it: from the run's first task start (the restore ends with its task, so its start is
    # about the run's end minus its own seconds)
    crit_run = med.seconds - restore_s + crit if crit is not None else None
    out += [
        "",
        f"Median run: the RTO per priority group (seconds from the restore's start until the group's tables "
        f"were loaded and indexed), as recorded in `disaster_recovery_events.result->'rto_per_group'`: "
        f"{', '.join(f'{g} {s}' for g, s in rto.items()) or 'not recorded'}; whole restore {restore_s} s. Its tasks: "
        + ", ".join(f"{n} {d:.1f} s" for n, _, d in med.detail["tasks"])
        + ".",
        "",
        "| Target | Measured | Met |",
        "|---|---|---|",
        f"| full backup run, median of {len(r['fulls'])} <= 0.7x `pg_dump -Fc` (median) | "
        f"{full.seconds / dump.seconds:.2f}x ({full.seconds:.1f} s vs {dump.seconds:.1f} s) | "
        f"{_yes(full.seconds <= 0.7 * dump.seconds)} |",
        f"| its catalog window <= 0.7x `pg_dump -Fc` | {window / dump.seconds:.2f}x "
        f"| {_yes(window <= 0.7 * dump.seconds)} |",
        f"| restore run, median of {len(ours)} <= 0.8x `pg_restore -j2` (median) | {our_med / pgr_med:.2f}x "
        f"({our_med:.1f} s vs {pgr_med:.1f} s) | {_yes(our_med <= 0.8 * pgr_med)} |",
    ]
    if share is not None:
        out.append(
            f"| critical group usable within 25% of the restore | {share:.0%} ({crit} s of {restore_s} s) | "
            f"{_yes(share <= 0.25)} |"
        )
        out.append(
            f"| the same, counted from the run's first task start | {crit_run / med.seconds:.0%} "
            f"({crit_run:.1f} s of {med.seconds:.1f} s) | {_yes(crit_run <= 0.25 * med.seconds)} |"
        )
    out.append(END)
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str, start: str = START, end: str = END) -> None:
    """Replace the part of ``path`` between the markers ``start`` and ``end`` (append it when there is none)."""
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=60, help="demo scale (1 = about 10 MB; 60 = about 600 MB)")
    p.add_argument("--backups", type=int, default=3, help="backups of each kind (the median counts)")
    p.add_argument("--restores", type=int, default=3, help="restores of each kind (the median counts)")
    p.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the stack's state directory")
    args = p.parse_args(argv)
    began = time.monotonic()
    bench = UserBench(args)
    try:
        bench.start()
        info = bench.source_info()
        print(f"source: {info['bytes'] / 1e6:,.1f} MB, {info['rows']:,} rows; load {load():.2f}", flush=True)
        r: dict[str, Any] = {"pg_dumps": [], "fulls": []}
        for _ in range(args.backups):
            r["pg_dumps"].append(bench.pg_dump())
            print(f"pg_dump -Fc: {r['pg_dumps'][-1].seconds:.1f} s (load {load():.2f})", flush=True)
            r["fulls"].append(bench.full_backup())
            print(f"backup_daily_full: {r['fulls'][-1].seconds:.1f} s {r['fulls'][-1].detail}", flush=True)
        r["pg_restore"], r["restores"] = [], []
        for i in range(args.restores):
            r["pg_restore"].append(bench.pg_restore(i))
            print(f"pg_restore -j2: {r['pg_restore'][-1].seconds:.1f} s (load {load():.2f})", flush=True)
            r["restores"].append(bench.emergency_restore())
            print(f"emergency_restore: {r['restores'][-1].seconds:.1f} s {r['restores'][-1].detail}", flush=True)
        r["minutes"] = (time.monotonic() - began) / 60
        section = render(args, info, r)
        write_section(args.results, section)
        print(section)
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
