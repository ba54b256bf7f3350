"""How the GCS emulator's cost per write grows with the objects it holds (it rewrites one metadata file of
every object on each write): the context for the offsite copy's share of a proximity run.

    .venv/bin/python -m bench.gcs_emulator_writes
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import storage as gcs  # noqa: E402

from devstack.services import GcsEmulator  # noqa: E402


def main() -> int:
    with GcsEmulator(data_dir=Path(tempfile.mkdtemp(prefix="wedsync-gcs-writes-"))) as emu:
        emu.create_bucket("b")
        client = gcs.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": emu.endpoint}
        )
        bucket, data, stored = client.bucket("b"), os.urandom(20_000), 0
        for target in (0, 1000, 3000, 5000):
            while stored < target:
                bucket.blob(f"fill/{stored}").upload_from_string(data)
                stored += 1
            started = time.monotonic()
            for i in range(50):
                bucket.blob(f"probe/{target}/{i}").upload_from_string(data)
            stored += 50
            print(f"{target:5d} objects stored: {(time.monotonic() - started) / 50 * 1000:.0f} ms per 20 KB write")
    return 0


if __name__ == "__main__":
    sys.exit(main())
