"""Back up chosen weddings now (manual trigger): the proximity tier's path, for exactly these weddings.

Params: ``wedding_ids`` (one or more ids of the source's wedding table) and ``reason`` (recorded). An unknown
id is refused by name before anything runs or is written. The weddings are exported from one snapshot, each
an encrypted piece (with the parent rows it points at) of its batch's bundle, copied to every target and verified.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param
from wedsync_airflow.assets import WEDDING_BACKUP_VERIFIED
from wedsync_airflow.operators.wedding import WeddingBeginOperator
from wedsync_airflow.wedding_tasks import wedding_backup_chain, wedding_default_args

PARAMS = {
    "wedding_ids": Param(
        type="array",
        items={"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"^[A-Za-z0-9._:-]+$"},
        minItems=1,
        title="Wedding ids",
        description='One or more wedding ids (the key of the policy\'s weddings.table), e.g. ["1042"]',
    ),
    "reason": Param(
        type="string",
        minLength=3,
        pattern=r"\S.*\S.*\S",
        title="Reason",
        description="Required: why these weddings are backed up now (recorded), e.g. before the guest import",
    ),
}

with DAG(
    dag_id="backup_wedding_now",
    description="Back up the chosen weddings now: one snapshot, a piece per wedding, every copy verified",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    render_template_as_native_obj=True,
    default_args=wedding_default_args(),
    tags=["wedsync", "backup", "tier:wedding"],
    doc_md=__doc__,
) as dag:
    begin = WeddingBeginOperator(
        task_id="begin", wedding_ids="{{ params.wedding_ids }}", reason="{{ params.reason }}", retries=0
    )
    wedding_backup_chain(begin, outlets=[WEDDING_BACKUP_VERIFIED])
