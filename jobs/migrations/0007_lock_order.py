"""PostgreSQL functions in the one lock order: pool, then account, then job.

Frozen copies of `jobs/sql/*.sql` at this migration (`tests/queue/test_sql_files.py`
checks that the latest copies equal the files). Before it, zypher_finish locked the
account before the pool while zypher_claim locked the pool first, so two processes
settling at once deadlocked; zypher_claim took a job row before its account, against
cancels that hold the account and then the job; and its repair of a drifted counter
counted without the account's lock. Signatures are unchanged: CREATE OR REPLACE.
"""

import importlib

from django.db import migrations

FUNCTIONS = {
    "zypher_submit": r"""-- zypher_submit: insert a user's jobs of one pool and enqueue them (jobs.queue.submit_jobs).
-- Lock order: the account (upserted first), then the new job rows. NOTIFY only when the
-- user becomes backlogged: one per job would serialise commits under a burst.
CREATE OR REPLACE FUNCTION zypher_submit(
    p_owner_id bigint, p_device_type text, p_public_ids uuid[], p_kinds text[],
    p_inputs jsonb[], p_priorities integer[], p_sizes integer[], p_keys text[],
    p_program_id bigint, p_now timestamptz, p_default_cost double precision
) RETURNS TABLE (out_public_id uuid, out_id bigint) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_pool_id bigint;
    v_queued integer;
    v_count integer := cardinality(p_public_ids);
BEGIN
    SELECT id INTO v_pool_id FROM jobs_fairpool WHERE device_type = p_device_type;
    IF NOT FOUND THEN
        INSERT INTO jobs_fairpool (device_type, virtual_time, cost_estimate)
        VALUES (p_device_type, 0, p_default_cost) ON CONFLICT (device_type) DO NOTHING;
        SELECT id INTO v_pool_id FROM jobs_fairpool WHERE device_type = p_device_type;
    END IF;
    -- A user that had nothing queued is lifted to the pool's virtual time.
    INSERT INTO jobs_fairshareaccount
        (pool_id, user_id, virtual_time, queued_count, running_count, served_seconds)
    VALUES (v_pool_id, p_owner_id,
            (SELECT virtual_time FROM jobs_fairpool WHERE id = v_pool_id), v_count, 0, 0)
    ON CONFLICT (pool_id, user_id) DO UPDATE SET
        virtual_time = CASE
            WHEN jobs_fairshareaccount.queued_count = 0
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
    IF v_queued = v_count THEN
        PERFORM pg_notify('zypher_work', p_device_type);
    END IF;
END $$;
""",
    "zypher_claim": r"""-- zypher_claim: the next job of a pool by the fair-share policy (jobs.queue.claim_next).
-- Lock order (README, "One lock order"): pool, then account, then job.
CREATE OR REPLACE FUNCTION zypher_claim(
    p_device_type text, p_device text, p_device_size integer, p_now timestamptz,
    p_lease_seconds double precision, p_max_accounts integer
) RETURNS TABLE (
    out_job_id bigint, out_public_id uuid, out_owner_id bigint, out_owner text,
    out_kind text, out_input jsonb, out_pool_id bigint, out_fencing_token integer,
    out_charged_cost double precision, out_charged_weight double precision
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_pool record;
    v_candidate record;
    v_account record;
    v_job record;
    v_actual integer;
BEGIN
    SELECT id, virtual_time, cost_estimate INTO v_pool
    FROM jobs_fairpool WHERE device_type = p_device_type FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOR v_candidate IN
        SELECT a.id FROM jobs_fairshareaccount a
        WHERE a.pool_id = v_pool.id AND a.queued_count > 0
        ORDER BY a.virtual_time, a.id
        LIMIT p_max_accounts
    LOOP
        -- The account before its jobs: a cancel or a requeue holds them in this order.
        SELECT a.id, a.user_id, a.virtual_time, a.queued_count, u.weight, u.username
        INTO v_account
        FROM jobs_fairshareaccount a JOIN jobs_user u ON u.id = a.user_id
        WHERE a.id = v_candidate.id
        FOR NO KEY UPDATE OF a;
        IF v_account.queued_count <= 0 THEN
            CONTINUE;  -- emptied by a cancel that committed after the list was read
        END IF;
        SELECT j.id, j.public_id, j.kind, j.input, j.attempts INTO v_job
        FROM jobs_job j
        WHERE j.device_type = p_device_type AND j.owner_id = v_account.user_id
          AND j.status = 'queued' AND (p_device_size IS NULL OR j.size <= p_device_size)
        ORDER BY j.priority DESC, j.id
        LIMIT 1
        FOR NO KEY UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            IF p_device_size IS NULL THEN
                -- Nothing queued although the counter says so: it drifted. Count under
                -- the account's lock (every change of a queued job takes it), record, fix.
                SELECT count(*) INTO v_actual FROM jobs_job
                WHERE owner_id = v_account.user_id AND device_type = p_device_type
                  AND status = 'queued';
                IF v_actual <> v_account.queued_count THEN
                    UPDATE jobs_fairshareaccount SET queued_count = v_actual
                    WHERE id = v_account.id;
                    INSERT INTO jobs_queuerepair (repaired_at, kind, subject, detail, repaired_by)
                    VALUES (p_now, 'queued_count',
                            'account ' || v_account.username || ' in ' || p_device_type,
                            'queued_count was ' || v_account.queued_count || ', counted '
                                || v_actual,
                            'claim');
                END IF;
            END IF;
            CONTINUE;
        END IF;
        UPDATE jobs_job SET status = 'running', started_at = p_now, device = p_device,
            attempts = v_job.attempts + 1,
            lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
            charged_cost = v_pool.cost_estimate, charged_weight = v_account.weight
        WHERE id = v_job.id;
        UPDATE jobs_fairshareaccount SET
            virtual_time = virtual_time + v_pool.cost_estimate / v_account.weight,
            queued_count = queued_count - 1, running_count = running_count + 1
        WHERE id = v_account.id;
        IF v_account.virtual_time > v_pool.virtual_time THEN
            UPDATE jobs_fairpool SET virtual_time = v_account.virtual_time WHERE id = v_pool.id;
        END IF;
        RETURN QUERY SELECT v_job.id, v_job.public_id, v_account.user_id::bigint,
            v_account.username::text, v_job.kind::text, v_job.input, v_pool.id::bigint,
            (v_job.attempts + 1)::integer, v_pool.cost_estimate, v_account.weight;
        RETURN;
    END LOOP;
END $$;
""",
    "zypher_finish": r"""-- zypher_finish: record a job's outcome and settle its cost (jobs.queue.finish_job).
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
""",
    "zypher_finish_and_claim": r"""-- zypher_finish_and_claim: settle a job and claim the device's next one, one commit
-- (jobs.queue.finish_and_claim_next). Both parts take the pool first; the second takes
-- the pool lock the first already holds, so the order stays pool, account, job.
CREATE OR REPLACE FUNCTION zypher_finish_and_claim(
    p_job_id bigint, p_fencing_token integer, p_succeeded boolean, p_result jsonb,
    p_error text, p_duration double precision, p_now timestamptz, p_pool_id bigint,
    p_owner_id bigint, p_charged_cost double precision, p_charged_weight double precision,
    p_public_id text, p_smoothing double precision,
    p_device_type text, p_device text, p_device_size integer,
    p_lease_seconds double precision, p_max_accounts integer
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
        p_device_size, p_now, p_lease_seconds, p_max_accounts) AS c;
    IF NOT FOUND THEN
        RETURN QUERY SELECT v_accepted, NULL::bigint, NULL::uuid, NULL::bigint, NULL::text,
            NULL::text, NULL::jsonb, NULL::bigint, NULL::integer, NULL::double precision,
            NULL::double precision;
    END IF;
END $$;
""",
}


def create_functions(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in FUNCTIONS.values():
            schema_editor.execute(sql)


def restore_previous(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        claim = importlib.import_module("jobs.migrations.0003_claim_functions")
        submit = importlib.import_module("jobs.migrations.0005_submit_function")
        schema_editor.execute(claim.CREATE_FUNCTIONS)
        schema_editor.execute(submit.CREATE_FUNCTION)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0006_queue_repair")]
    operations = [migrations.RunPython(create_functions, restore_previous)]
