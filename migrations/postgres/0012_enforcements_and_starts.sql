-- An execution a rule requested for an event is that rule's enforcement of the event: the
-- database records it in the statement that creates the execution.
CREATE FUNCTION enforcement_recorded() RETURNS trigger AS $$
BEGIN
    INSERT INTO enforcements (rule, event_id, execution_id, created_at)
        VALUES (NEW.rule, NEW.event_id, NEW.id, NEW.created_at);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER enforcement_recorded
    AFTER INSERT ON executions
    FOR EACH ROW WHEN (NEW.rule IS NOT NULL AND NEW.event_id IS NOT NULL)
    EXECUTE FUNCTION enforcement_recorded();

-- An execution given a start time entered `running` then: so an update that records a
-- run's start and its end at once (the worker's two reports committed together) keeps
-- both statuses in the history.
CREATE FUNCTION execution_history_started() RETURNS trigger AS $$
BEGIN
    INSERT INTO execution_history (execution_id, attempt, status, at)
        VALUES (NEW.id, NEW.attempt, 'running', NEW.started_at)
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER execution_history_started
    AFTER UPDATE OF started_at ON executions
    FOR EACH ROW WHEN (NEW.started_at IS NOT NULL AND NEW.started_at IS DISTINCT FROM OLD.started_at)
    EXECUTE FUNCTION execution_history_started();
