-- Rules enabled or disabled through the API. A switch outlives restarts and overrides the
-- `enabled` a rule's pack file gives, until the rule is switched again.

CREATE TABLE rule_switches (
    rule       TEXT    PRIMARY KEY,
    enabled    BOOLEAN NOT NULL,
    changed_at TEXT    NOT NULL,
    -- the name of the API token that switched it
    changed_by TEXT    NOT NULL
);
