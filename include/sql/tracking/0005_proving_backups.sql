-- Proving backups over time: restore drills, scrub findings, key rotation, RPO breaches, the damaged status.
-- Never edit after it has been applied anywhere: add a new migration instead.

-- ---------------------------------------------------------------------------------------------------------
-- backup_operations: 'damaged' = no verified copy is left (the scrub found every copy bad). A completed
-- backup may become damaged, and a damaged one completed again once a copy is proven intact; nothing else
-- may leave 'completed'.
-- ---------------------------------------------------------------------------------------------------------
ALTER TABLE backup_operations DROP CONSTRAINT backup_operations_status_check;
ALTER TABLE backup_operations ADD CONSTRAINT backup_operations_status_check
    CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'damaged'));
ALTER TABLE backup_operations ADD COLUMN damaged_at timestamptz;
ALTER TABLE backup_operations ADD COLUMN key_rotated_at timestamptz;

CREATE OR REPLACE FUNCTION backup_operations_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'completed' AND NEW.status NOT IN ('completed', 'damaged') THEN
        RAISE EXCEPTION 'backup % is completed; its status cannot change to %', OLD.backup_id, NEW.status
            USING ERRCODE = 'check_violation',
                  HINT = 'record a new backup instead of rewriting a completed one';
    END IF;
    IF OLD.status = 'damaged' AND NEW.status NOT IN ('damaged', 'completed') THEN
        RAISE EXCEPTION 'backup % is damaged; its status cannot change to %', OLD.backup_id, NEW.status
            USING ERRCODE = 'check_violation',
                  HINT = 'repair a copy (backup_scrub) to make it completed again';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- ---------------------------------------------------------------------------------------------------------
-- backup_tests: the specification's columns beside the existing ones (status/details stay for old readers).
-- ---------------------------------------------------------------------------------------------------------
ALTER TABLE backup_tests DROP CONSTRAINT backup_tests_test_type_check;
ALTER TABLE backup_tests ADD CONSTRAINT backup_tests_test_type_check
    CHECK (test_type IN ('restore_drill', 'verify', 'restore_test', 'integrity_check', 'data_verification'));
ALTER TABLE backup_tests ADD COLUMN test_environment text;
ALTER TABLE backup_tests ADD COLUMN success boolean;
ALTER TABLE backup_tests ADD COLUMN errors_found jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE backup_tests ADD COLUMN data_samples_verified bigint CHECK (data_samples_verified >= 0);
ALTER TABLE backup_tests ADD COLUMN restore_duration interval;
ALTER TABLE backup_tests ADD COLUMN data_loss_detected boolean;
ALTER TABLE backup_tests ADD COLUMN tested_by text;
ALTER TABLE backup_tests ADD COLUMN notes text;
UPDATE backup_tests SET success = (status = 'passed') WHERE success IS NULL;

CREATE INDEX backup_tests_type_target ON backup_tests (test_type, backup_id, target_name, tested_at DESC);

-- ---------------------------------------------------------------------------------------------------------
-- rpo_breaches: one row per breach of a tier's recovery point objective; ended_at is set when it is over.
-- At most one open breach per tier: the watchdog alerts when it opens one and when it closes it.
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE rpo_breaches (
    id                  bigserial PRIMARY KEY,
    tier                text NOT NULL,
    objective           interval NOT NULL,
    started_at          timestamptz NOT NULL DEFAULT now(),   -- when the watchdog first saw it
    ended_at            timestamptz,
    newest_backup_id    text,                                 -- the newest point when it opened (NULL: none)
    newest_point_at     timestamptz,
    worst_age           interval,                             -- the largest age seen while it lasted
    recovered_backup_id text,                                 -- the point that ended it
    alerted_at          timestamptz,
    end_alerted_at      timestamptz
);

CREATE UNIQUE INDEX rpo_breaches_one_open ON rpo_breaches (tier) WHERE ended_at IS NULL;
CREATE INDEX rpo_breaches_started ON rpo_breaches (started_at DESC);

-- ---------------------------------------------------------------------------------------------------------
-- key_rotations: one row per rotate_keys run (dry runs included), resumable by run.
-- ---------------------------------------------------------------------------------------------------------
CREATE TABLE key_rotations (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    active_key_id text NOT NULL,
    dry_run       boolean NOT NULL,
    reason        text,
    triggered_by  text,
    dag_id        text,
    run_id        text,
    result        jsonb,
    error         text
);

CREATE UNIQUE INDEX key_rotations_run ON key_rotations (dag_id, run_id) WHERE run_id IS NOT NULL;
