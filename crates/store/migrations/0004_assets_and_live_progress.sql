-- A running job's live figures from its worker's heartbeats: stage, FFmpeg's speed and fps.
ALTER TABLE jobs ADD COLUMN live jsonb;

-- Assets a tenant can manage: uploads no job ever used expire; deleted assets' objects are
-- removed once no URL signed for them can still be used.

-- When an upload no job has used is removed (NULL: used by a job, or a job's output).
ALTER TABLE assets ADD COLUMN expires_at timestamptz;
CREATE INDEX assets_expiry ON assets (expires_at) WHERE expires_at IS NOT NULL;

-- Objects to delete from the store, not before every URL signed for them has expired (a
-- still-valid write-once PUT could otherwise write the key again after the delete).
CREATE TABLE object_deletions (
    object_key  text PRIMARY KEY,
    not_before  timestamptz NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX object_deletions_due ON object_deletions (not_before);
