-- Rules defined through the API: each one's definition, in the fields of a rule file.

CREATE TABLE api_rules (
    rule       TEXT        PRIMARY KEY,
    definition JSONB       NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    -- the name of the API token that created or last changed it
    changed_by TEXT        NOT NULL
);
