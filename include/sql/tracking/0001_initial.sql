-- WedSync Backup tracking catalog, version 1.
-- Applied by wedsync_backup.catalog.migrate() inside one transaction; never edit after it has been applied
-- anywhere (add 0002_*.sql instead): the runner refuses a migration whose checksum changed.
-- Everything lives in schema public of the dedicated backup_catalog database.

-- ---------------------------------------------------------------------------------------------------------
-- backup_operations: one row per backup, the row the rest of the system asks "what can I restore?".
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE backup_operations (
    backup_id              text PRIMARY KEY CHECK (backup_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]*$'),
    backup_type            text NOT NULL
                           CHECK (backup_type IN ('full', 'incremental', 'archive', 'manual', 'wedding')),
    status                 text NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
    started_at             timestamptz NOT NULL DEFAULT now(),
    completed_at           timestamptz,
    size_bytes             bigint CHECK (size_bytes >= 0),             -- plaintext bytes
    compressed_size_bytes  bigint CHECK (compressed_size_bytes >= 0),  -- stored (compressed+encrypted)
    components_backed_up   jsonb NOT NULL DEFAULT '["database"]'::jsonb,
    tables_included        text[] NOT NULL DEFAULT '{}',               -- schema-qualified names
    primary_location       text,
    secondary_location     text,
    offsite_location       text,
    checksum               text CHECK (checksum ~ '^[0-9a-f]{64}$'),   -- sha256 of the manifest bytes
    integrity_verified     boolean NOT NULL DEFAULT false,
    last_tested            timestamptz,                                -- last passed verify/drill
    reason                 text,
    created_by             text NOT NULL,
    retention_until        timestamptz,                                -- NULL: keep forever
    parent_backup_id       text,  -- no FK: a catalog rebuilt from storage may hold a pruned parent's child
    dag_id                 text,
    run_id                 text,
    key_id                 text,
    format_version         integer,
    consistent_lsn         pg_lsn,
    snapshot_time          timestamptz,
    rule_321               jsonb,
    warnings               jsonb NOT NULL DEFAULT '[]'::jsonb,
    error                  text,
    total_rows             bigint CHECK (total_rows >= 0),
    pruned_at              timestamptz,                                -- storage objects deleted
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- A backup counts only when every copy was verified: 'completed' is impossible otherwise.
    CONSTRAINT completed_requires_verified CHECK (
        status <> 'completed'
        OR (integrity_verified AND checksum IS NOT NULL AND completed_at IS NOT NULL)
    ),
    CONSTRAINT parent_is_not_self CHECK (parent_backup_id IS DISTINCT FROM backup_id)
);

CREATE INDEX backup_operations_status_type_completed
    ON backup_operations (status, backup_type, completed_at DESC);
CREATE INDEX backup_operations_retention
    ON backup_operations (retention_until) WHERE pruned_at IS NULL;
CREATE INDEX backup_operations_parent
    ON backup_operations (parent_backup_id) WHERE parent_backup_id IS NOT NULL;
CREATE INDEX backup_operations_run ON backup_operations (dag_id, run_id);

-- updated_at is maintained here, and a completed backup can never be moved back to another status
-- (a retried or duplicate task must not downgrade a restorable backup).
CREATE FUNCTION backup_operations_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'completed' AND NEW.status <> 'completed' THEN
        RAISE EXCEPTION 'backup % is completed; its status cannot change to %', OLD.backup_id, NEW.status
            USING ERRCODE = 'check_violation',
                  HINT = 'record a new backup instead of rewriting a completed one';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER backup_operations_guard
    BEFORE UPDATE ON backup_operations
    FOR EACH ROW EXECUTE FUNCTION backup_operations_guard();

-- ---------------------------------------------------------------------------------------------------------
-- backup_replicas: one verified copy of a backup on one storage target.
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE backup_replicas (
    backup_id        text NOT NULL REFERENCES backup_operations (backup_id) ON DELETE CASCADE,
    target_name      text NOT NULL,
    kind             text NOT NULL,          -- local | s3 | gcs
    medium           text NOT NULL,          -- disk | object-storage | ...
    site             text NOT NULL,
    location         text NOT NULL,          -- URL of the backup's prefix on the target
    stored_bytes     bigint CHECK (stored_bytes >= 0),
    object_count     integer CHECK (object_count >= 0),
    manifest_sha256  text CHECK (manifest_sha256 ~ '^[0-9a-f]{64}$'),
    verified         boolean NOT NULL DEFAULT false,
    verified_at      timestamptz,
    error            text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backup_id, target_name),
    CONSTRAINT verified_has_time CHECK (NOT verified OR verified_at IS NOT NULL)
);

