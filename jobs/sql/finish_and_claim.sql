-- zypher_finish_and_claim: settle a job and claim the device's next one, one commit
-- (jobs.queue.finish_and_claim_next). Both parts take the pool first; the second takes
-- the pool lock the first already holds, so the order stays pool, account, job.
CREATE OR REPLACE FUNCTION zypher_finish_and_claim(
    p_job_id bigint, p_fencing_token integer, p_succeeded boolean, p_result jsonb,
    p_error text, p_duration double precision, p_now timestamptz, p_pool_id bigint,
    p_owner_id bigint, p_charged_cost double precision, p_charged_weight double precision,
    p_public_id text, p_smoothing double precision,
    p_device_type text, p_device text, p_device_size integer,
    p_lease_seconds double precision
) RETURNS TABLE (
    out_accepted boolean, out_job_id bigint, out_public_id uuid, out_owner_id bigint,
    out_owner text, out_kind text, out_input jsonb, out_pool_id bigint,
    out_fencing_token integer, out_charged_cost double precision,
    out_charged_weight double precision
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_accepted boolean;
BEGIN
    v_accepted := zypher_finish(p_job_id, p_fencing_token, p_succeeded, p_result, p_error,
        p_duration, p_now, p_pool_id, p_owner_id, p_charged_cost, p_charged_weight,
        p_public_id, p_smoothing);
    RETURN QUERY SELECT v_accepted, c.* FROM zypher_claim(p_device_type, p_device,
        p_device_size, p_now, p_lease_seconds) AS c;
    IF NOT FOUND THEN
        RETURN QUERY SELECT v_accepted, NULL::bigint, NULL::uuid, NULL::bigint, NULL::text,
            NULL::text, NULL::jsonb, NULL::bigint, NULL::integer, NULL::double precision,
            NULL::double precision;
    END IF;
END $$;
