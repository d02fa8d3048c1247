-- The read model: one row of facts per case, built only from the events of case-management,
-- the SLA timer and feedback-survey. Events of different streams may arrive in any order, so
-- every column but the key is optional and each event fills its own.
CREATE TABLE scoring.case_facts (
    case_id                  uuid PRIMARY KEY,
    department_id            text,
    owner_id                 text,
    category                 text,
    severity                 smallint,
    opened_at                timestamptz,
    resolved                 boolean NOT NULL DEFAULT false,
    resolved_at              timestamptz,
    reopen_count             integer NOT NULL DEFAULT 0,
    escalations              integer NOT NULL DEFAULT 0,
    first_response_on_time   boolean,
    first_response_breached  boolean NOT NULL DEFAULT false,
    csat                     smallint,
    nps                      smallint,
    solved                   boolean,
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX case_facts_department_idx ON scoring.case_facts (department_id, opened_at);
CREATE INDEX case_facts_owner_idx ON scoring.case_facts (owner_id, opened_at);
