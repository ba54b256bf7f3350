"""give_back: threads streaming many multi-MB buffers leave the resident set flat (a real process, real glibc)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from wedsync_backup.heap import give_back

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
# Four threads each build 200 buffers of 128 KiB-5 MiB the way an S3 part grows (+=, then bytes()), keeping a
# small object alive between them, as a capture keeps its state entries: RSS before and after, in MiB.
SCRIPT = """
import os, random, sys, threading
sys.path.insert(0, {plugins!r})
from wedsync_backup.heap import give_back
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
def work(seed, kept):
    rng = random.Random(seed)
    for _ in range(200):
        b = bytearray()
        for _ in range(rng.randint(1, 40)):
            b += bytes(128 << 10)
        data = bytes(b)
        kept.append(os.urandom(rng.randint(100, 3000)))
        del b, data
        if {bound}:
            assert give_back()  # after each object, as the files capture does
before, kept = rss(), []
threads = [threading.Thread(target=work, args=(s, kept)) for s in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(before, rss())
"""


def _growth(bound: bool) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(plugins=str(PLUGINS), bound=bound)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return int(out[1]) - int(out[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_bounded_heap_gives_buffers_back() -> None:
    unbounded, bounded = _growth(False), _growth(True)
    assert bounded < 15, f"the resident set grew by {bounded} MiB with a bounded heap"
    assert bounded < unbounded, (bounded, unbounded)


def test_give_back_can_be_called_again_and_again() -> None:
    assert give_back() is give_back()
