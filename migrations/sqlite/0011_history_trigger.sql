-- An execution's status history is written by the database, in the statement that
-- changes the status: an execution enters `requested` when it is created (and the status
-- it was created with, if another), and every update that sets its status or attempt
-- adds that status. One statement per status change instead of two.
CREATE TRIGGER execution_history_on_insert AFTER INSERT ON executions
BEGIN
    INSERT OR IGNORE INTO execution_history (execution_id, attempt, status, at)
        VALUES (NEW.id, NEW.attempt, 'requested', NEW.created_at);
    INSERT OR IGNORE INTO execution_history (execution_id, attempt, status, at)
        SELECT NEW.id, NEW.attempt, NEW.status, NEW.updated_at WHERE NEW.status <> 'requested';
END;

CREATE TRIGGER execution_history_on_update AFTER UPDATE OF status, attempt ON executions
BEGIN
    INSERT OR IGNORE INTO execution_history (execution_id, attempt, status, at)
        VALUES (NEW.id, NEW.attempt, NEW.status, NEW.updated_at);
END;
