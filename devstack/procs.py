"""Every process the local stack starts, recorded in its state directory, so that nothing outlives it.

Each child gets its own process group (stopping the group stops what it spawned) and is told by the kernel
to stop when the launcher dies (``PR_SET_PDEATHSIG``), so a ``kill -9`` of the launcher or a closed terminal
does not leave servers behind. What still survives (a child busy shutting down, PostgreSQL, which ``pg_ctl``
detaches) is stopped by the next start: :meth:`Registry.stop_leftovers` kills only processes that are
provably ours (same pid *and* same start time as recorded), never a stranger that reused a pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import psutil

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to this child when the launcher dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Record:
    """A started process: enough to find it again and to prove it is still the same one."""

    name: str
    pid: int
    create_time: float
    cmdline: list[str]

    def process(self) -> psutil.Process | None:
        """The live process, or None when it is gone or the pid now belongs to someone else."""
        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) > 0.05:
                return None
            return p if p.status() != psutil.STATUS_ZOMBIE else None
        except psutil.Error:
            return None


def _group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid:
                out.append(p)
    return out


def stop_group(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group led by ``pid``, wait, then SIGKILL whatever is left of it."""
    members = _group_members(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=timeout)
    if alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)


class Registry:
    """``procs.json`` in the state directory: the processes of the running (or last) stack."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "procs.json"
        self.records: list[Record] = []
        self.popens: list[subprocess.Popen] = []

    def _load(self) -> list[Record]:
        if not self.path.exists():
            return []
        try:
            return [Record(**r) for r in json.loads(self.path.read_text())]
        except (ValueError, TypeError):
            return []

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in self.records], indent=1))
        tmp.replace(self.path)

    def spawn(
        self,
        name: str,
        cmd: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log: IO[bytes] | int | None = None,
    ) -> subprocess.Popen:
        """Start ``cmd`` in its own process group, bound to the launcher's life, and record it."""
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.adopt(name, proc)
        return proc

    def adopt(self, name: str, proc: subprocess.Popen) -> None:
        """Record a process started elsewhere (in its own process group)."""
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = 0.0
        self.popens.append(proc)
        self.records.append(Record(name, proc.pid, created, [str(c) for c in proc.args]))
        self._save()

    def stop_leftovers(self, say: Callable[[str], None]) -> int:
        """Stop what an earlier run recorded and left running; returns how many were stopped."""
        stopped = 0
        for rec in self._load():
            if rec.process() is None:
                continue
            say(f"stopping {rec.name} (pid {rec.pid}) left running by an earlier run")
            stop_group(rec.pid)
            stopped += 1
        self.path.unlink(missing_ok=True)
        return stopped

    def stop_all(self, timeout: float = 20.0, last: tuple[str, ...] = ()) -> None:
        """Stop every process this run started, those named in ``last`` after all others; then forget them."""
        named = dict(zip((r.name for r in self.records), self.popens, strict=False))
        final = [p for n, p in named.items() if n in last]
        for batch in ([p for p in self.popens if p not in final], final):
            for proc in batch:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for proc in batch:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    stop_group(proc.pid, timeout=1)
                if _group_members(proc.pid):  # children that outlived their group leader
                    stop_group(proc.pid, timeout=2)
        self.popens.clear()
        self.records.clear()
        self.path.unlink(missing_ok=True)

    def exited(self) -> subprocess.Popen | None:
        """The first recorded process that has exited, if any."""
        return next((p for p in self.popens if p.poll() is not None), None)


def port_holder(port: int) -> str | None:
    """Who listens on 127.0.0.1:``port``, as 'pid 123 (cmdline)', or None when the port is free."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        conns = []
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            if c.pid is None:
                return "a process of another user"
            try:
                p = psutil.Process(c.pid)
                return f"pid {c.pid} ({' '.join(p.cmdline())[:120]}, user {p.username()})"
            except psutil.Error:
                return f"pid {c.pid}"
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return "an unknown process"
    return None
