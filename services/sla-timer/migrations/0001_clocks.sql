-- What the SLA timer knows of each case, and its clocks.
CREATE TABLE sla.cases (
    case_id       uuid PRIMARY KEY,
    department_id text NOT NULL,
    owner_id      text NOT NULL,
    category      text NOT NULL,
    severity      smallint NOT NULL,
    priority      smallint NOT NULL,
    complexity    smallint NOT NULL,
    customer_tier smallint NOT NULL,
    channel       smallint NOT NULL,
    received_at   timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per clock and cycle (a reopened case starts a new resolution cycle).
-- state: 1 running, 2 paused, 3 met, 4 breached (still counting), 5 cancelled.
CREATE TABLE sla.clocks (
    id               uuid PRIMARY KEY,
    case_id          uuid NOT NULL REFERENCES sla.cases (case_id),
    kind             smallint NOT NULL,
    cycle            integer NOT NULL DEFAULT 1,
    state            smallint NOT NULL,
    policy_id        text NOT NULL,
    policy_reason    text NOT NULL,
    calendar_id      text NOT NULL,
    business         boolean NOT NULL,
    target_ms        bigint NOT NULL,
    consumed_ms      bigint NOT NULL DEFAULT 0,
    running_since    timestamptz,
    started_at       timestamptz NOT NULL,
    due_at           timestamptz,
    warned_percent   integer NOT NULL DEFAULT 0,
    breached_at      timestamptz,
    met_at           timestamptz,
    met_on_time      boolean,
    escalation_level integer NOT NULL DEFAULT 0,
    next_fire_at     timestamptz,
    department_id    text NOT NULL,
    severity         smallint NOT NULL,
    UNIQUE (case_id, kind, cycle)
);
-- The scheduler's only query path: clocks that have something to fire.
CREATE INDEX clocks_next_fire_idx ON sla.clocks (next_fire_at) WHERE next_fire_at IS NOT NULL;
CREATE INDEX clocks_case_idx ON sla.clocks (case_id);

-- Every pause, for explaining a deadline.
CREATE TABLE sla.clock_pauses (
    clock_id   uuid NOT NULL REFERENCES sla.clocks (id),
    paused_at  timestamptz NOT NULL,
    resumed_at timestamptz,
    PRIMARY KEY (clock_id, paused_at)
);

-- Escalations decided by the scheduler, delivered to case-management by a separate loop.
-- The escalation id makes delivery idempotent: a retry never escalates twice.
CREATE TABLE sla.pending_escalations (
    escalation_id   text PRIMARY KEY,
    case_id         uuid NOT NULL,
    clock_id        uuid NOT NULL,
    level           integer NOT NULL,
    reason          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    delivered_at    timestamptz,
    last_error      text
);
CREATE INDEX pending_escalations_due_idx ON sla.pending_escalations (next_attempt_at)
    WHERE delivered_at IS NULL;
