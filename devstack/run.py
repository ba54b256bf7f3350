"""The README's "run it" command: the whole stack on this machine, without Docker.

PostgreSQL (demo source, backup_catalog, Airflow metadata, an empty restore_target), S3 (moto server), GCS
(emulator), a local primary directory, then Airflow (api-server with the UI, scheduler, dag-processor,
triggerer; with --executor celery also Redis and Celery workers) with this project's DAGs, and a first full
backup at once. Ctrl-C, SIGTERM or a closed terminal stop everything it started; after a kill -9 the children
stop with it and the next run stops whatever is left first. State lives in the state directory (.stack/) and
is reused by the next run: the databases, the backups on disk, the master key and the ports.

    ./scripts/run.sh [--fresh] [--scale N] [--executor celery] [--state-dir DIR] [--api-port N ...]
    ./scripts/run.sh env        # print the stack's Airflow environment: eval "$(./scripts/run.sh env)"
"""

from __future__ import annotations

import argparse
import base64
import compileall
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from wedsync_backup.catalog import migrate as migrate_catalog

from devstack.airflow_env import (
    ADMIN_USER,
    REPO,
    RESTORE_TARGET,
    StackConfig,
    airflow_bin,
    migrate_metadata,
    sizing,
)
from devstack.api import AirflowApi, ApiError
from devstack.demo import create_demo_schema, has_demo_schema, seed_demo
from devstack.files_seed import seed_files
from devstack.postgres import Cluster
from devstack.procs import Registry, port_holder
from devstack.services import GcsEmulator, MotoServer, RedisServer

DEFAULT_STATE = REPO / ".stack"
# name -> (default port, what listens there). Kept in state.json: the next run uses the same ports.
PORTS = {
    "api": (8080, "Airflow UI and REST API"),
    "postgres": (54329, "PostgreSQL"),
    "s3": (54330, "S3 (moto server)"),
    "gcs": (54331, "GCS (emulator)"),
    "redis": (54332, "Redis (Celery broker)"),
    "logs": (54333, "Airflow log server of the scheduler/workers"),
    "triggerer_logs": (54334, "Airflow log server of the triggerer"),
}
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
FIRST_FULL = "backup_daily_full"
DEFAULT_SCALE = 1.0
FILES_BUCKET = "wedsync-files"
# What the shell needs from the Airflow environment (the rest is the user's own environment).
ENV_PREFIXES = ("AIRFLOW", "WEDSYNC_", "STORAGE_EMULATOR_HOST", "PYTHONPATH")


class StackError(Exception):
    """A problem the user fixes; printed as one message, never a traceback."""


def _say(msg: str) -> None:
    print(f"[wedsync] {msg}", flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="./scripts/run.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", nargs="?", choices=["start", "env"], default="start")
    p.add_argument(
        "--scale", type=float, default=DEFAULT_SCALE, help="demo data scale (1 = 80 weddings, a 21 MB database)"
    )
    p.add_argument("--no-backup", action="store_true", help="do not trigger the first full backup")
    p.add_argument(
        "--no-files", action="store_true", help="no files bucket: the database alone (the files component off)"
    )
    p.add_argument("--fresh", action="store_true", help="throw away the state directory first")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("WEDSYNC_STACK_DIR", DEFAULT_STATE)),
        help="where the stack keeps its state (default .stack; env WEDSYNC_STACK_DIR)",
    )
    p.add_argument("--executor", choices=["local", "celery"], default=os.environ.get("WEDSYNC_STACK_EXECUTOR"))
    p.add_argument("--celery-workers", type=int, default=1, help="Celery workers to start (--executor celery)")
    p.add_argument("--celery-concurrency", type=int, default=None, help="task slots per worker (default: parallelism)")
    p.add_argument(
        "--parallelism",
        type=int,
        default=int(os.environ.get("WEDSYNC_STACK_PARALLELISM", 0)) or None,
        help="Airflow task slots (default 2 per core, at least 4; env WEDSYNC_STACK_PARALLELISM)",
    )
    for name, (default, what) in PORTS.items():
        env = f"WEDSYNC_STACK_{name.upper()}_PORT"
        p.add_argument(
            f"--{name.replace('_', '-')}-port",
            dest=f"{name}_port",
            type=int,
            default=int(os.environ.get(env, 0)) or None,
            help=f"{what} (default {default}, or the port of the last run; env {env})",
        )
    return p


