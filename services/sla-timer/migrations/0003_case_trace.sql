-- The W3C trace of each case's complaint, so warnings and breaches that fire hours later are
-- spans of the complaint's trace.
ALTER TABLE sla.cases ADD COLUMN traceparent text NOT NULL DEFAULT '';
