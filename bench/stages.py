"""The backup stages, each run as its own OS process (as Airflow runs each task), by the benchmark.

``python -m bench.stages <stage> <config.json> <result.json> [target]`` builds the storages directly from
the config (no Airflow), does exactly what the DAG's task does through the library, and writes a small
JSON result. The parent measures wall time and peak RSS of the process (os.wait4).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "plugins"))

from wedsync_backup.crypto import Keyring  # noqa: E402
from wedsync_backup.export import ExportOptions, run_export  # noqa: E402
from wedsync_backup.manifest import (  # noqa: E402
    Manifest,
    manifest_key,
    pending_manifest_key,
)
from wedsync_backup.pg import PgTarget  # noqa: E402
from wedsync_backup.storage.base import Storage  # noqa: E402

TARGETS = ("primary", "secondary", "offsite")


def build_storage(cfg: dict[str, Any], name: str) -> Storage:
    """The three targets of the default policy, pointed at the local dir, moto and the GCS emulator."""
    if name == "primary":
        from wedsync_backup.storage.local import LocalStorage

        return LocalStorage(cfg["primary_dir"], name="primary", medium="disk", site="bench-local")
    if name == "secondary":
        import boto3
        from wedsync_backup.storage.s3 import S3Storage

        client = boto3.client(
            "s3",
            endpoint_url=cfg["s3_endpoint"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        return S3Storage(
            client, cfg["s3_bucket"], "wedsync", name="secondary", medium="object-storage", site="bench-s3"
        )
    if name == "offsite":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        from wedsync_backup.storage.gcs import GCSStorage

        # the endpoint comes from STORAGE_EMULATOR_HOST, which the benchmark sets for every stage
        client = storage.Client(project="wedsync-dev", credentials=AnonymousCredentials())
        return GCSStorage(
            client, cfg["gcs_bucket"], "wedsync", name="offsite", medium="object-storage", site="bench-gcs"
        )
    raise ValueError(f"unknown target {name}")


def _keyring(cfg: dict[str, Any]) -> Keyring:
    return Keyring(base64.b64decode(cfg["master_key"]))


def _pending(cfg: dict[str, Any]) -> Manifest:
    data = build_storage(cfg, "primary").get_bytes(pending_manifest_key(cfg["backup_id"]))
    return Manifest.from_bytes(data)


def stage_export(cfg: dict[str, Any], _: str | None) -> dict[str, Any]:
    """With ``cfg["slot"]``, the full starts an incremental chain, as BackupDatabaseOperator does it."""
    src = PgTarget(port=cfg["port"], dbname=cfg["source_db"], label="wedsync_source")
    extra: dict[str, Any] = {}
    if cfg.get("slot"):
        from wedsync_backup.incremental import schema_fingerprint
        from wedsync_backup.logical.slot import ensure_replica_identity

        extra["replica_identity_full_set"] = ensure_replica_identity(src)
        extra["schema_fingerprint"] = schema_fingerprint(src)
    m = run_export(
        src,
        build_storage(cfg, "primary"),
        _keyring(cfg),
        backup_id=cfg["backup_id"],
        options=ExportOptions(workers=2, slot=cfg.get("slot")),  # the policy's default zstd level
        extra=extra,
    )
    return {
        "rows": m.total_rows,
        "plain_bytes": m.plain_bytes,
        "stored_bytes": m.stored_bytes,
        "objects": len(m.objects()),
        "tables": len(m.tables),
    }


def stage_replicate(cfg: dict[str, Any], target: str | None) -> dict[str, Any]:
    from wedsync_backup.replicate import replicate

    assert target
    return replicate(_pending(cfg), build_storage(cfg, "primary"), build_storage(cfg, target)).as_dict()


def stage_verify(cfg: dict[str, Any], target: str | None) -> dict[str, Any]:
    from wedsync_backup.verify import verify_copy

    assert target
    r = verify_copy(_pending(cfg), build_storage(cfg, target), _keyring(cfg))
    return {
        "target": target,
        "objects": r.object_count,
        "stored_bytes": r.stored_bytes,
        "verified": r.verified,
    }


def stage_commit(cfg: dict[str, Any], _: str | None) -> dict[str, Any]:
    """What CommitBackupOperator does minus the catalog: the manifest on every target, read back."""
    manifest = _pending(cfg)
    data = manifest.to_bytes()
    for name in TARGETS:
        storage = build_storage(cfg, name)
        storage.put_bytes(manifest_key(cfg["backup_id"]), data)
        if storage.get_bytes(manifest_key(cfg["backup_id"])) != data:
            raise RuntimeError(f"manifest did not read back intact from {name}")
    build_storage(cfg, "primary").delete([pending_manifest_key(cfg["backup_id"])])
    return {"manifest_sha256": hashlib.sha256(data).hexdigest(), "manifest_bytes": len(data)}


def stage_restore(cfg: dict[str, Any], target: str | None) -> dict[str, Any]:
    from wedsync_backup.restore import restore_backup

    storage = build_storage(cfg, target or "primary")
    m = Manifest.from_bytes(storage.get_bytes(manifest_key(cfg["backup_id"])))
    dest = PgTarget(port=cfg["port"], dbname=cfg["restore_db"], label="restore_target")
    return restore_backup(m, storage, _keyring(cfg), dest, workers=2).as_dict()


def stage_capture(cfg: dict[str, Any], _: str | None) -> dict[str, Any]:
    """The incremental's capture task: the slot's changes since the full, to the primary (pending manifest)."""
    from wedsync_backup.incremental import capture_incremental

    primary = build_storage(cfg, "primary")
    parent = Manifest.from_bytes(primary.get_bytes(manifest_key(cfg["full_id"])))
    m = capture_incremental(
        PgTarget(port=cfg["port"], dbname=cfg["source_db"], label="wedsync_source"),
        primary,
        _keyring(cfg),
        backup_id=cfg["backup_id"],
        parent=parent,
        chain=[cfg["full_id"]],
        slot=cfg["slot"],
        zstd_level=3,
    )
    return {
        "stored_bytes": m.stored_bytes,
        "plain_bytes": m.plain_bytes,
        "changes": m.extra["changes"],
        "transactions": m.extra["transactions"],
        "per_table": m.extra["per_table"],
        "start_lsn": m.extra["start_lsn"],
        "end_lsn": m.extra["end_lsn"],
    }


def stage_pitr(cfg: dict[str, Any], target: str | None) -> dict[str, Any]:
    """Point-in-time restore: the full, then the incremental replayed up to ``cfg["until"]``, then sequences."""
    import time
    from datetime import datetime

    from wedsync_backup.pitr import apply_chain, bump_sequences
    from wedsync_backup.restore import restore_backup

    storage = build_storage(cfg, target or "primary")
    full = Manifest.from_bytes(storage.get_bytes(manifest_key(cfg["full_id"])))
    inc = Manifest.from_bytes(storage.get_bytes(manifest_key(cfg["backup_id"])))
    dest = PgTarget(port=cfg["port"], dbname=cfg["restore_db"], label="restore_target")
    t0 = time.monotonic()
    restored = restore_backup(full, storage, _keyring(cfg), dest, workers=2)
    t1 = time.monotonic()
    applied = apply_chain(dest, [(inc, storage)], _keyring(cfg), until=datetime.fromisoformat(cfg["until"]))
    t2 = time.monotonic()
    bumped = bump_sequences(dest)
    t3 = time.monotonic()
    return {
        "restore_seconds": t1 - t0,
        "apply_seconds": t2 - t1,
        "bump_seconds": t3 - t2,
        "rows": restored.rows,
        "replayed_transactions": applied.transactions,
        "replayed_changes": applied.changes,
        "stopped_at": applied.stopped_at,
        "sequences_bumped": len(bumped),
    }


STAGES = {
    "export": stage_export,
    "replicate": stage_replicate,
    "verify": stage_verify,
    "commit": stage_commit,
    "restore": stage_restore,
    "capture": stage_capture,
    "pitr": stage_pitr,
}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stage, cfg_path, out_path = argv[:3]
    target = argv[3] if len(argv) > 3 else None
    cfg = json.loads(Path(cfg_path).read_text())
    result = STAGES[stage](cfg, target)
    Path(out_path).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
