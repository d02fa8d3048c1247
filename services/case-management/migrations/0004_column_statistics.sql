-- No planner statistics for the timeline's free texts, which no query filters, joins or sorts
-- on: each automatic ANALYZE (every time the table grows by a tenth) computed them from every
-- sampled entry, about half of its CPU on this table. SET STATISTICS takes a lock that lets
-- reads and writes go on.
ALTER TABLE cases.timeline
    ALTER COLUMN note SET STATISTICS 0,
    ALTER COLUMN to_value SET STATISTICS 0,
    ALTER COLUMN from_value SET STATISTICS 0,
    ALTER COLUMN actor SET STATISTICS 0;
