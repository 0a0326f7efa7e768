-- An execution whose action had a free slot when its event was recorded is inserted
-- already `scheduled`: it passed through `scheduling` at that same moment, and the history
-- keeps it, as it does for a round of admissions (0013).
CREATE OR REPLACE FUNCTION execution_history_entered() RETURNS trigger AS $$
DECLARE
    admitted BOOLEAN;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO execution_history (execution_id, attempt, status, at)
            VALUES (NEW.id, NEW.attempt, 'requested', NEW.created_at)
            ON CONFLICT DO NOTHING;
        admitted := NEW.status = 'scheduled';
    ELSE
        admitted := OLD.status = 'requested' AND NEW.status = 'scheduled';
    END IF;
    IF admitted THEN
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
