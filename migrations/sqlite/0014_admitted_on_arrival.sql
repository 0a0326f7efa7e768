-- An execution whose action had a free slot when its event was recorded is inserted
-- already `scheduled`: it passed through `scheduling` at that same moment, and the history
-- keeps it, as it does for a round of admissions (0013).
CREATE TRIGGER execution_history_admitted_on_insert AFTER INSERT ON executions
WHEN NEW.status = 'scheduled'
BEGIN
    INSERT OR IGNORE INTO execution_history (execution_id, attempt, status, at)
        VALUES (NEW.id, NEW.attempt, 'scheduling', NEW.updated_at);
END;
