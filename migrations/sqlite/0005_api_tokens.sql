-- API tokens. Only a token's SHA-256 is kept; the token itself is shown once, when it is
-- created.

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL,
    -- read, run or admin
    scope        TEXT    NOT NULL,
    -- hex SHA-256 of the token
    hash         TEXT    NOT NULL UNIQUE,
    created_at   TEXT    NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT
);
