"""Structure of docker-compose.yaml and docker/Dockerfile (no Docker engine needed).

Nothing is started: the file is parsed with PyYAML and Compose's variable interpolation is
re-implemented just enough to check what the containers would receive.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"

AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
)
REQUIRED_SERVICES = (
    *AIRFLOW_SERVICES,
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "fake-gcs-server",
    "fake-gcs-init",
    "wedsync-source",
    "backup-catalog",
    "drill-scratch",
)
# Services that run once and exit (or only on demand): no healthcheck, never restarted.
ONE_SHOT = {"airflow-init", "airflow-cli", "minio-init", "fake-gcs-init"}
CONNECTIONS = {
    "AIRFLOW_CONN_WEDSYNC_SOURCE": "postgres",
    "AIRFLOW_CONN_BACKUP_CATALOG": "postgres",
    "AIRFLOW_CONN_BACKUP_PRIMARY": "fs",
    "AIRFLOW_CONN_BACKUP_SECONDARY_S3": "aws",
    "AIRFLOW_CONN_BACKUP_OFFSITE_GCS": "google_cloud_platform",
    "AIRFLOW_CONN_BACKUP_ENCRYPTION": "generic",
    "AIRFLOW_CONN_DRILL_TARGET": "postgres",
}
# Named in the policy's (commented) alerts section: set in compose, used once the policy enables them.
ALERT_CONNECTIONS = {"AIRFLOW_CONN_ALERTS_SMTP": "smtp", "AIRFLOW_CONN_ALERTS_WEBHOOK": "http"}
PRIMARY_PATH = "/var/backups/wedsync"
TEST_MASTER_KEY = base64.b64encode(bytes(range(32))).decode()

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(Exception):
    """A `${VAR:?msg}` variable was unset or empty, as `docker compose` would report."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group("braced") if m.group("braced") is not None else m.group("plain")
        op = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?(.*)", expr, re.DOTALL)
        assert op, f"bad interpolation {m.group(0)!r}"
        name, kind, arg = op.group(1), op.group(2), op.group(3)
        current = env.get(name)
        # The colon forms treat an empty value as missing, as Compose does.
        missing = not current if kind in (":-", ":?") else current is None
        if kind in (":?", "?") and missing:
            raise MissingVariable(f"{name}: {arg}")
        if kind in (":-", "-") and missing:
            return arg
        return current or ""

    return _VAR.sub(sub, value)


def variables(value: Any) -> set[str]:
    """Names of every variable a (nested) value refers to."""
    text = json.dumps(value)
    return {
        re.match(r"[A-Za-z_][A-Za-z0-9_]*", m.group("braced") or m.group("plain")).group(0)
        for m in _VAR.finditer(text)
        if m.group(0) != "$$"
    }


def parse_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def filled_env() -> dict[str, str]:
    """.env.example with every empty secret filled in, as an operator would."""
    env = parse_env_file(ENV_EXAMPLE)
    for key, value in env.items():
        if not value:
            env[key] = TEST_MASTER_KEY if key == "WEDSYNC_MASTER_KEY" else f"{key.lower()}-0123456789abcdef"
    return env


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], filled_env: dict[str, str]) -> dict[str, Any]:
    return interpolate(raw, filled_env)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


def test_required_services_exist(services: dict[str, Any]) -> None:
    missing = set(REQUIRED_SERVICES) - set(services)
    assert not missing, f"services missing from docker-compose.yaml: {sorted(missing)}"


def test_airflow_common_anchor_is_used(raw: dict[str, Any]) -> None:
    assert "x-airflow-common" in raw
    common = raw["x-airflow-common"]
    for name in AIRFLOW_SERVICES:
        assert raw["services"][name]["image"] == common["image"], name


def _pinned_tag(image: str) -> str | None:
    """The tag of an image reference, or None when it has none (a digest also counts as pinned)."""
    if "@sha256:" in image:
        return "digest"
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if "build" in svc:
            dockerfile = ROOT / svc["build"].get("context", ".") / svc["build"]["dockerfile"]
            assert dockerfile.resolve() == DOCKERFILE.resolve(), f"{name} builds from {dockerfile}"
            continue
        image = svc.get("image")
        assert image, f"{name} has neither image nor build"
        tag = _pinned_tag(image)
        assert tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} uses latest"
        assert re.search(r"\d", tag), f"{name}: tag {tag} is not an exact version"


def test_dockerfile_extends_pinned_airflow_and_installs_with_lock() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms == ["apache/airflow:3.3.2-python3.11"]
    assert "-r /requirements.txt -c /requirements.lock" in text
    assert "pip install --no-cache-dir" in text
    major = re.search(r"ARG PG_CLIENT_MAJOR=(\d+)", text)
    assert major and int(major.group(1)) >= 15, "pg_dump/pg_restore must be PostgreSQL 15 or newer"
    assert "postgresql-client-${PG_CLIENT_MAJOR}" in text


