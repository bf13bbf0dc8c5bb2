"""PostgreSQL functions for the hot path: claim and settle in one round trip each.

They are the same steps as `jobs.queue.claim_next` and `jobs.queue.finish_job` (the ORM
versions, which SQLite runs), written as PL/pgSQL so that a device waits for one round
trip and one commit between jobs instead of a dozen statements. Each statement in a
VOLATILE function sees a fresh snapshot, so the account chosen after the pool row is
locked is the committed state, as in the ORM version. `tests/queue/test_claim_matches_policy.py`
replays random traces through these functions (on PostgreSQL) and the reference policy.
"""

from django.db import migrations

CREATE_FUNCTIONS = r"""
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
    v_account record;
    v_job record;
BEGIN
    SELECT id, virtual_time, cost_estimate INTO v_pool
    FROM jobs_fairpool WHERE device_type = p_device_type FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOR v_account IN
        SELECT a.id, a.user_id, a.virtual_time, u.weight, u.username
        FROM jobs_fairshareaccount a JOIN jobs_user u ON u.id = a.user_id
        WHERE a.pool_id = v_pool.id AND a.queued_count > 0
        ORDER BY a.virtual_time, a.id
        LIMIT p_max_accounts
    LOOP
        SELECT j.id, j.public_id, j.kind, j.input, j.attempts INTO v_job
        FROM jobs_job j
        WHERE j.device_type = p_device_type AND j.owner_id = v_account.user_id
          AND j.status = 'queued' AND (p_device_size IS NULL OR j.size <= p_device_size)
        ORDER BY j.priority DESC, j.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            IF p_device_size IS NULL THEN  -- the counter drifted: repair it
                UPDATE jobs_fairshareaccount SET queued_count = (
                    SELECT count(*) FROM jobs_job
                    WHERE owner_id = v_account.user_id AND device_type = p_device_type
                      AND status = 'queued')
                WHERE id = v_account.id;
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

CREATE OR REPLACE FUNCTION zypher_finish(
    p_job_id bigint, p_fencing_token integer, p_succeeded boolean, p_result jsonb,
    p_error text, p_duration double precision, p_now timestamptz, p_pool_id bigint,
    p_owner_id bigint, p_charged_cost double precision, p_charged_weight double precision,
    p_public_id text, p_smoothing double precision
) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
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

-- Settle a job and claim the device's next one: one statement, one commit.
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
"""

DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS zypher_finish_and_claim(bigint, integer, boolean, jsonb, text,
    double precision, timestamptz, bigint, bigint, double precision, double precision, text,
    double precision, text, text, integer, double precision, integer);
DROP FUNCTION IF EXISTS zypher_claim(text, text, integer, timestamptz, double precision, integer);
DROP FUNCTION IF EXISTS zypher_finish(bigint, integer, boolean, jsonb, text, double precision,
    timestamptz, bigint, bigint, double precision, double precision, text, double precision);
"""


def create_functions(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_FUNCTIONS)


def drop_functions(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_FUNCTIONS)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0002_programs_and_job_size")]
    operations = [migrations.RunPython(create_functions, drop_functions)]
