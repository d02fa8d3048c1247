-- What the survey service knows of each case, and the invitations it issued.
CREATE TABLE survey.cases (
    case_id       uuid PRIMARY KEY,
    department_id text NOT NULL,
    owner_id      text NOT NULL,
    category      text NOT NULL,
    channel       smallint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- status: 1 scheduled, 2 sent, 3 answered, 4 expired. Only the token's hash is stored.
CREATE TABLE survey.invitations (
    id               uuid PRIMARY KEY,
    case_id          uuid NOT NULL REFERENCES survey.cases (case_id),
    cycle            integer NOT NULL,
    status           smallint NOT NULL,
    delivery         text NOT NULL,
    token_hash       bytea NOT NULL UNIQUE,
    template_id      text NOT NULL,
    template_version integer NOT NULL,
    scheduled_for    timestamptz NOT NULL,
    sent_at          timestamptz,
    expires_at       timestamptz,
    answered_at      timestamptz,
    answers          jsonb,
    dissatisfied     boolean NOT NULL DEFAULT false,
    department_id    text NOT NULL,
    owner_id         text NOT NULL,
    category         text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (case_id, cycle)
);
CREATE INDEX invitations_due_idx ON survey.invitations (scheduled_for) WHERE status = 1;
