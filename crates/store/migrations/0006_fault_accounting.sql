-- What a job's failed attempts cost (mpegflow_domain::job::Fault): faults of the job count
-- against max_attempts, faults of the platform (stores, coordinator, database, workers)
-- against a larger bound of their own, so a platform blip never spends a job's attempt.
ALTER TABLE jobs
    ADD COLUMN job_faults integer NOT NULL DEFAULT 0,
    ADD COLUMN platform_faults integer NOT NULL DEFAULT 0;
ALTER TABLE job_attempts
    ADD COLUMN fault text CHECK (fault IN ('job', 'platform'));
