-- The history and enforcement triggers (0011–0014) run once per statement instead of once
-- per row: each reads the statement's rows from its transition tables and writes what they
-- entered in one insert. A batch of events, or a round of admissions, then costs the
-- database one insert for the history and one for the enforcements, not one per row.
-- What is written is unchanged: an execution enters `requested` when it is created;
-- `scheduling` and `scheduled` when it is created or updated from `requested` to
-- `scheduled`; every other status it is set to; `running` at its start time when an update
-- gives it one; and a rule's enforcement of its event when the rule created it.
DROP TRIGGER execution_history_entered ON executions;
DROP TRIGGER enforcement_recorded ON executions;
DROP TRIGGER execution_history_started ON executions;
DROP FUNCTION execution_history_entered();
DROP FUNCTION enforcement_recorded();
DROP FUNCTION execution_history_started();

CREATE FUNCTION executions_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO execution_history (execution_id, attempt, status, at)
        SELECT id, attempt, 'requested', created_at FROM inserted
        UNION ALL
        SELECT id, attempt, 'scheduling', updated_at FROM inserted WHERE status = 'scheduled'
        UNION ALL
        SELECT id, attempt, status, updated_at FROM inserted WHERE status <> 'requested'
        ON CONFLICT DO NOTHING;
    INSERT INTO enforcements (rule, event_id, execution_id, created_at)
        SELECT rule, event_id, id, created_at FROM inserted
        WHERE rule IS NOT NULL AND event_id IS NOT NULL;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER executions_inserted
    AFTER INSERT ON executions
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION executions_inserted();

-- A statement-level trigger with transition tables cannot name columns, so this one runs
-- for every update of `executions` and keeps the rows whose status, attempt or start
-- changed.
CREATE FUNCTION executions_updated() RETURNS trigger AS $$
BEGIN
    INSERT INTO execution_history (execution_id, attempt, status, at)
        SELECT n.id, n.attempt, 'scheduling', n.updated_at
            FROM updated n JOIN previous o ON o.id = n.id
            WHERE o.status = 'requested' AND n.status = 'scheduled'
        UNION ALL
        SELECT n.id, n.attempt, n.status, n.updated_at
            FROM updated n JOIN previous o ON o.id = n.id
            WHERE n.status IS DISTINCT FROM o.status OR n.attempt IS DISTINCT FROM o.attempt
        UNION ALL
        SELECT n.id, n.attempt, 'running', n.started_at
            FROM updated n JOIN previous o ON o.id = n.id
            WHERE n.started_at IS NOT NULL AND n.started_at IS DISTINCT FROM o.started_at
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER executions_updated
    AFTER UPDATE ON executions
    REFERENCING OLD TABLE AS previous NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION executions_updated();
