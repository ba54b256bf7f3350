"""SCRATCH (delete): time the restore's phases on the kept bench/work, and a parallel post-data variant."""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "plugins")
from devstack.postgres import Cluster
from wedsync_backup import restore as R
from wedsync_backup.manifest import manifest_key
from wedsync_backup.pg import PgTarget, find_tool
from wedsync_backup.pipeline import decode_from_storage

from bench.run_bench import PG_SETTINGS
from bench.stages import _keyring, build_storage

work = Path("bench/work")
cfg = json.loads((work / "stage-config.json").read_text())
c = Cluster(work / "pg" / "data", port=cfg["port"], settings=dict(PG_SETTINGS)).start()
try:
    st = build_storage(cfg, "primary")
    ring = _keyring(cfg)
    from wedsync_backup.manifest import Manifest

    m = Manifest.from_bytes(st.get_bytes(manifest_key(cfg["backup_id"])))
    mode = sys.argv[1]
    db = f"scratch_{mode}"
    c.psql("-c", f"DROP DATABASE IF EXISTS {db}")
    c.psql("-c", f"CREATE DATABASE {db}")
    c.psql("-c", "CHECKPOINT")
    tgt = PgTarget(port=c.port, dbname=db)
    t0 = time.monotonic()
    R._pg_restore(m, st, ring, tgt, "pre-data")
    t1 = time.monotonic()
    R._load_data(m, st, ring, tgt, 2)
    t2 = time.monotonic()
    if mode == "serial":
        R._pg_restore(m, st, ring, tgt, "post-data")
    else:
        with tempfile.NamedTemporaryFile(suffix=".dump") as f:
            for piece in decode_from_storage(st, m.schema_object, ring, backup_id=m.backup_id):
                f.write(piece)
            f.flush()
            subprocess.run([str(find_tool("pg_restore", 15)), "--section=post-data", "-j2", "--exit-on-error",
                            "-d", db, f.name], env=tgt.env(), check=True)
    t3 = time.monotonic()
    R._set_sequences(m, tgt)
    t4 = time.monotonic()
    print(mode, f"pre {t1-t0:.1f} data {t2-t1:.1f} post {t3-t2:.1f} seq {t4-t3:.1f} total {t4-t0:.1f}")
    # baseline split: pg_restore -j2 from -Fd, data section and post-data section separately
    if mode == "serial":
        b = "scratch_base"
        c.psql("-c", f"DROP DATABASE IF EXISTS {b}")
        c.psql("-c", f"CREATE DATABASE {b}")
        c.psql("-c", "CHECKPOINT")
        env = PgTarget(port=c.port, dbname=b).env()
        pr = str(find_tool("pg_restore", 15))
        times = []
        for sec in ("pre-data", "data", "post-data"):
            t = time.monotonic()
            subprocess.run([pr, f"--section={sec}", "-j2", "-d", b, str(work / "dump.d")], env=env, check=True)
            times.append(time.monotonic() - t)
        print("pg_restore -j2 -Fd", " ".join(f"{s} {x:.1f}" for s, x in zip(("pre", "data", "post"), times)))
finally:
    c.stop()
