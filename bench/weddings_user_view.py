"""Issue 9's figures as the user gets them: the wedding DAGs run by the real scheduler at >= 200,000 weddings.

    .venv/bin/python -m bench.weddings_user_view --weddings 200000 --due 500 --runs 3

Starts the local stack (``./scripts/run.sh`` on free ports in a throwaway state directory, LocalExecutor,
``--no-backup``) with ``--full`` demo weddings (full data set, files included), adds a light tail of weddings up
to ``--weddings`` (5 guests and 3 events each) and dates ``--due`` of the full weddings within the proximity
window (a quarter of them on their day or the day before: the execution phase). Every DAG stays paused but the
one being timed. Then, in one run:

1. ``backup_daily_full`` (the chain's start) and ``pg_dump -Fc`` of the whole database (what a user would
   otherwise run to protect those weddings);
2. ``backup_wedding_proximity``: the scheduler's own run when the DAG is unpaused, then ``--runs - 1`` more
   (before each, the previous wedding backups are marked pruned in the catalog, as retention would, so the same
   weddings are due again); each over every due wedding, three copies verified;
3. one wedding damaged (guests deleted, a timeline event moved), then restored into the LIVE source database
   from its wedding backup by ``emergency_restore`` (scope wedding-only, mode latest; safety snapshot
   included), ``--runs`` times; side by side ``pg_restore -j2`` of the whole dump into an empty database (what
   a user would otherwise start from);
4. a wedding with no wedding backup damaged after a moment T, ``backup_hourly_incremental`` run, then that
   wedding restored to T from the full backup plus the chain (wedding-only, point_in_time), against a complete
   point-in-time restore to T into an empty database.

A DAG run is timed from its first task's start to its last task's end (the task instances' own times, as the
UI shows them) and from its queueing to its end; each restore's own work is the event's recorded seconds.
Every task logs its peak memory (``Peak memory: ...`` from ``getrusage``); the largest per task is reported.
Writes the section between the markers below into ``--results`` (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

import psycopg  # noqa: E402

from bench.user_view import UserBench, _ts, load, run_times, write_section  # noqa: E402
from bench.weddings import seed_tail  # noqa: E402
from devstack.airflow_env import RESTORE_TARGET  # noqa: E402

FULL, INCR, PROXIMITY, RESTORE = (
    "backup_daily_full",
    "backup_hourly_incremental",
    "backup_wedding_proximity",
    "emergency_restore",
)
SOURCE_CONN = "wedsync_source"
START, END = "<!-- weddings-user-view:start -->", "<!-- weddings-user-view:end -->"
PEAK = re.compile(r"Peak memory: (\d+) MB \(task process\)")


class WeddingUserBench(UserBench):
    """The stack, its source seeded to ``--weddings``, and the wedding DAG runs timed as the user gets them."""

    stack_args = ("--no-backup",)  # with the files bucket: a wedding's photos are part of its backup

    def __init__(self, args: argparse.Namespace) -> None:
        args.scale = args.full / 80  # devstack.demo.WEDDINGS_PER_UNIT
        super().__init__(args)
        self.runs: dict[str, list[dict[str, Any]]] = {}

    def start(self) -> None:
        print(f"starting the stack with {self.args.full} full weddings in {self.stack.state_dir} ...", flush=True)
        self.stack.start(timeout=1800)
        from devstack.postgres import Cluster

        self.cluster = Cluster(self.stack.state_dir / "pg", port=self.stack.ports["postgres"])
        for dag in self.stack.api.get("/api/v2/dags?limit=1000")["dags"]:
            if not dag["is_paused"]:
                self.stack.api.patch(f"/api/v2/dags/{dag['dag_id']}", {"is_paused": True})
        self._quiet(timed=())  # every DAG paused: each waits for the bench to run it
        self.seeded = self.seed()

    def seed(self) -> dict[str, Any]:
        a, began = self.args, time.monotonic()
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            first = conn.execute("SELECT max(id) FROM weddings").fetchone()[0] + 1  # type: ignore[index]
            seed_tail(conn, first - 1, a.weddings)
            for seq in ("weddings", "guests"):
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('public.{seq}', 'id'), (SELECT max(id) FROM {seq}))"
                )
            today = datetime.now(UTC).date()
            conn.execute(  # --due full weddings within the 7-day window (a quarter on their day or the day before)
                "UPDATE weddings SET wedding_date = CASE WHEN id <= %s THEN %s::date + (id %% 8)::int"
                " ELSE date '2035-01-01' + (id %% 1000)::int END WHERE id < %s",
                (a.due, today, first),
            )
            conn.execute(  # see --files-per-wedding
                "DELETE FROM files f USING (SELECT id, row_number() OVER (PARTITION BY wedding_id ORDER BY id) AS n"
                " FROM files) r WHERE f.id = r.id AND (f.wedding_id > %s OR r.n > %s)",
                (a.due, a.files_per_wedding),
            )
            conn.execute("VACUUM (ANALYZE)")
        info = self.source_info()
        return info | {"weddings": self.count("SELECT count(*) FROM weddings"), "seconds": time.monotonic() - began}

    def count(self, sql: str, params: tuple = ()) -> int:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            return int(conn.execute(sql, params).fetchone()[0])  # type: ignore[index]

    def catalog(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.dsn("backup_catalog"), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    # --- DAG runs --------------------------------------------------------------------------------------------
    def only_unpaused(self, dag_id: str) -> None:
        for dag in (FULL, INCR, PROXIMITY, RESTORE):
            want = dag != dag_id
            self.stack.api.patch(f"/api/v2/dags/{dag}", {"is_paused": want})

    def wait_idle(self, dag_id: str, timeout: float = 1800) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = self.stack.api.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100&state=running&state=queued")
            if not busy["dag_runs"]:
                return
            time.sleep(2)
        raise TimeoutError(f"{dag_id} still has runs after {timeout:.0f} s")

    def measured(self, dag_id: str, run_id: str, label: str) -> dict[str, Any]:
        api = self.stack.api
        run = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        if run["state"] != "success":
            raise RuntimeError(f"{dag_id} run {run_id} ended {run['state']}: see {self.stack.state_dir}/logs")
        tis = api.task_instances(dag_id, run_id)
        if not any(t.get("state") not in ("skipped", None) for t in tis):
            raise RuntimeError(f"{dag_id} run {run_id}: every task skipped (nothing to do?): see its logs")
        times = run_times(tis)
        queued = _ts(run.get("queued_at") or run["start_date"])
        wall = (_ts(run["end_date"]) - queued).total_seconds()  # type: ignore[operator]
        m = {
            "dag_id": dag_id,
            "run_id": run_id,
            "label": label,
            "tasks": times.tasks,
            "seconds": times.seconds,
            "wall": wall,
            "load": load(),
            "peaks": self.peaks(dag_id, run_id),
            "run_type": run.get("run_type"),
        }
        self.runs.setdefault(label, []).append(m)
        print(
            f"{label}: {m['seconds']:.1f} s first task start to last task end, {wall:.1f} s queued to end "
            f"(load {m['load']:.2f}); peak {max(m['peaks'].values(), default=0)} MB",
            flush=True,
        )
        return m

    def peaks(self, dag_id: str, run_id: str) -> dict[str, int]:
        """Each task's largest logged peak memory (MB) of its task process, over its attempts and map indexes."""
        root = self.stack.state_dir / "logs" / "airflow" / f"dag_id={dag_id}" / f"run_id={run_id}"
        out: dict[str, int] = {}
        for log in root.rglob("attempt=*.log"):
            task = next(p for p in log.parts if p.startswith("task_id=")).split("=", 1)[1]
            for mb in PEAK.findall(log.read_text(errors="replace")):
                out[task] = max(out.get(task, 0), int(mb))
        return out

    def trigger(self, dag_id: str, conf: dict[str, Any] | None, label: str) -> dict[str, Any]:
        self.checkpoint()
        run_id = self.stack.api.trigger(dag_id, conf)["dag_run_id"]
        self.stack.api.wait_for_run(dag_id, run_id, timeout=3600)
        return self.measured(dag_id, run_id, label)

    def scheduled(self, dag_id: str, label: str, timeout: float = 180) -> dict[str, Any]:
        """Unpause ``dag_id`` alone and time the run the scheduler makes for it (catchup off: the latest slot);
        when it makes none within ``timeout``, trigger one. A tick right after it finds nothing left and skips:
        the run timed is the first new one that did work."""
        self.checkpoint()
        before = {r["dag_run_id"] for r in self.stack.api.dag_runs(dag_id)}
        self.only_unpaused(dag_id)
        deadline, triggered = time.monotonic() + timeout, False
        while True:
            self.wait_idle(dag_id)
            time.sleep(3)
            new = [r for r in self.stack.api.dag_runs(dag_id) if r["dag_run_id"] not in before]
            if any(r["state"] not in ("success", "failed") for r in new):
                continue  # one started after the wait: wait for it too
            for run in sorted(new, key=lambda r: r.get("queued_at") or r["run_after"]):
                tis = self.stack.api.task_instances(dag_id, run["dag_run_id"])
                if any(t.get("state") not in ("skipped", None) for t in tis):
                    return self.measured(dag_id, run["dag_run_id"], label)
            # none yet, or only runs that found nothing to do (one queued before the set-up finished): the next
            if triggered:
                raise RuntimeError(f"the new runs of {dag_id} all skipped: see {self.stack.state_dir}/logs")
            if time.monotonic() > deadline:
                self.stack.api.trigger(dag_id, None)
                triggered = True

    # --- the scenario ----------------------------------------------------------------------------------------
    def proximity_runs(self) -> None:
        # a run the stack's first start queued (before the bench paused the DAG) may have backed them up already
        self.wait_idle(PROXIMITY)
        self.catalog(
            "UPDATE backup_operations SET pruned_at = now() WHERE backup_type = 'wedding' AND pruned_at IS NULL"
        )
        self.scheduled(PROXIMITY, "proximity")
        for _ in range(self.args.runs - 1):
            since = datetime.now(UTC)
            self.catalog(PRUNE_WEDDING_BACKUPS)  # as if retention had removed them: the same weddings are due again
            self.checkpoint()
            self.stack.api.trigger(PROXIMITY, None)
            time.sleep(5)
            self.wait_idle(PROXIMITY)
            # the run that backed them up: ours, or a scheduled tick that came first (max_active_runs=1)
            rows = self.catalog(
                "SELECT run_id FROM backup_operations WHERE backup_type = 'wedding' AND status = 'completed'"
                " AND started_at >= %s ORDER BY started_at LIMIT 1",
                (since,),
            )
            if not rows:
                raise RuntimeError(f"no completed wedding backup since {since}: see {self.stack.state_dir}/logs")
            self.measured(PROXIMITY, rows[0][0], "proximity")
        for m in self.runs["proximity"]:
            rows = self.catalog(
                "SELECT count(*), count(*) FILTER (WHERE w.phase = 'execution'), sum(w.stored_bytes)"
                " FROM wedding_backups w JOIN backup_operations b USING (backup_id)"
                " WHERE b.run_id = %s AND b.status = 'completed'",
                (m["run_id"],),
            )[0]
            m["weddings"], m["execution"], m["stored_bytes"] = rows[0], rows[1], int(rows[2] or 0)

    def wedding_restores(self) -> None:
        w = "3"  # a due wedding: it has wedding backups
        guests = self.count("SELECT count(*) FROM guests WHERE wedding_id = %s", (int(w),))
        for i in range(self.args.runs):
            with psycopg.connect(self.dsn(), autocommit=True) as conn:  # the damage an operator undoes
                conn.execute("DELETE FROM guests WHERE wedding_id = %s", (int(w),))
                conn.execute(
                    "UPDATE timeline_events SET starts_at = starts_at + interval '1 day' WHERE wedding_id = %s",
                    (int(w),),
                )
            conf = restore_conf(
                SOURCE_CONN, f"bench: wedding restore {i + 1}", scope="wedding-only", wedding_ids=[w], mode="latest"
            )
            m = self.trigger(RESTORE, conf, "wedding restore (latest)")
            m["event_seconds"] = self.event_seconds(m["run_id"])
            back = self.count("SELECT count(*) FROM guests WHERE wedding_id = %s", (int(w),))
            if back != guests:
                raise RuntimeError(f"wedding {w}: {back} guests after the restore, {guests} before the damage")
        self.runs["pg_restore"] = []
        for i in range(self.args.runs):
            t = self.pg_restore(i)
            self.runs["pg_restore"].append({"seconds": t.seconds, "load": t.load})
            print(f"pg_restore -j2 of the whole dump: {t.seconds:.1f} s (load {t.load:.2f})", flush=True)

    def point_in_time(self) -> None:
        # a full-data wedding with no wedding backup: full backup + chain only
        w = str(min(self.args.due + 100, self.args.full))
        guests = self.count("SELECT count(*) FROM guests WHERE wedding_id = %s", (int(w),))
        time.sleep(2)
        t = datetime.now(UTC)
        time.sleep(2)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute("DELETE FROM guests WHERE wedding_id = %s", (int(w),))
        self.scheduled(INCR, "incremental")  # the scheduler's hourly run: it captures the damage too
        self.only_unpaused(RESTORE)
        at = t.isoformat().replace("+00:00", "Z")
        conf = restore_conf(
            SOURCE_CONN,
            "bench: one wedding to a point in time",
            scope="wedding-only",
            wedding_ids=[w],
            mode="point_in_time",
            target_time=at,
        )
        m = self.trigger(RESTORE, conf, "wedding restore (point in time)")
        m["event_seconds"] = self.event_seconds(m["run_id"])
        back = self.count("SELECT count(*) FROM guests WHERE wedding_id = %s", (int(w),))
        if back != guests:
            raise RuntimeError(f"wedding {w}: {back} guests after the point-in-time restore, {guests} at T")
        assert self.cluster is not None
        self.cluster.create_database(RESTORE_TARGET, drop=True)
        conf = restore_conf(
            RESTORE_TARGET, "bench: complete point in time", scope="complete", mode="point_in_time", target_time=at
        )
        m = self.trigger(RESTORE, conf, "complete restore (point in time)")
        m["event_seconds"] = self.event_seconds(m["run_id"])
        self.cluster.psql("-c", f'DROP DATABASE "{RESTORE_TARGET}" WITH (FORCE)')
        self.cluster.create_database(RESTORE_TARGET)

    def event_seconds(self, run_id: str) -> float | None:
        rows = self.catalog(
            "SELECT result->>'seconds', extract(epoch FROM completed_at - started_at) FROM disaster_recovery_events"
            " WHERE dag_id = %s AND run_id = %s",
            (RESTORE, run_id),
        )
        if not rows:
            return None
        recorded, window = rows[0]
        return float(recorded) if recorded is not None else (float(window) if window is not None else None)


