-- Signed webhooks: endpoints, the event outbox, deliveries and every attempt.
--
-- Events are written in the transaction of the job change that causes them (the outbox), so
-- a crash can neither lose one nor announce a change that did not commit. The dispatcher, a
-- process of its own with open egress, fans events out to endpoints as deliveries and sends
-- them; it connects as the role created below, which reaches these tables and nothing else.

CREATE TABLE webhook_endpoints (
    id                          uuid PRIMARY KEY,
    org_id                      uuid NOT NULL REFERENCES orgs(id),
    url                         text NOT NULL,
    description                 text NOT NULL DEFAULT '',
    events                      text[] NOT NULL,
    -- Signing secrets, sealed (AEAD) with a key kept outside the database; never in plain text.
    secret_sealed               text NOT NULL,
    -- The secret a rotation replaced: deliveries are signed with both until it expires.
    previous_secret_sealed      text,
    previous_secret_expires_at  timestamptz,
    state                       text NOT NULL DEFAULT 'enabled' CHECK (state IN ('enabled', 'disabled')),
    disabled_at                 timestamptz,
    disabled_reason             text,
    -- The circuit breaker: failed attempts in a row (any delivery), and when the run began.
    consecutive_failures        integer NOT NULL DEFAULT 0,
    failing_since               timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    deleted_at                  timestamptz
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id, created_at, id) WHERE deleted_at IS NULL;

-- The outbox: one row per state change (and per endpoint disabled). `data` is the snapshot the
-- body carries; the envelope (type, timestamp, data) is rendered from the row, byte for byte
-- the same on every attempt.
CREATE TABLE webhook_events (
    seq                  bigserial PRIMARY KEY,
    id                   uuid NOT NULL UNIQUE,
    org_id               uuid NOT NULL REFERENCES orgs(id),
    job_id               uuid,
    type                 text NOT NULL,
    data                 jsonb NOT NULL,
    -- webhook.disabled goes to the org's other endpoints, not to the one disabled.
    except_endpoint_id   uuid,
    created_at           timestamptz NOT NULL DEFAULT now(),
    fanned_out_at        timestamptz
);
CREATE INDEX webhook_events_unfanned ON webhook_events (seq) WHERE fanned_out_at IS NULL;
CREATE INDEX webhook_events_org ON webhook_events (org_id, seq);

-- Wakes a listening dispatcher (and `webhook listen` streams) when events commit.
CREATE FUNCTION webhook_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mpegflow_webhook_events', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER webhook_events_notify AFTER INSERT ON webhook_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_events_notify();

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints(id),
    org_id           uuid NOT NULL REFERENCES orgs(id),
    event_id         uuid NOT NULL REFERENCES webhook_events(id),
    state            text NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed', 'held')),
    -- Failed attempts in the current schedule (a replay starts a new one).
    failures         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    -- While an attempt is in flight: until when its claim holds, and the claim's fence.
    claimed_until    timestamptz,
    claim_token      uuid,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    id             uuid PRIMARY KEY,
    delivery_id    uuid NOT NULL REFERENCES webhook_deliveries(id),
    org_id         uuid NOT NULL REFERENCES orgs(id),
    attempted_at   timestamptz NOT NULL,
    succeeded      boolean NOT NULL,
    status_code    integer,
    latency_ms     integer NOT NULL,
    error          text,
    response_body  text
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempted_at);

-- The dispatcher's role: this database's name plus `_webhooks` (roles are cluster-wide, so
-- each database gets its own). It can read endpoints and change only their health, work the
-- outbox and the deliveries, record attempts and append to the audit trail. Nothing else:
-- no jobs, no assets, no keys, no tokens. A deployment gives it a login (`mpegflow up` does).
DO $$
DECLARE
    r text := left(current_database(), 54) || '_webhooks';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- another migration created it meanwhile
        END;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), r);
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', r);
    EXECUTE format('GRANT SELECT ON _sqlx_migrations TO %I', r);
    EXECUTE format('GRANT SELECT, UPDATE (state, disabled_at, disabled_reason, consecutive_failures, failing_since, updated_at) ON webhook_endpoints TO %I', r);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (fanned_out_at) ON webhook_events TO %I', r);
    EXECUTE format('GRANT USAGE ON SEQUENCE webhook_events_seq_seq TO %I', r);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE (state, failures, next_attempt_at, claimed_until, claim_token, updated_at) ON webhook_deliveries TO %I', r);
    EXECUTE format('GRANT SELECT, INSERT ON webhook_attempts TO %I', r);
    EXECUTE format('GRANT INSERT ON audit_logs TO %I', r);
    EXECUTE format('GRANT USAGE ON SEQUENCE audit_logs_id_seq TO %I', r);
END;
$$;
