"""End to end through `airflow dags test`: backup_wedding_now backs chosen weddings up through the chain that
backup_wedding_proximity shares (begin, export_batch mapped over batches, seal, replicate, verify, commit), and
backup_wedding_proximity backs up the weddings near their date, then skips when none is due. The refusal of
unknown ids, the phases and failures are tested on the command (tests/wedsync_backup/commands/)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from devstack.demo import create_demo_schema, seed_demo
from tests.fixtures.airflow import Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wedding_source(stack: Stack) -> str:
    source = stack.new_database("weddings_src")
    dsn = stack.cluster.dsn(source)
    create_demo_schema(dsn)
    seed_demo(dsn, 0.05)  # 4 weddings
    return source


def test_backup_wedding_now(stack: Stack, wedding_source: str) -> None:
    env = stack.env(WEDSYNC_SOURCE=stack.conn_json(wedding_source))

    result = stack.run_dag("backup_wedding_now", {"wedding_ids": ["2", "3"], "reason": "INC-9"}, env=env)
    assert result.state == "success", result.output[-6000:]
    with stack.catalog() as cat:
        row = cat.execute(
            "SELECT backup_id, status, reason, dag_id FROM backup_operations WHERE backup_type = 'wedding'"
            " ORDER BY started_at DESC LIMIT 1"
        ).fetchone()
        weddings = cat.execute(
            "SELECT wedding_id, (row_counts->>'public.guests')::int FROM wedding_backups WHERE backup_id = %s"
            " ORDER BY wedding_id",
            (row[0],),
        ).fetchall()
        copies = cat.execute("SELECT count(*) FROM backup_replicas WHERE backup_id = %s AND verified", (row[0],))
        runs = cat.execute("SELECT count(*) FROM backup_operations WHERE dag_id = 'backup_wedding_now'").fetchone()[0]
    assert row[1:] == ("completed", "INC-9", "backup_wedding_now") and runs == 1  # one row per run
    assert [w for w, _ in weddings] == ["2", "3"] and all(g > 0 for _, g in weddings)
    assert copies.fetchone()[0] == 3


def test_backup_wedding_proximity(stack: Stack, wedding_source: str) -> None:
    """Weddings 1 (tomorrow: its execution phase) and 4 (in 5 days) are due; 2 and 3 are far away. A second
    run right after has nothing due (each wedding's frequency is 15 minutes) and skips, writing nothing."""
    today = datetime.now(UTC).date()
    with psycopg.connect(stack.cluster.dsn(wedding_source), autocommit=True) as conn:
        conn.execute(
            "UPDATE weddings SET wedding_date = CASE id WHEN 1 THEN %s::date + 1 WHEN 4 THEN %s::date + 5"
            " ELSE date '2035-06-01' END",
            (today, today),
        )
    env = stack.env(WEDSYNC_SOURCE=stack.conn_json(wedding_source))

    first = stack.run_dag("backup_wedding_proximity", env=env)
    assert first.state == "success", first.output[-6000:]
    with stack.catalog() as cat:
        rows = cat.execute(
            "SELECT backup_id, status FROM backup_operations WHERE dag_id = 'backup_wedding_proximity'"
        ).fetchall()
        assert [r[1] for r in rows] == ["completed"]
        weddings = cat.execute(
            "SELECT wedding_id, phase FROM wedding_backups WHERE backup_id = %s ORDER BY wedding_id", (rows[0][0],)
        ).fetchall()
        copies = cat.execute("SELECT count(*) FROM backup_replicas WHERE backup_id = %s AND verified", (rows[0][0],))
        assert weddings == [("1", "execution"), ("4", "preparation")]
        assert copies.fetchone()[0] == 3

    second = stack.run_dag("backup_wedding_proximity", env=env)
    assert second.state == "success", second.output[-6000:]
    assert "No wedding is due" in second.output
    with stack.catalog() as cat:
        n = cat.execute("SELECT count(*) FROM backup_operations WHERE dag_id = 'backup_wedding_proximity'")
        assert n.fetchone()[0] == 1
