-- A re-run names the execution it runs again.

ALTER TABLE executions ADD COLUMN rerun_of BIGINT REFERENCES executions (id);
