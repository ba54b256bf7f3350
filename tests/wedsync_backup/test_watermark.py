"""The updated_at watermark fallback: what it captures, and that it says what it does not."""

from __future__ import annotations

import os
from pathlib import Path

from wedsync_backup.crypto import Keyring
from wedsync_backup.export import run_export
from wedsync_backup.manifest import manifest_key
from wedsync_backup.pitr import plan_chain, restore_to_point
from wedsync_backup.policy import IncrementalPolicy
from wedsync_backup.repository import committed_manifests
from wedsync_backup.watermark import WARNING, capture_watermark

from devstack.postgres import Cluster
from tests.wedsync_backup.test_export import local_store, pg_target
from tests.wedsync_backup.test_incremental import drop_db, new_db, write

SCHEMA = """
CREATE TABLE guests (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text,
                     updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE notes (body text);  -- no watermark column, no key: cannot be captured
INSERT INTO guests (name) SELECT 'guest ' || g FROM generate_series(1, 50) g;
INSERT INTO notes VALUES ('n1');
"""


def test_watermark_chain_captures_inserts_and_updates_but_says_deletes_are_not(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    db = new_db(pg_cluster, SCHEMA)
    restored = new_db(pg_cluster, "")
    try:
        src, store, ring = (
            pg_target(pg_cluster, db, "src"),
            local_store(tmp_path / "repo", "primary"),
            Keyring(os.urandom(32)),
        )
        full = run_export(src, store, ring, backup_id="full-wm")
        store.put_bytes(manifest_key(full.backup_id), full.to_bytes())
        write(pg_cluster, db, "UPDATE guests SET name = 'renamed', updated_at = now() WHERE id <= 5")
        write(pg_cluster, db, "INSERT INTO guests (name) VALUES ('late arrival')")
        write(pg_cluster, db, "DELETE FROM guests WHERE id = 40")
        inc = capture_watermark(src, store, ring, backup_id="inc-wm", parent=full, chain=[full.backup_id])
        store.put_bytes(manifest_key(inc.backup_id), inc.to_bytes())

        assert inc.extra["captures_deletes"] is False
        assert inc.extra["warning"] == WARNING
        assert inc.extra["not_captured"] == ["public.notes"]
        assert inc.extra["per_table"]["public.guests"]["upsert"] >= 6

        plan = plan_chain(committed_manifests(store), None)
        restore_to_point(plan, store, ring, pg_target(pg_cluster, restored, "restored"))
        with pg_target(pg_cluster, restored, "r").connect() as conn:
            renamed = conn.execute("SELECT count(*) FROM guests WHERE name = 'renamed'").fetchone()[0]
            late = conn.execute("SELECT count(*) FROM guests WHERE name = 'late arrival'").fetchone()[0]
            deleted_still_there = conn.execute("SELECT count(*) FROM guests WHERE id = 40").fetchone()[0]
        assert (renamed, late) == (5, 1)
        assert deleted_still_there == 1  # the documented limit of the fallback
        # a second capture (a retry of the overlap window) is idempotent: upserts, no duplicates
        inc2 = capture_watermark(src, store, ring, backup_id="inc-wm2", parent=inc, chain=inc.extra["chain"])
        store.put_bytes(manifest_key(inc2.backup_id), inc2.to_bytes())
        again = new_db(pg_cluster, "")
        try:
            restore_to_point(
                plan_chain(committed_manifests(store), None), store, ring, pg_target(pg_cluster, again, "a")
            )
            with pg_target(pg_cluster, again, "a").connect() as conn:
                assert conn.execute("SELECT count(*) FROM guests").fetchone()[0] == 51
        finally:
            drop_db(pg_cluster, again)
    finally:
        drop_db(pg_cluster, db)
        drop_db(pg_cluster, restored)


def test_policy_picks_the_method_and_never_falls_back_silently() -> None:
    assert IncrementalPolicy().mode(None) == "logical"
    assert IncrementalPolicy().mode("wal_level is 'replica'") == "none"
    assert IncrementalPolicy(fallback="updated_at").mode("wal_level is 'replica'") == "watermark"
    assert IncrementalPolicy(method="watermark").mode(None) == "watermark"
    assert IncrementalPolicy(method="logical").mode("no REPLICATION") == "none"
    assert IncrementalPolicy(enabled=False).mode(None) == "none"
