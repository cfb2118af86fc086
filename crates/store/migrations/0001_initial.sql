-- MpegFlow initial schema.

CREATE TABLE orgs (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    plan        text NOT NULL DEFAULT 'free',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored as SHA-256 hashes of the presented secret, never the secret.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs(id),
    label       text NOT NULL,
    hash        bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- A pool is shared by every org unless dedicated to one.
CREATE TABLE pools (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    org_id      uuid REFERENCES orgs(id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO pools (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'default');

CREATE TABLE worker_tokens (
    id          uuid PRIMARY KEY,
    pool_id     uuid NOT NULL REFERENCES pools(id),
    label       text NOT NULL,
    hash        bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE workers (
    id              uuid PRIMARY KEY,
    token_id        uuid NOT NULL REFERENCES worker_tokens(id),
    pool_id         uuid NOT NULL REFERENCES pools(id),
    hostname        text NOT NULL,
    worker_version  text NOT NULL,
    ffmpeg_version  text NOT NULL,
    image_hash      text NOT NULL,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE assets (
    id               uuid PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES orgs(id),
    object_key       text NOT NULL UNIQUE,
    filename         text NOT NULL,
    content_type     text,
    declared_size    bigint,
    declared_sha256  text,
    size             bigint,
    sha256           text,
    state            text NOT NULL CHECK (state IN ('pending', 'ready')),
    source_job_id    uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
CREATE INDEX assets_org_created ON assets (org_id, created_at DESC, id DESC);

CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    org_id            uuid NOT NULL REFERENCES orgs(id),
    workflow_id       uuid NOT NULL,
    pool_id           uuid NOT NULL REFERENCES pools(id),
    state             text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    command           text NOT NULL,
    argv              jsonb NOT NULL,
    inputs            jsonb NOT NULL,
    outputs           jsonb NOT NULL,
    timeout_seconds   integer NOT NULL,
    max_attempts      integer NOT NULL,
    metadata          jsonb NOT NULL DEFAULT '{}',
    idempotency_key   text,
    request_hash      bytea,
    attempts          integer NOT NULL DEFAULT 0,
    progress          real,
    run_after         timestamptz NOT NULL DEFAULT now(),
    lease_worker_id   uuid REFERENCES workers(id),
    lease_expires_at  timestamptz,
    fencing_token     text,
    error_code        text,
    error_message     text,
    stderr_tail       text,
    result            jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    UNIQUE (org_id, idempotency_key)
);
CREATE INDEX jobs_claim ON jobs (pool_id, run_after, created_at) WHERE state = 'queued';
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_org_list ON jobs (org_id, id DESC);

-- One row per attempt: which worker, when, and how it ended.
CREATE TABLE job_attempts (
    job_id          uuid NOT NULL REFERENCES jobs(id),
    attempt         integer NOT NULL,
    worker_id       uuid NOT NULL REFERENCES workers(id),
    assigned_at     timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    outcome         text,
    exit_code       integer,
    error_code      text,
    error_message   text,
    stderr_zstd     bytea,
    ffmpeg_version  text,
    stages          jsonb,
    input_hashes    jsonb,
    output_hashes   jsonb,
    PRIMARY KEY (job_id, attempt)
);

-- Append-only audit trail.
CREATE TABLE audit_logs (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    org_id      uuid,
    actor       text NOT NULL,
    action      text NOT NULL,
    job_id      uuid,
    subject     text,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_logs_job ON audit_logs (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX audit_logs_org ON audit_logs (org_id, at);

CREATE FUNCTION audit_logs_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_logs_no_update_delete BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION audit_logs_append_only();
CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only();
