-- Clocks of a case are found through the unique (case_id, kind, cycle) index, whose leading
-- column is the case: the separate index on case_id only cost an entry on every clock insert
-- and on every update that was not HOT (most of them), and was never needed.
DROP INDEX IF EXISTS sla.clocks_case_idx;