class StackState:
    """state.json in the state directory: ports, executor, which DAGs the stack has unpaused."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "state.json"
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        if "ports" not in data:  # the earlier format may hold a random port an earlier bug chose: not kept
            data = {}
        self.data: dict = data

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))

    def ports(self, args: argparse.Namespace) -> dict[str, int]:
        """A port given now wins; else the last run's; else the default. Never a random one."""
        kept = self.data.get("ports", {})
        ports = {n: getattr(args, f"{n}_port") or int(kept.get(n, d)) for n, (d, _) in PORTS.items()}
        self.data["ports"] = ports
        return ports


def check_ports(ports: dict[str, int], wanted: list[str]) -> None:
    """Each port free, or one message naming who holds it and how to get past it."""
    for name in wanted:
        holder = port_holder(ports[name])
        if holder:
            flag = f"--{name.replace('_', '-')}-port"
            raise StackError(
                f"Port {ports[name]} ({PORTS[name][1]}) is in use by {holder}, which is not part of this stack. "
                f"To fix: stop that process, or give the stack another port once with "
                f"'./scripts/run.sh {flag} N' (it is kept for the next runs)."
            )


def compile_project() -> None:
    """Bytecode for the DAGs and plugins, written now: every task process imports them, and with
    PYTHONDONTWRITEBYTECODE set (or a read-only checkout) Python would compile them again in each one."""
    for folder in ("dags", "plugins", "devstack"):
        compileall.compile_dir(REPO / folder, quiet=1)


def _master_key(state_dir: Path) -> str:
    f = state_dir / "master.key"
    if not f.exists():
        f.write_text(base64.b64encode(os.urandom(32)).decode())
        f.chmod(0o600)
    return f.read_text().strip()


def _write_env(state_dir: Path, env: dict[str, str]) -> None:
    """env.sh (to source) and env.json (for programs): the stack's Airflow environment. Holds the key: 0600."""
    shell = {k: v for k, v in env.items() if k.startswith(ENV_PREFIXES)}
    shell["PATH"] = f"{REPO / '.venv' / 'bin'}:$PATH"
    lines = ['# The local stack\'s Airflow environment: source this file (or eval "$(./scripts/run.sh env)").']
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(shell.items()) if k != "PATH"]
    lines.append(f'export PATH="{shell["PATH"]}"')
    for name, text in (("env.sh", "\n".join(lines) + "\n"), ("env.json", json.dumps(env))):
        f = state_dir / name
        f.touch(mode=0o600)
        f.chmod(0o600)
        f.write_text(text)


def print_env(state_dir: Path) -> int:
    f = state_dir / "env.sh"
    if not f.exists():
        print(f"[wedsync] no stack has been started in {state_dir} yet: run ./scripts/run.sh first", file=sys.stderr)
        return 1
    sys.stdout.write(f.read_text())
    return 0


def _first_full_backup(api: AirflowApi) -> str:
    """Trigger the first full backup as the run the schedule has due, if any, so the scheduler adds none.

    The scheduler creates a DAG's next run only when no run has that logical date yet; a manual run that
    takes the due date therefore is the only full backup, even when the stack was down at 02:00.
    """
    info = api.wait_for_dag(FIRST_FULL)
    due = info.get("next_dagrun_logical_date")
    run_after = info.get("next_dagrun_run_after")
    now = datetime.now(UTC)
    logical = due if due and run_after and datetime.fromisoformat(run_after.replace("Z", "+00:00")) <= now else None
    try:
        run = api.trigger(FIRST_FULL, logical_date=logical)
    except ApiError as e:
        if e.status != 409:
            raise
        return "the scheduled run that was due"
    return run["dag_run_id"]


def _unpause_new_dags(api: AirflowApi, state: StackState) -> list[str]:
    """DAGs are created paused; the stack unpauses each once, after the first full backup is triggered.

    A DAG someone paused later stays paused: only DAGs the stack never unpaused are touched.
    """
    done = set(state.data.get("unpaused", []))
    new = []
    for dag in api.get("/api/v2/dags?limit=1000")["dags"]:
        if dag["dag_id"] in done:
            continue
        if dag["is_paused"]:
            api.patch(f"/api/v2/dags/{dag['dag_id']}", {"is_paused": False})
        new.append(dag["dag_id"])
    if new:
        state.data["unpaused"] = sorted(done | set(new))
        state.save()
    return new


