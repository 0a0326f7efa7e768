-- An execution a rule requested for an event is that rule's enforcement of the event: the
-- database records it in the statement that creates the execution.
CREATE TRIGGER enforcement_on_insert AFTER INSERT ON executions
WHEN NEW.rule IS NOT NULL AND NEW.event_id IS NOT NULL
BEGIN
    INSERT INTO enforcements (rule, event_id, execution_id, created_at)
        VALUES (NEW.rule, NEW.event_id, NEW.id, NEW.created_at);
END;

-- An execution given a start time entered `running` then: so an update that records a
-- run's start and its end at once (the worker's two reports committed together) keeps
-- both statuses in the history.
CREATE TRIGGER execution_history_on_start AFTER UPDATE OF started_at ON executions
WHEN NEW.started_at IS NOT NULL AND NEW.started_at IS NOT OLD.started_at
BEGIN
    INSERT OR IGNORE INTO execution_history (execution_id, attempt, status, at)
        VALUES (NEW.id, NEW.attempt, 'running', NEW.started_at);
END;
