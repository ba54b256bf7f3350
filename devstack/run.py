"""The README's "run it" command: the whole stack on this machine, without Docker.

PostgreSQL (demo source, backup_catalog, Airflow metadata), S3 (moto server), GCS (emulator), a local primary
directory, then Airflow (api-server with the UI, scheduler, dag-processor, triggerer) with this project's DAGs,
and a first full backup at once. Ctrl-C stops everything it started. State lives in .stack/ and is reused by
the next run (the demo database, the catalog, the backups on disk, the master key, the ports).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from wedsync_backup.catalog import migrate as migrate_catalog

from devstack.airflow_env import ADMIN_USER, StackConfig, airflow_bin, migrate_metadata
from devstack.demo import TEST_SCALE, create_demo_schema, has_demo_schema, seed_demo
from devstack.ports import free_port
from devstack.postgres import Cluster
from devstack.services import GcsEmulator, MotoServer

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".stack"
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "triggerer")


def _say(msg: str) -> None:
    print(f"[wedsync] {msg}", flush=True)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _load_state() -> dict[str, int | str]:
    f = STATE / "state.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _pick(state: dict, name: str, preferred: int) -> int:
    port = int(state.get(name, preferred))
    return port if _port_free(port) else free_port()


def _stop_previous() -> None:
    """A previous run still alive (e.g. killed terminal): stop its processes cleanly before reusing .stack."""
    pids = STATE / "pids.json"
    if not pids.exists():
        return
    for pid in json.loads(pids.read_text()):
        try:
            os.killpg(pid, signal.SIGTERM)
            _say(f"stopped process group {pid} left by a previous run")
        except (ProcessLookupError, PermissionError):
            pass
    pids.unlink()


def _master_key() -> str:
    f = STATE / "master.key"
    if not f.exists():
        f.write_text(base64.b64encode(os.urandom(32)).decode())
        f.chmod(0o600)
    return f.read_text().strip()


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(1)
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=TEST_SCALE * 4, help="demo data scale (1 = ~10 MB)")
    p.add_argument("--no-backup", action="store_true", help="do not trigger the first full backup")
    p.add_argument("--fresh", action="store_true", help="throw away .stack (databases, backups, key) first")
    args = p.parse_args(argv)

    if args.fresh and STATE.exists():
        import shutil

        _stop_previous()
        shutil.rmtree(STATE)
    STATE.mkdir(exist_ok=True)
    os.chmod(STATE, 0o755)
    _stop_previous()
    state = _load_state()
    ports = {
        "postgres": _pick(state, "postgres", 54329),
        "s3": _pick(state, "s3", 54330),
        "gcs": _pick(state, "gcs", 54331),
        "api": _pick(state, "api", 8080),
    }
    (STATE / "state.json").write_text(json.dumps(ports))

    cluster = Cluster(STATE / "pg", port=ports["postgres"])
    s3 = MotoServer(ports["s3"])
    gcs = GcsEmulator(ports["gcs"], data_dir=STATE / "gcs")
    procs: list[subprocess.Popen] = []

    def shutdown(*_: object) -> None:
        _say("stopping everything this run started ...")
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        s3.stop()
        gcs.stop()
        cluster.stop()
        (STATE / "pids.json").unlink(missing_ok=True)
        _say("stopped")

    try:
        _say(f"PostgreSQL (wal_level=logical) on 127.0.0.1:{ports['postgres']}")
        cluster.start()
        s3.start()
        gcs.start()
        _say(f"S3 (moto server) on {s3.endpoint}, GCS (emulator) on {gcs.endpoint}")
        config = StackConfig(
            home=STATE / "airflow",
            cluster=cluster,
            s3=s3,
            gcs=gcs,
            primary_path=STATE / "backups",
            master_key=_master_key(),
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
        env = config.env()
        env["AIRFLOW__API__PORT"] = str(ports["api"])
        env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{ports['api']}"
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{ports['api']}/execution/"
        env["WEDSYNC_RETRY_DELAY_SECONDS"] = "30"
        _say("migrating the Airflow metadata database ...")
        migrate_metadata(env)
        logs = STATE / "logs"
        logs.mkdir(exist_ok=True)
        for component in ("api-server", *AIRFLOW_COMPONENTS):
            cmd = [airflow_bin(), component]
            if component == "api-server":
                cmd += ["--port", str(ports["api"]), "--host", "127.0.0.1"]
            log = open(logs / f"{component}.log", "ab")  # noqa: SIM115 - lives as long as the process
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        (STATE / "pids.json").write_text(json.dumps([pr.pid for pr in procs]))
        url = f"http://127.0.0.1:{ports['api']}"
        if not _wait_http(f"{url}/api/v2/monitor/health", 180):
            _say(f"the api-server did not come up; see {logs / 'api-server.log'}")
            return 1
        _say(f"Airflow UI: {url}   login: {ADMIN_USER} / {config.admin_password}")
        _say(f"logs: {logs}   backups on disk: {config.primary_path}")
        if not args.no_backup:
            for _ in range(60):
                r = subprocess.run(
                    [airflow_bin(), "dags", "trigger", "backup_daily_full"], env=env, capture_output=True, text=True
                )
                if r.returncode == 0:
                    _say("first full backup triggered: watch backup_daily_full in the UI")
                    break
                time.sleep(2)
            else:
                _say(f"could not trigger backup_daily_full: {r.stderr.strip()[-500:]}")
        _say("running; press Ctrl-C to stop everything")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    _say(f"{proc.args[1]} exited ({proc.returncode}); see {logs}")
                    return 1
            time.sleep(2)
    except KeyboardInterrupt:
        return 0
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
