-- Events, the rules they fired, and the executions those requested.

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger     TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reason      TEXT,
    payload     TEXT,
    subject     TEXT    NOT NULL,
    -- Sequence in the TRIGGERS stream: a redelivered message is the same event.
    stream_seq  INTEGER UNIQUE,
    msg_id      TEXT,
    created_at  TEXT    NOT NULL
);

CREATE TABLE executions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    action      TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    -- Secret parameter values are never stored: they are replaced before insert.
    parameters  TEXT    NOT NULL,
    result      TEXT,
    rule        TEXT,
    event_id    INTEGER REFERENCES events (id),
    parent_id   INTEGER REFERENCES executions (id),
    attempt     INTEGER NOT NULL DEFAULT 1,
    worker      TEXT,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    started_at  TEXT,
    finished_at TEXT
);
CREATE INDEX executions_by_status ON executions (status, id);
CREATE INDEX executions_by_action ON executions (action, id);

-- One row per (rule, event): a rule fires at most once for an event.
CREATE TABLE enforcements (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    rule         TEXT    NOT NULL,
    event_id     INTEGER NOT NULL REFERENCES events (id),
    execution_id INTEGER NOT NULL REFERENCES executions (id),
    created_at   TEXT    NOT NULL,
    UNIQUE (rule, event_id)
);

-- Each status an execution entered, once per attempt.
CREATE TABLE execution_history (
    execution_id INTEGER NOT NULL REFERENCES executions (id),
    attempt      INTEGER NOT NULL,
    status       TEXT    NOT NULL,
    at           TEXT    NOT NULL,
    PRIMARY KEY (execution_id, attempt, status)
);
