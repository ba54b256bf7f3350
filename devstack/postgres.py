"""A throwaway PostgreSQL cluster started from the server binaries (no Docker).

PostgreSQL refuses to run as root, so when we are root the cluster runs as the ``postgres`` OS user that
Debian's packages create.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devstack.ports import free_port, wait_for_port

MIN_MAJOR = 15


def find_bindir() -> Path:
    """Directory holding initdb/pg_ctl/pg_dump of the newest PostgreSQL >= 15 installed."""
    candidates: list[tuple[int, Path]] = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        try:
            major = int(Path(d).parent.name)
        except ValueError:
            continue
        if (Path(d) / "initdb").exists():
            candidates.append((major, Path(d)))
    initdb = shutil.which("initdb")
    if initdb:
        out = subprocess.run([initdb, "--version"], capture_output=True, text=True).stdout
        with contextlib.suppress(ValueError, IndexError):
            candidates.append((int(out.split()[-1].split(".")[0]), Path(initdb).resolve().parent))
    candidates = [c for c in candidates if c[0] >= MIN_MAJOR]
    if not candidates:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) >= 15 were not found. "
            "Install them, e.g. 'apt-get install postgresql' (Debian/Ubuntu) or your OS's "
            "postgresql-server package, then run this again."
        )
    return max(candidates)[1]


@dataclass
class Cluster:
    """One PostgreSQL cluster in ``datadir``; ``start()`` initialises it on first use."""

    datadir: Path
    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)
    user: str = "postgres"
    bindir: Path = field(default_factory=find_bindir)

    def as_owner(self) -> list[str]:
        """The command prefix that runs a server binary as the cluster's OS user (runuser when we are root)."""
        if os.geteuid() != 0:
            return []
        pwd.getpwnam("postgres")  # raises KeyError with a clear name if missing
        return ["runuser", "-u", "postgres", "--"]

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    @property
    def socket_dir(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}.sock"

    def init(self) -> None:
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chmod(self.datadir.parent, 0o755)  # the postgres user must reach its data dir
        self.datadir.mkdir(exist_ok=True)
        self._chown(self.datadir)
        os.chmod(self.datadir, 0o700)
        subprocess.run(
            [
                *self.as_owner(),
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        if os.geteuid() == 0:
            os.chmod(self.datadir.parent, 0o755)

    def start(self) -> Cluster:
        if not (self.datadir / "PG_VERSION").exists():
            self.init()
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir)
        opts = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_connections": "200",
            **self.settings,
        }
        optstr = " ".join(f"-c {k}={v}" for k, v in opts.items())
        log = self.datadir.parent / f"{self.datadir.name}.log"
        log.touch()
        self._chown(log)
        subprocess.run(
            [
                *self.as_owner(),
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(log),
                "-o",
                optstr,
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run(
                [
                    *self.as_owner(),
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
                capture_output=True,
            )

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    def url(self, dbname: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, *args: str, dbname: str = "postgres", input: str | None = None) -> str:
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": self.user}
        res = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname, *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql failed: {res.stderr.strip()}")
        return res.stdout

    def create_database(self, name: str, *, template: str | None = None, drop: bool = False) -> None:
        if drop:
            self.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        tpl = f' TEMPLATE "{template}"' if template else ""
        self.psql("-c", f'CREATE DATABASE "{name}"{tpl}')
