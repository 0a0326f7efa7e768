-- `execution_history` and `enforcements` are written only by the statement triggers on
-- `executions` (0015), from the rows of the very statement that fires them, so the
-- execution and the event each of their rows names exist by construction. Their foreign
-- keys looked that up again for every row: seven lookups per execution (one for each of
-- its five history rows, two for its enforcement). The keys of `executions` itself stay.
ALTER TABLE execution_history DROP CONSTRAINT execution_history_execution_id_fkey;
ALTER TABLE enforcements
    DROP CONSTRAINT enforcements_execution_id_fkey,
    DROP CONSTRAINT enforcements_event_id_fkey;

-- What the keys also did: an execution could not be deleted while its history or its
-- enforcement named it, which is every execution. Executions are kept; this says so.
CREATE FUNCTION executions_are_kept() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'executions are kept: their history and enforcements refer to them';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER executions_are_kept
    BEFORE DELETE OR TRUNCATE ON executions
    FOR EACH STATEMENT EXECUTE FUNCTION executions_are_kept();
