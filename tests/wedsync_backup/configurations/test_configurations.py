"""The configurations component of a full backup, on real components: stored on every target, verified,
listed, never in plaintext; and ``python -m wedsync_backup.configurations`` as an on-call engineer runs it after
losing Airflow (a subprocess against S3 over the wire, the GCS emulator and the primary directory)."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from airflow.secrets.local_filesystem import load_connections_dict, load_variables
from wedsync_backup.catalog import Catalog
from wedsync_backup.configurations.restore import (
    ConfigurationRestoreRequest,
    apply_configuration_restore,
    find_configurations,
    plan_configuration_restore,
)
from wedsync_backup.configurations.store import configurations_prefix, store_configurations
from wedsync_backup.errors import ConfigError
from wedsync_backup.pg import target_from_conninfo
from wedsync_backup.repository import read_manifest
from wedsync_backup.verify import verify_copies

from devstack.postgres import Cluster
from devstack.services import FAKE_AWS_KEY, FAKE_AWS_SECRET, S3_REGION
from tests.fixtures.airflow import Stack
from tests.wedsync_backup.configurations.fixtures import SECRET, SETTINGS, VAR_SECRET, Backed, bundle


def test_every_target_holds_the_verified_component(backed: Backed) -> None:
    w = backed.world
    stored = backed.stored
    assert stored.connections == ["backup_primary", "wedsync_source"] and stored.variables == ["wedsync_alert_token"]
    assert stored.tables == {"public.wedding_backup_settings": len(SETTINGS)}
    assert stored.missing == ["connection drill_target"] and not stored.already_stored
    for storage in w.storages.values():
        m = read_manifest(storage, backed.backup_id)
        c = m.configurations
        assert c is not None and c.tables_conn_id == "backup_catalog" and m.components == ["database", "configurations"]
        keys = {o.key for o in storage.list(configurations_prefix(backed.backup_id))}
        assert {o.key for o in c.objects()} == keys and len(keys) == 4
    replicas = verify_copies(m, list(w.storages.values()), w.ring)  # decrypts every chunk of every object
    assert all(r["verified"] for r in replicas)
    row = w.catalog.get_backup(backed.backup_id)
    assert row is not None and row["status"] == "completed"
    assert row["components_backed_up"] == ["database", "configurations"]


def test_a_retry_changes_nothing(backed: Backed) -> None:
    res = backed.world.resources()
    assert backed.retried.already_stored and backed.retried.manifest_sha256 == backed.stored.manifest_sha256
    # after the commit too (an export retried after the commit reports the committed manifest)
    again = store_configurations(res, backed.backup_id, backed.stored.manifest_sha256, bundle())
    assert again.already_stored and again.manifest_sha256 == backed.stored.manifest_sha256
    # a committed backup is never touched again, whatever checksum a stale task hands over
    assert store_configurations(res, backed.backup_id, "0" * 64, bundle()).already_stored
    assert read_manifest(res.primary(), backed.backup_id).sha256() == backed.stored.manifest_sha256


def test_read_back_from_each_target(backed: Backed) -> None:
    w = backed.world
    for name, storage in w.storages.items():
        found = find_configurations(storage, w.ring)  # latest
        assert found.manifest.backup_id == backed.backup_id, name
        conns = json.loads(found.read(found.section.connections))
        assert conns["wedsync_source"]["password"] == SECRET
        assert json.loads(found.read(found.section.variables)) == {"wedsync_alert_token": VAR_SECRET}
        assert found.read(found.section.policy).decode() == bundle().policy_text


def test_secrets_never_in_plaintext(backed: Backed, caplog: pytest.LogCaptureFixture) -> None:
    """Not in any stored byte on any target, nor in the catalog, the task result or the logs."""
    w = backed.world
    secrets = (SECRET.encode(), VAR_SECRET.encode())
    for storage in w.storages.values():
        for obj in storage.list("backups/"):
            data = storage.get_bytes(obj.key)
            assert not any(s in data for s in secrets), (storage.name, obj.key)
    with w.catalog.connect() as conn:
        tables = [r["tablename"] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for t in tables:
            text = conn.execute(f"SELECT coalesce(string_agg(x::text, chr(10)), '') AS t FROM \"{t}\" x").fetchone()
            assert SECRET not in text["t"] and VAR_SECRET not in text["t"], t
    assert SECRET not in json.dumps(backed.stored.as_dict()) and SECRET not in repr(bundle())
    caplog.set_level(logging.DEBUG)
    res = w.resources()
    store_configurations(res, backed.backup_id, backed.stored.manifest_sha256, bundle())
    find_configurations(w.storages["offsite"], w.ring).read(
        read_manifest(w.storages["offsite"], backed.backup_id).configurations.connections
    )  # type: ignore[union-attr]
    assert caplog.records and not any(SECRET in r.getMessage() or VAR_SECRET in r.getMessage() for r in caplog.records)


PLUGINS = Path(__file__).resolve().parents[3] / "plugins"


def cli(backed: Backed, tmp_path: Path, repository: str, *args: str) -> subprocess.CompletedProcess[str]:
    key_file = tmp_path / "master.key"
    key_file.write_text(base64.b64encode(backed.master_key).decode())
    key_file.chmod(0o600)
    env = {
        **os.environ,  # STORAGE_EMULATOR_HOST (the GCS emulator) is set by the targets' fixture
        "PYTHONPATH": str(PLUGINS),
        "AWS_ACCESS_KEY_ID": FAKE_AWS_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET,
        "AWS_DEFAULT_REGION": S3_REGION,
    }
    cmd = [sys.executable, "-m", "wedsync_backup.configurations", args[0], "--repository", repository]
    cmd += ["--key-file", str(key_file), *args[1:]]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_restore_from_s3_writes_what_airflow_imports(backed: Backed, tmp_path: Path, fresh_catalog: str) -> None:
    s3 = backed.world.storages["secondary"]
    out = tmp_path / "restored"
    repo = f"s3://{s3.bucket}/{s3.prefix}"  # type: ignore[attr-defined]
    endpoint = s3.client.meta.endpoint_url  # type: ignore[attr-defined]
    done = cli(
        backed, tmp_path, repo, "restore", "--endpoint-url", endpoint, "--out", str(out), "--tables-dsn", fresh_catalog
    )
    assert done.returncode == 0, done.stderr
    assert "add --apply-tables" in done.stderr  # the tables were checked, not touched
    with psycopg.connect(fresh_catalog) as conn:
        assert conn.execute("SELECT count(*) FROM wedding_backup_settings").fetchone() == (0,)
    assert "secrets in plaintext" in done.stderr and SECRET not in done.stderr + done.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("connections.json", "variables.json", "backup_policy.yaml"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    # Airflow's own loaders (what `airflow connections import` / `airflow variables import` call) read them
    conns = load_connections_dict(str(out / "connections.json"))
    assert sorted(conns) == ["backup_primary", "wedsync_source"]
    src = conns["wedsync_source"]
    assert (src.conn_type, src.host, src.login, src.password, src.port) == (
        "postgres",
        "db.internal",
        "wedsync",
        SECRET,
        5432,
    )
    assert src.extra_dejson == {"sslmode": "require"} and src.schema == "wedsync"
    assert conns["backup_primary"].extra_dejson == {"path": "/var/backups/wedsync"}
    assert load_variables(str(out / "variables.json")) == {"wedsync_alert_token": VAR_SECRET}
    assert (out / "backup_policy.yaml").read_text() == bundle().policy_text


def test_stdout_from_gcs_and_show_from_the_primary(backed: Backed, tmp_path: Path) -> None:
    gcs = backed.world.storages["offsite"]
    done = cli(
        backed, tmp_path, f"gs://{gcs.bucket}/{gcs.prefix}", "restore", "--backup-id", backed.backup_id, "--out", "-"
    )  # type: ignore[attr-defined]
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["backup_id"] == backed.backup_id and doc["connections"]["wedsync_source"]["password"] == SECRET
    assert "plaintext" in done.stderr
    shown = cli(backed, tmp_path, str(backed.world.storages["primary"].root), "show")  # type: ignore[attr-defined]
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["connections"] == ["backup_primary", "wedsync_source"] and SECRET not in shown.stdout
    assert summary["tables"] == {"public.wedding_backup_settings": len(SETTINGS)}


def test_a_wrong_key_fails_clearly(backed: Backed, tmp_path: Path) -> None:
    primary = str(backed.world.storages["primary"].root)  # type: ignore[attr-defined]
    done = cli(Backed(**{**backed.__dict__, "master_key": os.urandom(32)}), tmp_path, primary, "show")
    assert done.returncode == 1 and "master key" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def fresh_catalog(pg_cluster: Cluster):  # type: ignore[no-untyped-def]
    name = f"cat_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    Catalog(pg_cluster.dsn(name)).migrate()
    yield pg_cluster.dsn(name)
    pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_tables_back_into_a_fresh_catalog(backed: Backed, tmp_path: Path, fresh_catalog: str) -> None:
    """All or nothing: a table whose shape differs refuses the whole restore before a row is touched."""
    primary = str(backed.world.storages["primary"].root)  # type: ignore[attr-defined]
    args = ["restore", "--out", str(tmp_path / "o"), "--tables-dsn", fresh_catalog, "--apply-tables"]
    query = "SELECT wedding_id, wedding_date::text, proximity_days, frequency_minutes FROM wedding_backup_settings"
    with psycopg.connect(fresh_catalog, autocommit=True) as conn:
        conn.execute("INSERT INTO wedding_backup_settings (wedding_id, wedding_date) VALUES ('stale', '2020-01-01')")
        conn.execute("ALTER TABLE wedding_backup_settings DROP COLUMN frequency_minutes")
    refused = cli(backed, tmp_path, primary, *args)
    assert refused.returncode == 1 and "no column(s) frequency_minutes" in refused.stderr
    with psycopg.connect(fresh_catalog, autocommit=True) as conn:
        assert conn.execute("SELECT wedding_id FROM wedding_backup_settings").fetchall() == [("stale",)]
        conn.execute("ALTER TABLE wedding_backup_settings ADD COLUMN frequency_minutes integer NOT NULL DEFAULT 1")
    applied = cli(backed, tmp_path, primary, *args)
    assert applied.returncode == 0 and "Configuration tables restored" in applied.stderr, applied.stderr
    with psycopg.connect(fresh_catalog) as conn:
        assert sorted(conn.execute(query).fetchall()) == SETTINGS  # replaced, not merged


# --- restore_configuration: the DAG's command, and the real `airflow connections import` -------------------------
class RecordingImporter:
    """The Airflow side of a restore, recorded (the real one needs a running task; its connections import is
    tested for real below)."""

    def __init__(self, defined: set[str]) -> None:
        self.defined = defined
        self.connections: dict[str, Any] = {}
        self.variables: dict[str, Any] = {}

    def is_defined(self, kind: str, name: str) -> bool:
        return f"{kind} {name}" in self.defined

    def import_connections(self, connections_json: bytes) -> list[str]:
        self.connections = json.loads(connections_json)
        return sorted(self.connections)

    def import_variables(self, variables: dict[str, Any]) -> list[str]:
        self.variables = variables
        return sorted(variables)


def test_restore_configuration_plan_then_apply(backed: Backed, fresh_catalog: str, tmp_path: Path) -> None:
    w = backed.world
    w.databases["fresh_catalog"] = target_from_conninfo(fresh_catalog, "fresh_catalog")
    res, importer = w.resources(), RecordingImporter({"connection backup_primary"})
    req = ConfigurationRestoreRequest(from_target="offsite", target_conn_id="fresh_catalog", dry_run=False)
    with pytest.raises(ConfigError, match="confirm to exactly: RESTORE CONFIGURATION"):
        plan_configuration_restore(res, req, importer)
    req.dry_run, req.policy_out = True, str(tmp_path / "policy" / "backup_policy.yaml")
    plan = plan_configuration_restore(res, req, importer)
    assert plan["backup_id"] == backed.backup_id and plan["already_defined"] == ["connection backup_primary"]
    assert plan["tables"] == {"public.wedding_backup_settings": len(SETTINGS)} and SECRET not in json.dumps(plan)
    assert importer.connections == {} and not Path(req.policy_out).exists()  # a plan touches nothing
    req.dry_run, req.confirm, req.backup_id = False, "RESTORE CONFIGURATION", plan["backup_id"]
    done = apply_configuration_restore(res, req, importer)
    assert done["tables_restored"] == {"public.wedding_backup_settings": len(SETTINGS)}
    assert importer.connections["wedsync_source"]["password"] == SECRET and importer.variables["wedsync_alert_token"]
    assert Path(req.policy_out).read_text() == bundle().policy_text and SECRET not in json.dumps(done)
    assert stat.S_IMODE(Path(req.policy_out).stat().st_mode) == 0o600


def test_connections_import_for_real_through_a_pipe(
    backed: Backed, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AirflowImporter runs the real `airflow connections import` on the restored JSON, read from a named
    pipe (no plaintext file), into the stack's metadata database; an existing connection is left alone."""
    from wedsync_airflow.operators.configurations import AirflowImporter

    for k, v in stack.env().items():
        monkeypatch.setenv(k, v)
    for conn_id in ("WEDSYNC_SOURCE", "BACKUP_PRIMARY"):  # defined in the metadata database only (or not at all)
        monkeypatch.delenv(f"AIRFLOW_CONN_{conn_id}", raising=False)
    found = find_configurations(backed.world.storages["primary"], backed.world.ring)
    ids = ("wedsync_source", "backup_primary")
    with psycopg.connect(stack.cluster.dsn(stack.config.airflow_db), autocommit=True) as conn:
        conn.execute("DELETE FROM connection WHERE conn_id = ANY(%s)", (list(ids),))
        conn.execute(
            "INSERT INTO connection (conn_id, conn_type, host, is_encrypted, is_extra_encrypted)"
            " VALUES ('backup_primary', 'fs', 'kept', false, false)"
        )
        try:
            imported = AirflowImporter().import_connections(found.read(found.section.connections))
            rows = conn.execute(
                "SELECT conn_id, conn_type, host, login, password, port, extra FROM connection"
                " WHERE conn_id = ANY(%s) ORDER BY conn_id",
                (list(ids),),
            ).fetchall()
        finally:
            conn.execute("DELETE FROM connection WHERE conn_id = ANY(%s)", (list(ids),))
    assert imported == ["wedsync_source"]
    assert rows[0][:3] == ("backup_primary", "fs", "kept")  # never overwritten
    # the test stack runs without a Fernet key, so the metadata database holds what was imported as is
    assert rows[1][:6] == ("wedsync_source", "postgres", "db.internal", "wedsync", SECRET, 5432)
    assert json.loads(rows[1][6]) == {"sslmode": "require"}
