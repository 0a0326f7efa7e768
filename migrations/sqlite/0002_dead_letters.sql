-- Messages given up as never able to succeed: what they were, where from, and why.

CREATE TABLE dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    stream       TEXT    NOT NULL,
    consumer     TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    -- Sequence in `stream`: a message is dead-lettered once, however often it is given up.
    stream_seq   INTEGER NOT NULL,
    deliveries   INTEGER NOT NULL,
    reason       TEXT    NOT NULL,
    payload_size INTEGER NOT NULL,
    -- The first 64 KiB; never kept for run messages, which can carry secrets.
    payload      BLOB,
    given_up_by  TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    UNIQUE (stream, stream_seq)
);
