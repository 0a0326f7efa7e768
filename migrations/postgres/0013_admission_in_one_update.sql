-- A round of admissions moves each execution from `requested` to `scheduled` in one update:
-- it passed through `scheduling` at that same moment, and the history keeps both statuses.
CREATE OR REPLACE FUNCTION execution_history_entered() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO execution_history (execution_id, attempt, status, at)
            VALUES (NEW.id, NEW.attempt, 'requested', NEW.created_at)
            ON CONFLICT DO NOTHING;
    ELSIF OLD.status = 'requested' AND NEW.status = 'scheduled' THEN
        INSERT INTO execution_history (execution_id, attempt, status, at)
            VALUES (NEW.id, NEW.attempt, 'scheduling', NEW.updated_at)
            ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO execution_history (execution_id, attempt, status, at)
        VALUES (NEW.id, NEW.attempt, NEW.status, NEW.updated_at)
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
