-- zypher_submit: a whole submit in one call (jobs.queue.submit_jobs): find the user (by id:
-- 'gone' when the row no longer exists; or by name, created on first use and created
-- again if deleted meanwhile), answer a repeated Idempotency-Key with 'repeated' (even
-- for a deactivated user: those jobs were accepted), refuse a deactivated user with
-- 'inactive', refuse a submit that would pass the per-user cap with 'full' and the
-- user's queued count, else insert and enqueue the jobs of each pool ('queued', one row
-- per job). All or nothing: one statement.
-- Lock order: the user's row first (FOR NO KEY UPDATE: one user's submits take turns, so
-- the cap is exact and a deactivation lands wholly before or after a submit; a job's
-- foreign key takes FOR KEY SHARE, which does not conflict), then per pool in id order
-- its account (upserted), then that pool's new job rows. Nothing that holds a pool,
-- account or job lock waits for a user's row. NOTIFY only when the user becomes
-- backlogged, or gains work some device it had none for can run (issue 13): one per job
-- would serialise commits under a burst.
CREATE OR REPLACE FUNCTION zypher_submit(
    p_owner_id bigint, p_username text, p_device_types text[], p_public_ids uuid[],
    p_kinds text[], p_inputs jsonb[], p_priorities integer[], p_sizes integer[],
    p_keys text[], p_program_id bigint, p_now timestamptz, p_default_cost double precision,
    p_default_weight double precision, p_max_queued bigint
) RETURNS TABLE (out_outcome text, out_owner_id bigint, out_queued bigint,
                 out_public_id uuid, out_id bigint) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_owner_id bigint;
    v_active boolean;
    v_queued bigint;
    v_count integer := cardinality(p_public_ids);
    v_type text;
    v_pool record;
    v_pool_count integer;
    v_pool_queued integer;
    v_min_size integer;
    v_had_fitting boolean;
