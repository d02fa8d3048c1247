-- Versioned questionnaires, reminders, opt-outs and return-visit calls.

-- One row per template version; invitations pin (template_id, template_version). The service
-- inserts `standard` v1 at start-up from its code (ON CONFLICT DO NOTHING).
CREATE TABLE survey.templates (
    template_id text NOT NULL,
    version     integer NOT NULL,
    questions   jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    request_id  text UNIQUE,
    PRIMARY KEY (template_id, version)
);

ALTER TABLE survey.cases ADD COLUMN customer_id text NOT NULL DEFAULT '';

-- status gains 5 opted out, 6 declined (the customer refused the return-visit call).
ALTER TABLE survey.invitations
    ADD COLUMN version bigint NOT NULL DEFAULT 1,
    ADD COLUMN customer_id text NOT NULL DEFAULT '',
    ADD COLUMN reminder_sent_at timestamptz,
    ADD COLUMN opted_out_at timestamptz,
    -- 'link' or 'return_visit' once answered; who recorded a return visit.
    ADD COLUMN answered_via text,
    ADD COLUMN answered_by text;

-- Delivery adapters claim first sends and reminders of link invitations only.
CREATE INDEX invitations_link_due_idx ON survey.invitations (scheduled_for)
    WHERE status = 1 AND delivery = 'link';
CREATE INDEX invitations_reminder_due_idx ON survey.invitations (sent_at)
    WHERE status = 2 AND delivery = 'link' AND reminder_sent_at IS NULL;
-- Listing and figures walk invitations by issue time.
CREATE INDEX invitations_scheduled_idx ON survey.invitations (scheduled_for, id);
CREATE INDEX invitations_department_idx ON survey.invitations (department_id, scheduled_for, id);
-- Opting a customer out withdraws their pending invitations.
CREATE INDEX invitations_pending_customer_idx ON survey.invitations (customer_id)
    WHERE status IN (1, 2);

-- Customers who asked not to be surveyed (by unsubscribe link or through an agent).
CREATE TABLE survey.opt_outs (
    customer_id  text PRIMARY KEY,
    opted_out_at timestamptz NOT NULL,
    source       text NOT NULL,
    reason       text NOT NULL DEFAULT ''
);

-- Every call an agent made for a return visit, with its outcome.
CREATE TABLE survey.return_visit_attempts (
    id            uuid PRIMARY KEY,
    invitation_id uuid NOT NULL REFERENCES survey.invitations (id),
    request_id    text NOT NULL,
    outcome       text NOT NULL,
    agent_id      text NOT NULL,
    note          text NOT NULL DEFAULT '',
    attempted_at  timestamptz NOT NULL,
    UNIQUE (invitation_id, request_id)
);
CREATE INDEX return_visit_attempts_invitation_idx
    ON survey.return_visit_attempts (invitation_id, attempted_at);
