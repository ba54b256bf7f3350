"""The whole local stack for tests: `./scripts/run.sh` as a subprocess, on free ports, in a given state directory.

    with running_stack(tmp_dir, scale=0.25) as stack:
        stack.api.trigger("emergency_restore", {...})
        subprocess.run(["airflow", "dags", "list"], env=stack.env())

Every port is a free one chosen here (never the README's defaults), so stacks of several developers and CI run
side by side. ``stop()`` (also on leaving the ``with``) ends the launcher with SIGTERM, which stops every
process it started; the test can also ``kill9()`` it and ``start()`` again in the same state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from devstack.airflow_env import REPO
from devstack.api import AirflowApi
from devstack.ports import free_port
from devstack.procs import Record
from devstack.run import PORTS


def free_ports() -> dict[str, int]:
    """One distinct free port per stack port name."""
    ports: dict[str, int] = {}
    while len(ports) < len(PORTS):
        p = free_port()
        if p not in ports.values():
            ports[list(PORTS)[len(ports)]] = p
    return ports


def new_state_dir(prefix: str = "wedsync-stack-") -> Path:
    """A state directory the postgres OS user can reach (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


@dataclass
class StackProcess:
    state_dir: Path
    ports: dict[str, int] = field(default_factory=free_ports)
    scale: float = 0.25
    executor: str = "local"
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    ready: dict = field(default_factory=dict)  # what the launcher wrote when ready (its pid, the first full run)
    started_at: float = 0.0  # time.monotonic() when it was ready

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def api(self) -> AirflowApi:
        return AirflowApi(self.url)

    @property
    def log(self) -> Path:
        return self.state_dir / "launcher.log"

    def command(self, *extra: str, ports: bool = True) -> list[str]:
        cmd = [sys.executable, "-m", "devstack.run", "--state-dir", str(self.state_dir), "--scale", str(self.scale)]
        cmd += ["--executor", self.executor]
        for name, port in self.ports.items() if ports else ():
            cmd += [f"--{name.replace('_', '-')}-port", str(port)]
        return [*cmd, *self.extra_args, *extra]

    def start(self, *extra: str, ports: bool = True, timeout: float = 300) -> dict:
        """Start the launcher and wait until it says it is running (UI up, first full backup triggered).

        ``ports=False`` gives no port options: the launcher uses the ports its state directory kept.
        """
        ready = self.state_dir / "ready.json"
        ready.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO)])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(*extra, ports=ports),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready.exists() and json.loads(ready.read_text()).get("pid") == self.proc.pid:
                self.ready, self.started_at = json.loads(ready.read_text()), time.monotonic()
                return self.ready
            if self.proc.poll() is not None:
                raise RuntimeError(f"the stack exited ({self.proc.returncode}):\n{self.log_tail()}")
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the stack was not ready within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def env(self) -> dict[str, str]:
        """The stack's Airflow environment (what `./scripts/run.sh env` gives a shell)."""
        return {**os.environ, **json.loads((self.state_dir / "env.json").read_text())}

    def recorded(self) -> list[Record]:
        f = self.state_dir / "procs.json"
        return [Record(**r) for r in json.loads(f.read_text())] if f.exists() else []

    def kill9(self) -> list[Record]:
        """kill -9 the launcher only (as a crash would); returns what it had recorded."""
        assert self.proc is not None
        recorded = self.recorded()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return recorded

    def stop(self, timeout: float = 120, sig: int = signal.SIGTERM) -> int | None:
        """Signal the launcher (SIGTERM, or SIGHUP as a closed terminal): it stops everything it started.

        Returns its exit code."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()


def alive(records: list[Record]) -> list[str]:
    """Which of these recorded processes still run (pid and start time both match)."""
    return [f"{r.name} (pid {r.pid})" for r in records if r.process() is not None]


def postmaster_running(state_dir: Path) -> bool:
    pidfile = state_dir / "pg" / "postmaster.pid"
    if not pidfile.exists():
        return False
    try:
        return psutil.pid_exists(int(pidfile.read_text().split()[0]))
    except (ValueError, IndexError):
        return False


@contextlib.contextmanager
def running_stack(
    state_dir: Path | None = None, *, scale: float = 0.25, executor: str = "local", extra_args: tuple[str, ...] = ()
) -> Iterator[StackProcess]:
    """A started stack on free ports; stopped (every process) on the way out. The state dir is kept."""
    stack = StackProcess(state_dir or new_state_dir(), scale=scale, executor=executor, extra_args=extra_args)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
