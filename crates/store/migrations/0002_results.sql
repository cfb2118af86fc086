-- Upload grants: every presigned PUT handed to a worker, pinned to one attempt, path, size and
-- SHA-256. Asking again for a granted path answers the same pin; a report must match the grants
-- exactly. Rows go with their job.
CREATE TABLE upload_grants (
    job_id      uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    path        text NOT NULL,
    size        bigint NOT NULL CHECK (size >= 0),
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt, path)
);

-- How often an attempt asked for upload URLs (bounded per attempt).
CREATE TABLE upload_grant_calls (
    job_id   uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt  integer NOT NULL,
    calls    integer NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
