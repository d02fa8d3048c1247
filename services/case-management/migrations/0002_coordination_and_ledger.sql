-- Case depth: product/order references, problem ledger, sub-tasks for other departments,
-- agent languages, versions for departments and agents, idempotent contact logs.
CREATE TABLE cases.problems (
    id                uuid PRIMARY KEY,
    title             text NOT NULL,
    category          text NOT NULL DEFAULT '',
    product_ref       text NOT NULL DEFAULT '',
    root_cause        text NOT NULL DEFAULT '',
    corrective_action text NOT NULL DEFAULT '',
    owner_id          text NOT NULL,
    status            smallint NOT NULL,
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    version           bigint NOT NULL DEFAULT 1,
    request_id        text UNIQUE
);

ALTER TABLE cases.cases
    ADD COLUMN product_ref  text NOT NULL DEFAULT '',
    ADD COLUMN order_ref    text NOT NULL DEFAULT '',
    ADD COLUMN problem_id   uuid REFERENCES cases.problems (id),
    ADD COLUMN under_review boolean NOT NULL DEFAULT false;
-- The front desk finds a case by the reference the customer quotes.
CREATE INDEX cases_reference_idx ON cases.cases (complaint_reference);
-- Recurrence detection: same category and product within a window, not yet in the ledger.
CREATE INDEX cases_recurrence_idx ON cases.cases (opened_at, category, product_ref)
    WHERE product_ref <> '' AND problem_id IS NULL;
CREATE INDEX cases_problem_idx ON cases.cases (problem_id) WHERE problem_id IS NOT NULL;

ALTER TABLE cases.agents
    ADD COLUMN languages text[] NOT NULL DEFAULT '{}',
    ADD COLUMN version   bigint NOT NULL DEFAULT 1;
ALTER TABLE cases.departments ADD COLUMN version bigint NOT NULL DEFAULT 1;

-- A contact logged twice with the same request id is one entry.
ALTER TABLE cases.timeline ADD COLUMN request_id text UNIQUE;

CREATE TABLE cases.sub_tasks (
    id               uuid PRIMARY KEY,
    case_id          uuid NOT NULL REFERENCES cases.cases (id),
    department_id    text NOT NULL REFERENCES cases.departments (id),
    owner_id         text NOT NULL,
    title            text NOT NULL,
    detail           text NOT NULL DEFAULT '',
    due_at           timestamptz NOT NULL,
    status           smallint NOT NULL,
    result           text NOT NULL DEFAULT '',
    customer_visible boolean NOT NULL DEFAULT false,
    -- 'coordination' (asked of another department) or 'dissatisfaction_review'.
    purpose          text NOT NULL DEFAULT 'coordination',
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL,
    completed_at     timestamptz,
    version          bigint NOT NULL DEFAULT 1,
    request_id       text UNIQUE
);
CREATE INDEX sub_tasks_case_idx ON cases.sub_tasks (case_id, created_at, id);
CREATE INDEX sub_tasks_department_idx ON cases.sub_tasks (department_id, created_at, id);
