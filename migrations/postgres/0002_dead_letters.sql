-- Messages given up as never able to succeed: what they were, where from, and why.

CREATE TABLE dead_letters (
    id           BIGSERIAL PRIMARY KEY,
    stream       TEXT    NOT NULL,
    consumer     TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    -- Sequence in `stream`: a message is dead-lettered once, however often it is given up.
    stream_seq   BIGINT  NOT NULL,
    deliveries   BIGINT  NOT NULL,
    reason       TEXT    NOT NULL,
    payload_size BIGINT  NOT NULL,
    -- The first 64 KiB; never kept for run messages, which can carry secrets.
    payload      BYTEA,
    given_up_by  TEXT    NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (stream, stream_seq)
);
