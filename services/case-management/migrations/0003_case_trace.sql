-- The W3C trace of the complaint each case belongs to: changes made later (an agent's transition
-- days after intake) emit their events in that trace, so a complaint stays one trace.
ALTER TABLE cases.cases ADD COLUMN traceparent text NOT NULL DEFAULT '';
