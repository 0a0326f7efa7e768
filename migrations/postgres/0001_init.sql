-- Events, the rules they fired, and the executions those requested.

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    trigger     TEXT        NOT NULL,
    status      TEXT        NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reason      TEXT,
    payload     JSONB,
    subject     TEXT        NOT NULL,
    -- Sequence in the TRIGGERS stream: a redelivered message is the same event.
    stream_seq  BIGINT UNIQUE,
    msg_id      TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE executions (
    id          BIGSERIAL PRIMARY KEY,
    action      TEXT        NOT NULL,
    status      TEXT        NOT NULL,
    -- Secret parameter values are never stored: they are replaced before insert.
    parameters  JSONB       NOT NULL,
    result      JSONB,
    rule        TEXT,
    event_id    BIGINT REFERENCES events (id),
    parent_id   BIGINT REFERENCES executions (id),
    attempt     INTEGER     NOT NULL DEFAULT 1,
    worker      TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
);
CREATE INDEX executions_by_status ON executions (status, id);
CREATE INDEX executions_by_action ON executions (action, id);

-- One row per (rule, event): a rule fires at most once for an event.
CREATE TABLE enforcements (
    id           BIGSERIAL PRIMARY KEY,
    rule         TEXT        NOT NULL,
    event_id     BIGINT      NOT NULL REFERENCES events (id),
    execution_id BIGINT      NOT NULL REFERENCES executions (id),
    created_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (rule, event_id)
);

-- Each status an execution entered, once per attempt.
CREATE TABLE execution_history (
    execution_id BIGINT      NOT NULL REFERENCES executions (id),
    attempt      INTEGER NOT NULL,
    status       TEXT        NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (execution_id, attempt, status)
);