-- ---------------------------------------------------------------------------------------------------------
-- backup_table_stats: per-table figures of a backup (trend of sizes and row counts, restore ordering).
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE backup_table_stats (
    backup_id      text NOT NULL REFERENCES backup_operations (backup_id) ON DELETE CASCADE,
    schema_name    text NOT NULL,
    table_name     text NOT NULL,
    priority       text NOT NULL CHECK (priority IN ('critical', 'high', 'standard')),
    row_count      bigint NOT NULL CHECK (row_count >= 0),
    plain_bytes    bigint NOT NULL CHECK (plain_bytes >= 0),
    stored_bytes   bigint NOT NULL CHECK (stored_bytes >= 0),
    plain_sha256   text NOT NULL,   -- the table's content checksum (over its parts' plaintext sha256s)
    stored_sha256  text NOT NULL,   -- sha256 over its parts' stored sha256s, in order
    part_count     integer NOT NULL DEFAULT 1 CHECK (part_count >= 1),
    PRIMARY KEY (backup_id, schema_name, table_name)
);

CREATE INDEX backup_table_stats_table ON backup_table_stats (schema_name, table_name);

-- ---------------------------------------------------------------------------------------------------------
-- recovery_points: the moments the database can be brought back to, with the backups to apply.
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE recovery_points (
    id                  bigserial PRIMARY KEY,
    backup_id           text NOT NULL UNIQUE REFERENCES backup_operations (backup_id) ON DELETE CASCADE,
    recovery_timestamp  timestamptz NOT NULL,
    wal_position        pg_lsn,
    transaction_id      text,                    -- txid_snapshot of the consistent point
    chain               text[] NOT NULL,         -- backup ids to apply, full first, this backup last
    point_type          text NOT NULL CHECK (point_type IN ('full', 'incremental')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chain_ends_with_backup CHECK (chain[array_upper(chain, 1)] = backup_id)
);

CREATE INDEX recovery_points_timestamp ON recovery_points (recovery_timestamp DESC);

-- ---------------------------------------------------------------------------------------------------------
-- backup_tests: verification runs and restore drills against a backup.
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE backup_tests (
    id                bigserial PRIMARY KEY,
    backup_id         text NOT NULL REFERENCES backup_operations (backup_id) ON DELETE CASCADE,
    tested_at         timestamptz NOT NULL DEFAULT now(),
    test_type         text NOT NULL CHECK (test_type IN ('restore_drill', 'verify')),
    target_name       text NOT NULL DEFAULT '',   -- '' when the test is not about one target
    status            text NOT NULL CHECK (status IN ('passed', 'failed')),
    duration_seconds  numeric CHECK (duration_seconds >= 0),
    rows_checked      bigint CHECK (rows_checked >= 0),
    details           jsonb NOT NULL DEFAULT '{}'::jsonb,
    error             text,
    dag_id            text,
    run_id            text
);

CREATE INDEX backup_tests_backup ON backup_tests (backup_id, tested_at DESC);
-- A retried task updates its own result instead of adding one.
CREATE UNIQUE INDEX backup_tests_run
    ON backup_tests (dag_id, run_id, backup_id, test_type, target_name) WHERE run_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------------------------
-- disaster_recovery_events: every emergency restore, drill or other recovery action, planned or run.
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE disaster_recovery_events (
    id                 bigserial PRIMARY KEY,
    event_type         text NOT NULL CHECK (event_type ~ '^[a-z][a-z0-9_]*$'),  -- emergency_restore, ...
    status             text NOT NULL DEFAULT 'planned'
                       CHECK (status IN ('planned', 'in_progress', 'completed', 'failed', 'refused')),
    started_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    backup_id          text,        -- no FK: an event stays on record whatever happens to the backup
    mode               text,
    scope              text,
    from_target        text,
    target_conn_id     text,
    dry_run            boolean NOT NULL DEFAULT false,
    reason             text,
    triggered_by       text,
    dag_id             text,
    run_id             text,
    data_loss_minutes  numeric CHECK (data_loss_minutes >= 0),
    plan               jsonb,
    result             jsonb,
    error              text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX disaster_recovery_events_run
    ON disaster_recovery_events (dag_id, run_id) WHERE run_id IS NOT NULL;
CREATE INDEX disaster_recovery_events_started ON disaster_recovery_events (started_at DESC);

-- ---------------------------------------------------------------------------------------------------------
-- wedding_backup_settings: weddings close to their date get extra, more frequent backups.
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE wedding_backup_settings (
    wedding_id         text PRIMARY KEY,
    organization_id    text,
    wedding_date       date NOT NULL,
    proximity_days     integer NOT NULL DEFAULT 7 CHECK (proximity_days >= 0),
    frequency_minutes  integer NOT NULL DEFAULT 15 CHECK (frequency_minutes > 0),
    enabled            boolean NOT NULL DEFAULT true,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX wedding_backup_settings_date ON wedding_backup_settings (wedding_date) WHERE enabled;

-- ---------------------------------------------------------------------------------------------------------
-- audit_log: who did what, append-only. event_key makes a retried action write its entry only once.
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL,
    backup_id  text,                -- no FK: the log outlives the rows it mentions
    details    jsonb NOT NULL DEFAULT '{}'::jsonb,
    event_key  text UNIQUE
);

CREATE INDEX audit_log_backup ON audit_log (backup_id, at) WHERE backup_id IS NOT NULL;
CREATE INDEX audit_log_at ON audit_log (at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'add a new entry that corrects the old one instead';
END
$$;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
