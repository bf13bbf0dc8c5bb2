"""PostgreSQL function for submit: insert the jobs and enqueue them in one round trip.

The same steps as the ORM path of `jobs.queue.submit_jobs` (which SQLite runs): insert
the jobs, create the pool row on first use, upsert the user's account (lifting an idle
user to the pool's virtual time) and NOTIFY only when the user becomes backlogged.
"""

from django.db import migrations

CREATE_FUNCTION = r"""
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
    IF v_queued = v_count THEN
        PERFORM pg_notify('zypher_work', p_device_type);
    END IF;
END $$;
"""

DROP_FUNCTION = """
DROP FUNCTION IF EXISTS zypher_submit(bigint, text, uuid[], text[], jsonb[], integer[],
    integer[], text[], bigint, timestamptz, double precision);
"""


def create_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_FUNCTION)


def drop_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_FUNCTION)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0004_job_queued_oldest")]
    operations = [migrations.RunPython(create_function, drop_function)]
