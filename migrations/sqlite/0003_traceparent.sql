-- The W3C trace context an execution belongs to, so its spans join one trace, across
-- processes and restarts.
ALTER TABLE executions ADD COLUMN traceparent TEXT;
