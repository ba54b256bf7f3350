"""The stack's process records: leftovers of an earlier run are stopped, strangers never; ports say who holds them."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from devstack.procs import Record, Registry, port_holder
from devstack.run import StackError, StackState, _parser, check_ports

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_leftovers_of_an_earlier_run_are_stopped_with_their_children(tmp_path: Path) -> None:
    earlier = Registry(tmp_path)
    # a group leader with a child of its own, as the api-server has its workers
    leader = earlier.spawn(
        "parent",
        [
            sys.executable,
            "-c",
            "import subprocess,sys,time; subprocess.Popen("
            "[sys.executable,'-c','import time; time.sleep(120)']); time.sleep(120)",
        ],
    )
    time.sleep(1)
    family = [psutil.Process(leader.pid), *psutil.Process(leader.pid).children()]
    assert len(family) == 2
    # the earlier launcher is gone without cleaning up: a new run finds the records
    said: list[str] = []
    assert Registry(tmp_path).stop_leftovers(said.append) == 1
    assert "parent (pid" in said[0]
    leader.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive
    assert not (tmp_path / "procs.json").exists()


def test_a_recycled_pid_is_not_ours_and_is_left_alone(tmp_path: Path) -> None:
    stranger = subprocess.Popen(SLEEPER)
    try:
        created = psutil.Process(stranger.pid).create_time()
        fake = Record("api-server", stranger.pid, created - 100, ["airflow", "api-server"])
        registry = Registry(tmp_path)
        registry.records.append(fake)
        registry._save()
        assert Registry(tmp_path).stop_leftovers(print) == 0
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_all_stops_what_this_run_started(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    procs = [registry.spawn(f"p{i}", SLEEPER) for i in range(2)]
    registry.stop_all(timeout=10)
    assert all(p.poll() is not None for p in procs)
    assert not (tmp_path / "procs.json").exists()


def test_a_port_held_by_a_stranger_names_it_and_the_fix(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        holder = port_holder(port)
        assert holder is not None and "pid" in holder
        with pytest.raises(StackError) as err:
            check_ports({"api": port}, ["api"])
    msg = str(err.value)
    assert f"Port {port} (Airflow UI and REST API) is in use by pid" in msg
    assert "--api-port N" in msg
    assert port_holder(port) is None


def test_ports_are_kept_across_runs_and_a_given_port_wins(tmp_path: Path) -> None:
    first = StackState(tmp_path)
    ports = first.ports(_parser().parse_args(["--state-dir", str(tmp_path)]))
    assert (ports["api"], ports["postgres"]) == (8080, 54329)  # the README's defaults
    first.save()
    again = StackState(tmp_path).ports(_parser().parse_args(["--api-port", "9999"]))
    assert again["api"] == 9999 and again["postgres"] == 54329


def test_ports_of_the_earlier_state_format_are_not_kept(tmp_path: Path) -> None:
    """Earlier runs moved to a random port when one was busy and saved it: back to the README's defaults."""
    (tmp_path / "state.json").write_text('{"postgres": 41234, "s3": 1, "gcs": 2, "api": 54135}')
    ports = StackState(tmp_path).ports(_parser().parse_args([]))
    assert (ports["api"], ports["postgres"]) == (8080, 54329)
