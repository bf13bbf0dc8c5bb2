"""The claim reads the backlogged accounts one at a time (issue 16): each candidate is the
first entry of the partial index `account_backlogged` past the last one tried. Before
it, zypher_claim looped over a query of all backlogged accounts of the pool, for which
the planner read and sorted every one of them on each claim (a seq scan and a sort of
1,000 accounts in the device idle gap's benchmark), although the first is nearly always
the one served.

Frozen copy of `jobs/sql/claim.sql` (`tests/queue/test_sql_files.py`). Same signature:
CREATE OR REPLACE, and zypher_finish_and_claim, which calls it, is unchanged.
"""

import importlib

from django.db import migrations

FUNCTIONS = {
    "zypher_claim": r"""-- zypher_claim: the next job of a pool by the fair-share policy (jobs.queue.claim_next).
-- Lock order (README, "One lock order"): pool, then account, then job.
-- A sized device walks the backlogged accounts in fair order without a cap: a user with
-- nothing that fits costs one probe of job_queued_fit (its smallest queued size), is not
-- locked and not charged, and keeps its place for a device that fits (issue 13).
-- The candidates are read one at a time, each the first entry past the last one in the
-- partial index of backlogged accounts: a FOR loop over them all had the planner sort
-- every backlogged account of the pool on each claim (issue 16). Each step is a statement
-- of its own snapshot, so an account that moved back past the last one read would never
-- be read: every change that lowers an account's virtual time (a settle, a requeue's
-- refund) holds the pool's lock, as the claim does. Moves forward (a submit's lift) and
-- accounts newly backlogged behind the walk are as if they came after the claim; their
-- submit NOTIFYs.
CREATE OR REPLACE FUNCTION zypher_claim(
    p_device_type text, p_device text, p_device_size integer, p_now timestamptz,
    p_lease_seconds double precision
) RETURNS TABLE (
    out_job_id bigint, out_public_id uuid, out_owner_id bigint, out_owner text,
    out_kind text, out_input jsonb, out_pool_id bigint, out_fencing_token integer,
    out_charged_cost double precision, out_charged_weight double precision
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_pool record;
    v_candidate record;
    v_after_time double precision := '-infinity';
    v_after_id bigint := 0;
    v_account record;
    v_job record;
    v_step record;
    v_head_id bigint;
    v_head_priority integer;
    v_smaller_than integer;
    v_actual integer;
BEGIN
    SELECT id, virtual_time, cost_estimate INTO v_pool
    FROM jobs_fairpool WHERE device_type = p_device_type FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    LOOP
        SELECT a.id, a.user_id, a.virtual_time INTO v_candidate
        FROM jobs_fairshareaccount a
        WHERE a.pool_id = v_pool.id AND a.queued_count > 0
          AND (a.virtual_time, a.id) > (v_after_time, v_after_id)
        ORDER BY a.virtual_time, a.id
        LIMIT 1;
        EXIT WHEN NOT FOUND;
        v_after_time := v_candidate.virtual_time;
        v_after_id := v_candidate.id;
        IF p_device_size IS NOT NULL THEN
            PERFORM j.size FROM jobs_job j
            WHERE j.device_type = p_device_type AND j.owner_id = v_candidate.user_id
              AND j.status = 'queued' AND j.size <= p_device_size
            ORDER BY j.size LIMIT 1;
            IF NOT FOUND THEN
                CONTINUE;  -- nothing of theirs fits this device: read without their lock
            END IF;
        END IF;
        -- The account before its jobs: a cancel or a requeue holds them in this order.
        SELECT a.id, a.user_id, a.virtual_time, a.queued_count, u.weight, u.username
        INTO v_account
        FROM jobs_fairshareaccount a JOIN jobs_user u ON u.id = a.user_id
        WHERE a.id = v_candidate.id
        FOR NO KEY UPDATE OF a;
        IF v_account.queued_count <= 0 THEN
            CONTINUE;  -- emptied by a cancel that committed after the list was read
        END IF;
        IF p_device_size IS NULL THEN
            SELECT j.id, j.public_id, j.kind, j.input, j.attempts INTO v_job
            FROM jobs_job j
            WHERE j.device_type = p_device_type AND j.owner_id = v_account.user_id
              AND j.status = 'queued'
            ORDER BY j.priority DESC, j.id
            LIMIT 1
            FOR NO KEY UPDATE SKIP LOCKED;
        ELSE
            -- The head among the jobs that fit: one probe per distinct size that fits,
            -- each giving that size's head (priority, then age); larger jobs are not read.
            v_head_id := NULL;
            v_smaller_than := -1;
            LOOP
                SELECT j.size, j.priority, j.id INTO v_step FROM jobs_job j
                WHERE j.device_type = p_device_type AND j.owner_id = v_account.user_id
                  AND j.status = 'queued' AND j.size > v_smaller_than
                  AND j.size <= p_device_size
                ORDER BY j.size, j.priority DESC, j.id
                LIMIT 1;
                EXIT WHEN NOT FOUND;
                IF v_head_id IS NULL OR v_step.priority > v_head_priority
                   OR (v_step.priority = v_head_priority AND v_step.id < v_head_id) THEN
                    v_head_id := v_step.id;
                    v_head_priority := v_step.priority;
                END IF;
                v_smaller_than := v_step.size;
            END LOOP;
            SELECT j.id, j.public_id, j.kind, j.input, j.attempts INTO v_job
            FROM jobs_job j
            WHERE j.id = v_head_id AND j.status = 'queued'
            FOR NO KEY UPDATE SKIP LOCKED;
        END IF;
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
}


def create_functions(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTIONS["zypher_claim"])


def restore_previous(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        previous = importlib.import_module("jobs.migrations.0009_sized_claim").FUNCTIONS
        schema_editor.execute(previous["zypher_claim"])


class Migration(migrations.Migration):
    dependencies = [("jobs", "0016_submit_owner_outcomes")]
    operations = [migrations.RunPython(create_functions, restore_previous)]