PRUNE_WEDDING_BACKUPS = (
    "UPDATE backup_operations SET pruned_at = now() WHERE backup_type = 'wedding' AND pruned_at IS NULL"
)


def restore_conf(target: str, reason: str, **scope: Any) -> dict[str, Any]:
    """An emergency_restore run's conf as the form sends it: not a dry run, confirmed for ``target``."""
    return {**scope, "target_conn_id": target, "dry_run": False, "confirm": f"RESTORE {target}", "reason": reason}


# --- the report ------------------------------------------------------------------------------------------------
def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**NO**"


def _med(ms: list[dict[str, Any]], key: str = "seconds") -> float:
    return statistics.median(m[key] for m in ms if m.get(key) is not None)


def render(args: argparse.Namespace, b: WeddingUserBench, dump_s: float, minutes: float) -> str:
    r, s = b.runs, b.seeded
    prox, wr = r["proximity"], r["wedding restore (latest)"]
    pitr_w, pitr_c = r["wedding restore (point in time)"][0], r["complete restore (point in time)"][0]
    cmd = (
        f".venv/bin/python -m bench.weddings_user_view --weddings {args.weddings} --due {args.due} --runs {args.runs}"
        f" --files-per-wedding {args.files_per_wedding}"
    )
    out = [
        START,
        "## Issue 9 as the user gets it: the wedding DAGs under the real scheduler",
        "",
        f"Generated by `{cmd}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({minutes:.1f} min). The local stack",
        "(`./scripts/run.sh` on free ports, LocalExecutor, every DAG paused but the one timed), demo schema with",
        f"**{s['weddings']:,} weddings** ({args.full:,} with the full demo data set, the rest 5 guests and 3 events",
        f"each; the {args.due} due ones keep {args.files_per_wedding} files each in the files bucket, the other",
        f"files rows are deleted to keep the set-up short), {s['rows']:,} rows, pg_database_size",
        f"{s['bytes'] / 1e6:,.1f} MB. A run is timed from its first task's start to its last task's end (the task",
        "instances' own times) and, as the operator waits for it, from its queueing to its end. Load is the 1-minute",
        "load average at each run's end (2 CPUs).",
        "",
        "### Proximity runs (each over every due wedding, three copies verified)",
        "",
        "| Run | Kind | Weddings (execution phase) | First task -> last task (s) | Queued -> end (s) | load "
        "| Stored per copy |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for i, m in enumerate(prox, 1):
        out.append(
            f"| {i} | {m['run_type']} | {m['weddings']} ({m['execution']}) | {m['seconds']:.1f} | {m['wall']:.1f} | "
            f"{m['load']:.2f} | {m['stored_bytes'] / 1e6:,.1f} MB |"
        )
    med = sorted(prox, key=lambda m: m["seconds"])[(len(prox) - 1) // 2]
    out += [
        "",
        f"Side by side: `pg_dump -Fc` of the whole database (one local file, unencrypted, unverified) {dump_s:.1f} s.",
        "The median proximity run, task by task (start offset from its first task, duration):",
        "",
        "| Task | Starts at (s) | Duration (s) |",
        "|---|---:|---:|",
        *[f"| {name} | {st:.1f} | {d:.1f} |" for name, st, d in med["tasks"]],
        "",
        "### Restores into the live database",
        "",
        "| Restore | Run | Restore's own work (s) | First task -> last task (s) | Queued -> end (s) | load |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, m in enumerate(wr, 1):
        out.append(
            f"| one wedding, from its wedding backup (wedding-only, latest; safety snapshot included) | {i} | "
            f"{m['event_seconds'] or 0:.2f} | {m['seconds']:.1f} | {m['wall']:.1f} | {m['load']:.2f} |"
        )
    for m in (pitr_w, pitr_c):
        what = (
            "one wedding to T from the full backup + chain (wedding-only, point_in_time)"
            if m is pitr_w
            else "complete point-in-time restore to T, into an empty database"
        )
        out.append(
            f"| {what} | 1 | {m['event_seconds'] or 0:.2f} | {m['seconds']:.1f} | {m['wall']:.1f} | {m['load']:.2f} |"
        )
    for i, m in enumerate(r["pg_restore"], 1):
        out.append(
            f"| `pg_restore -j2` of the whole `-Fc` dump into an empty database (baseline) | {i} "
            f"| {m['seconds']:.1f} | | | {m['load']:.2f} |"
        )
    wr_own, wr_run = _med(wr, "event_seconds"), _med(wr)
    wr_med = sorted(wr, key=lambda m: m["seconds"])[(len(wr) - 1) // 2]
    out += [
        "",
        "The median one-wedding restore, task by task (where a DAG run's time goes besides the restore's own work):",
        "",
        "| Task | Starts at (s) | Duration (s) |",
        "|---|---:|---:|",
        *[f"| {name} | {st:.1f} | {d:.1f} |" for name, st, d in wr_med.get("tasks", [])],
        "",
        "Every task's peak memory (its task process, the largest over all the runs above, from the task's",
        "`Peak memory` log line; PostgreSQL backends and client tools not counted):",
        "",
        "| DAG | Task | Peak RSS (MB) |",
        "|---|---|---:|",
    ]
    peaks: dict[tuple[str, str], int] = {}
    for ms in r.values():
        for m in ms:
            for task, mb in m.get("peaks", {}).items():
                peaks[(m["dag_id"], task)] = max(peaks.get((m["dag_id"], task), 0), mb)
    out += [f"| {d} | {t} | {mb} |" for (d, t), mb in sorted(peaks.items())]
    top = max(peaks.values(), default=0)
    out += [
        "",
        "| Target | Measured | Met |",
        "|---|---|---|",
        f"| proximity run over {args.due} due weddings, 3 copies verified, <= 60 s (median of {len(prox)}, first "
        f"task -> last task) | {med['seconds']:.1f} s (queued -> end {med['wall']:.1f} s) "
        f"| {_yes(med['seconds'] <= 60)} |",
        f"| one wedding restored into the live database from its wedding backup, <= 2 s (median of {len(wr)}) | "
        f"restore's own work {wr_own:.2f} s; the whole DAG run {wr_run:.1f} s | restore {_yes(wr_own <= 2)}, "
        f"DAG run {_yes(wr_run <= 2)} |",
        f"| one wedding to a point in time vs a complete point-in-time restore "
        f"| {pitr_w['event_seconds'] or 0:.2f} s vs {pitr_c['event_seconds'] or 0:.2f} s "
        f"(runs {pitr_w['seconds']:.1f} s vs {pitr_c['seconds']:.1f} s) | reported |",
        f"| peak RSS of every task <= 300 MB | {top} MB | {_yes(top <= 300)} |",
        f"| scale >= 200,000 weddings | {s['weddings']:,} | {_yes(s['weddings'] >= 200_000)} |",
        END,
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weddings", type=int, default=200_000)
    p.add_argument("--full", type=int, default=1_000, help="weddings with the full demo data set (and files)")
    p.add_argument("--due", type=int, default=500)
    p.add_argument(
        "--files-per-wedding",
        type=int,
        default=5,
        help="files rows kept per due wedding (the others' rows are deleted): the demo's 30 per wedding would make the "
        "first full backup store 3 copies of 30,000 objects through the emulators, ~10 objects/s on this machine",
    )
    p.add_argument("--runs", type=int, default=3, help="proximity runs and wedding restores (the median counts)")
    p.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the stack's state directory")
    args = p.parse_args(argv)
    began = time.monotonic()
    b = WeddingUserBench(args)
    try:
        b.start()
        print(f"seeded {b.seeded}", flush=True)
        b.scheduled(FULL, "full backup")
        dump = b.pg_dump()
        print(f"pg_dump -Fc: {dump.seconds:.1f} s", flush=True)
        b.proximity_runs()
        b.only_unpaused(RESTORE)
        b.wedding_restores()
        b.point_in_time()
        section = render(args, b, dump.seconds, (time.monotonic() - began) / 60)
        write_section(args.results, section, START, END)
        print(section)
    finally:
        b.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
