-- A running workflow's state (context, task progress), saved with every step, so an
-- engine restart resumes it where it was.
CREATE TABLE workflows (
    execution_id INTEGER PRIMARY KEY REFERENCES executions (id),
    state        TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL
);

-- One row per child execution a workflow started. The unique key makes a second start of
-- the same task item attempt impossible; `handled` records that the workflow has acted
-- on the child's end, in the same transaction as what it did.
CREATE TABLE workflow_tasks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id  INTEGER NOT NULL REFERENCES executions (id),
    task         TEXT    NOT NULL,
    round        INTEGER NOT NULL,
    item         INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    execution_id INTEGER NOT NULL REFERENCES executions (id),
    handled      INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT    NOT NULL,
    UNIQUE (workflow_id, task, round, item, attempt)
);
CREATE INDEX workflow_tasks_by_execution ON workflow_tasks (execution_id);
CREATE INDEX executions_by_parent ON executions (parent_id);
