-- Bounded worker tokens: live-worker caps, lease rates, strikes and suspension, FFmpeg
-- fingerprints, and tenant-blaming failures that need a second worker's confirmation.

ALTER TABLE worker_tokens
    ADD COLUMN max_workers        integer NOT NULL DEFAULT 4 CHECK (max_workers BETWEEN 1 AND 10000),
    -- NULL: max_workers times the control plane's per-worker rate.
    ADD COLUMN leases_per_minute  integer CHECK (leases_per_minute > 0),
    ADD COLUMN suspended_at       timestamptz,
    ADD COLUMN suspended_reason   text,
    -- Strikes before this instant are forgiven (set when an admin lifts a suspension).
    ADD COLUMN strikes_since      timestamptz;

-- A registration is live while its worker keeps in touch (last_seen_at within the TTL).
ALTER TABLE workers
    ADD COLUMN ffmpeg_grammar               text NOT NULL DEFAULT '',
    ADD COLUMN ffmpeg_configuration_sha256  text NOT NULL DEFAULT '';
CREATE INDEX workers_token_seen ON workers (token_id, last_seen_at);
CREATE INDEX workers_pool_seen ON workers (pool_id, last_seen_at);

-- The FFmpeg grammar the job's command was validated against; only matching workers run it.
-- blame_*: the worker (and its token) whose unconfirmed tenant-blaming report requeued the job.
ALTER TABLE jobs
    ADD COLUMN grammar          text NOT NULL DEFAULT '5.1',
    ADD COLUMN blame_worker_id  uuid,
    ADD COLUMN blame_token_id   uuid;

-- Which token held each lease, and whether the attempt ended without a finished encode by the
-- worker's doing (retryable failure, lost lease, unconfirmed blame): counted against the token.
ALTER TABLE job_attempts
    ADD COLUMN token_id  uuid REFERENCES worker_tokens(id),
    ADD COLUMN strike    boolean NOT NULL DEFAULT false;
CREATE INDEX job_attempts_token_assigned ON job_attempts (token_id, assigned_at);
CREATE INDEX job_attempts_token_strikes ON job_attempts (token_id, finished_at) WHERE strike;
