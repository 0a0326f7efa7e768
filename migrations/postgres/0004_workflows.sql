-- A running workflow's state (context, task progress), saved with every step, so an
-- engine restart resumes it where it was.
CREATE TABLE workflows (
    execution_id BIGINT PRIMARY KEY REFERENCES executions (id),
    state        JSONB       NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- One row per child execution a workflow started. The unique key makes a second start of
-- the same task item attempt impossible; `handled` records that the workflow has acted
-- on the child's end, in the same transaction as what it did.
CREATE TABLE workflow_tasks (
    id           BIGSERIAL PRIMARY KEY,
    workflow_id  BIGINT      NOT NULL REFERENCES executions (id),
    task         TEXT        NOT NULL,
    round        INTEGER     NOT NULL,
    item         BIGINT      NOT NULL,
    attempt      INTEGER     NOT NULL,
    execution_id BIGINT      NOT NULL REFERENCES executions (id),
    handled      BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (workflow_id, task, round, item, attempt)
);
CREATE INDEX workflow_tasks_by_execution ON workflow_tasks (execution_id);
CREATE INDEX executions_by_parent ON executions (parent_id);
