-- Business calendars and SLA policies as managed data (versioned), and what clocks need to be
-- re-planned and explained without looking their policy up again.
CREATE TABLE sla.calendars (
    id          text PRIMARY KEY,
    version     bigint NOT NULL,
    name        text NOT NULL,
    time_zone   text NOT NULL,
    rules       jsonb NOT NULL,
    source      text NOT NULL DEFAULT '',
    request_id  text UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sla.policies (
    id          text PRIMARY KEY,
    version     bigint NOT NULL,
    definition  jsonb NOT NULL,
    request_id  text UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every version a policy ever had: a clock names the version it was planned with.
CREATE TABLE sla.policy_versions (
    policy_id   text NOT NULL REFERENCES sla.policies (id),
    version     bigint NOT NULL,
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_id, version)
);

-- origin_at: when the customer's wait began (receipt, acknowledgement, resolution ...);
-- started_at stays the first counting instant (the next working minute for business clocks).
-- thresholds_ms: used-target amounts at which warnings fire; ladder_ms: wall-clock waits after
-- the breach for escalation levels 1..n; warned_ms: the largest threshold already fired.
ALTER TABLE sla.clocks
    ADD COLUMN origin_at      timestamptz,
    ADD COLUMN policy_version bigint NOT NULL DEFAULT 1,
    ADD COLUMN thresholds_ms  bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN ladder_ms      bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN warned_ms      bigint NOT NULL DEFAULT 0,
    ADD COLUMN plan_note      text NOT NULL DEFAULT '';

-- Clocks planned before this migration keep the rules of the policy they started with.
UPDATE sla.clocks SET
    origin_at = started_at,
    thresholds_ms = CASE WHEN policy_id LIKE 'general%'
        THEN ARRAY[target_ms * 75 / 100, target_ms * 90 / 100]
        ELSE ARRAY[target_ms * 50 / 100, target_ms * 75 / 100, target_ms * 90 / 100] END,
    ladder_ms = CASE
        WHEN policy_id = 'crisis' THEN ARRAY[0, 1800000, 3600000, 5400000]::bigint[]
        WHEN policy_id LIKE 'major%' THEN ARRAY[0, 7200000, 14400000, 21600000]::bigint[]
        ELSE ARRAY[0, 14400000, 28800000, 43200000]::bigint[] END,
    warned_ms = target_ms * warned_percent / 100;
ALTER TABLE sla.clocks ALTER COLUMN origin_at SET NOT NULL;

-- Re-planning after a calendar change finds the open clocks of that calendar.
CREATE INDEX clocks_open_calendar_idx ON sla.clocks (calendar_id) WHERE state IN (1, 2, 4);
-- Cases at risk: open clocks by deadline.
CREATE INDEX clocks_open_due_idx ON sla.clocks (due_at, id) WHERE state IN (1, 4);
-- Compliance per period.
CREATE INDEX clocks_met_at_idx ON sla.clocks (met_at) WHERE met_at IS NOT NULL;
CREATE INDEX clocks_breached_at_idx ON sla.clocks (breached_at) WHERE breached_at IS NOT NULL;
-- The alert feed reads warnings and breaches from the outbox.
CREATE INDEX event_outbox_alerts_idx ON sla.event_outbox (txid, seq)
    WHERE event_type IN ('ClockWarning', 'ClockBreached');
