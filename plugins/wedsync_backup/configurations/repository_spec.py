"""A target named on the command line (no Airflow connection): a directory, s3://bucket/prefix or
gs://bucket/prefix, with credentials from the usual environment of each SDK."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from wedsync_backup.errors import ConfigError
from wedsync_backup.storage.base import Storage

SPEC_HELP = (
    "a backup target: /path/to/primary (or file:///path), s3://bucket/prefix (credentials and region from "
    "the AWS environment; --endpoint-url or AWS_ENDPOINT_URL for S3-compatible servers) or gs://bucket/prefix "
    "(Application Default Credentials; STORAGE_EMULATOR_HOST for an emulator)"
)


def open_repository(spec: str, *, endpoint_url: str | None = None) -> Storage:
    """The Storage for ``spec``, with a client built from the environment now."""
    url = urlparse(spec)
    if url.scheme in ("", "file"):
        from wedsync_backup.storage.local import LocalStorage

        path = Path(url.path if url.scheme == "file" else spec)
        if not path.is_dir():
            raise ConfigError(f"Repository directory {path} does not exist", fix="name the primary target's directory")
        return LocalStorage(path, name="repository", medium="disk", site="unknown")
    bucket, prefix = url.netloc, url.path.strip("/")
    if not bucket:
        raise ConfigError(f"Repository {spec} names no bucket", fix=f"write it as {url.scheme}://bucket/prefix")
    if url.scheme == "s3":
        import boto3

        from wedsync_backup.storage.s3 import S3Storage

        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client = boto3.client("s3", endpoint_url=endpoint or None)
        return S3Storage(client, bucket, prefix, name="repository", medium="object-storage", site="unknown")
    if url.scheme == "gs":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        from wedsync_backup.storage.gcs import GCSStorage

        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "wedsync"
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            client = storage.Client(credentials=AnonymousCredentials(), project=project)
        else:
            client = storage.Client(project=project)
        return GCSStorage(client, bucket, prefix, name="repository", medium="object-storage", site="unknown")
    raise ConfigError(f"Repository {spec} has an unknown scheme '{url.scheme}'", fix=SPEC_HELP)
