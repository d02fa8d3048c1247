-- No planner statistics for the columns no query filters, joins, groups or sorts on (the
-- keyword search reads subject, description and demand through an expression, for which
-- per-column statistics say nothing). Automatic ANALYZE, which runs each time the table grows
-- by a tenth, computed them from every sampled complaint's texts and arrays: about 60 % of its
-- CPU on this table. SET STATISTICS takes a lock that lets reads and writes go on.
ALTER TABLE intake.complaints
    ALTER COLUMN request_fingerprint SET STATISTICS 0,
    ALTER COLUMN complainant_name SET STATISTICS 0,
    ALTER COLUMN subject SET STATISTICS 0,
    ALTER COLUMN description SET STATISTICS 0,
    ALTER COLUMN demand SET STATISTICS 0,
    ALTER COLUMN occurred_at SET STATISTICS 0,
    ALTER COLUMN order_ref SET STATISTICS 0,
    ALTER COLUMN product_ref SET STATISTICS 0,
    ALTER COLUMN language SET STATISTICS 0,
    ALTER COLUMN matched_terms SET STATISTICS 0,
    ALTER COLUMN reasons SET STATISTICS 0,
    ALTER COLUMN rejection_reason SET STATISTICS 0,
    ALTER COLUMN status_note SET STATISTICS 0,
    ALTER COLUMN recorded_by SET STATISTICS 0,
    ALTER COLUMN version SET STATISTICS 0,
    ALTER COLUMN repeat_contacts SET STATISTICS 0,
    ALTER COLUMN attachments SET STATISTICS 0,
    ALTER COLUMN taxonomy_version SET STATISTICS 0,
    ALTER COLUMN overridden SET STATISTICS 0,
    ALTER COLUMN priority SET STATISTICS 0,
    ALTER COLUMN complexity SET STATISTICS 0,
    ALTER COLUMN customer_tier SET STATISTICS 0;
