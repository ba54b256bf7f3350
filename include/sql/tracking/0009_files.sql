-- WedSync Backup tracking catalog: the files component (issue 12: photos and documents).
-- 1. file_contents: the shared content store. One row per content object (its SHA-256 = the file's checksum),
--    stored once per repository and referenced by every backup whose file state lists it; retention removes
--    the object (and its row) when no retained backup references it.
-- 2. backup_files: what each backup captured of the files (counts and bytes of its file state, what it
--    uploaded new, the source objects it found missing or corrupt and kept at their last good version).
-- New tables get the writer/reader grants of 0006 through its default privileges.

CREATE TABLE file_contents (
    content_sha256   text PRIMARY KEY CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes       bigint NOT NULL CHECK (size_bytes >= 0),
    stored_bytes     bigint NOT NULL CHECK (stored_bytes >= 0),
    stored_sha256    text NOT NULL CHECK (stored_sha256 ~ '^[0-9a-f]{64}$'),
    first_backup_id  text,
    stored_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE backup_files (
    backup_id        text PRIMARY KEY REFERENCES backup_operations (backup_id) ON DELETE CASCADE,
    captured_at      timestamptz NOT NULL,
    delta_of         text,
    objects          bigint NOT NULL,
    bytes            bigint NOT NULL,
    changed          bigint NOT NULL DEFAULT 0,
    new_objects      bigint NOT NULL,
    new_bytes        bigint NOT NULL,
    problems         jsonb NOT NULL DEFAULT '[]'::jsonb
);
