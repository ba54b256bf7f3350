-- Schema changes inside an incremental chain (DDL in the change stream).
-- Each incremental says which of the two happened: the schema changes it holds are replayed at their position
-- ('replayed'), or the chain ended just before a change it could not replay exactly ('chain_ended': moments
-- before the change stay restorable, a new full backup starts the next chain). 'none': no schema change.
ALTER TABLE backup_operations
    ADD COLUMN schema_changes text CHECK (schema_changes IN ('none', 'replayed', 'chain_ended')),
    ADD COLUMN schema_change_details jsonb;

COMMENT ON COLUMN backup_operations.schema_changes IS
    'incrementals: none | replayed (captured DDL replayed in place) | chain_ended (see schema_change_details)';
COMMENT ON COLUMN backup_operations.schema_change_details IS
    'the replayed statements (tag, LSN), or why and where the chain ended (covered_until: restorable up to)';

CREATE INDEX backup_operations_chain_ended ON backup_operations (completed_at)
    WHERE schema_changes = 'chain_ended';
