-- API tokens. Only a token's SHA-256 is kept; the token itself is shown once, when it is
-- created.

CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT    NOT NULL,
    -- read, run or admin
    scope        TEXT    NOT NULL,
    -- hex SHA-256 of the token
    hash         TEXT    NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