def test_dockerfile_copies_only_what_the_build_context_sends() -> None:
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+\S+$", DOCKERFILE.read_text(), re.MULTILINE)
    assert sources
    for src in sources:
        assert src in allowed, f"COPY {src} is filtered out by docker/Dockerfile.dockerignore"


def test_dockerfile_copy_sources_exist() -> None:
    for name in ("dags", "plugins", "include"):
        assert (ROOT / name).is_dir(), f"{name}/ is copied into the image but missing"
    missing = [n for n in ("requirements.txt", "requirements.lock") if not (ROOT / n).is_file()]
    if missing:
        pytest.skip(f"{missing} not created yet (the image build needs them)")


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert str(svc.get("restart", "no")) == "no", f"one-shot {name} must not restart"
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} runs permanently but has no healthcheck"
        assert svc.get("restart") in ("always", "unless-stopped"), f"{name} is not restarted"


def test_depends_on_waits_for_health_or_completion(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec.get("condition")
            if dep in ONE_SHOT:
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}"
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"


def test_airflow_services_depend_on_init_and_infrastructure(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        assert {"postgres", "redis"} <= set(deps), name
        if name != "airflow-init":
            assert "airflow-init" in deps, f"{name} must wait for the migration"
    worker = set(services["airflow-worker"]["depends_on"])
    assert {"wedsync-source", "backup-catalog", "minio-init", "fake-gcs-init"} <= worker


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """target -> source for short-syntax volumes."""
    out = {}
    for vol in svc.get("volumes") or []:
        parts = vol.split(":")
        out[parts[1]] = parts[0]
    return out


def test_airflow_services_mount_code_and_shared_primary(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name in AIRFLOW_SERVICES:
        mounts = _mounts(compose["services"][name])
        for folder in ("dags", "plugins", "include"):
            assert mounts.get(f"/opt/airflow/{folder}") == f"./{folder}", f"{name} lacks ./{folder}"
        source = mounts.get(PRIMARY_PATH)
        assert source in named, f"{name}: {PRIMARY_PATH} must be the shared named volume, got {source}"
    sources = {_mounts(compose["services"][n])[PRIMARY_PATH] for n in AIRFLOW_SERVICES}
    assert len(sources) == 1, f"Airflow services see different primary volumes: {sources}"


def test_bind_mount_sources_exist(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for target, source in _mounts(svc).items():
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source} at {target}, missing in the repo"
        build = svc.get("build")
        if build:
            assert (ROOT / build.get("context", ".")).is_dir()


def test_airflow_configuration(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
        assert env["AIRFLOW__CORE__FERNET_KEY"], "fernet key must come from .env"
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], "all components must share one JWT secret"
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].endswith(":admin")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")
        assert env["STORAGE_EMULATOR_HOST"] == "http://fake-gcs-server:4443"
        assert env["WEDSYNC_BACKUP_S3_BUCKET"] and env["WEDSYNC_BACKUP_GCS_BUCKET"]


def test_secrets_come_from_env(raw: dict[str, Any]) -> None:
    env = raw["x-airflow-common"]["environment"]
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", env[key]), f"{key} must be a required ${{VAR}}"


def test_apiserver_on_8080(services: dict[str, Any]) -> None:
    ports = [str(p) for p in services["airflow-apiserver"]["ports"]]
    assert any(p.endswith("8080:8080") for p in ports)


@pytest.mark.parametrize("var,conn_type", sorted({**CONNECTIONS, **ALERT_CONNECTIONS}.items()))
def test_connections_are_json_with_right_type(services: dict[str, Any], var: str, conn_type: str) -> None:
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert var in env, f"{name} lacks {var}"
        conn = json.loads(env[var])
        assert conn["conn_type"] == conn_type, f"{var} in {name}"


def test_connection_details(services: dict[str, Any]) -> None:
    env = env_of(services["airflow-worker"])
    conns = {var: json.loads(env[var]) for var in CONNECTIONS}
    assert conns["AIRFLOW_CONN_BACKUP_PRIMARY"]["extra"]["path"] == PRIMARY_PATH
    s3 = conns["AIRFLOW_CONN_BACKUP_SECONDARY_S3"]
    assert s3["extra"]["endpoint_url"] == "http://minio:9000"
    assert s3["login"] and s3["password"]
    assert conns["AIRFLOW_CONN_BACKUP_OFFSITE_GCS"]["extra"]["is_anonymous"] is True
    assert conns["AIRFLOW_CONN_WEDSYNC_SOURCE"]["host"] == "wedsync-source"
    catalog = conns["AIRFLOW_CONN_BACKUP_CATALOG"]
    assert (catalog["host"], catalog["schema"]) == ("backup-catalog", "backup_catalog")
    key = base64.b64decode(conns["AIRFLOW_CONN_BACKUP_ENCRYPTION"]["password"], validate=True)
    assert len(key) == 32


def test_connection_logins_match_their_servers(services: dict[str, Any]) -> None:
    env = env_of(services["airflow-worker"])
    pairs = {
        "AIRFLOW_CONN_WEDSYNC_SOURCE": "wedsync-source",
        "AIRFLOW_CONN_BACKUP_CATALOG": "backup-catalog",
        "AIRFLOW_CONN_DRILL_TARGET": "drill-scratch",
    }
    for var, server in pairs.items():
        conn = json.loads(env[var])
        pg = env_of(services[server])
        assert conn["login"] == pg["POSTGRES_USER"], var
        assert conn["password"] == pg["POSTGRES_PASSWORD"], var
        assert conn["schema"] == pg["POSTGRES_DB"], var
    s3 = json.loads(env["AIRFLOW_CONN_BACKUP_SECONDARY_S3"])
    init = env_of(services["minio-init"])
    assert (s3["login"], s3["password"]) == (init["S3_ACCESS_KEY"], init["S3_SECRET_KEY"])
    assert init["BUCKET"] == env["WEDSYNC_BACKUP_S3_BUCKET"]
    assert env_of(services["fake-gcs-init"])["BUCKET"] == env["WEDSYNC_BACKUP_GCS_BUCKET"]


def test_master_key_is_never_a_literal(raw: dict[str, Any], filled_env: dict[str, str]) -> None:
    value = raw["x-airflow-common"]["environment"]["AIRFLOW_CONN_BACKUP_ENCRYPTION"]
    password = json.loads(value)["password"]
    assert re.fullmatch(r"\$\{WEDSYNC_MASTER_KEY:\?[^}]*\}", password), password
    # Nothing in the file looks like a base64 32-byte key.
    assert not re.search(r"[A-Za-z0-9+/]{43}=", COMPOSE_FILE.read_text())
    assert parse_env_file(ENV_EXAMPLE)["WEDSYNC_MASTER_KEY"] == ""
    # Without the key compose must refuse to start rather than encrypt with an empty one.
    without = {k: v for k, v in filled_env.items() if k != "WEDSYNC_MASTER_KEY"}
    with pytest.raises(MissingVariable, match="WEDSYNC_MASTER_KEY"):
        interpolate(value, without)
    with pytest.raises(MissingVariable):
        interpolate(value, {**without, "WEDSYNC_MASTER_KEY": ""})


def test_env_example_lists_every_variable(raw: dict[str, Any]) -> None:
    documented = set(parse_env_file(ENV_EXAMPLE))
    used = variables(raw)
    assert used - documented == set(), "add these to .env.example"


def test_source_has_logical_wal(services: dict[str, Any]) -> None:
    command = services["wedsync-source"]["command"]
    text = " ".join(command) if isinstance(command, list) else command
    assert "wal_level=logical" in text


def test_policy_buckets_match_defaults() -> None:
    policy = yaml.safe_load((ROOT / "include" / "config" / "backup_policy.yaml").read_text())
    env = parse_env_file(ENV_EXAMPLE)
    assert env["WEDSYNC_BACKUP_S3_BUCKET"] == policy["targets"]["secondary"]["bucket"]
    assert env["WEDSYNC_BACKUP_GCS_BUCKET"] == policy["targets"]["offsite"]["bucket"]
    ids = {t["conn_id"] for t in policy["targets"].values()}
    ids |= {policy["source"]["conn_id"], policy["catalog"]["conn_id"], policy["encryption"]["conn_id"]}
    ids |= {policy["drills"]["conn_id"]}
    assert {f"AIRFLOW_CONN_{i.upper()}" for i in ids} == set(CONNECTIONS)
    # the alerts section is commented out until an operator enables it: its connection ids are the ones set
    text = (ROOT / "include" / "config" / "backup_policy.yaml").read_text()
    alert_ids = set(re.findall(r"conn_id: (alerts_\w+)", text))
    assert {f"AIRFLOW_CONN_{i.upper()}" for i in alert_ids} == set(ALERT_CONNECTIONS)


def test_alert_connections_are_usable_as_filled_in(services: dict[str, Any]) -> None:
    env = env_of(services["airflow-worker"])
    smtp = json.loads(env["AIRFLOW_CONN_ALERTS_SMTP"])
    assert smtp["host"] and isinstance(smtp["port"], int) and smtp["extra"]["from_email"]
    assert json.loads(env["AIRFLOW_CONN_ALERTS_WEBHOOK"])["host"].startswith("https://")


def test_interpolation_helper() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("$$A ${A} $A ${B:-x} ${E:-y} ${E-z}", env) == "$A 1 1 x y "
    with pytest.raises(MissingVariable):
        interpolate("${E:?need E}", env)
