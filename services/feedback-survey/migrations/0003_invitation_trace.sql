-- The complaint's trace context at resolution, so answers days later continue its trace.
ALTER TABLE survey.invitations ADD COLUMN traceparent text NOT NULL DEFAULT '';
