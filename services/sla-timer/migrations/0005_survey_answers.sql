-- The newest survey answer of each case, for a follow-up clock that has not started yet: the
-- answer travels on the survey's stream and the resolution that starts the clock on case
-- management's, so the answer can arrive first (a lagging consumer, a fast customer). A
-- follow-up clock started for a resolution at or before the answer starts already met by it.
CREATE TABLE sla.survey_answers (
    case_id     uuid PRIMARY KEY,
    answered_at timestamptz NOT NULL
);
