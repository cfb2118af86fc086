-- The lease a worker holds, looked up on every claim (one lease at a time per worker): without
-- this index the lookup scanned every running job, the costliest statement of an assignment.
CREATE INDEX jobs_lease_worker ON jobs (lease_worker_id) WHERE state = 'running';
