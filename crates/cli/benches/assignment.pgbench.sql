-- One coordinator assignment (a GetWorkAssignment that claims a job), statement for statement
-- as pg_stat_statements records it in `cargo bench -p mpegflow --bench platform -- coordinator`,
-- which runs it with `pgbench -n -c 64 -j 2 -M prepared` as the baseline of the gRPC figure and
-- fails when the coordinator's statements drift from these (see `coordinator_bench`).
--
-- Parameters are pgbench variables: given with -D (see the bench), or taken with \gset from an
-- earlier statement, as the coordinator takes them from its earlier rows. pgbench sends no SQL
-- NULL, so a NULL the coordinator binds is given as the value that means the same here:
-- :no_strikes_since = '-infinity' (COALESCE($3, '-infinity')).
-- Each client plays one registered worker (set up once per client, the only statement the
-- coordinator does not run): pgbench cannot make a UUID per transaction. That worker holds a
-- lease after its first claim, which the coordinator would refuse; the statements cost the same.
\if :ready = 0
SELECT w.id AS worker_id, 'worker:' || w.id AS actor, t.hash AS token_hash,
       '00000000-0000-0000-0000-000000000000' AS j_id, '' AS j_fencing_token, 1 AS bench_setup
FROM workers w JOIN worker_tokens t ON t.id = w.token_id
ORDER BY w.id OFFSET :client_id LIMIT 1 \gset
\set ready 1
\endif

-- The worker token and its registration, touched (Store::authenticate_worker_call).
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

-- Store::claim_job, in one transaction.
BEGIN;

SELECT t.revoked_at IS NULL AND t.suspended_at IS NULL
FROM workers w JOIN worker_tokens t ON t.id = w.token_id
WHERE w.id = :worker_id AND w.token_id = :tok_token_id FOR UPDATE OF w;

SELECT id FROM jobs WHERE lease_worker_id = :worker_id AND state = 'running' LIMIT 1;

SELECT id, state FROM jobs j
WHERE pool_id = :tok_pool_id AND state = 'queued' AND run_after <= now() AND grammar = :tok_ffmpeg_grammar
  AND (blame_worker_id IS NULL OR (blame_worker_id <> :worker_id AND (blame_token_id IS DISTINCT FROM :tok_token_id OR NOT EXISTS (
       SELECT 1 FROM workers w WHERE w.pool_id = :tok_pool_id AND w.token_id <> :tok_token_id AND w.ffmpeg_grammar = :tok_ffmpeg_grammar
         AND w.last_seen_at > now() - make_interval(secs => :ttl)))))
ORDER BY run_after, created_at LIMIT 1 FOR UPDATE SKIP LOCKED \gset c_

-- The token's lease rate and strikes (Store::token_gate).
SELECT
  (SELECT count(*) FROM job_attempts WHERE token_id = :tok_token_id AND assigned_at > now() - interval '60 seconds'),
  (SELECT EXTRACT(EPOCH FROM min(assigned_at) + interval '60 seconds' - now())::float8
     FROM job_attempts WHERE token_id = :tok_token_id AND assigned_at > now() - interval '60 seconds'),
  (SELECT count(*) FROM job_attempts WHERE token_id = :tok_token_id AND strike
     AND finished_at > greatest(now() - make_interval(secs => :strike_window), COALESCE(:no_strikes_since, '-infinity'::timestamptz))),
  (SELECT EXTRACT(EPOCH FROM now() - max(finished_at))::float8 FROM job_attempts WHERE token_id = :tok_token_id AND strike
     AND finished_at > greatest(now() - make_interval(secs => :strike_window), COALESCE(:no_strikes_since, '-infinity'::timestamptz)));

UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_worker_id = :worker_id, live = NULL,
       lease_expires_at = now() + make_interval(secs => :lease), fencing_token = :fencing,
       started_at = COALESCE(started_at, now()), progress = 0
WHERE id = :c_id RETURNING * \gset j_

-- job.started into the webhook outbox (the job id stands in for the event's fresh UUID).
INSERT INTO webhook_events (id, org_id, job_id, type, data) VALUES (:j_id, :j_org_id, :j_id, :started_type, :started_data);

INSERT INTO job_attempts (job_id, attempt, worker_id, token_id) VALUES (:j_id, :j_attempts, :worker_id, :tok_token_id);

-- job.assigned and the input's presign.get, one statement.
INSERT INTO audit_logs (org_id, actor, action, job_id, subject, details)
VALUES (:j_org_id, :actor, :assigned_action, :j_id, :worker_id, :assigned_details),
       (:j_org_id, :actor, :presign_action, :j_id, :asset_subject, :presign_details);

COMMIT;