BEGIN
    IF p_owner_id IS NOT NULL THEN
        SELECT id, is_active INTO v_owner_id, v_active
        FROM jobs_user WHERE id = p_owner_id FOR NO KEY UPDATE;
        IF NOT FOUND THEN  -- deleted since the caller read it: no one to queue for
            RETURN QUERY SELECT 'gone'::text, NULL::bigint, NULL::bigint, NULL::uuid, NULL::bigint;
            RETURN;
        END IF;
    ELSE
        -- A name is found or created; a row deleted between our look-up and our insert's
        -- conflict is looked up (and if need be created) again.
        LOOP
            SELECT id, is_active INTO v_owner_id, v_active
            FROM jobs_user WHERE username = p_username FOR NO KEY UPDATE;
            EXIT WHEN FOUND;
            -- As the ORM's get_or_create(username=…) saves it: no usable password.
            INSERT INTO jobs_user (password, is_superuser, username, first_name, last_name,
                                   email, is_staff, is_active, date_joined, weight)
            VALUES ('', false, p_username, '', '', '', false, true, p_now, p_default_weight)
            ON CONFLICT (username) DO NOTHING
            RETURNING id, is_active INTO v_owner_id, v_active;
            EXIT WHEN FOUND;  -- else a concurrent submit created it: wait for its row's lock
        END LOOP;
    END IF;
    -- Keys are all set or all NULL. Checked before the cap and before the user's state:
    -- an accepted submit's retry answers with its jobs, at the cap or deactivated since.
    -- Also the keys only a request of another size under the same key stored (a single
    -- job keeps its key, a batch k#0, k#1, ...: jobs.queue.other_request_keys): the
    -- caller refuses those, rather than this call queueing the request a second time.
    -- A single job counts a batch's k#0 only with its k#1: a single job keyed k#0 is
    -- a request of its own.
    IF p_keys[1] IS NOT NULL AND (EXISTS (
        SELECT 1 FROM jobs_job j
        WHERE j.owner_id = v_owner_id AND j.idempotency_key = ANY (
            p_keys || CASE WHEN v_count = 1 THEN ARRAY[]::text[]
                           ELSE ARRAY[left(p_keys[1], -2),
                                      left(p_keys[1], -2) || '#' || v_count] END))
        OR v_count = 1 AND (
            SELECT count(*) FROM jobs_job j
            WHERE j.owner_id = v_owner_id
              AND j.idempotency_key IN (p_keys[1] || '#0', p_keys[1] || '#1')) = 2) THEN
        RETURN QUERY SELECT 'repeated'::text, v_owner_id, NULL::bigint, NULL::uuid, NULL::bigint;
        RETURN;
    END IF;
    IF NOT v_active THEN
        RETURN QUERY SELECT 'inactive'::text, v_owner_id, NULL::bigint, NULL::uuid, NULL::bigint;
        RETURN;
    END IF;
    -- Under the user's lock no other submit of theirs can add to these counters.
    SELECT coalesce(sum(a.queued_count), 0) INTO v_queued
    FROM jobs_fairshareaccount a WHERE a.user_id = v_owner_id;
    IF v_queued + v_count > p_max_queued THEN
        RETURN QUERY SELECT 'full'::text, v_owner_id, v_queued, NULL::uuid, NULL::bigint;
        RETURN;
    END IF;
    FOR v_type IN SELECT DISTINCT t.d FROM unnest(p_device_types) AS t(d) ORDER BY 1 LOOP
        PERFORM 1 FROM jobs_fairpool WHERE device_type = v_type;
        IF NOT FOUND THEN
            INSERT INTO jobs_fairpool (device_type, virtual_time, cost_estimate)
            VALUES (v_type, 0, p_default_cost) ON CONFLICT (device_type) DO NOTHING;
        END IF;
    END LOOP;
    FOR v_pool IN
        SELECT p.id, p.device_type FROM jobs_fairpool p
        WHERE p.device_type = ANY (p_device_types) ORDER BY p.id
    LOOP
        SELECT count(*), min(t.s) INTO v_pool_count, v_min_size
        FROM unnest(p_device_types, p_sizes) AS t(d, s) WHERE t.d = v_pool.device_type;
        -- Whether the user has a queued job as small as the smallest new one (job_queued_fit).
        v_had_fitting := EXISTS (
            SELECT 1 FROM jobs_job j
            WHERE j.device_type = v_pool.device_type AND j.owner_id = v_owner_id
              AND j.status = 'queued' AND j.size <= v_min_size);
        -- A user that had nothing queued is lifted to the pool's virtual time, and so is
        -- one whose queued jobs are all bigger than the smallest new one: it had no work
        -- for the devices that one fits, and waiting for a bigger device banks no credit
        -- (issue 13). The pool's virtual time is read, not locked, as before.
        INSERT INTO jobs_fairshareaccount
            (pool_id, user_id, virtual_time, queued_count, running_count, served_seconds)
        VALUES (v_pool.id, v_owner_id,
                (SELECT virtual_time FROM jobs_fairpool WHERE id = v_pool.id),
                v_pool_count, 0, 0)
        ON CONFLICT (pool_id, user_id) DO UPDATE SET
            virtual_time = CASE
                WHEN (jobs_fairshareaccount.queued_count = 0 OR NOT v_had_fitting)
                 AND jobs_fairshareaccount.virtual_time < excluded.virtual_time
                THEN excluded.virtual_time ELSE jobs_fairshareaccount.virtual_time END,
            queued_count = jobs_fairshareaccount.queued_count + excluded.queued_count
        RETURNING queued_count INTO v_pool_queued;
        RETURN QUERY
        INSERT INTO jobs_job (public_id, owner_id, kind, input, device_type, priority, status,
                              error, created_at, device, attempts, charged_cost,
                              charged_weight, idempotency_key, cancelled_by, size, program_id)
        SELECT t.public_id, v_owner_id, t.kind, t.input, t.device_type, t.priority, 'queued',
               '', p_now, '', 0, 0, 1, t.key, '', t.size, p_program_id
        FROM unnest(p_device_types, p_public_ids, p_kinds, p_inputs, p_priorities, p_sizes,
                    p_keys)
             WITH ORDINALITY AS t(device_type, public_id, kind, input, priority, size, key, ord)
        WHERE t.device_type = v_pool.device_type
        ORDER BY t.ord
        RETURNING 'queued'::text, v_owner_id, NULL::bigint, jobs_job.public_id, jobs_job.id;
        -- ... or gains work for devices it had none for: they may be idle, waiting for it.
        IF v_pool_queued = v_pool_count OR NOT v_had_fitting THEN
            PERFORM pg_notify('zypher_work', v_pool.device_type);
        END IF;
    END LOOP;
END $$;
