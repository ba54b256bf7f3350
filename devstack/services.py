"""Object-storage servers for the local stack: moto (S3) and gcp-storage-emulator (GCS), over the wire.

Both run as subprocesses in their own process group, so they behave like real servers (separate
process, real HTTP) and ``stop()`` takes down anything they spawned. Run ``python -m devstack.services``
to start both by hand and print the environment variables that point Airflow at them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from devstack.ports import free_port, wait_for_port
from devstack.procs import die_with_parent

FAKE_AWS_KEY = "testing"
FAKE_AWS_SECRET = "testing"
S3_REGION = "us-east-1"
GCS_PROJECT = "wedsync-dev"


class _Service:
    """A server subprocess on 127.0.0.1 with a readiness probe and a log file."""

    label = "service"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _proc_env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2) as r:
                return r.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500
        except OSError:
            return False

    def start(self, timeout: float = 30.0) -> Self:
        if self._proc is not None and self._proc.poll() is None:
            return self
        fd, log = tempfile.mkstemp(prefix=f"wedsync-{self.label}-", suffix=".log")
        self._log_path = Path(log)
        with os.fdopen(fd, "wb") as logf:
            self._proc = subprocess.Popen(
                self._command(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._proc_env(),
                start_new_session=True,  # own process group: stop() kills children too
                preexec_fn=die_with_parent,  # and it stops when its starter dies, even by kill -9
            )
        deadline = time.monotonic() + timeout
        try:
            wait_for_port(self.port, timeout=timeout)
            while not self._ready():
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise TimeoutError("not ready")
                time.sleep(0.1)
        except TimeoutError as e:
            tail = self._log_tail()
            self.stop()
            raise RuntimeError(
                f"{self.label} did not start on {self.endpoint} within {timeout:.0f}s. "
                f"Command: {' '.join(self._command())}. Log tail:\n{tail}"
            ) from e
        return self

    def _log_tail(self, lines: int = 20) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MotoServer(_Service):
    """moto in server mode: a real HTTP S3 endpoint, state kept in the server process."""

    label = "moto-s3"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def client(self):  # -> botocore S3 client (untyped)
        """A boto3 S3 client for this server (for set-up; the project goes through S3Hook)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=FAKE_AWS_KEY,
            aws_secret_access_key=FAKE_AWS_SECRET,
            region_name=S3_REGION,
        )

    def create_bucket(self, name: str) -> None:
        """Create the bucket; fine if it already exists."""
        c = self.client()
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=name)

    def airflow_conn_json(self) -> str:
        """Value for ``AIRFLOW_CONN_<ID>``: an aws connection pointing at this server."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": FAKE_AWS_KEY,
                "password": FAKE_AWS_SECRET,
                "extra": {"endpoint_url": self.endpoint, "region_name": S3_REGION},
            }
        )

    def env(self) -> dict[str, str]:
        """Nothing extra is needed: the connection carries the endpoint."""
        return {}


class GcsEmulator(_Service):
    """gcp-storage-emulator: the GCS JSON API, including resumable uploads and ranged reads."""

    label = "gcs-emulator"

    def __init__(self, port: int | None = None, data_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(port)
        self.data_dir = Path(data_dir).resolve() if data_dir else None

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "-H", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--quiet"]
        if self.data_dir is None:
            cmd.append("--in-memory")
        return cmd

    def _proc_env(self) -> dict[str, str]:
        env = super()._proc_env()
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            env["STORAGE_BASE"] = str(self.data_dir)  # the emulator keeps data in STORAGE_BASE/.cloudstorage
        return env

    def create_bucket(self, name: str) -> None:
        """Create the bucket; fine if it already exists."""
        req = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project={GCS_PROJECT}",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10):
                pass
        except urllib.error.HTTPError as e:
            if e.code != 409:  # 409: already exists
                raise

    def airflow_conn_json(self) -> str:
        """Value for ``AIRFLOW_CONN_<ID>``; also set :meth:`env` so the client finds the emulator."""
        return json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": GCS_PROJECT},
            }
        )

    def env(self) -> dict[str, str]:
        """google-cloud-storage sends every request to STORAGE_EMULATOR_HOST when it is set."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint}


class RedisServer(_Service):
    """redis-server from the OS packages: the Celery broker of the local stack. No persistence."""

    label = "redis"

    def __init__(self, port: int | None = None, data_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(port)
        self.data_dir = Path(data_dir or tempfile.gettempdir()).resolve()

    def _command(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError(
                "redis-server was not found: the Celery executor needs it. Install it with "
                "'apt-get install redis-server' (./scripts/bootstrap.sh does so as root), then run this again."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
        ]

    def _ready(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def main() -> None:
    """Start both servers, print the environment to use them, and run until interrupted."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--s3-port", type=int, default=None)
    p.add_argument("--gcs-port", type=int, default=None)
    p.add_argument("--gcs-data-dir", default=None, help="keep GCS data on disk here (default: memory)")
    p.add_argument("--s3-bucket", default="wedsync-backups")
    p.add_argument("--gcs-bucket", default="wedsync-backups-offsite")
    args = p.parse_args()
    with MotoServer(args.s3_port) as s3, GcsEmulator(args.gcs_port, args.gcs_data_dir) as gcs:
        s3.create_bucket(args.s3_bucket)
        gcs.create_bucket(args.gcs_bucket)
        env = {
            "AIRFLOW_CONN_BACKUP_SECONDARY_S3": s3.airflow_conn_json(),
            "AIRFLOW_CONN_BACKUP_OFFSITE_GCS": gcs.airflow_conn_json(),
            "WEDSYNC_BACKUP_S3_BUCKET": args.s3_bucket,
            "WEDSYNC_BACKUP_GCS_BUCKET": args.gcs_bucket,
            **gcs.env(),
        }
        # A plain `kill` must still run the with-blocks above, which stop both servers.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        for k, v in env.items():
            print(f"export {k}='{v}'")
        print("# S3 and GCS are running; Ctrl-C to stop.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
