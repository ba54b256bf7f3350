"""PostgreSQL connection parameters and client tools, shared by export, restore and the catalog.

A connection means the same thing everywhere: psycopg and every client tool (pg_dump, pg_restore, psql) get
the same parameters (SSL files and mode, options, keepalives, timeouts...). Secrets never go on a command
line: subprocesses get the password through PGPASSWORD. Child processes die with the process that started
them, so a killed task leaves no pg_dump holding a snapshot on the source.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from wedsync_backup.errors import ConfigError, TransientError, WedSyncError

BINDIR_ENV = "WEDSYNC_PG_BINDIR"
DEFAULT_CONNECT_TIMEOUT = "10"

# libpq keywords that have an environment variable. Client tools also get every option (those without a
# variable too: keepalives, tcp_user_timeout...) in their --dbname connection string, secrets excepted.
LIBPQ_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcertmode": "PGSSLCERTMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "requirepeer": "PGREQUIREPEER",
    "require_auth": "PGREQUIREAUTH",
    "channel_binding": "PGCHANNELBINDING",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "hostaddr": "PGHOSTADDR",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
}
# Every libpq keyword an Airflow connection's extra may carry (host, port, user, password and dbname are the
# connection's own fields).
LIBPQ_KEYWORDS = frozenset(LIBPQ_ENV) | {
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslpassword",
    "client_encoding",
}
_SECRETS = frozenset({"password", "sslpassword"})

# SQLSTATE classes a retry can outlive: connection exception (08), operator intervention such as a shutdown
# or restart (57P), insufficient resources such as too many connections (53), a lost race (40), system I/O (58).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57P", "53", "40", "58")
_PERMANENT_SQLSTATES = {"53100"}  # disk full on the server: it needs a person
# libpq's messages for faults without a SQLSTATE (the client side of a connection), by what they mean.
_TRANSIENT_MESSAGES = (
    "connection refused",
    "timeout expired",
    "server closed the connection",
    "terminating connection",
    "could not receive data",
    "could not send data",
    "connection reset",
    "connection timed out",
    "no route to host",
    "network is unreachable",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is not yet accepting connections",
    "the database system is in recovery mode",
    "temporary failure in name resolution",
    "ssl syscall error",
    "ssl error: unexpected eof",
    "eof detected",
    "connection to server was lost",
    "the connection is closed",
    "connection is lost",
    "sorry, too many clients",
    "lost synchronization with server",
    "canceling statement due to conflict with recovery",
)
_PERMANENT_MESSAGES = (
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "does not exist",
    "certificate",
    "does not match host name",
    "private key",
    "server does not support ssl",
    "ssl is not enabled",
    "could not translate host name",
    "invalid sslmode",
    "invalid connection option",
    "permission denied",
)


def message_is_transient(message: str) -> bool | None:
    """What a libpq/tool failure message says: True (the server went away or is busy), False (a set-up
    fault: credentials, certificates, names), None (it does not say)."""
    text = message.lower()
    if any(m in text for m in _TRANSIENT_MESSAGES):
        return True
    if any(m in text for m in _PERMANENT_MESSAGES):
        return False
    return None


def pg_error_is_transient(error: BaseException) -> bool | None:
    """A PostgreSQL error's verdict: by SQLSTATE when the server sent one, else by libpq's message.
    None: not a PostgreSQL error, or one that does not say."""
    if not isinstance(error, psycopg.Error):
        return None
    state = getattr(error, "sqlstate", None)
    if state:
        return state not in _PERMANENT_SQLSTATES and state.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    return message_is_transient(str(error))


def _first_line(text: str, default: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else default


@dataclass(frozen=True)
class PgTarget:
    """Where a database is; ``label`` (usually the Airflow connection id) is what errors name.

    ``options`` are further libpq keywords (sslmode, sslrootcert, sslcert, sslkey, options, keepalives...).
    """

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    dbname: str = "postgres"
    options: dict[str, str] = field(default_factory=dict)
    label: str = "database"

    def _params(self) -> dict[str, str]:
        kw = {"host": self.host, "port": str(self.port), "user": self.user, "dbname": self.dbname}
        kw["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
        kw.update({k: str(v) for k, v in self.options.items()})
        return kw

    def conninfo(self) -> str:
        """The connection string for psycopg: every parameter, the password included."""
        kw = self._params()
        if self.password:
            kw["password"] = self.password
        return make_conninfo(**kw)

    def tool_dsn(self) -> str:
        """``--dbname`` for pg_dump/pg_restore/psql: the parameters of :meth:`conninfo` minus its secrets."""
        return make_conninfo(**{k: v for k, v in self._params().items() if k not in _SECRETS})

    def env(self) -> dict[str, str]:
        """Environment for libpq command-line tools: the password and every parameter that has a PG* variable
        (pass :meth:`tool_dsn` as --dbname too, for those that have none)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGDATABASE=self.dbname)
        if self.password:
            env["PGPASSWORD"] = self.password
        for key, value in self._params().items():
            if key in LIBPQ_ENV:
                env[LIBPQ_ENV[key]] = value
        return env

    def with_db(self, dbname: str) -> PgTarget:
        return PgTarget(self.host, self.port, self.user, self.password, dbname, dict(self.options), self.label)

    def describe(self) -> str:
        return f"{self.label} ({self.user}@{self.host}:{self.port}/{self.dbname})"

    def connect(self, **kwargs: object) -> psycopg.Connection:
        try:
            return psycopg.connect(self.conninfo(), **kwargs)  # type: ignore[arg-type]
        except psycopg.OperationalError as e:
            raise self.connect_error(e) from e
        except BaseException as e:
            if not isinstance(e, Exception):
                # A timeout or kill in the middle of the handshake: the half-open connection lives in the
                # frames of the traceback; let go of it now rather than when the exception is freed.
                traceback.clear_frames(e.__traceback__)
            raise

    def connect_error(self, error: psycopg.Error) -> WedSyncError:
        """Why a connection failed, by cause: a server restarting or refusing connections is retried; a wrong
        password, database name or certificate fails at once."""
        why = _first_line(str(error), "connection refused")
        if pg_error_is_transient(error):
            return TransientError(
                f"Cannot connect to {self.describe()}",
                why,
                "the task is retried (a restart or failover passes); if it persists, check that the server "
                "is running and reachable",
            )
        return ConfigError(
            f"Cannot connect to {self.describe()}",
            why,
            f"check the host, port, database, user, password and SSL settings of connection {self.label}",
        )


