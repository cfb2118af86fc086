-- One heartbeat of a leased job (the Heartbeat RPC), statement for statement as
-- pg_stat_statements records it in the `coordinator` bench. Run beside assignment.pgbench.sql as
-- a weighted script (`-f heartbeat.pgbench.sql@w`): the gRPC run heartbeats every leased job
-- once a second, so its heartbeats per assignment grow with the run's length (about half of it
-- in seconds); the bench weighs this script by the ratio it measured, so both runs do the same
-- mix. See assignment.pgbench.sql for the variables; the heartbeat extends the lease of the job
-- this client claimed last (a zero UUID, matching nothing, before its first claim).
-- :now = 'now' stands for the NULL lease cutoff (COALESCE($8, now())).
\if :ready = 0
SELECT w.id AS worker_id, 'worker:' || w.id AS actor, t.hash AS token_hash,
       '00000000-0000-0000-0000-000000000000' AS j_id, '' AS j_fencing_token, 1 AS bench_setup
FROM workers w JOIN worker_tokens t ON t.id = w.token_id
ORDER BY w.id OFFSET :client_id LIMIT 1 \gset
\set ready 1
\endif

-- The worker token and its registration (Store::authenticate_worker_call).
WITH t AS (
    SELECT t.id AS token_id, t.pool_id, p.name AS pool_name, t.max_workers, t.leases_per_minute,
           t.suspended_at IS NOT NULL AS suspended, t.strikes_since
    FROM worker_tokens t JOIN pools p ON p.id = t.pool_id
    WHERE t.hash = :token_hash AND t.revoked_at IS NULL
 ), w AS (
    SELECT ffmpeg_grammar, last_seen_at > now() - make_interval(secs => :ttl) AS live
    FROM workers WHERE id = :worker_id AND token_id = (SELECT token_id FROM t)
 ), touched AS (
    UPDATE workers SET last_seen_at = now()
    WHERE id = :worker_id AND token_id = (SELECT token_id FROM t WHERE NOT suspended)
      AND last_seen_at > now() - make_interval(secs => :ttl)
      AND last_seen_at <= now() - make_interval(secs => :ttl / 3)
 )
 SELECT t.*, w.ffmpeg_grammar, w.live FROM t LEFT JOIN w ON true \gset tok_

-- Store::heartbeat (the job.progress outbox insert matches nothing: no endpoint asks for it).
WITH deadline AS (
               SELECT a.assigned_at + make_interval(secs => j.timeout_seconds + :grace) AS at
               FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.attempt = j.attempts
               WHERE j.id = :j_id),
             before AS (SELECT progress FROM jobs WHERE id = :j_id),
             updated AS (
             UPDATE jobs SET lease_expires_at = CASE WHEN state = 'running'
                        THEN LEAST(now() + make_interval(secs => :lease), (SELECT at FROM deadline)) ELSE lease_expires_at END,
                    progress = CASE WHEN state = 'running' THEN COALESCE(:hb_progress, progress) ELSE progress END,
                    live = CASE WHEN state = 'running' THEN :hb_live ELSE live END
             WHERE id = :j_id AND lease_worker_id = :worker_id AND fencing_token = :j_fencing_token
               AND (state = 'canceled' OR (state = 'running' AND now() < (SELECT at FROM deadline)
                                           AND lease_expires_at > COALESCE(:now, now())))
             RETURNING id, org_id, state, progress, attempts),
             announced AS (
               INSERT INTO webhook_events (id, org_id, job_id, type, data)
               SELECT :hb_event_id, u.org_id, u.id, 'job.progress',
                      jsonb_build_object('id', u.id, 'state', 'running', 'progress', u.progress, 'attempt', u.attempts)
               FROM updated u
               WHERE u.state = 'running' AND u.progress IS DISTINCT FROM (SELECT progress FROM before)
                 AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.org_id = u.org_id
                               AND e.deleted_at IS NULL AND 'job.progress' = ANY(e.events)))
             SELECT state FROM updated;
