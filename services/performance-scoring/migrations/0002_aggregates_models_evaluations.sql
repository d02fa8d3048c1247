-- Issue 7: pre-aggregated figures, teams, order volumes, scoring models and the quarterly
-- evaluation. The read model is rebuilt from zero with the new rules: the facts are dropped and
-- the cursors rewound, so every event replays through the aggregation.

ALTER TABLE scoring.case_facts
    ADD COLUMN team_id               text,
    ADD COLUMN cancelled             boolean NOT NULL DEFAULT false,
    ADD COLUMN ever_resolved         boolean NOT NULL DEFAULT false,
    ADD COLUMN transfers             integer NOT NULL DEFAULT 0,
    ADD COLUMN resolution_met_count  integer NOT NULL DEFAULT 0,
    ADD COLUMN resolution_late       boolean NOT NULL DEFAULT false,
    ADD COLUMN handling_seconds      bigint  NOT NULL DEFAULT 0,
    ADD COLUMN survey_invited        boolean NOT NULL DEFAULT false,
    ADD COLUMN survey_answered       boolean NOT NULL DEFAULT false;

TRUNCATE scoring.case_facts;
UPDATE scoring.event_cursors SET txid = 0, seq = 0, updated_at = now();

-- Element-wise sum of two histograms (NULL counts as empty), and its aggregate.
CREATE FUNCTION scoring.add_arrays(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a IS NULL THEN b
        WHEN b IS NULL THEN a
        ELSE ARRAY(
            SELECT coalesce(a[i], 0) + coalesce(b[i], 0)
            FROM generate_series(1, greatest(cardinality(a), cardinality(b))) AS i
            ORDER BY i)
    END
$$;
CREATE AGGREGATE scoring.sum_arrays(bigint[]) (
    SFUNC = scoring.add_arrays,
    STYPE = bigint[],
    COMBINEFUNC = scoring.add_arrays,
    PARALLEL = SAFE
);

-- One row per (subject, department of the cases, organisation-local day the cases were opened).
-- Every case adds its contribution to the rows of its agent, team, department and the
-- organisation; when its facts change the old contribution is taken out and the new one put in,
-- in the transaction of the event. Weeks, months and quarters are sums of days.
-- subject_kind: 1 agent, 2 department, 3 team, 4 organisation (subject_id and department_id '').
CREATE TABLE scoring.daily_aggregates (
    subject_kind            smallint NOT NULL,
    subject_id              text     NOT NULL,
    department_id           text     NOT NULL,
    day                     date     NOT NULL,
    cases_opened            bigint   NOT NULL DEFAULT 0,
    cases_resolved          bigint   NOT NULL DEFAULT 0,
    cases_ever_resolved     bigint   NOT NULL DEFAULT 0,
    cases_reopened          bigint   NOT NULL DEFAULT 0,
    first_contact_resolved  bigint   NOT NULL DEFAULT 0,
    first_response_measured bigint   NOT NULL DEFAULT 0,
    first_response_on_time  bigint   NOT NULL DEFAULT 0,
    resolution_measured     bigint   NOT NULL DEFAULT 0,
    resolution_on_time      bigint   NOT NULL DEFAULT 0,
    handling_samples        bigint   NOT NULL DEFAULT 0,
    handling_seconds        bigint   NOT NULL DEFAULT 0,
    escalations             bigint   NOT NULL DEFAULT 0,
    cases_escalated         bigint   NOT NULL DEFAULT 0,
    surveys_invited         bigint   NOT NULL DEFAULT 0,
    surveys_answered        bigint   NOT NULL DEFAULT 0,
    csat_responses          bigint   NOT NULL DEFAULT 0,
    csat_sum                bigint   NOT NULL DEFAULT 0,
    csat_satisfied          bigint   NOT NULL DEFAULT 0,
    nps_responses           bigint   NOT NULL DEFAULT 0,
    nps_promoters           bigint   NOT NULL DEFAULT 0,
    nps_detractors          bigint   NOT NULL DEFAULT 0,
    handling_histogram      bigint[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (subject_kind, subject_id, day, department_id)
);
-- Leaderboards: every agent (or team) of a department over a range of days.
CREATE INDEX daily_aggregates_department_idx
    ON scoring.daily_aggregates (subject_kind, department_id, day);

-- Distribution by category and severity, kept the same way.
CREATE TABLE scoring.daily_categories (
    subject_kind   smallint NOT NULL,
    subject_id     text     NOT NULL,
    department_id  text     NOT NULL,
    day            date     NOT NULL,
    category       text     NOT NULL,
    severity       smallint NOT NULL,
    cases          bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (subject_kind, subject_id, day, department_id, category, severity)
);

-- Teams are sub-groups of a department. Memberships are a history: a case belongs to the team
-- its owner was in when the case was opened, so replaying the events gives the same teams.
CREATE TABLE scoring.team_memberships (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id      text   NOT NULL UNIQUE,
    agent_id        text   NOT NULL,
    department_id   text   NOT NULL,
    team_id         text   NOT NULL, -- '' = no team
    effective_from  timestamptz NOT NULL DEFAULT now(),
    assigned_by     text   NOT NULL
);
CREATE INDEX team_memberships_agent_idx ON scoring.team_memberships (agent_id, effective_from DESC, id DESC);

-- Orders per organisation-local day: the denominator of the complaint rate.
CREATE TABLE scoring.order_volumes (
    day          date PRIMARY KEY,
    orders       bigint NOT NULL CHECK (orders >= 0),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    recorded_by  text NOT NULL
);
CREATE TABLE scoring.order_volume_requests (
    request_id     text PRIMARY KEY,
    days_recorded  integer NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

-- Versioned scoring models; the newest is active. Never edited.
CREATE TABLE scoring.scoring_models (
    version      integer PRIMARY KEY,
    request_id   text UNIQUE,
    name         text NOT NULL,
    definition   jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL
);

-- Published quarterly evaluations (服务评鉴) and their results: immutable, corrections are
-- new revisions.
CREATE TABLE scoring.evaluations (
    id                uuid PRIMARY KEY,
    request_id        text UNIQUE,
    year              integer  NOT NULL,
    quarter           smallint NOT NULL CHECK (quarter BETWEEN 1 AND 4),
    model_version     integer  NOT NULL REFERENCES scoring.scoring_models (version),
    revision          integer  NOT NULL CHECK (revision >= 1),
    trigger           smallint NOT NULL,
    published_at      timestamptz NOT NULL DEFAULT now(),
    run_by            text NOT NULL,
    reason            text NOT NULL DEFAULT '',
    quarter_complete  boolean NOT NULL,
    subjects          integer NOT NULL,
    subjects_graded   integer NOT NULL,
    supersedes_id     uuid REFERENCES scoring.evaluations (id),
    UNIQUE (model_version, year, quarter, revision)
);
CREATE INDEX evaluations_published_idx ON scoring.evaluations (published_at DESC, id DESC);

CREATE TABLE scoring.evaluation_results (
    evaluation_id  uuid     NOT NULL REFERENCES scoring.evaluations (id),
    subject_kind   smallint NOT NULL,
    subject_id     text     NOT NULL,
    department_id  text     NOT NULL,
    cases_opened   bigint   NOT NULL,
    total          double precision,
    grade          smallint NOT NULL,
    score          jsonb    NOT NULL,
    PRIMARY KEY (evaluation_id, subject_kind, subject_id)
);
CREATE INDEX evaluation_results_department_idx
    ON scoring.evaluation_results (evaluation_id, department_id, subject_kind, subject_id);

CREATE FUNCTION scoring.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'published evaluations are immutable: run a new revision instead';
END
$$;
CREATE TRIGGER evaluations_immutable BEFORE UPDATE OR DELETE ON scoring.evaluations
    FOR EACH ROW EXECUTE FUNCTION scoring.refuse_change();
CREATE TRIGGER evaluations_not_truncated BEFORE TRUNCATE ON scoring.evaluations
    FOR EACH STATEMENT EXECUTE FUNCTION scoring.refuse_change();
CREATE TRIGGER evaluation_results_immutable BEFORE UPDATE OR DELETE ON scoring.evaluation_results
    FOR EACH ROW EXECUTE FUNCTION scoring.refuse_change();
CREATE TRIGGER evaluation_results_not_truncated BEFORE TRUNCATE ON scoring.evaluation_results
    FOR EACH STATEMENT EXECUTE FUNCTION scoring.refuse_change();
CREATE TRIGGER scoring_models_immutable BEFORE UPDATE OR DELETE ON scoring.scoring_models
    FOR EACH ROW EXECUTE FUNCTION scoring.refuse_change();
