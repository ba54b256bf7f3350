-- WedSync Backup tracking catalog: a wedding backup's files capture holds only its weddings' files (issue 9).
-- Never edit after it has been applied anywhere: add a new migration instead.
--
-- backup_files.scope: NULL for a capture of the whole file state (full, incremental, archive), else
-- {"wedding_ids": [...]}: the weddings whose files the capture holds (a wedding backup's). Only whole captures
-- serve a complete or point-in-time files restore, or a delta's base; a scoped one serves its weddings' restores.

ALTER TABLE backup_files ADD COLUMN scope jsonb;
COMMENT ON COLUMN backup_files.scope IS
    'NULL: the whole file state; {"wedding_ids": [...]}: only those weddings'' files (a wedding backup''s capture)';
