-- WedSync Backup tracking catalog: wedding backups (issue 9).
-- 1. wedding_backups: one row per wedding per wedding backup (backup_operations type 'wedding'): the wedding's
--    recovery point (recovery_timestamp), its phase, its object, row counts per table and checksum.
-- 2. recovery_points: a wedding backup's own point has point_type 'wedding' (never mistaken for a full one).
-- 3. wedding_backup_settings: the overrides of the proximity tier (high-priority period, retention policy, the
--    targets asked for) and the 3-2-1 warning recorded when a row that breaks the rule was accepted.

CREATE TABLE wedding_backups (
    backup_id           text NOT NULL REFERENCES backup_operations (backup_id) ON DELETE CASCADE,
    wedding_id          text NOT NULL,
    wedding_date        date,
    phase               text NOT NULL CHECK (phase IN ('planning', 'preparation', 'execution', 'post_event')),
    recovery_timestamp  timestamptz NOT NULL,       -- the snapshot the wedding's rows were read in
    row_counts          jsonb NOT NULL,             -- "schema.table" -> rows of the wedding (its slice)
    parent_row_counts   jsonb NOT NULL DEFAULT '{}'::jsonb,  -- "schema.table" -> parent rows recorded with it
    object_key          text NOT NULL,
    plain_bytes         bigint NOT NULL CHECK (plain_bytes >= 0),
    stored_bytes        bigint NOT NULL CHECK (stored_bytes >= 0),
    checksum            text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),  -- sha256 of the wedding's plaintext
    stored_sha256       text NOT NULL CHECK (stored_sha256 ~ '^[0-9a-f]{64}$'),
    retention_policy    text CHECK (retention_policy IN ('minimal', 'standard', 'extended', 'permanent')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (backup_id, wedding_id)
);

CREATE INDEX wedding_backups_wedding ON wedding_backups (wedding_id, recovery_timestamp DESC);

ALTER TABLE recovery_points DROP CONSTRAINT recovery_points_point_type_check;
ALTER TABLE recovery_points ADD CONSTRAINT recovery_points_point_type_check
    CHECK (point_type IN ('full', 'incremental', 'named', 'wedding'));

ALTER TABLE wedding_backup_settings ADD COLUMN high_priority_from timestamptz;
ALTER TABLE wedding_backup_settings ADD COLUMN high_priority_until timestamptz;
ALTER TABLE wedding_backup_settings ADD COLUMN retention_policy text
    CHECK (retention_policy IN ('minimal', 'standard', 'extended', 'permanent'));
ALTER TABLE wedding_backup_settings ADD COLUMN targets text[];          -- NULL: every target of the policy
ALTER TABLE wedding_backup_settings ADD COLUMN rule_321_warning text;   -- set when accepted against the rule
ALTER TABLE wedding_backup_settings ADD CONSTRAINT wedding_backup_settings_frequency_min
    CHECK (frequency_minutes >= 15) NOT VALID;  -- rows written before this rule stay readable
ALTER TABLE wedding_backup_settings ADD CONSTRAINT wedding_backup_settings_period
    CHECK (high_priority_until IS NULL OR high_priority_from IS NULL OR high_priority_until > high_priority_from);
-- Grants: 0006's default privileges give the writer and reader roles this table like every other.
