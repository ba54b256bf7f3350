"""Where a one-wedding restore's time goes (issue 9): its phases, its statements and round trips.

``python -m bench.partial_restore_phases setup --weddings 20000 --state /tmp/prp`` builds a throwaway cluster,
moto (S3) and the GCS emulator, seeds the demo schema as bench/weddings.py does, takes a full backup and a
wedding backup of wedding 3, writes ``<state>/config.json`` and keeps the services up until interrupted.
``python -m bench.partial_restore_phases measure --state /tmp/prp --runs 5`` then damages wedding 3 (its guests
deleted, its timeline moved, as bench/weddings_user_view.py does) and restores it (wedding-only, latest,
dry_run false: ``restore.plan`` then ``restore.restore``) ``--runs`` times in one process, printing per run the
plan and restore times, the time of each phase, and every statement sent to the live database (count, time,
the slowest). Run ``measure`` again after a code change: each run is a fresh process over the same data.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

import psycopg  # noqa: E402
from wedsync_backup.catalog import Catalog  # noqa: E402
from wedsync_backup.commands import restore  # noqa: E402
from wedsync_backup.commands.resources import Resources, RunRef  # noqa: E402
from wedsync_backup.commands.restore import RestoreRequest  # noqa: E402
from wedsync_backup.crypto import Keyring  # noqa: E402
from wedsync_backup.pg import PgTarget  # noqa: E402
from wedsync_backup.policy import load_policy  # noqa: E402

from bench.stages import build_storage  # noqa: E402
from bench.weddings import CATALOG_DB, SOURCE_DB  # noqa: E402

W = "3"
PHASES = {  # module -> functions timed as phases
    "wedsync_backup.commands.partial_restore": [
        "choose_rows", "_scope", "refuse_unknown", "stage_wedding_backup", "_impact", "_users", "_lock",
        "_compare", "disable_user_triggers", "insert_missing", "delete_rows", "update_rows", "insert_rows",
        "take_safety_snapshot", "bump_sequences_in", "restore_triggers", "check_snapshot_fits",
    ],
    "wedsync_backup.commands.restore": ["try_catalog", "refuse_damaged_copy"],
    "wedsync_backup.partial.snapshot": ["export_rows", "exported_snapshot", "_wedding_objects"],
    "wedsync_backup.commands.backup": ["begin", "replicate", "verify", "commit"],
}  # fmt: skip


def _resources(cfg: dict[str, Any]) -> Resources:
    ring = Keyring(base64.b64decode(cfg["master_key"]))
    return Resources(
        policy=load_policy(env={}),
        open_storage=lambda t: build_storage(cfg, t.name),
        open_catalog=lambda: Catalog(f"host=127.0.0.1 port={cfg['port']} user={cfg['user']} dbname={CATALOG_DB}"),
        open_database=lambda conn_id, role: PgTarget(port=cfg["port"], dbname=SOURCE_DB, label=conn_id),
        open_keyring=lambda conn_id: ring,
    )


def _run(dag_id: str) -> RunRef:
    return RunRef(dag_id, f"manual__{uuid.uuid4().hex[:8]}", datetime.now(UTC), triggered_by="bench")


def setup(args: argparse.Namespace) -> None:
    from wedsync_backup.commands import wedding_backup

    from bench.partial_restore import full_backup
    from bench.weddings import WeddingBench

    state = Path(args.state)
    b = WeddingBench(argparse.Namespace(weddings=args.weddings, full=args.full, due=0, work=str(state), keep=True))
    b.start()
    os.environ.update(b.gcs.env())
    try:
        print(f"seeded {b.seed(datetime.now(UTC))}", flush=True)
        cfg = {
            "port": b.cluster.port,
            "user": b.cluster.user,
            "master_key": base64.b64encode(os.urandom(32)).decode(),
            "primary_dir": str(state / "primary"),
            "s3_endpoint": b.s3.endpoint,
            "s3_bucket": "wedsync-bench-s3",
            "gcs_bucket": "wedsync-bench-gcs",
            "gcs_env": b.gcs.env(),
        }
        res = _resources(cfg)
        Catalog(f"host=127.0.0.1 port={cfg['port']} user={cfg['user']} dbname={CATALOG_DB}").migrate()
        print("full backup", full_backup(res), flush=True)
        print("wedding backup", wedding_backup.backup_weddings(res, _run("backup_wedding_now"), wedding_ids=[W]))
        (state / "config.json").write_text(json.dumps(cfg))
        print(f"ready: {state / 'config.json'}", flush=True)
        while True:
            time.sleep(60)
    finally:
        b.stop()


class Trace:
    """Every statement of the process (its database, text and time), and the phases' times."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, str, float]] = []
        self.phases: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def install(self) -> None:
        execute, copy, commit = psycopg.Cursor.execute, psycopg.Cursor.copy, psycopg.Connection.commit
        trace = self

        def timed_execute(cur: psycopg.Cursor, query: Any, *a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return execute(cur, query, *a, **kw)
            finally:
                text = query if isinstance(query, str) else query.as_string(cur.connection)
                trace.statements.append((cur.connection.info.dbname, text, time.perf_counter() - t))

        def timed_commit(conn: psycopg.Connection) -> Any:
            t = time.perf_counter()
            try:
                return commit(conn)
            finally:
                trace.statements.append((conn.info.dbname, "COMMIT", time.perf_counter() - t))

        def counted_copy(cur: psycopg.Cursor, query: Any, *a: Any, **kw: Any) -> Any:
            text = query if isinstance(query, str) else query.as_string(cur.connection)
            trace.statements.append((cur.connection.info.dbname, "COPY* " + text, 0.0))
            return copy(cur, query, *a, **kw)

        psycopg.Cursor.execute = timed_execute  # type: ignore[method-assign]
        psycopg.Cursor.copy = counted_copy  # type: ignore[method-assign]
        psycopg.Connection.commit = timed_commit  # type: ignore[method-assign]
        import importlib

        for module, names in PHASES.items():
            mod = importlib.import_module(module)
            for name in names:
                if hasattr(mod, name):
                    label = name if module.endswith("partial_restore") else f"{module.rsplit('.', 1)[1]}.{name}"
                    setattr(mod, name, self._phase(label, getattr(mod, name)))

    def _phase(self, name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.phases[name] += time.perf_counter() - t
                self.calls[name] += 1

        return wrapper

    def reset(self) -> None:
        self.statements.clear()
        self.phases.clear()
        self.calls.clear()


def _burn(seconds: float) -> None:
    """Pure-Python work for ``seconds`` (as imports are): it holds the GIL but for the switch interval."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(i * i for i in range(2000))


def measure(args: argparse.Namespace) -> None:
    cfg = json.loads((Path(args.state) / "config.json").read_text())
    os.environ.update(cfg["gcs_env"])
    res = _resources(cfg)
    if args.switch:
        sys.setswitchinterval(args.switch)
    trace = Trace()
    trace.install()
    dsn = f"host=127.0.0.1 port={cfg['port']} user={cfg['user']} dbname={SOURCE_DB}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        guests = conn.execute("SELECT count(*) FROM guests WHERE wedding_id = %s", (int(W),)).fetchone()[0]
    for i in range(args.runs):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM guests WHERE wedding_id = %s", (int(W),))
            conn.execute(
                "UPDATE timeline_events SET starts_at = starts_at + interval '1 day' WHERE wedding_id = %s", (int(W),)
            )
        trace.reset()
        req = RestoreRequest(
            "wedsync_source", dry_run=False, confirm="RESTORE wedsync_source", reason="bench",
            scope="wedding-only", wedding_ids=[W], mode="latest",
        )  # fmt: skip
        run = _run("emergency_restore")
        t0 = time.perf_counter()
        planned = restore.plan(res, req, run)
        t1 = time.perf_counter()
        plan_statements = list(trace.statements)
        trace.statements.clear()
        if args.burn:  # what a task's background storage build does to the restore's thread: hold the GIL
            threading.Thread(target=_burn, args=(args.burn,), daemon=True).start()
        done = restore.restore(res, req, planned.plan, run, event_id=planned.event_id, retry=False)
        t2 = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            back = conn.execute("SELECT count(*) FROM guests WHERE wedding_id = %s", (int(W),)).fetchone()[0]
        assert back == guests, (back, guests)
        live = [s for s in trace.statements if s[0] == SOURCE_DB]
        print(
            f"run {i + 1}: plan {t1 - t0:.3f} s ({len(plan_statements)} statements), restore {t2 - t1:.3f} s "
            f"(own {done['seconds']}), live-db statements {len(live)} in {sum(s[2] for s in live):.3f} s, "
            f"all {len(trace.statements)}; rows changed {done.get('rows_changed')}",
            flush=True,
        )
        print("   phases: " + ", ".join(f"{k} {v:.3f}x{trace.calls[k]}" for k, v in sorted(trace.phases.items())))
        if args.verbose and i == args.runs - 1:
            by_db = Counter(s[0] for s in trace.statements)
            print(f"   statements by database: {dict(by_db)}")
            kinds = Counter(s[1].split()[0].upper() for s in live)
            print(f"   live statement kinds: {dict(kinds)}")
            for db, text, secs in sorted(trace.statements, key=lambda s: -s[2])[: args.top]:
                print(f"   {secs * 1000:7.1f} ms {db}: {' '.join(text.split())[:240]}")
            if args.dump:
                Path(args.dump).write_text(
                    "\n".join(f"{s[2] * 1000:.2f}\t{s[0]}\t{' '.join(s[1].split())}" for s in trace.statements)
                )
                Path(args.dump + ".plan").write_text(
                    "\n".join(f"{s[2] * 1000:.2f}\t{s[0]}\t{' '.join(s[1].split())}" for s in plan_statements)
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--weddings", type=int, default=20_000)
    s.add_argument("--full", type=int, default=1_000)
    s.add_argument("--state", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--state", required=True)
    m.add_argument("--runs", type=int, default=5)
    m.add_argument("--top", type=int, default=25)
    m.add_argument("--verbose", action="store_true")
    m.add_argument("--switch", type=float, help="sys.setswitchinterval (seconds) for the run")
    m.add_argument("--burn", type=float, default=0.0, help="a thread burning CPU this long beside each restore")
    m.add_argument("--dump", help="write every statement of the last run (ms, database, text) to this file")
    args = p.parse_args(argv)
    setup(args) if args.cmd == "setup" else measure(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
