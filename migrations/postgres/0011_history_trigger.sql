-- An execution's status history is written by the database, in the statement that
-- changes the status: an execution enters `requested` when it is created (and the status
-- it was created with, if another), and every update that sets its status or attempt
-- adds that status. One statement per status change instead of two.
CREATE FUNCTION execution_history_entered() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO execution_history (execution_id, attempt, status, at)
            VALUES (NEW.id, NEW.attempt, 'requested', NEW.created_at)
            ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO execution_history (execution_id, attempt, status, at)
        VALUES (NEW.id, NEW.attempt, NEW.status, NEW.updated_at)
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER execution_history_entered
    AFTER INSERT OR UPDATE OF status, attempt ON executions
    FOR EACH ROW EXECUTE FUNCTION execution_history_entered();
