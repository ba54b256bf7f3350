"""Side-by-side benchmark: our full backup and restore vs pg_dump / pg_restore, on one generated database.

    .venv/bin/python -m bench.run_bench --size-mb 1600

Starts a throwaway PostgreSQL cluster, a moto S3 server and a GCS emulator, seeds the demo database, then
times (wall, stored size, peak RSS) ``pg_dump -Fc``, ``pg_dump -Fd -j2``, our full backup (each DAG stage
as its own process) and the three restores, checks row-count fidelity of our restore, and writes a
markdown report to stdout and bench/RESULTS.md. Everything it started is stopped and bench/work removed
unless --keep.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

import psycopg  # noqa: E402
from wedsync_backup.logical.slot import advance_slot, drop_slot, slot_name_for  # noqa: E402
from wedsync_backup.pg import PgTarget, find_tool  # noqa: E402

from bench.incremental import PgBackRest, PgBackRestUnavailable, apply_workload, content_digest  # noqa: E402
from bench.report import Report, render  # noqa: E402
from bench.report_incremental import IncrementalRun  # noqa: E402
from bench.user_view import write_section  # noqa: E402
from devstack.demo import create_demo_schema, scale_for_megabytes, seed_demo  # noqa: E402
from devstack.postgres import Cluster  # noqa: E402
from devstack.services import GcsEmulator, MotoServer  # noqa: E402

SOURCE_DB = "wedsync"
PG_SETTINGS = {"shared_buffers": "512MB", "maintenance_work_mem": "256MB", "max_wal_size": "4GB"}
BACKUP_ID = "full-20260101T020000Z-bench000"
INC_ID = "incremental-20260101T031500Z-bench001"
# archive_mode needs a restart, so it is on from the start; archiving is a no-op (ALTER SYSTEM, so that a later
# ALTER SYSTEM can hand it to pgBackRest: a -c on the command line would win over both) until pgBackRest's full.
ARCHIVE_SETTINGS = {"archive_mode": "on"}
NOOP_ARCHIVE = "/bin/true"
START, END = "<!-- run-bench:start -->", "<!-- run-bench:end -->"  # its section of the results file


@dataclass
class Measured:
    """One process (or a group run in parallel): wall seconds and peak RSS (KiB, from os.wait4)."""

    name: str
    seconds: float
    peak_rss_kb: int
    result: dict[str, Any] = field(default_factory=dict)
    parts: list[Measured] = field(default_factory=list)


def run_parallel(jobs: Sequence[tuple[str, list[str], dict[str, str]]], logdir: Path) -> list[Measured]:
    """Start every job at once; reap each with wait4 so its own peak RSS (and its children's) is known."""
    started = time.monotonic()
    procs = []
    for name, cmd, env in jobs:
        log = open(logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        procs.append((name, subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=log), log))
    out: dict[str, Measured] = {}
    while len(out) < len(procs):
        for name, proc, log in procs:
            if name in out:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            log.close()
            out[name] = Measured(name, time.monotonic() - started, int(usage.ru_maxrss))
            if proc.returncode != 0:
                tail = (logdir / f"{name}.log").read_text(errors="replace")[-3000:]
                for _, other, _ in procs:
                    if other.poll() is None:
                        other.kill()
                raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{tail}")
        time.sleep(0.02)
    return [out[name] for name, _, _ in jobs]


def run_one(name: str, cmd: list[str], env: dict[str, str], logdir: Path) -> Measured:
    return run_parallel([(name, cmd, env)], logdir)[0]


def group(name: str, parts: list[Measured]) -> Measured:
    return Measured(name, max(p.seconds for p in parts), max(p.peak_rss_kb for p in parts), parts=parts)


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work).resolve()
        self.logs = self.work / "logs"
        self.cluster: Cluster | None = None
        self.s3: MotoServer | None = None
        self.gcs: GcsEmulator | None = None
        self.cfg_path = self.work / "stage-config.json"
        self.inc_cfg_path = self.work / "stage-config-incremental.json"
        self.backrest: PgBackRest | None = None
        self.settings = {**PG_SETTINGS, **(ARCHIVE_SETTINGS if args.incremental else {})}
        self.shown_settings = dict(self.settings)
        if args.incremental:
            self.shown_settings["archive_command"] = f"{NOOP_ARCHIVE} (pgBackRest archive-push from its full on)"

    # --- set-up ----------------------------------------------------------------------------------
    def start(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.cluster = Cluster(self.work / "pg" / "data", settings=dict(self.settings)).start()
        if self.args.incremental:
            self.sql("postgres", f"ALTER SYSTEM SET archive_command = '{NOOP_ARCHIVE}'")
            self.sql("postgres", "SELECT pg_reload_conf()")
        self.s3 = MotoServer().start()
        self.gcs = GcsEmulator().start()
        self.s3.create_bucket("wedsync-bench-s3")
        self.gcs.create_bucket("wedsync-bench-gcs")
        cfg = {
            "port": self.cluster.port,
            "source_db": SOURCE_DB,
            "restore_db": "restore_ours",
            "backup_id": BACKUP_ID,
            "master_key": base64.b64encode(os.urandom(32)).decode(),
            "primary_dir": str(self.work / "primary"),
            "s3_endpoint": self.s3.endpoint,
            "s3_bucket": "wedsync-bench-s3",
            "gcs_bucket": "wedsync-bench-gcs",
            "slot": slot_name_for(BACKUP_ID) if self.args.incremental else None,
        }
        self.cfg_path.write_text(json.dumps(cfg))
        self.stage_env = {**os.environ, **self.gcs.env()}

    def stop(self) -> None:
        for svc in (self.s3, self.gcs):
            if svc is not None:
                svc.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def target(self, dbname: str) -> PgTarget:
        assert self.cluster is not None
        return PgTarget(port=self.cluster.port, dbname=dbname, label=dbname)

    def sql(self, dbname: str, statement: str) -> list[tuple[Any, ...]]:
        with self.target(dbname).connect(autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def seed(self) -> dict[str, Any]:
        self.sql("postgres", f'CREATE DATABASE "{SOURCE_DB}"')
        dsn = self.target(SOURCE_DB).conninfo()
        create_demo_schema(dsn)
        t = time.monotonic()
        res = seed_demo(dsn, scale_for_megabytes(self.args.size_mb), workers=2)
        # Like a long-lived production database: hint bits set, visibility map and statistics current.
        self.sql(SOURCE_DB, "VACUUM (ANALYZE)")
        size = self.sql(SOURCE_DB, "SELECT pg_database_size(current_database())")[0][0]
        return {
            "weddings": res.weddings,
            "scale": res.scale,
            "seed_seconds": time.monotonic() - t,
            "database_bytes": int(size),
        }

    def checkpoint(self) -> None:
        self.sql("postgres", "CHECKPOINT")

    # --- contenders ------------------------------------------------------------------------------
    def pg_tool(self, name: str, args: list[str], dbname: str) -> Measured:
        major = int(self.sql("postgres", "SHOW server_version_num")[0][0]) // 10000
        cmd = [str(find_tool(name, major)), *args]
        self.checkpoint()
        return run_one(f"{name} {' '.join(args[:2])}", cmd, self.target(dbname).env(), self.logs)

    def stage(
        self, stage: str, target: str | None = None, *, inc: bool = False
    ) -> tuple[str, list[str], dict[str, str]]:
        name = ("inc-" if inc else "") + (f"{stage}-{target}" if target else stage)
        out = self.work / f"{name}.json"
        cfg = self.inc_cfg_path if inc else self.cfg_path
        cmd = [sys.executable, "-m", "bench.stages", stage, str(cfg), str(out)]
        return name, [*cmd, *([target] if target else [])], self.stage_env

    def stage_results(self, m: Measured) -> Measured:
        for p in m.parts or [m]:
            p.result = json.loads((self.work / f"{p.name}.json").read_text())
        return m

    def our_backup(self, *, inc: bool = False) -> list[Measured]:
        """The DAG's stages: export (or, for the incremental, capture) -> replicate x2 -> verify x3 -> commit."""
        self.checkpoint()
        first = "capture" if inc else "export"
        export = self.stage_results(run_one(*self.stage(first, inc=inc), self.logs))
        replicate = self.stage_results(
            group(
                "replicate S3 || GCS",
                run_parallel(
                    [self.stage("replicate", "secondary", inc=inc), self.stage("replicate", "offsite", inc=inc)],
                    self.logs,
                ),
            )
        )
        verify = self.stage_results(
            group(
                "verify x3 (parallel)",
                run_parallel(
                    [self.stage("verify", t, inc=inc) for t in ("primary", "secondary", "offsite")], self.logs
                ),
            )
        )
        commit = self.stage_results(run_one(*self.stage("commit", inc=inc), self.logs))
        return [export, replicate, verify, commit]

    # --- the incremental tier --------------------------------------------------------------------
    def backrest_full(self, inc: IncrementalRun) -> None:
        """Hand WAL archiving to pgBackRest and take its full backup; any failure is recorded, not raised."""
        assert self.cluster is not None
        br = PgBackRest(self.work, self.cluster.datadir, self.cluster.port, self.cluster.socket_dir)
        try:
            br.configure()
            self.sql("postgres", f"ALTER SYSTEM SET archive_command = '{br.archive_command()}'")
            self.sql("postgres", "SELECT pg_reload_conf()")
            time.sleep(1)
            br.run("stanza-create")
            br.run("check")
            inc.backrest_version = br.version()
            self.checkpoint()
            inc.backrest_full = br.backup("full", repo=1)
            inc.backrest_block_full = br.backup("full", repo=2)
            self.backrest = br
        except PgBackRestUnavailable as e:
            inc.backrest_skipped = str(e)
            self.sql("postgres", f"ALTER SYSTEM SET archive_command = '{NOOP_ARCHIVE}'")
            self.sql("postgres", "SELECT pg_reload_conf()")

    def incremental(self) -> IncrementalRun:
        """After our full (which created the chain's slot): pgBackRest full, the changes, our incremental,
        pgBackRest incr. The slot is advanced (as release_slot does) and then dropped: the bench needs no
        further incremental, and a slot would keep every later restore's WAL on disk."""
        inc = IncrementalRun()
        self.backrest_full(inc)
        if self.backrest:
            f, fb = inc.backrest_full, inc.backrest_block_full
            print(f"pgBackRest full: {f.seconds:.1f} s, block: {fb.seconds:.1f} s", flush=True)  # type: ignore[union-attr]
        inc.workload = apply_workload(self.target(SOURCE_DB))
        print(
            f"changes: {sum(inc.workload.updated.values()):,} updated, {sum(inc.workload.deleted.values()):,} "
            f"deleted in {inc.workload.seconds:.1f} s",
            flush=True,
        )
        cfg = json.loads(self.cfg_path.read_text())
        cfg.update(backup_id=INC_ID, full_id=BACKUP_ID, until=inc.workload.until, restore_db="restore_pitr")
        self.inc_cfg_path.write_text(json.dumps(cfg))
        inc.stages = self.our_backup(inc=True)
        print("incremental: " + ", ".join(f"{s.name} {s.seconds:.1f} s" for s in inc.stages), flush=True)
        src = self.target(SOURCE_DB)
        advance_slot(src, cfg["slot"], inc.stages[0].result["end_lsn"])
        drop_slot(src, cfg["slot"])
        if self.backrest:
            try:
                self.checkpoint()
                inc.backrest_incr = self.backrest.backup("incr", repo=1)
                self.checkpoint()
                inc.backrest_block_incr = self.backrest.backup("incr", repo=2)
                inc.backrest_archive_bytes = self.backrest.archive_bytes()
                print(f"pgBackRest incr: {inc.backrest_incr.seconds:.1f} s", flush=True)
            except PgBackRestUnavailable as e:
                inc.backrest_skipped = str(e)
        return inc

    def pitr(self, inc: IncrementalRun) -> None:
        self.sql("postgres", 'CREATE DATABASE "restore_pitr"')
        self.checkpoint()
        inc.pitr = self.stage_results(run_one(*self.stage("pitr", "primary", inc=True), self.logs))
        print(f"PITR restore: {inc.pitr.seconds:.1f} s {inc.pitr.result}", flush=True)
        t = time.monotonic()
        inc.source_digest = content_digest(self.target(SOURCE_DB))
        inc.pitr_digest = content_digest(self.target("restore_pitr"))
        inc.digest_seconds = time.monotonic() - t

    def our_restore(self) -> Measured:
        self.sql("postgres", 'CREATE DATABASE "restore_ours"')
        self.checkpoint()
        return self.stage_results(run_one(*self.stage("restore", "primary"), self.logs))

    def pg_restore(self, dbname: str, source: Path, fmt: str) -> Measured:
        self.sql("postgres", f'CREATE DATABASE "{dbname}"')
        m = self.pg_tool("pg_restore", ["-j2", f"--format={fmt}", "--exit-on-error", "-d", dbname, str(source)], dbname)
        m.name = f"pg_restore -j2 (from -F{fmt[0]})"
        # Measured: drop it now, or autovacuum of its freshly loaded tables would slow the next contender.
        self.sql("postgres", f'DROP DATABASE "{dbname}"')
        return m

    # --- fidelity --------------------------------------------------------------------------------
    def row_counts(self, dbname: str) -> dict[str, int]:
        tables = self.sql(
            dbname,
            """
            SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1""",
        )
        with self.target(dbname).connect(autocommit=True) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM ONLY {t}").fetchone()[0] for (t,) in tables}

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> Report:
        started = datetime.now(UTC)
        self.start()
        print(f"cluster on port {self.cluster.port}; seeding ~{self.args.size_mb:g} MB ...", flush=True)  # type: ignore[union-attr]
        seed = self.seed()
        print(f"seeded {seed['database_bytes'] / 2**20:.0f} MB in {seed['seed_seconds']:.0f} s", flush=True)
        fc, fd = self.work / "dump.fc", self.work / "dump.d"
        dump_fc = self.pg_tool("pg_dump", ["-Fc", "-f", str(fc)], SOURCE_DB)
        dump_fc.name, dump_fc.result = "pg_dump -Fc (one local file)", {"stored_bytes": tree_bytes(fc)}
        print(f"pg_dump -Fc: {dump_fc.seconds:.1f} s", flush=True)
        dump_fd = self.pg_tool("pg_dump", ["-Fd", "-j2", "-f", str(fd)], SOURCE_DB)
        dump_fd.name, dump_fd.result = "pg_dump -Fd -j2", {"stored_bytes": tree_bytes(fd)}
        print(f"pg_dump -Fd -j2: {dump_fd.seconds:.1f} s", flush=True)
        stages = self.our_backup()
        print("ours: " + ", ".join(f"{s.name} {s.seconds:.1f} s" for s in stages), flush=True)
        src_counts = self.row_counts(SOURCE_DB)  # what the full holds (before any incremental change)
        inc = self.incremental() if self.args.incremental else None
        rest_fd = self.pg_restore("restore_fd", fd, "directory")
        print(f"pg_restore -j2 (-Fd): {rest_fd.seconds:.1f} s", flush=True)
        rest_fc = self.pg_restore("restore_fc", fc, "custom")
        print(f"pg_restore -j2 (-Fc): {rest_fc.seconds:.1f} s", flush=True)
        rest_ours = self.our_restore()
        print(f"our restore: {rest_ours.seconds:.1f} s", flush=True)
        our_counts = self.row_counts("restore_ours")
        if inc is not None:
            # Measured: drop it now, or autovacuum of its freshly loaded tables would slow the PITR restore.
            self.sql("postgres", 'DROP DATABASE "restore_ours"')
            self.pitr(inc)
        versions = {
            "server": self.sql("postgres", "SELECT version()")[0][0],
            "pg_dump": subprocess.run(
                [str(find_tool("pg_dump", 15)), "--version"], capture_output=True, text=True
            ).stdout.strip(),
        }
        return Report(
            command=self.args.command,
            started=started,
            finished=datetime.now(UTC),
            machine=machine(),
            versions=versions,
            seed=seed,
            dump_fc=dump_fc,
            dump_fd=dump_fd,
            stages=stages,
            restore_fd=rest_fd,
            restore_fc=rest_fc,
            restore_ours=rest_ours,
            source_counts=src_counts,
            restored_counts=our_counts,
            settings=self.shown_settings,
            incremental=inc,
        )


def machine() -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "nproc": str(os.cpu_count()),
        "ram": f"{mem_kb / 2**20:.1f} GiB",
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run_bench", description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=1600, help="target pg_database_size of the source (MB)")
    p.add_argument("--work", default=str(REPO_ROOT / "bench" / "work"), help="scratch directory")
    p.add_argument("--results", default=str(REPO_ROOT / "bench" / "RESULTS.md"), help="report file ('' = none)")
    p.add_argument("--keep", action="store_true", help="keep bench/work (dumps, backup, logs) afterwards")
    p.add_argument(
        "--no-incremental",
        dest="incremental",
        action="store_false",
        help="skip the incremental tier (changes, incremental, pgBackRest, point-in-time restore)",
    )
    args = p.parse_args(argv)
    given = list(argv if argv is not None else sys.argv[1:])
    args.command = ".venv/bin/python -m bench.run_bench " + shlex.join(given)
    bench = Bench(args)
    try:
        report = bench.run()
    finally:
        bench.stop()
    text = render(report)
    print(text)
    if args.results:  # its own section only: the other benches' sections in the file stay as they are
        write_section(Path(args.results), f"{START}\n{text.rstrip()}\n{END}\n\n", START, END)
    return 0 if report.fidelity_ok and (report.incremental is None or report.incremental.fidelity_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
