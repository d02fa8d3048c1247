-- Every complaint ever accepted; rejected ones are kept with their reason, never deleted.
CREATE SEQUENCE intake.reference_seq;

CREATE TABLE intake.complaints (
    id                  uuid PRIMARY KEY,
    reference           text NOT NULL UNIQUE,
    request_id          text NOT NULL UNIQUE,
    request_fingerprint text NOT NULL,
    channel             smallint NOT NULL,
    complainant_name    text NOT NULL,
    phone               text,
    email               text,
    customer_id         text,
    customer_tier       smallint NOT NULL,
    subject             text NOT NULL,
    description         text NOT NULL,
    demand              text NOT NULL,
    occurred_at         timestamptz,
    order_ref           text,
    product_ref         text,
    language            text NOT NULL,
    category            text NOT NULL,
    matched_terms       text[] NOT NULL,
    severity            smallint NOT NULL,
    priority            smallint NOT NULL,
    complexity          smallint NOT NULL,
    reasons             text[] NOT NULL,
    status              smallint NOT NULL,
    rejection_reason    smallint NOT NULL DEFAULT 0,
    status_note         text NOT NULL DEFAULT '',
    recorded_by         text,
    received_at         timestamptz NOT NULL,
    version             bigint NOT NULL DEFAULT 1
);

CREATE INDEX complaints_received_idx ON intake.complaints (received_at DESC, id DESC);
CREATE INDEX complaints_customer_idx ON intake.complaints (customer_id, received_at DESC)
    WHERE customer_id IS NOT NULL;
