-- The parts of a workflow's state that grow with its work, each written only when it
-- changes: `slot/<task>/<round>/<item>` (an item's attempt, state and result) and
-- `run/<task>/<round>` (a task run's items and result). `workflows.state` keeps the rest,
-- so a step writes what it changed rather than everything, and a task of 10,000 items
-- costs its store a linear number of bytes, not a quadratic one.
CREATE TABLE workflow_parts (
    workflow_id INTEGER NOT NULL REFERENCES executions (id),
    key         TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    PRIMARY KEY (workflow_id, key)
);
