"""The demo wedding database loads, seeds deterministically and fast, and stays writable afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from wedsync_backup.errors import ConfigError

from devstack import demo
from devstack.postgres import Cluster


def _one(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchone()[0]


@pytest.fixture(scope="module")
def seeded(pg_cluster: Cluster) -> Iterator[tuple[str, demo.SeedResult]]:
    """One database at the test scale, shared by the read-only checks below."""
    name = f"demo_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    dsn = pg_cluster.dsn(name)
    demo.create_demo_schema(dsn)
    result = demo.seed_demo(dsn, demo.TEST_SCALE, counts=True)
    yield dsn, result
    pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_schema_loads_into_empty_database_with_every_feature(pg_cluster: Cluster, empty_db: str) -> None:
    dsn = pg_cluster.dsn(empty_db)
    demo.create_demo_schema(dsn)
    with psycopg.connect(dsn) as conn:

        def val(sql: str) -> object:
            return conn.execute(sql).fetchone()[0]

        tables = {f"{s}.{t}" for s, t in conn.execute("SELECT schemaname, tablename FROM pg_tables")}
        for t in ("organizations", "users", "user_profiles", "suppliers", "clients", "weddings", "guests",
                  "timeline_events", "vendors", "bookings", "forms", "form_responses", "journey_instances",
                  "payments", "files", "communications"):  # fmt: skip
            assert f"public.{t}" in tables
        assert {"audit.audit_logs", "platform.event_logs_default"} <= tables
        identities = conn.execute("SELECT DISTINCT attidentity FROM pg_attribute WHERE attidentity <> ''")
        assert {r[0] for r in identities} == {"a", "d"}
        assert val("SELECT count(*) FROM pg_attribute WHERE attgenerated = 's'") >= 1
        assert val("SELECT relkind FROM pg_class WHERE oid = 'platform.event_logs'::regclass") == "p"
        assert val("SELECT count(*) FROM pg_inherits WHERE inhparent = 'platform.event_logs'::regclass") > 2
        rls = {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relrowsecurity")}
        assert {"weddings", "guests", "payments"} <= rls
        assert val("SELECT count(*) FROM pg_policies") >= 5
        assert val("SELECT relkind FROM pg_class WHERE relname = 'wedding_rsvp_stats'") == "m"
        assert val("SELECT count(*) FROM pg_views WHERE viewname = 'wedding_overview'") == 1
        assert val("SELECT count(*) FROM pg_indexes WHERE indexdef LIKE '%WHERE%'") >= 1
        assert val("SELECT count(*) FROM pg_indexes WHERE indexdef LIKE '%lower(%'") == 1
        no_pk = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'communications'::regclass"
        no_pk += " AND contype = 'p'"
        assert val(no_pk) == 0
        # The standalone sequence is owned by no column but feeds a DEFAULT.
        owned = "SELECT count(*) FROM pg_depend WHERE objid = 'platform.invoice_number_seq'::regclass"
        owned += " AND deptype = 'a'"
        assert val(owned) == 0
        assert val("SELECT typtype FROM pg_type WHERE typname = 'email_address'") == "d"
        assert val("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal") >= 3


def test_seed_gives_expected_rows_per_wedding(seeded: tuple[str, demo.SeedResult]) -> None:
    dsn, result = seeded
    n = demo.weddings_for_scale(demo.TEST_SCALE)
    assert result.weddings == n == result.row_counts["public.weddings"]
    assert result.row_counts["public.guests"] == 150 * n
    assert result.row_counts["public.timeline_events"] == 40 * n
    with psycopg.connect(dsn) as conn:
        per_wedding = conn.execute(
            "SELECT min(c), max(c) FROM (SELECT count(*) c FROM guests GROUP BY wedding_id) x"
        ).fetchone()
        assert per_wedding == (150, 150)
        # Every per-wedding table carries wedding_id pointing at a real wedding.
        for table in ("guests", "timeline_events", "bookings", "form_responses", "journey_instances",
                      "payments", "files", "communications", "platform.event_logs"):  # fmt: skip
            orphans = conn.execute(
                f"SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM weddings w WHERE w.id = t.wedding_id)"
            ).fetchone()[0]
            assert orphans == 0, table
        assert conn.execute("SELECT count(*) FROM wedding_rsvp_stats").fetchone()[0] == n


def test_seed_exercises_partitions_toast_duplicates_nulls_and_unicode(
    seeded: tuple[str, demo.SeedResult],
) -> None:
    dsn, _ = seeded
    with psycopg.connect(dsn) as conn:
        one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        partitions = one("SELECT count(DISTINCT tableoid) FROM platform.event_logs")
        assert partitions >= 2
        assert one("SELECT count(*) FROM platform.event_logs_default") > 0
        for table in ("public.guests", "public.communications"):
            toast = one(f"SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = '{table}'::regclass")
            assert toast > 0, f"{table} has nothing out of line"
        assert one("SELECT count(*) FROM guests WHERE pg_column_size(notes) > 2048") > 0
        duplicates = one("SELECT count(*) FROM (SELECT c::text FROM communications c GROUP BY 1 HAVING count(*) > 1) d")
        assert duplicates > 0
        assert one("SELECT count(*) FROM guests WHERE email IS NULL") > 0
        assert one("SELECT count(*) FROM guests WHERE full_name ~ '[éøöüłș]' OR full_name LIKE '%Zoë%'") > 0
        assert one("SELECT count(*) FROM communications WHERE subject LIKE '%💌%'") > 0
        assert one("SELECT count(*) FROM files WHERE thumbnail IS NOT NULL") > 0
        assert one("SELECT count(*) FROM audit.audit_logs WHERE wedding_id IS NULL") > 0


def test_seed_is_fast_and_about_ten_megabytes(seeded: tuple[str, demo.SeedResult]) -> None:
    _, result = seeded
    assert result.seconds < 15
    assert 5 * 2**20 < result.database_bytes < 40 * 2**20


def _fingerprint(dsn: str) -> dict[str, str]:
    tables = ("guests", "timeline_events", "payments", "files", "communications", "audit.audit_logs",
              "platform.event_logs", "users", "forms")  # fmt: skip
    with psycopg.connect(dsn) as conn:
        return {
            t: conn.execute(f"SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM {t} x").fetchone()[0]
            for t in tables
        }


def test_seed_is_deterministic_whatever_the_parallelism(pg_cluster: Cluster, empty_db: str) -> None:
    other = f"t_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(other)
    try:
        serial, parallel = pg_cluster.dsn(empty_db), pg_cluster.dsn(other)
        for dsn in (serial, parallel):
            demo.create_demo_schema(dsn)
        demo.seed_demo(serial, 0.2, workers=1)
        demo.seed_demo(parallel, 0.2, workers=3, chunk_weddings=5)
        assert _fingerprint(serial) == _fingerprint(parallel)
        demo.seed_demo(parallel, 0.2, workers=1)  # reseeding replaces, never appends
        assert _fingerprint(serial) == _fingerprint(parallel)
    finally:
        pg_cluster.psql("-c", f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


def test_sequences_and_identities_continue_after_the_data(pg_cluster: Cluster, empty_db: str) -> None:
    dsn = pg_cluster.dsn(empty_db)
    demo.create_demo_schema(dsn)
    demo.seed_demo(dsn, 0.05)
    with psycopg.connect(dsn) as conn:

        def insert(sql: str, *params: object) -> object:
            return conn.execute(sql + " RETURNING id", params).fetchone()[0]

        org = insert("INSERT INTO organizations (name, slug) VALUES ('New', 'new-org')")
        sup = insert("INSERT INTO suppliers (organization_id, business_name, category) VALUES (%s, 'New', 'dj')", org)
        cli = insert("INSERT INTO clients (supplier_id, partner1) VALUES (%s, 'Zoë')", sup)
        wed = insert(
            "INSERT INTO weddings (organization_id, supplier_id, client_id, wedding_date)"
            " VALUES (%s, %s, %s, '2026-06-20')",
            org,
            sup,
            cli,
        )
        vendor = insert("INSERT INTO vendors (organization_id, name, category) VALUES (%s, 'V', 'dj')", org)
        insert("INSERT INTO guests (wedding_id, first_name, last_name) VALUES (%s, 'A', 'B')", wed)
        insert(
            "INSERT INTO timeline_events (wedding_id, title, starts_at, sort_order) VALUES (%s, 'X', now(), 1)",
            wed,
        )
        insert("INSERT INTO bookings (wedding_id, vendor_id, amount) VALUES (%s, %s, 10)", wed, vendor)
        insert("INSERT INTO payments (wedding_id, client_id, amount) VALUES (%s, %s, 99.95)", wed, cli)
        insert("INSERT INTO audit.audit_logs (action, table_name) VALUES ('test', 'none')")
        insert(
            "INSERT INTO platform.event_logs (wedding_id, event_type, occurred_at) VALUES (%s, 't', '2024-06-01')",
            wed,
        )
        insert(
            "INSERT INTO form_responses (form_id, wedding_id, answers) SELECT id, %s, '{}' FROM forms LIMIT 1",
            wed,
        )
        invoices = conn.execute("SELECT count(DISTINCT invoice_number) FROM payments").fetchone()[0]
        assert invoices == conn.execute("SELECT count(*) FROM payments").fetchone()[0]


def test_scale_for_megabytes_and_bad_input(pg_cluster: Cluster, empty_db: str) -> None:
    assert demo.scale_for_megabytes(2048) > demo.scale_for_megabytes(100) > demo.scale_for_megabytes(20)
    assert 15_000 < demo.weddings_for_scale(demo.scale_for_megabytes(2048)) < 20_000
    assert demo.weddings_for_scale(demo.scale_for_megabytes(1)) == 1
    with pytest.raises(ConfigError):
        demo.scale_for_megabytes(0)
    dsn = pg_cluster.dsn(empty_db)
    with pytest.raises(ConfigError, match="no demo schema"):
        demo.seed_demo(dsn, 1)
    with pytest.raises(ConfigError, match="positive"):
        demo.seed_demo(dsn, -1)


def test_cli_creates_schema_seeds_and_reports(
    pg_cluster: Cluster, empty_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.main(["--dsn", pg_cluster.dsn(empty_db), "--scale", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "created the demo schema" in out
    assert "seeded 4 weddings" in out
    assert "public.guests" in out and "600" in out
