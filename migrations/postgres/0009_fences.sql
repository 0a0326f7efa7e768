-- Who owns a duty of several engines (`engine`: the execution core), by the fencing token of
-- its lease: an engine's writes go through only while its token is the one here, so a paused
-- or partitioned engine that lost its lease can change nothing when it wakes.

CREATE TABLE fences (
    name   TEXT        PRIMARY KEY,
    token  BIGINT      NOT NULL,
    holder TEXT        NOT NULL,
    since  TIMESTAMPTZ NOT NULL
);
