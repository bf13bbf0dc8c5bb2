-- zypher_submit: insert a user's jobs of one pool and enqueue them (jobs.queue.submit_jobs).
-- Lock order: the account (upserted first), then the new job rows. NOTIFY only when the
-- user becomes backlogged, or gains work some device it had none for can run (issue 13):
-- one per job would serialise commits under a burst.
CREATE OR REPLACE FUNCTION zypher_submit(
    p_owner_id bigint, p_device_type text, p_public_ids uuid[], p_kinds text[],
    p_inputs jsonb[], p_priorities integer[], p_sizes integer[], p_keys text[],
    p_program_id bigint, p_now timestamptz, p_default_cost double precision
) RETURNS TABLE (out_public_id uuid, out_id bigint) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_pool_id bigint;
    v_queued integer;
    v_count integer := cardinality(p_public_ids);
    v_had_fitting boolean;
BEGIN
    SELECT id INTO v_pool_id FROM jobs_fairpool WHERE device_type = p_device_type;
    IF NOT FOUND THEN
        INSERT INTO jobs_fairpool (device_type, virtual_time, cost_estimate)
        VALUES (p_device_type, 0, p_default_cost) ON CONFLICT (device_type) DO NOTHING;
        SELECT id INTO v_pool_id FROM jobs_fairpool WHERE device_type = p_device_type;
    END IF;
    -- Whether the user has a queued job as small as the smallest new one (job_queued_fit).
    v_had_fitting := EXISTS (
        SELECT 1 FROM jobs_job j
        WHERE j.device_type = p_device_type AND j.owner_id = p_owner_id
          AND j.status = 'queued' AND j.size <= (SELECT min(s) FROM unnest(p_sizes) AS s));
    -- A user that had nothing queued is lifted to the pool's virtual time, and so is one
    -- whose queued jobs are all bigger than the smallest new one: it had no work for the
    -- devices that one fits, and waiting for a bigger device banks no credit (issue 13).
    INSERT INTO jobs_fairshareaccount
        (pool_id, user_id, virtual_time, queued_count, running_count, served_seconds)
    VALUES (v_pool_id, p_owner_id,
            (SELECT virtual_time FROM jobs_fairpool WHERE id = v_pool_id), v_count, 0, 0)
    ON CONFLICT (pool_id, user_id) DO UPDATE SET
        virtual_time = CASE
            WHEN (jobs_fairshareaccount.queued_count = 0 OR NOT v_had_fitting)
             AND jobs_fairshareaccount.virtual_time < excluded.virtual_time
            THEN excluded.virtual_time ELSE jobs_fairshareaccount.virtual_time END,
        queued_count = jobs_fairshareaccount.queued_count + excluded.queued_count
    RETURNING queued_count INTO v_queued;
    RETURN QUERY
    INSERT INTO jobs_job (public_id, owner_id, kind, input, device_type, priority, status,
                          error, created_at, device, attempts, charged_cost, charged_weight,
                          idempotency_key, cancelled_by, size, program_id)
    SELECT t.public_id, p_owner_id, t.kind, t.input, p_device_type, t.priority, 'queued',
           '', p_now, '', 0, 0, 1, t.key, '', t.size, p_program_id
    FROM unnest(p_public_ids, p_kinds, p_inputs, p_priorities, p_sizes, p_keys)
         WITH ORDINALITY AS t(public_id, kind, input, priority, size, key, ord)
    ORDER BY t.ord
    RETURNING jobs_job.public_id, jobs_job.id;
    -- ... or gains work for devices it had none for: they may be idle, waiting for it.
    IF v_queued = v_count OR NOT v_had_fitting THEN
        PERFORM pg_notify('zypher_work', p_device_type);
    END IF;
END $$;
