-- The repeat-contact lookup as a function, so that a submission batch can run it in the round
-- trip that takes its customers' locks and begins its transaction: that round trip is one
-- simple query (several statements, no parameters).
--
-- One branch per way of recognising a customer, each an index range scan of its partial index
-- per identifier: for each identifier its 50 newest open, unlinked complaints received since
-- `since` (a complaint found by two identifiers comes back twice).
--
-- PL/pgSQL keeps the plan of its query for the session, so a batch does not plan the lookup
-- again (as an inlined SQL function it was planned for every batch: more of PostgreSQL's CPU
-- than the round trip it saved). A kept plan must suit the table at any size: made while the
-- table was nearly empty it was a scan of the whole table per identifier, kept while the table
-- grew, and submissions fell to a third. The function therefore plans without sequential
-- scans: index range scans are the right plan for one customer's complaints at every size.
--
-- STABLE: it reads with the snapshot of the statement that calls it, which the submit
-- transaction takes after its locks are granted.
CREATE FUNCTION intake.repeat_candidates(
    customer_ids text[], phones text[], emails text[], since timestamptz)
RETURNS TABLE (id uuid, customer_id text, phone text, email text, order_ref text,
               product_ref text, received_at timestamptz, case_open boolean, linked_to uuid)
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.id, c.customer_id, c.phone, c.email, c.order_ref, c.product_ref, c.received_at,
           c.case_open, c.linked_to
    FROM unnest(customer_ids) AS k(v) CROSS JOIN LATERAL (
        SELECT * FROM intake.complaints c
        WHERE c.customer_id = k.v AND c.customer_id IS NOT NULL AND c.case_open
          AND c.linked_to IS NULL AND c.received_at >= since AND c.status IN (1, 2)
        ORDER BY c.received_at DESC LIMIT 50) c
    UNION ALL
    SELECT c.id, c.customer_id, c.phone, c.email, c.order_ref, c.product_ref, c.received_at,
           c.case_open, c.linked_to
    FROM unnest(phones) AS k(v) CROSS JOIN LATERAL (
        SELECT * FROM intake.complaints c
        WHERE c.phone = k.v AND c.phone IS NOT NULL AND c.case_open
          AND c.linked_to IS NULL AND c.received_at >= since AND c.status IN (1, 2)
        ORDER BY c.received_at DESC LIMIT 50) c
    UNION ALL
    SELECT c.id, c.customer_id, c.phone, c.email, c.order_ref, c.product_ref, c.received_at,
           c.case_open, c.linked_to
    FROM unnest(emails) AS k(v) CROSS JOIN LATERAL (
        SELECT * FROM intake.complaints c
        WHERE c.email = k.v AND c.email IS NOT NULL AND c.case_open
          AND c.linked_to IS NULL AND c.received_at >= since AND c.status IN (1, 2)
        ORDER BY c.received_at DESC LIMIT 50) c;
END
$$;
