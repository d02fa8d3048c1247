-- Departments with their escalation chain, agents, cases, their timeline and escalations.
CREATE TABLE cases.departments (
    id               text PRIMARY KEY,
    name             text NOT NULL,
    categories       text[] NOT NULL DEFAULT '{}',
    escalation_chain text[] NOT NULL,
    request_id       text UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cases.agents (
    id            text PRIMARY KEY,
    department_id text NOT NULL REFERENCES cases.departments (id),
    display_name  text NOT NULL,
    skills        text[] NOT NULL DEFAULT '{}',
    capacity      integer NOT NULL DEFAULT 20,
    available     boolean NOT NULL DEFAULT true,
    senior        boolean NOT NULL DEFAULT false,
    request_id    text UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agents_department_idx ON cases.agents (department_id);

CREATE TABLE cases.cases (
    id                  uuid PRIMARY KEY,
    complaint_id        uuid NOT NULL UNIQUE,
    complaint_reference text NOT NULL,
    status              smallint NOT NULL,
    department_id       text NOT NULL,
    owner_id            text NOT NULL,
    category            text NOT NULL,
    severity            smallint NOT NULL,
    priority            smallint NOT NULL,
    complexity          smallint NOT NULL,
    channel             smallint NOT NULL,
    customer_tier       smallint NOT NULL,
    customer_id         text NOT NULL DEFAULT '',
    escalation_level    integer NOT NULL DEFAULT 0,
    received_at         timestamptz NOT NULL,
    opened_at           timestamptz NOT NULL,
    acknowledged_at     timestamptz,
    resolved_at         timestamptz,
    closed_at           timestamptz,
    version             bigint NOT NULL DEFAULT 1
);
CREATE INDEX cases_department_idx ON cases.cases (department_id, opened_at DESC, id DESC);
CREATE INDEX cases_owner_idx ON cases.cases (owner_id, opened_at DESC, id DESC);
CREATE INDEX cases_opened_idx ON cases.cases (opened_at DESC, id DESC);
-- Open cases per owner, for least-loaded routing (statuses 5, 6, 7, 10 are not open work).
CREATE INDEX cases_open_by_owner_idx ON cases.cases (owner_id) WHERE status NOT IN (5, 6, 7, 10);

CREATE TABLE cases.timeline (
    id               uuid PRIMARY KEY,
    case_id          uuid NOT NULL REFERENCES cases.cases (id),
    at               timestamptz NOT NULL,
    actor            text NOT NULL,
    kind             text NOT NULL,
    from_value       text NOT NULL DEFAULT '',
    to_value         text NOT NULL DEFAULT '',
    note             text NOT NULL DEFAULT '',
    customer_visible boolean NOT NULL DEFAULT false
);
CREATE INDEX timeline_case_idx ON cases.timeline (case_id, at, id);

CREATE TABLE cases.escalations (
    escalation_id text PRIMARY KEY,
    case_id       uuid NOT NULL REFERENCES cases.cases (id),
    level         integer NOT NULL,
    owner_id      text NOT NULL,
    reason        text NOT NULL,
    actor         text NOT NULL,
    at            timestamptz NOT NULL DEFAULT now()
);

-- The shipped organisation: where each category goes and who is escalated to.
INSERT INTO cases.departments (id, name, categories, escalation_chain) VALUES
    ('customer-care', 'Customer care', '{service_attitude,privacy,other}',
        '{customer-care-supervisor,customer-care-manager,service-director,executive}'),
    ('quality', 'Product quality', '{product_quality}',
        '{quality-supervisor,quality-manager,service-director,executive}'),
    ('after-sales', 'After-sales service', '{after_sales}',
        '{after-sales-supervisor,after-sales-manager,service-director,executive}'),
    ('logistics', 'Delivery and logistics', '{delivery}',
        '{logistics-supervisor,logistics-manager,service-director,executive}'),
    ('billing', 'Billing', '{billing}',
        '{billing-supervisor,billing-manager,service-director,executive}');
