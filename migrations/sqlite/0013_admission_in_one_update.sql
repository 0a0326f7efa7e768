-- A round of admissions moves each execution from `requested` to `scheduled` in one update:
-- it passed through `scheduling` at that same moment, and the history keeps both statuses.
CREATE TRIGGER execution_history_on_admission AFTER UPDATE OF status ON executions
WHEN OLD.status = 'requested' AND NEW.status = 'scheduled'
BEGIN
    INSERT OR IGNORE INTO execution_history (execution_id, attempt, status, at)
        VALUES (NEW.id, NEW.attempt, 'scheduling', NEW.updated_at);
END;
