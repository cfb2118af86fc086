-- What an output file is as media (format, duration, streams), as the worker's jailed ffprobe
-- measured it and the control plane checked it (mpegflow_domain::media); NULL when unknown.
ALTER TABLE assets ADD COLUMN media jsonb;
