-- No planner statistics for the clock columns no query filters, joins, groups or sorts on:
-- each automatic ANALYZE (every time the table grows or turns over by a tenth) computed them
-- from every sampled clock, its policy's reason and ladders above all: about 45 % of its CPU
-- on this table. SET STATISTICS takes a lock that lets reads and writes go on.
ALTER TABLE sla.clocks
    ALTER COLUMN policy_reason SET STATISTICS 0,
    ALTER COLUMN ladder_ms SET STATISTICS 0,
    ALTER COLUMN thresholds_ms SET STATISTICS 0,
    ALTER COLUMN plan_note SET STATISTICS 0,
    ALTER COLUMN policy_id SET STATISTICS 0,
    ALTER COLUMN policy_version SET STATISTICS 0,
    ALTER COLUMN consumed_ms SET STATISTICS 0,
    ALTER COLUMN running_since SET STATISTICS 0,
    ALTER COLUMN warned_percent SET STATISTICS 0,
    ALTER COLUMN escalation_level SET STATISTICS 0,
    ALTER COLUMN origin_at SET STATISTICS 0,
    ALTER COLUMN target_ms SET STATISTICS 0,
    ALTER COLUMN business SET STATISTICS 0;
