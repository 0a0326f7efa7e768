-- `execution_history` is kept in the order of its key, without a rowid: each of the five
-- rows an execution adds is one entry in one B-tree, where a rowid table wrote it to the
-- table and again to the index its primary key needs.
--
-- Its rows, and `enforcements`' rows, are written only by the triggers on `executions`
-- (0011–0014), from the row of the statement that fires them, so the execution each names
-- exists by construction: the history no longer looks it up again for every row. The keys
-- of `executions` and `enforcements` stay.
--
-- The triggers that write the history name the table, not this one: the table is renamed
-- under them as it is (`legacy_alter_table`), and they write to the new one.
PRAGMA legacy_alter_table = ON;

CREATE TABLE execution_history_by_key (
    execution_id INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    status       TEXT    NOT NULL,
    at           TEXT    NOT NULL,
    PRIMARY KEY (execution_id, attempt, status)
) WITHOUT ROWID;

INSERT INTO execution_history_by_key (execution_id, attempt, status, at)
    SELECT execution_id, attempt, status, at FROM execution_history;

DROP TABLE execution_history;
ALTER TABLE execution_history_by_key RENAME TO execution_history;

PRAGMA legacy_alter_table = OFF;

-- What the key also did: an execution could not be deleted while its history named it,
-- which is every execution. Executions are kept; this says so.
CREATE TRIGGER executions_are_kept BEFORE DELETE ON executions
BEGIN
    SELECT RAISE(ABORT, 'executions are kept: their history and enforcements refer to them');
END;
