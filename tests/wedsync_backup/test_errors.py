"""Errors are classified by cause: what a retry can outlive is transient, everything a person must fix is not."""

from __future__ import annotations

import errno

import psycopg
import psycopg.errors as pgerr
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from wedsync_backup.errors import (
    ConfigError,
    CryptoError,
    IntegrityError,
    MissingTargetError,
    StorageError,
    TransientError,
    is_transient,
)
from wedsync_backup.pg import PgTarget, tool_error
from wedsync_backup.storage.local import LocalStorage
from wedsync_backup.storage.s3 import S3Storage


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (pgerr.AdminShutdown("terminating connection due to administrator command"), True),  # 57P01: restart
        (pgerr.CannotConnectNow("the database system is starting up"), True),  # 57P03
        (pgerr.ConnectionFailure("server closed the connection"), True),  # 08006
        (pgerr.TooManyConnections("sorry, too many clients already"), True),  # 53300
        (pgerr.SerializationFailure("could not serialize"), True),  # 40001
        (pgerr.InvalidPassword('password authentication failed for user "x"'), False),  # 28P01
        (pgerr.InvalidCatalogName('database "x" does not exist'), False),  # 3D000
        (pgerr.InsufficientPrivilege("permission denied for table t"), False),  # 42501
        (pgerr.DiskFull("could not extend file"), False),  # 53100: a person must free space
        (psycopg.OperationalError('connection to server at "127.0.0.1", port 5 failed: Connection refused'), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.OperationalError("connection failed: certificate verify failed"), False),
        (psycopg.OperationalError('could not translate host name "nope" to address'), False),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ConfigError("bad param"), False),
        (CryptoError("wrong key"), False),
        (IntegrityError("damaged"), False),
        (MissingTargetError("no bucket"), False),
        (StorageError("endpoint unreachable"), True),
        (TransientError("restarting"), True),
    ],
)
def test_classified_by_cause(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_connection_errors_name_the_fix_and_say_if_a_retry_helps() -> None:
    target = PgTarget(port=5, label="wedsync_source")
    refused = target.connect_error(psycopg.OperationalError("connection to server failed: Connection refused"))
    assert refused.transient and "wedsync_source" in str(refused)
    denied = target.connect_error(pgerr.InvalidPassword('password authentication failed for user "postgres"'))
    assert isinstance(denied, ConfigError) and not denied.transient and "password" in str(denied)
    crashed = tool_error("pg_dump", target, 1, "pg_dump: error: server closed the connection unexpectedly", "schema")
    assert crashed.transient and "wedsync_source" in str(crashed)
    assert not tool_error("pg_dump", target, 1, "pg_dump: error: permission denied for table t", "schema").transient


def test_storage_errors_by_cause(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s3 = S3Storage.__new__(S3Storage)
    s3.bucket, s3.prefix, s3.conn_id, s3.name = "b", "", "backup_secondary_s3", "secondary"
    s3.client = type("C", (), {"meta": type("M", (), {"endpoint_url": "http://s3"})()})()

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert s3._error("upload", "k", client_error("InternalError", 500)).transient
    assert s3._error("upload", "k", client_error("SlowDown", 503)).transient
    assert not s3._error("upload", "k", client_error("AccessDenied", 403)).transient
    assert not s3._error("upload", "k", client_error("NoSuchBucket", 404)).transient
    assert not s3._error("upload", "k", NoCredentialsError()).transient
    assert s3._error("upload", "k", EndpointConnectionError(endpoint_url="http://s3")).transient

    local = LocalStorage(tmp_path, name="primary", medium="disk", site="a", conn_id="backup_primary")
    full = local._error("Cannot write x", OSError(errno.ENOSPC, "No space left on device"))
    assert not full.transient and "disk is full" in str(full) and "MiB free of" in str(full)
    assert not local._error("Cannot write x", OSError(errno.EACCES, "Permission denied")).transient
    assert local._error("Cannot write x", OSError(errno.EIO, "Input/output error")).transient


def test_every_client_gets_the_same_connection_parameters() -> None:
    options = {
        "sslmode": "verify-full",
        "sslrootcert": "/ca.crt",
        "sslcert": "/c.crt",
        "sslkey": "/c.key",
        "keepalives": "1",
        "keepalives_idle": "30",
        "options": "-c work_mem=8MB",
        "application_name": "wedsync",
    }
    target = PgTarget(host="db", port=6432, user="u", password="pw", dbname="d", options=options)
    env, dsn = target.env(), target.tool_dsn()
    assert env["PGSSLMODE"] == "verify-full" and env["PGSSLROOTCERT"] == "/ca.crt" and env["PGSSLCERT"] == "/c.crt"
    assert env["PGSSLKEY"] == "/c.key" and env["PGOPTIONS"] == "-c work_mem=8MB" and env["PGAPPNAME"] == "wedsync"
    assert env["PGPASSWORD"] == "pw" and "pw" not in dsn  # never on a command line
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "keepalives", "keepalives_idle", "options"):
        assert key in dsn and key in target.conninfo()
