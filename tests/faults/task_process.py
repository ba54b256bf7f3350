"""A task process of its own (fault matrix row 6): runs one core command so that a test can SIGKILL it.

python -m tests.faults.task_process '{"command": "export" | "restore", ...}'

With ``"die_mid_restore": true`` the restore kills its own process (SIGKILL) the moment its first table's data is
in: a restore interrupted half-way, at a known point, with no clean-up.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from typing import Any

from wedsync_backup.crypto import Keyring
from wedsync_backup.export import run_export
from wedsync_backup.pg import PgTarget
from wedsync_backup.repository import read_manifest
from wedsync_backup.restore import restore_backup
from wedsync_backup.storage.local import LocalStorage


def _die(_table: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    spec = json.loads(sys.argv[1])
    ring = Keyring(base64.b64decode(spec["key"]))
    db = PgTarget(**spec["db"])
    storage = LocalStorage(spec["root"], name="primary", medium="disk", site="a")
    if spec["command"] == "export":
        run_export(db, storage, ring, backup_id=spec["backup_id"])
    else:
        die = _die if spec.get("die_mid_restore") else None
        restore_backup(read_manifest(storage, spec["backup_id"]), storage, ring, db, workers=2, on_table_loaded=die)


if __name__ == "__main__":
    main()
