"""The policy loader: environment overrides, validation errors that name the field, priority lookup."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from wedsync_backup.errors import ConfigError
from wedsync_backup.policy import DEFAULT_POLICY_PATH, POLICY_ENV, Policy, load_policy

DEFAULT = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())


def write_policy(tmp_path: Path, edit: Any = None) -> Path:
    """The shipped policy, changed by ``edit(raw)``, written to a temp file."""
    raw = copy.deepcopy(DEFAULT)
    if edit:
        edit(raw)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def load(tmp_path: Path, edit: Any = None, env: dict[str, str] | None = None) -> Policy:
    return load_policy(write_policy(tmp_path, edit), env=env or {})


def test_the_shipped_policy_loads() -> None:
    p = load_policy(env={})
    assert [t.name for t in p.targets] == ["primary", "secondary", "offsite"]
    assert [t.kind for t in p.targets] == ["local", "s3", "gcs"]
    assert p.primary.name == "primary"
    assert p.target("secondary").bucket == "wedsync-backups"
    assert p.target("offsite").prefix == "wedsync"
    assert p.source_conn_id == "wedsync_source" and p.exclude_schemas == ()
    assert p.tiers["full"].retention_days == 30
    assert p.rule_321.enforce is True


def test_environment_overrides_bucket_names() -> None:
    env = {"WEDSYNC_BACKUP_S3_BUCKET": "s3-from-env", "WEDSYNC_BACKUP_GCS_BUCKET": "gcs-from-env"}
    p = load_policy(env=env)
    assert p.target("secondary").bucket == "s3-from-env"
    assert p.target("offsite").bucket == "gcs-from-env"
    # an empty variable does not blank the bucket
    p = load_policy(env={"WEDSYNC_BACKUP_S3_BUCKET": ""})
    assert p.target("secondary").bucket == "wedsync-backups"


def test_policy_path_from_environment(tmp_path: Path) -> None:
    path = write_policy(tmp_path, lambda r: r["source"].update(site="elsewhere"))
    assert load_policy(env={POLICY_ENV: str(path)}).source_site == "elsewhere"


def test_bucket_may_come_only_from_the_environment(tmp_path: Path) -> None:
    def no_bucket(raw: dict[str, Any]) -> None:
        del raw["targets"]["secondary"]["bucket"]

    p = load(tmp_path, no_bucket, env={"WEDSYNC_BACKUP_S3_BUCKET": "only-env"})
    assert p.target("secondary").bucket == "only-env"
    with pytest.raises(ConfigError, match="'secondary' has no bucket") as e:
        load(tmp_path, no_bucket)
    assert "targets.secondary.bucket" in e.value.fix and "WEDSYNC_BACKUP_S3_BUCKET" in e.value.fix


def test_unknown_kind_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'offsite' has unknown kind 'ftp'") as e:
        load(tmp_path, lambda r: r["targets"]["offsite"].update(kind="ftp"))
    assert "local, s3, gcs" in e.value.fix


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r["targets"]["primary"].pop("kind"), "targets.primary.kind"),
        (lambda r: r["targets"]["primary"].update(conn_id=""), "targets.primary.conn_id"),
        (lambda r: r["targets"]["secondary"].pop("medium"), "targets.secondary.medium"),
        (lambda r: r["targets"]["offsite"].pop("site"), "targets.offsite.site"),
        (lambda r: r["source"].pop("conn_id"), "source.conn_id"),
        (lambda r: r.pop("catalog"), "catalog.conn_id"),
        (lambda r: r["encryption"].update(conn_id=None), "encryption.conn_id"),
    ],
)
def test_missing_field_is_named(tmp_path: Path, edit: Any, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, edit)
    assert f"'{field}'" in str(e.value)
    assert field in e.value.fix


def test_bad_priority_group_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown priority groups \['urgent'\]"):
        load(tmp_path, lambda r: r["priorities"].update(urgent=["users"]))


def test_other_mistakes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="defines no targets"):
        load(tmp_path, lambda r: r.update(targets={}))
    with pytest.raises(ConfigError, match=r"export\.workers"):
        load(tmp_path, lambda r: r.update(export={"workers": 0}))
    with pytest.raises(ConfigError, match="not found") as e:
        load_policy(tmp_path / "missing.yaml", env={})
    assert POLICY_ENV in e.value.fix
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy(bad, env={})
    with pytest.raises(ConfigError, match="Unknown backup target 'tape'") as e:
        load_policy(env={}).target("tape")
    assert "primary, secondary, offsite" in str(e.value)


def test_priority_of_bare_and_schema_qualified_names(tmp_path: Path) -> None:
    def prio(raw: dict[str, Any]) -> None:
        raw["priorities"] = {"critical": ["users", "billing.invoices"], "high": ["forms", "Wedding Data.Guest List"]}

    p = load(tmp_path, prio)
    assert p.priority_of("public", "users") == "critical"
    assert p.priority_of("tenant_42", "users") == "critical"  # a bare name matches in any schema
    assert p.priority_of("billing", "invoices") == "critical"
    assert p.priority_of("public", "invoices") == "standard"  # a qualified name only in its schema
    assert p.priority_of("public", "forms") == "high"
    assert p.priority_of("Wedding Data", "Guest List") == "high"
    assert p.priority_of("wedding data", "Guest List") == "standard"
    assert p.priority_of("public", "misc_notes") == "standard"  # unlisted: standard, never excluded


def test_empty_priority_group_is_allowed(tmp_path: Path) -> None:
    p = load(tmp_path, lambda r: r["priorities"].update(high=None))
    assert p.priorities["high"] == ()
    assert p.priority_of("public", "forms") == "standard"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r.update(export={"workers": "two"}), "export.workers"),
        (lambda r: r["compression"].update(zstd_level="max"), "compression.zstd_level"),
        (lambda r: r["tiers"]["full"].update(retention_days="a month"), "tiers.full.retention_days"),
        (lambda r: r["targets"].update(primary=None), "targets.primary"),
        (lambda r: r["priorities"].update(critical="users"), "priorities.critical"),
    ],
    ids=["workers", "zstd_level", "retention_days", "null_target", "priority_string"],
)
def test_wrongly_typed_value_is_named(tmp_path: Path, edit: Any, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, edit)
    assert field in str(e.value)


# --- targets by role -----------------------------------------------------------------------------------------
def test_targets_by_role() -> None:
    p = load_policy(env={})
    assert p.roles() == {"primary": "primary", "secondary": "secondary", "offsite": "offsite"}
    assert [t.name for t in p.replicas] == ["secondary", "offsite"]


def test_a_fourth_target_and_default_roles(tmp_path: Path) -> None:
    def add(raw: dict[str, Any]) -> None:
        raw["targets"]["nas"] = {"kind": "local", "conn_id": "backup_nas", "medium": "nas", "site": "dc-primary"}
        raw["targets"]["cold"] = {"kind": "local", "conn_id": "backup_cold", "medium": "tape", "site": "vault"}

    p = load(tmp_path, add)
    assert p.target_names == ("primary", "secondary", "offsite", "nas", "cold")
    assert p.target("nas").role == "secondary" and p.target("cold").role == "offsite"  # by site


def test_the_primary_is_listed_first_wherever_it_is_written(tmp_path: Path) -> None:
    def move(raw: dict[str, Any]) -> None:
        primary = raw["targets"].pop("primary")
        raw["targets"]["disk"] = {**primary, "role": "primary"}

    p = load(tmp_path, move)
    assert p.primary.name == "disk" and p.target_names == ("disk", "secondary", "offsite")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["targets"]["secondary"].update(role="primary"), "2 primary targets"),
        (lambda r: r["targets"]["primary"].update(role="offsite"), "0 primary targets"),
        (lambda r: r["targets"]["offsite"].update(role="tape"), "unknown role 'tape'"),
    ],
)
def test_roles_are_validated(tmp_path: Path, edit: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, edit)
