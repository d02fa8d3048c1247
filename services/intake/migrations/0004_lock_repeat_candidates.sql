-- The repeat-contact lookup as a function, so that a submission batch can run it in the round
-- trip that takes its customers' locks and begins its transaction: that round trip is one
-- simple query (several statements, no parameters).
--
-- It finds, for each identifier, its 50 newest open, unlinked complaints received since
-- `since` (one branch per way of recognising a customer, each an index range scan of its
-- partial index per identifier), then locks them in id order, so that none is closed or
-- linked elsewhere before the batch commits (`FOR NO KEY UPDATE`: a complaint being linked to
-- one still may be stored), and returns each once, as it is once locked: one
-- closed or linked meanwhile is left out. Their locks are taken in one order by every batch,
-- and only by a batch holding the customer's lock of the identifier it found them by.
--
-- PL/pgSQL keeps the plans of its queries for the session, so a batch does not plan the lookup
-- again (as an inlined SQL function it was planned for every batch: more of PostgreSQL's CPU
-- than the round trip it saved). A kept plan must suit the table at any size: made while the
-- table was nearly empty it was a scan of the whole table per identifier, kept while the table
-- grew, and submissions fell to a third. The function therefore plans without sequential
-- scans: index scans are the right plan for one customer's complaints at every size.
--
-- VOLATILE (it locks rows): its query reads with a snapshot taken when it starts, after the
-- batch's customers' locks are granted, so a contact committed by a lock's holder is seen.
CREATE FUNCTION intake.lock_repeat_candidates(
    customer_ids text[], phones text[], emails text[], since timestamptz)
RETURNS TABLE (id uuid, reference text, customer_id text, phone text, email text,
               order_ref text, product_ref text, received_at timestamptz, priority smallint)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT c.id, c.reference, c.customer_id, c.phone, c.email, c.order_ref, c.product_ref,
           c.received_at, c.priority
    FROM intake.complaints c
    WHERE c.id = ANY (ARRAY(
              SELECT f.id FROM unnest(customer_ids) AS k(v) CROSS JOIN LATERAL (
                  SELECT o.id FROM intake.complaints o
                  WHERE o.customer_id = k.v AND o.customer_id IS NOT NULL AND o.case_open
                    AND o.linked_to IS NULL AND o.received_at >= since AND o.status IN (1, 2)
                  ORDER BY o.received_at DESC LIMIT 50) f
              UNION
              SELECT f.id FROM unnest(phones) AS k(v) CROSS JOIN LATERAL (
                  SELECT o.id FROM intake.complaints o
                  WHERE o.phone = k.v AND o.phone IS NOT NULL AND o.case_open
                    AND o.linked_to IS NULL AND o.received_at >= since AND o.status IN (1, 2)
                  ORDER BY o.received_at DESC LIMIT 50) f
              UNION
              SELECT f.id FROM unnest(emails) AS k(v) CROSS JOIN LATERAL (
                  SELECT o.id FROM intake.complaints o
                  WHERE o.email = k.v AND o.email IS NOT NULL AND o.case_open
                    AND o.linked_to IS NULL AND o.received_at >= since AND o.status IN (1, 2)
                  ORDER BY o.received_at DESC LIMIT 50) f))
      -- Checked again on the row as it is once locked.
      AND c.case_open AND c.linked_to IS NULL AND c.status IN (1, 2)
    ORDER BY c.id
    FOR NO KEY UPDATE OF c;
END
$$;