def tool_error(tool: str, target: PgTarget, code: int | None, stderr: str, what: str) -> WedSyncError:
    """A client tool's failure, classified like a connection failure from what it printed."""
    transient = bool(message_is_transient(stderr))
    return WedSyncError(
        f"{tool} ({what}) on {target.describe()} failed (exit {code})",
        stderr.strip()[-2000:] or "it printed nothing",
        "the task is retried: the server went away in the middle of the work"
        if transient
        else "fix the cause above and run it again",
        transient=transient,
    )


_PR_SET_PDEATHSIG = 1
_prctl = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
# util-linux's setpriv sets the parent-death signal and execs the tool: no Python code runs between fork and
# exec, so no lock another thread holds at fork time (logging's, the import lock) can hang the child
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGKILL when the process that started it dies, even by SIGKILL."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn_tool(cmd: list[str], target: PgTarget, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a client tool for ``target``: its environment carries the connection, and it dies with us.

    PR_SET_PDEATHSIG fires when the starting *thread* ends; callers run a tool to its end in one thread.
    """
    if _SETPRIV is not None and "preexec_fn" not in popen:
        return subprocess.Popen([_SETPRIV, "--pdeathsig", "KILL", "--", *cmd], env=target.env(), **popen)
    if _prctl is not None:
        popen.setdefault("preexec_fn", _die_with_parent)
    return subprocess.Popen(cmd, env=target.env(), **popen)


def end_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop a child now (SIGTERM, then SIGKILL after ``grace`` seconds) and reap it; fine if it has ended."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def _major(binary: Path) -> int:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1].split(".")[0])


def find_tool(name: str, min_major: int = 0) -> Path:
    """The newest ``pg_dump``/``pg_restore``/``psql`` whose major version is at least the server's."""
    candidates: list[Path] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(Path(os.environ[BINDIR_ENV]) / name)
    candidates += [Path(d) / name for d in glob.glob("/usr/lib/postgresql/*/bin")]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path).resolve())
    found = []
    for c in candidates:
        if c.exists():
            try:
                found.append((_major(c), c))
            except (subprocess.CalledProcessError, ValueError, IndexError):
                continue
    usable = [f for f in found if f[0] >= min_major]
    if not usable:
        have = ", ".join(f"{p} ({m})" for m, p in found) or "none"
        raise ConfigError(
            f"No {name} of PostgreSQL {min_major} or newer was found",
            f"found: {have}",
            f"install the PostgreSQL {min_major}+ client tools (e.g. apt-get install postgresql-client) "
            f"or set {BINDIR_ENV} to their directory",
        )
    return max(usable)[1]


def server_major(conn: psycopg.Connection) -> int:
    return conn.info.server_version // 10000


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def target_from_conninfo(conninfo: str, label: str) -> PgTarget:
    """A database named by a libpq conninfo or URL (command-line tools, where there is no Airflow)."""
    kw = conninfo_to_dict(conninfo)
    return PgTarget(
        host=str(kw.pop("host", "127.0.0.1")),
        port=int(kw.pop("port", 5432)),
        user=str(kw.pop("user", "postgres")),
        password=kw.pop("password", None),  # type: ignore[arg-type]
        dbname=str(kw.pop("dbname", "postgres")),
        options={k: str(v) for k, v in kw.items()},
        label=label,
    )
