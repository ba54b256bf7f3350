-- WedSync Backup tracking catalog: the backup console (issue 11).
-- 1. Named recovery points: "before the guest import" marks a moment (time and source LSN) that
--    emergency_restore can target by name (param recovery_point). They live in recovery_points beside the
--    points the backups create, with point_type 'named', a label and no backup of their own.
-- 2. Lockdown: the catalog's tables grant nothing to PUBLIC; writes come from the backup role
--    (wedsync_backup_writer), and the console's API reads through a read-only role (wedsync_backup_reader).
--    Roles are cluster-wide: they are created only when the migrating user may create roles; otherwise a
--    database administrator creates them (see the README) and the grants are given when they exist.

ALTER TABLE recovery_points ALTER COLUMN backup_id DROP NOT NULL;
ALTER TABLE recovery_points ALTER COLUMN chain DROP NOT NULL;
ALTER TABLE recovery_points DROP CONSTRAINT recovery_points_point_type_check;
ALTER TABLE recovery_points ADD COLUMN label text;
ALTER TABLE recovery_points ADD COLUMN created_by text;
ALTER TABLE recovery_points ADD CONSTRAINT recovery_points_point_type_check
    CHECK (point_type IN ('full', 'incremental', 'named'));
-- A backup's point names its backup and chain; a named point names a label and nothing else.
ALTER TABLE recovery_points ADD CONSTRAINT recovery_points_shape CHECK (
    CASE WHEN point_type = 'named'
         THEN label IS NOT NULL AND length(btrim(label)) BETWEEN 1 AND 200 AND backup_id IS NULL AND chain IS NULL
         ELSE backup_id IS NOT NULL AND chain IS NOT NULL AND label IS NULL
    END
);
CREATE UNIQUE INDEX recovery_points_label ON recovery_points (label) WHERE point_type = 'named';

-- Rate limits count a user's recent actions in the audit log.
CREATE INDEX audit_log_actor_action_at ON audit_log (actor, action, at);

-- ---------------------------------------------------------------------------------------------------------
-- Lockdown
-- ---------------------------------------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

DO $$
DECLARE
    may_create boolean := (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user);
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['wedsync_backup_writer', 'wedsync_backup_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            IF may_create THEN
                BEGIN
                    EXECUTE format('CREATE ROLE %I NOLOGIN', r);
                EXCEPTION WHEN duplicate_object THEN
                    NULL;  -- another catalog on this cluster created it at the same moment
                END;
            ELSE
                RAISE NOTICE 'role % does not exist and % may not create roles: ask a database administrator '
                    'to run CREATE ROLE % NOLOGIN, then grant as in 0006_console.sql', r, current_user, r;
            END IF;
        END IF;
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wedsync_backup_writer') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO wedsync_backup_writer', current_database());
        GRANT USAGE ON SCHEMA public TO wedsync_backup_writer;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO wedsync_backup_writer;
        -- The audit log is append-only for everyone, the backup role included.
        REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM wedsync_backup_writer;
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO wedsync_backup_writer;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO wedsync_backup_writer;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO wedsync_backup_writer;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wedsync_backup_reader') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO wedsync_backup_reader', current_database());
        GRANT USAGE ON SCHEMA public TO wedsync_backup_reader;
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO wedsync_backup_reader;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO wedsync_backup_reader;
    END IF;
END
$$;
