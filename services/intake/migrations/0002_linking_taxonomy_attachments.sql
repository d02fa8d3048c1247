-- Repeat contacts, attachments, versioned taxonomy, audited overrides, and what intake knows of
-- each complaint's case (to tell whether it is still open).
ALTER TABLE intake.complaints
    ADD COLUMN linked_to uuid REFERENCES intake.complaints (id),
    ADD COLUMN repeat_contacts integer NOT NULL DEFAULT 0,
    ADD COLUMN attachments jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN taxonomy_version integer NOT NULL DEFAULT 1,
    ADD COLUMN overridden boolean NOT NULL DEFAULT false,
    ADD COLUMN case_id uuid,
    ADD COLUMN case_open boolean NOT NULL DEFAULT true;

-- Repeat-contact lookups: open complaints of a customer, by each way of recognising them.
CREATE INDEX complaints_open_customer_idx ON intake.complaints (customer_id, received_at DESC)
    WHERE case_open AND linked_to IS NULL AND customer_id IS NOT NULL;
CREATE INDEX complaints_open_phone_idx ON intake.complaints (phone, received_at DESC)
    WHERE case_open AND linked_to IS NULL AND phone IS NOT NULL;
CREATE INDEX complaints_open_email_idx ON intake.complaints (email, received_at DESC)
    WHERE case_open AND linked_to IS NULL AND email IS NOT NULL;
CREATE INDEX complaints_phone_idx ON intake.complaints (phone, received_at DESC) WHERE phone IS NOT NULL;
CREATE INDEX complaints_email_idx ON intake.complaints (email, received_at DESC) WHERE email IS NOT NULL;
CREATE INDEX complaints_case_idx ON intake.complaints (case_id) WHERE case_id IS NOT NULL;
CREATE INDEX complaints_linked_idx ON intake.complaints (linked_to) WHERE linked_to IS NOT NULL;

CREATE TABLE intake.taxonomy_versions (
    version      integer PRIMARY KEY,
    rules        jsonb NOT NULL,
    request_id   text UNIQUE,
    published_by text NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

-- Every agent override of a classification: who, when, why, before and after.
CREATE TABLE intake.classification_overrides (
    id           uuid PRIMARY KEY,
    complaint_id uuid NOT NULL REFERENCES intake.complaints (id),
    actor        text NOT NULL,
    reason       text NOT NULL,
    before       jsonb NOT NULL,
    after        jsonb NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX classification_overrides_complaint_idx ON intake.classification_overrides (complaint_id, at);
