-- Which case each complaint got, in a narrow table of its own. Writing it into the complaint
-- row was an update of a wide row under twelve indexes (never a HOT update: case_id was
-- indexed), about 0.1 ms a complaint, intake's costliest statement under load.
-- complaints.case_id is no longer written; it stays so that replicas of the previous release
-- keep working during a rolling upgrade, and links they record there are still honoured.
CREATE TABLE intake.complaint_cases (
    complaint_id uuid PRIMARY KEY,
    case_id      uuid NOT NULL
);
CREATE INDEX complaint_cases_case_idx ON intake.complaint_cases (case_id);
INSERT INTO intake.complaint_cases (complaint_id, case_id)
    SELECT id, case_id FROM intake.complaints WHERE case_id IS NOT NULL;
