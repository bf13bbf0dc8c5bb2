-- zypher_finish: record a job's outcome and settle its cost (jobs.queue.finish_job).
-- Lock order: pool, then account, then job; false when the fencing token lost the job.
CREATE OR REPLACE FUNCTION zypher_finish(
    p_job_id bigint, p_fencing_token integer, p_succeeded boolean, p_result jsonb,
    p_error text, p_duration double precision, p_now timestamptz, p_pool_id bigint,
    p_owner_id bigint, p_charged_cost double precision, p_charged_weight double precision,
    p_public_id text, p_smoothing double precision
) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM jobs_fairpool WHERE id = p_pool_id FOR NO KEY UPDATE;
    PERFORM 1 FROM jobs_fairshareaccount
    WHERE pool_id = p_pool_id AND user_id = p_owner_id FOR NO KEY UPDATE;
    UPDATE jobs_job SET
        status = CASE WHEN p_succeeded THEN 'succeeded' ELSE 'failed' END,
        result = CASE WHEN p_succeeded THEN p_result ELSE NULL END,
        error = CASE WHEN p_succeeded THEN '' ELSE p_error END,
        finished_at = p_now, duration = p_duration, lease_expires_at = NULL
    WHERE id = p_job_id AND status = 'running' AND attempts = p_fencing_token;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE jobs_fairshareaccount SET
        virtual_time = virtual_time + (p_duration - p_charged_cost) / p_charged_weight,
        running_count = running_count - 1,
        served_seconds = served_seconds + p_duration
    WHERE pool_id = p_pool_id AND user_id = p_owner_id;
    UPDATE jobs_fairpool SET
        cost_estimate = cost_estimate * (1 - p_smoothing) + p_duration * p_smoothing
    WHERE id = p_pool_id;
    PERFORM pg_notify('zypher_done', p_public_id);
    RETURN true;
END $$;
