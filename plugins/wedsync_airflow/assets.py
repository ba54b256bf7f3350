"""Assets that chain the DAGs: a verified full backup triggers its restore drill."""

from __future__ import annotations

from airflow.sdk import Asset

# Emitted by backup_daily_full's commit task once every copy is verified and the backup is recorded.
# Named without a URI scheme: a scheme makes Airflow load every provider's URI handlers at parse time
# (seconds, the GCS hook among them), which DAG files must not pay.
FULL_BACKUP_VERIFIED = Asset(name="wedsync_full_backup_verified")

# Emitted by the wedding DAGs' commit task once every copy of a wedding backup is verified and recorded.
WEDDING_BACKUP_VERIFIED = Asset(name="wedsync_wedding_backup_verified")
