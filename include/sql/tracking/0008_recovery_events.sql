-- WedSync Backup tracking catalog: restoring a wedding or chosen tables into a live database (issue 9).
-- Never edit after it has been applied anywhere: add a new migration instead.
--
-- 1. disaster_recovery_events gains the specification's columns, filled by every restore (complete ones
--    included), and what a partial restore records: its safety snapshot (the pre_restore backup that undoes
--    it), the weddings it brought back and the rows it changed per table.
-- 2. backup_operations accepts the safety snapshot's type, pre_restore, and its recovery point says so (it is
--    restorable through a partial scope only, never mistaken for a full backup's point).

ALTER TABLE disaster_recovery_events
    ADD COLUMN recovery_type text
        CHECK (recovery_type IN ('full_restore', 'point_in_time', 'partial_restore')),
    ADD COLUMN target_timestamp timestamptz,           -- the moment restored to (point_in_time), else the backup's
    ADD COLUMN backup_used text,                        -- the backup the rows came from (a full: its chain's full)
    ADD COLUMN recovery_environment text
        CHECK (recovery_environment IN ('production', 'isolated')),  -- into the live source, or elsewhere
    ADD COLUMN affected_users_count integer CHECK (affected_users_count >= 0),
    ADD COLUMN business_impact_level text
        CHECK (business_impact_level IN ('low', 'medium', 'high', 'critical')),
    ADD COLUMN initiated_by text,                       -- who triggered the restore
    ADD COLUMN approved_by text,                        -- who typed the confirmation (a real restore only)
    ADD COLUMN safety_snapshot_id text,                 -- no FK: the event outlives the backup rows
    ADD COLUMN affected_wedding_ids text[],
    ADD COLUMN table_row_counts jsonb;                  -- {"schema.table": {"delete": n, "insert": n, "update": n}}

-- Events recorded before this migration: what can be told from their own columns.
UPDATE disaster_recovery_events
   SET recovery_type = CASE WHEN mode = 'point_in_time' THEN 'point_in_time' ELSE 'full_restore' END,
       backup_used = COALESCE(backup_used, backup_id, result ->> 'backup_id'),
       initiated_by = COALESCE(initiated_by, triggered_by)
 WHERE event_type = 'emergency_restore' AND recovery_type IS NULL;

CREATE INDEX disaster_recovery_events_weddings
    ON disaster_recovery_events USING gin (affected_wedding_ids) WHERE affected_wedding_ids IS NOT NULL;

ALTER TABLE backup_operations DROP CONSTRAINT backup_operations_backup_type_check;
ALTER TABLE backup_operations ADD CONSTRAINT backup_operations_backup_type_check
    CHECK (backup_type IN ('full', 'incremental', 'archive', 'manual', 'wedding', 'pre_restore'));

ALTER TABLE recovery_points DROP CONSTRAINT recovery_points_point_type_check;
ALTER TABLE recovery_points ADD CONSTRAINT recovery_points_point_type_check
    CHECK (point_type IN ('full', 'incremental', 'named', 'wedding', 'pre_restore'));
