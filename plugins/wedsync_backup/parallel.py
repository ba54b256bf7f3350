"""Worker threads that stop together: the first failure cancels every other worker's query at once.

Without this, one failed part lets the other workers finish their (possibly huge) parts while the task is
already lost, holding the exported snapshot or the restore target's sessions open all that time; and a
timeout or kill in the main thread would wait for them too.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

import psycopg

CANCEL_TIMEOUT = 5.0
T = TypeVar("T")
R = TypeVar("R")


class Crew:
    """What the workers share: a stop flag, the first error, and the connections to cancel (and client tools
    to end)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[psycopg.Connection] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self.error: BaseException | None = None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def enlist(self, conn: psycopg.Connection) -> psycopg.Connection:
        """Register a worker's connection so that a failure elsewhere cancels its running query."""
        with self._lock:
            self._conns.append(conn)
            stopped = self._stop.is_set()
        if stopped:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=CANCEL_TIMEOUT)
        return conn

    def enlist_process(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Register a worker's client tool (psql running a COPY) so that a failure elsewhere ends it at once;
        the worker that started it reaps it."""
        with self._lock:
            self._procs = [p for p in self._procs if p.returncode is None]
            self._procs.append(proc)
            stopped = self._stop.is_set()
        if stopped:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        return proc

    def fail(self, error: BaseException) -> None:
        """Record the first error and stop everyone now."""
        with self._lock:
            if self.error is None:
                self.error = error
            conns, procs = list(self._conns), list(self._procs)
            self._stop.set()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=CANCEL_TIMEOUT)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()


def run_crew(workers: int, work: Callable[[Crew], None], name: str) -> None:
    """Run ``work(crew)`` in ``workers`` threads; raise the first failure once every thread has ended.

    A BaseException in the calling thread (a task timeout, a kill) stops the workers the same way before it
    propagates, so no query outlives the task.
    """
    crew = Crew()

    def guarded() -> None:
        try:
            work(crew)
        except BaseException as e:
            crew.fail(e)
            raise

    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix=name)
    try:
        futures = [pool.submit(guarded) for _ in range(max(1, workers))]
        wait(futures, return_when=FIRST_EXCEPTION)
        wait(futures)
    except BaseException as e:
        crew.fail(e)
        raise
    finally:
        pool.shutdown(wait=True)
    if crew.error is not None:
        raise crew.error


def each_object(fn: Callable[[T], R], items: list[T], workers: int = 1) -> Iterator[R]:
    """``fn`` over ``items`` in order, ``workers`` at a time (1: in this thread); the first error is raised
    once the running calls are done, and no new call starts after it."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="objects") as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.cancel()
