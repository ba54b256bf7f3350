"""Stops the stack's PostgreSQL when the launcher dies, however it dies.

``pg_ctl`` detaches the server from the launcher, so the kernel's parent-death signal cannot reach it. This
tiny process is the launcher's child instead: it gets that signal (SIGTERM, set by devstack.procs when it is
started) and then stops the cluster by its data directory.

    python -m devstack.watchdog <launcher pid> <pg_ctl> <data dir> [command prefix ...]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    launcher, pg_ctl, datadir, *prefix = argv

    def stop(*_: object) -> None:
        subprocess.run([*prefix, pg_ctl, "-D", datadir, "-m", "fast", "-w", "stop"], capture_output=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    if os.getppid() != int(launcher):  # the launcher died before the death signal was armed
        stop()
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