class Launcher:
    """One run of the stack: start in order, watch, stop everything on the way out."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state_dir: Path = args.state_dir.resolve()
        self.registry = Registry(self.state_dir)
        self.cluster: Cluster | None = None
        self.services: list[MotoServer | GcsEmulator | RedisServer] = []

    def stop_leftovers(self) -> None:
        """Whatever an earlier run left (kill -9, closed terminal): its processes, then its PostgreSQL."""
        self.registry.stop_leftovers(_say)
        pg = Cluster(self.state_dir / "pg")
        if (pg.datadir / "postmaster.pid").exists():
            _say("stopping the PostgreSQL cluster an earlier run left running")
            pg.stop()

    def run(self) -> int:
        args = self.args
        if args.fresh and self.state_dir.exists():
            self.stop_leftovers()
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o755)  # the postgres OS user must reach pg/ when we are root
        self.stop_leftovers()
        state = StackState(self.state_dir)
        executor = args.executor or state.data.get("executor") or "local"
        ports = state.ports(args)
        wanted = [n for n in PORTS if n != "redis" or executor == "celery"]
        check_ports(ports, wanted)
        state.data["executor"] = executor
        state.save()
        (self.state_dir / "ready.json").unlink(missing_ok=True)

        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        self.cluster = cluster = Cluster(self.state_dir / "pg", port=ports["postgres"])
        _say(f"PostgreSQL (wal_level=logical) on 127.0.0.1:{ports['postgres']}")
        cluster.start()
        self.registry.spawn(
            "pg-watchdog",
            [
                sys.executable,
                "-m",
                "devstack.watchdog",
                str(os.getpid()),
                str(cluster.bindir / "pg_ctl"),
                str(cluster.datadir),
                *cluster.as_owner(),
            ],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        s3 = MotoServer(ports["s3"])
        gcs = GcsEmulator(ports["gcs"], data_dir=self.state_dir / "gcs")
        self.services = services = [s3, gcs]
        redis = None
        if executor == "celery":
            redis = RedisServer(ports["redis"], data_dir=self.state_dir / "redis")
            services.append(redis)
        for svc in services:
            svc.start()
            self.registry.adopt(svc.label, svc.process)
        _say(f"S3 (moto server) on {s3.endpoint}, GCS (emulator) on {gcs.endpoint}")
        if redis:
            _say(f"Redis (Celery broker) on {redis.url}")
        config = StackConfig(
            home=self.state_dir / "airflow",
            cluster=cluster,
            s3=s3,
            gcs=gcs,
            primary_path=self.state_dir / "backups",
            master_key=_master_key(self.state_dir),
            executor="CeleryExecutor" if executor == "celery" else "LocalExecutor",
            broker_url=redis.url if redis else None,
            files_bucket=None if args.no_files else FILES_BUCKET,
        )
        config.create_databases()
        config.create_buckets()
        applied = migrate_catalog(cluster.dsn(config.catalog_db))
        _say(f"tracking tables in backup_catalog: {'applied ' + ', '.join(applied) if applied else 'up to date'}")
        source_dsn = cluster.dsn(config.source_db)
        if not has_demo_schema(source_dsn):
            _say(f"seeding the demo wedding database (scale {args.scale}) ...")
            create_demo_schema(source_dsn)
            seed_demo(source_dsn, args.scale)
        bucket = config.files_bucket
        if bucket and not config.s3.client().list_objects_v2(Bucket=bucket, MaxKeys=1).get("Contents"):
            _say(f"seeding the files bucket {bucket} (a small JPEG, PNG or PDF per files row) ...")
            _say(f"  {seed_files(source_dsn, config.s3.client(), bucket)} objects")
        compile_project()
        url = f"http://127.0.0.1:{ports['api']}"
        env = config.env()
        env.update(sizing(parallelism=args.parallelism))
        env.update(
            AIRFLOW__API__PORT=str(ports["api"]),
            AIRFLOW__API__BASE_URL=url,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{url}/execution/",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(logs / "airflow"),
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(ports["logs"]),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(ports["triggerer_logs"]),
            WEDSYNC_RETRY_DELAY_SECONDS="30",
        )
        _write_env(self.state_dir, env)
        self._migrate_metadata(config, env, state)
        for component in AIRFLOW_COMPONENTS:
            cmd = [airflow_bin(), component]
            if component == "api-server":
                cmd += ["--port", str(ports["api"]), "--host", "127.0.0.1"]
            with open(logs / f"{component}.log", "ab") as log:
                self.registry.spawn(component, cmd, env=env, log=log)
        if executor == "celery":
            self._start_workers(env, logs)
        api = AirflowApi(url, ADMIN_USER, config.admin_password)
        deadline = time.monotonic() + 300
        while not api.healthy():
            if proc := self.registry.exited():
                name = next(r.name for r in self.registry.records if r.pid == proc.pid)
                raise StackError(f"{name} exited ({proc.returncode}) while the stack was starting; see {logs}")
            if time.monotonic() > deadline:
                raise StackError(f"the api-server did not come up; see {logs / 'api-server.log'}")
            time.sleep(1)
        first = "not triggered (--no-backup)" if args.no_backup else _first_full_backup(api)
        _unpause_new_dags(api, state)
        self._tell(config, url, logs, first)
        (self.state_dir / "ready.json").write_text(json.dumps({"pid": os.getpid(), "first_full_run": first}))
        return self._watch(api, state, logs)

    def _migrate_metadata(self, config: StackConfig, env: dict[str, str], state: StackState) -> None:
        """`airflow db migrate`, skipped (it takes half a minute) when this Airflow already migrated this database."""
        from importlib.metadata import version

        try:
            revision = config.cluster.psql("-Atc", "SELECT version_num FROM alembic_version", dbname=config.airflow_db)
        except RuntimeError:
            revision = ""
        stamp = {"airflow": version("apache-airflow"), "revision": revision.strip()}
        if revision and state.data.get("metadata_migrated") == stamp:
            return
        _say("migrating the Airflow metadata database ...")
        migrate_metadata(env)
        stamp["revision"] = config.cluster.psql(
            "-Atc", "SELECT version_num FROM alembic_version", dbname=config.airflow_db
        )
        state.data["metadata_migrated"] = {**stamp, "revision": stamp["revision"].strip()}
        state.save()

    def _start_workers(self, env: dict[str, str], logs: Path) -> None:
        """Celery workers as separate machines would run them: each its own home and working directory."""
        for i in range(1, self.args.celery_workers + 1):
            home = self.state_dir / "workers" / f"worker{i}"
            home.mkdir(parents=True, exist_ok=True)
            wenv = {
                **env,
                "AIRFLOW_HOME": str(home),
                "WEDSYNC_WORKER_NAME": f"worker{i}",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.worker_identity.hostname",
            }
            cmd = [airflow_bin(), "celery", "worker", "--celery-hostname", f"worker{i}@%h", "--skip-serve-logs"]
            if self.args.celery_concurrency:
                cmd += ["--concurrency", str(self.args.celery_concurrency)]
            with open(logs / f"celery-worker{i}.log", "ab") as log:
                self.registry.spawn(f"celery-worker{i}", cmd, env=wenv, cwd=home, log=log)

    def _tell(self, config: StackConfig, url: str, logs: Path, first: str) -> None:
        c = config.cluster
        _say(f"Airflow UI: {url}   login: {ADMIN_USER} / {config.admin_password}")
        _say(f"first full backup: {first}")
        _say(f'demo database:  {c.url(config.source_db)}   (psql "{c.url(config.source_db)}")')
        _say(f"restore into:   {c.url(RESTORE_TARGET)}   (empty; Airflow connection '{RESTORE_TARGET}')")
        _say(f"backups on disk: {config.primary_path}   logs: {logs}")
        _say('Airflow CLI in another shell: eval "$(./scripts/run.sh env)"   then e.g.: airflow dags list')
        _say("running; press Ctrl-C to stop everything")

    def _watch(self, api: AirflowApi, state: StackState, logs: Path) -> int:
        last_check = time.monotonic()
        while True:
            if proc := self.registry.exited():
                name = next(r.name for r in self.registry.records if r.pid == proc.pid)
                _say(f"{name} exited ({proc.returncode}); see {logs}; stopping the stack")
                return 1
            if time.monotonic() - last_check > 15:  # DAG files added while running
                last_check = time.monotonic()
                with contextlib.suppress(OSError, ApiError):
                    _unpause_new_dags(api, state)
            time.sleep(1)

    def shutdown(self) -> None:
        if not self.registry.popens and self.cluster is None:
            return  # nothing was started
        _say("stopping everything this run started ...")
        self.registry.stop_all(last=("pg-watchdog",))  # the watchdog stops PostgreSQL last
        for svc in self.services:
            svc.stop()  # already stopped with its group; this removes its log
        if self.cluster is not None:
            self.cluster.stop()
        _say("stopped")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "env":
        return print_env(args.state_dir.resolve())
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a plain kill or a closed terminal: stop cleanly
        signal.signal(sig, _interrupt)
    launcher = Launcher(args)
    try:
        return launcher.run()
    except KeyboardInterrupt:
        return 0
    except StackError as e:
        _say(str(e))
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        launcher.shutdown()


if __name__ == "__main__":
    sys.exit(main())
