"""Assets that chain the DAGs: a verified full backup triggers its restore drill."""

from __future__ import annotations

from airflow.sdk import Asset

# Emitted by backup_daily_full's commit task once every copy is verified and the backup is recorded.
FULL_BACKUP_VERIFIED = Asset(name="wedsync_full_backup_verified", uri="wedsync://backups/full")
