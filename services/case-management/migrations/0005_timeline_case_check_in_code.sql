-- A timeline entry is written by the transaction that holds its case: inserted just before
-- (an opening) or locked for the change the entry records. Case rows are never deleted. The
-- foreign key checked what the code already guarantees, with one trigger query per entry that
-- also locked the case row (a WAL record each): about 1.25 entries a complaint, the largest
-- trigger cost of the suite. Tests check that no entry is without its case.
ALTER TABLE cases.timeline DROP CONSTRAINT IF EXISTS timeline_case_id_fkey;
