"""Shared fixtures: real PostgreSQL, S3 (moto server) and GCS (emulator) over the wire."""

from tests.fixtures.postgres import empty_db, pg_cluster  # noqa: F401
