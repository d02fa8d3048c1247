//! SQL of the `cases` schema.

use chrono::{DateTime, Utc};
use complaints_kit::db::ColumnArrays;
use complaints_kit::events::{EncodedEvent, EventLog};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::routing::{AgentLoad, Department};

const CASE_COLUMNS: &str = "id, complaint_id, complaint_reference, status, department_id, owner_id, category, \
    severity, priority, complexity, channel, customer_tier, customer_id, escalation_level, received_at, \
    opened_at, acknowledged_at, resolved_at, closed_at, version, product_ref, order_ref, problem_id, under_review, \
    traceparent";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CaseRow {
    pub id: Uuid,
    pub complaint_id: Uuid,
    pub complaint_reference: String,
    pub status: i16,
    pub department_id: String,
    pub owner_id: String,
    pub category: String,
    pub severity: i16,
    pub priority: i16,
    pub complexity: i16,
    pub channel: i16,
    pub customer_tier: i16,
    pub customer_id: String,
    pub escalation_level: i32,
    pub received_at: DateTime<Utc>,
    pub opened_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub product_ref: String,
    pub order_ref: String,
    pub problem_id: Option<Uuid>,
    pub under_review: bool,
    pub traceparent: String,
}

impl CaseRow {
    /// The trace an event about this case belongs to: the caller's, else the complaint's (so
    /// changes made days after intake stay in the complaint's trace).
    pub fn trace_for(&self, given: &str) -> String {
        if given.is_empty() {
            self.traceparent.clone()
        } else {
            given.to_owned()
        }
    }
}

#[derive(Clone, Debug)]
pub struct TimelineEntry {
    pub case_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub kind: &'static str,
    pub from_value: String,
    pub to_value: String,
    pub note: String,
    pub customer_visible: bool,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TimelineRow {
    pub id: Uuid,
    pub case_id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub kind: String,
    pub from_value: String,
    pub to_value: String,
    pub note: String,
    pub customer_visible: bool,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DepartmentRow {
    pub id: String,
    pub name: String,
    pub categories: Vec<String>,
    pub escalation_chain: Vec<String>,
    pub version: i64,
}

impl DepartmentRow {
    pub fn routing(&self) -> Department {
        Department {
            id: self.id.clone(),
            categories: self.categories.clone(),
            escalation_chain: self.escalation_chain.clone(),
        }
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub department_id: String,
    pub display_name: String,
    pub skills: Vec<String>,
    pub capacity: i32,
    pub available: bool,
    pub senior: bool,
    pub open_cases: i64,
    pub languages: Vec<String>,
    pub version: i64,
}

impl AgentRow {
    pub fn load(&self) -> AgentLoad {
        AgentLoad {
            id: self.id.clone(),
            available: self.available,
            senior: self.senior,
            capacity: self.capacity.max(0) as u32,
            open_cases: self.open_cases.max(0) as u32,
            skills: self.skills.clone(),
            languages: self.languages.clone(),
        }
    }
}

pub async fn departments(conn: &mut PgConnection) -> Result<Vec<DepartmentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, categories, escalation_chain, version FROM cases.departments ORDER BY id",
    )
    .fetch_all(conn)
    .await
}

pub async fn department(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<DepartmentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, categories, escalation_chain, version FROM cases.departments WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Inserts a department; `None` when the request id or the department id already exist.
pub async fn insert_department(
    conn: &mut PgConnection,
    request_id: &str,
    department: &DepartmentRow,
) -> Result<Option<DepartmentRow>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO cases.departments (id, name, categories, escalation_chain, request_id)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING
         RETURNING id, name, categories, escalation_chain, version",
    )
    .bind(&department.id)
    .bind(&department.name)
    .bind(&department.categories)
    .bind(&department.escalation_chain)
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

pub async fn department_by_request(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<DepartmentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, categories, escalation_chain, version FROM cases.departments WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

const AGENT_SELECT: &str = "SELECT a.id, a.department_id, a.display_name, a.skills, a.capacity, a.available, a.senior, a.languages, a.version,
        (SELECT count(*) FROM cases.cases c WHERE c.owner_id = a.id AND c.status NOT IN (5, 6, 7, 10)) AS open_cases
     FROM cases.agents a";

pub async fn agents(
    conn: &mut PgConnection,
    department_id: Option<&str>,
) -> Result<Vec<AgentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{AGENT_SELECT} WHERE ($1::text IS NULL OR a.department_id = $1) ORDER BY a.id"
    ))
    .bind(department_id)
    .fetch_all(conn)
    .await
}

/// The agents of the given departments, with their open cases.
pub async fn agents_in(
    conn: &mut PgConnection,
    department_ids: &[String],
) -> Result<Vec<AgentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{AGENT_SELECT} WHERE a.department_id = ANY($1) ORDER BY a.id"
    ))
    .bind(department_ids)
    .fetch_all(conn)
    .await
}

pub async fn insert_agent(
    conn: &mut PgConnection,
    request_id: &str,
    agent: &AgentRow,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO cases.agents (id, department_id, display_name, skills, capacity, available, senior, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT DO NOTHING",
    )
    .bind(&agent.id)
    .bind(&agent.department_id)
    .bind(&agent.display_name)
    .bind(&agent.skills)
    .bind(agent.capacity)
    .bind(agent.available)
    .bind(agent.senior)
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn agent_by_id_or_request(
    conn: &mut PgConnection,
    id: &str,
    request_id: &str,
) -> Result<Option<(AgentRow, Option<String>)>, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM cases.agents WHERE request_id = $1 OR id = $2 ORDER BY (request_id = $1) DESC LIMIT 1",
    )
    .bind(request_id)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((found,)) = row else { return Ok(None) };
    let agent: AgentRow = sqlx::query_as(&format!("{AGENT_SELECT} WHERE a.id = $1"))
        .bind(&found)
        .fetch_one(&mut *conn)
        .await?;
    let request: (Option<String>,) =
        sqlx::query_as("SELECT request_id FROM cases.agents WHERE id = $1")
            .bind(&found)
            .fetch_one(conn)
            .await?;
    Ok(Some((agent, request.0)))
}

/// Inserts cases with one statement, skipping complaints that already have one; returns the
/// complaint ids of the cases inserted.
pub async fn insert_cases(
    conn: &mut PgConnection,
    cases: &[CaseRow],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if cases.is_empty() {
        return Ok(Vec::new());
    }
    let arguments = ColumnArrays::new()
        .column(cases, |c| c.id)
        .column(cases, |c| c.complaint_id)
        .column(cases, |c| c.complaint_reference.clone())
        .column(cases, |c| c.status)
        .column(cases, |c| c.department_id.clone())
        .column(cases, |c| c.owner_id.clone())
        .column(cases, |c| c.category.clone())
        .column(cases, |c| c.severity)
        .column(cases, |c| c.priority)
        .column(cases, |c| c.complexity)
        .column(cases, |c| c.channel)
        .column(cases, |c| c.customer_tier)
        .column(cases, |c| c.customer_id.clone())
        .column(cases, |c| c.escalation_level)
        .column(cases, |c| c.received_at)
        .column(cases, |c| c.opened_at)
        .column(cases, |c| c.acknowledged_at)
        .column(cases, |c| c.resolved_at)
        .column(cases, |c| c.closed_at)
        .column(cases, |c| c.version)
        .column(cases, |c| c.product_ref.clone())
        .column(cases, |c| c.order_ref.clone())
        .column(cases, |c| c.problem_id)
        .column(cases, |c| c.under_review)
        .column(cases, |c| c.traceparent.clone())
        .finish()?;
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "INSERT INTO cases.cases ({CASE_COLUMNS})
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $5::text[],
                 $6::text[], $7::text[], $8::int2[], $9::int2[], $10::int2[], $11::int2[],
                 $12::int2[], $13::text[], $14::int4[], $15::timestamptz[], $16::timestamptz[],
                 $17::timestamptz[], $18::timestamptz[], $19::timestamptz[], $20::int8[],
                 $21::text[], $22::text[], $23::uuid[], $24::bool[], $25::text[])
             ON CONFLICT (complaint_id) DO NOTHING RETURNING complaint_id"
        )
    });
    // Prepared and kept: the plan reads no table (the conflicts are found in the unique index).
    sqlx::query_scalar_with(sql, arguments)
        .fetch_all(conn)
        .await
}

pub async fn get<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CASE_COLUMNS} FROM cases.cases WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn get_by_complaint(
    pool: &PgPool,
    complaint_id: Uuid,
) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CASE_COLUMNS} FROM cases.cases WHERE complaint_id = $1"
    ))
    .bind(complaint_id)
    .fetch_optional(pool)
    .await
}

/// Locks the case row: every change to a case starts here, which also orders its events.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CASE_COLUMNS} FROM cases.cases WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn lock_by_complaint(
    conn: &mut PgConnection,
    complaint_id: Uuid,
) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CASE_COLUMNS} FROM cases.cases WHERE complaint_id = $1 FOR UPDATE"
    ))
    .bind(complaint_id)
    .fetch_optional(conn)
    .await
}

/// The cases of several complaints, locked in case id order; by complaint (a complaint
/// without a case is absent).
pub async fn lock_by_complaints(
    conn: &mut PgConnection,
    complaint_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, CaseRow>, sqlx::Error> {
    let cases: Vec<CaseRow> = sqlx::query_as(&format!(
        "SELECT {CASE_COLUMNS} FROM cases.cases WHERE complaint_id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    // Prepared: a consumer's transaction plans it once, generically (kit `CONSUMER_PLANS`).
    .bind(complaint_ids)
    .fetch_all(conn)
    .await?;
    Ok(cases.into_iter().map(|c| (c.complaint_id, c)).collect())
}

/// Writes the classification (category, severity, priority, complexity) of locked cases with
/// one statement, each case's version moved by the number of changes it stands for (as that
/// many [`save`]s would).
pub async fn save_classifications(
    conn: &mut PgConnection,
    cases: &[(&CaseRow, i64)],
) -> Result<(), sqlx::Error> {
    if cases.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = cases.iter().map(|(c, _)| c.id).collect();
    let categories: Vec<&str> = cases.iter().map(|(c, _)| c.category.as_str()).collect();
    let level = |f: fn(&CaseRow) -> i16| -> Vec<i16> { cases.iter().map(|(c, _)| f(c)).collect() };
    let changes: Vec<i64> = cases.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        "UPDATE cases.cases c
         SET category = m.category, severity = m.severity, priority = m.priority,
             complexity = m.complexity, version = c.version + m.changes
         FROM unnest($1::uuid[], $2::text[], $3::int2[], $4::int2[], $5::int2[], $6::int8[])
              AS m(id, category, severity, priority, complexity, changes)
         WHERE c.id = m.id",
    )
    // Prepared: a consumer's transaction plans it once, generically (kit `CONSUMER_PLANS`).
    .bind(&ids)
    .bind(&categories)
    .bind(level(|c| c.severity))
    .bind(level(|c| c.priority))
    .bind(level(|c| c.complexity))
    .bind(&changes)
    .execute(conn)
    .await?;
    Ok(())
}

/// The mutable fields of a case as `$2`…`$14` (its id is `$1`), bound by [`bind_case`].
const CASE_UPDATE: &str = "UPDATE cases.cases
     SET status = $2, department_id = $3, owner_id = $4, category = $5, severity = $6, priority = $7,
         complexity = $8, escalation_level = $9, acknowledged_at = $10, resolved_at = $11, closed_at = $12,
         problem_id = $13, under_review = $14, version = version + 1";

type CaseQuery<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, CaseRow, sqlx::postgres::PgArguments>;

/// Binds `$1`…`$14` of [`CASE_UPDATE`].
fn bind_case<'q>(query: CaseQuery<'q>, case: &'q CaseRow) -> CaseQuery<'q> {
    query
        .bind(case.id)
        .bind(case.status)
        .bind(&case.department_id)
        .bind(&case.owner_id)
        .bind(&case.category)
        .bind(case.severity)
        .bind(case.priority)
        .bind(case.complexity)
        .bind(case.escalation_level)
        .bind(case.acknowledged_at)
        .bind(case.resolved_at)
        .bind(case.closed_at)
        .bind(case.problem_id)
        .bind(case.under_review)
}

/// Writes the mutable fields and bumps the version.
pub async fn save(conn: &mut PgConnection, case: &CaseRow) -> Result<CaseRow, sqlx::Error> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| format!("{CASE_UPDATE} WHERE id = $1 RETURNING {CASE_COLUMNS}"));
    bind_case(sqlx::query_as(sql), case).fetch_one(conn).await
}

/// Writes a decided change — the case row, its timeline entry and its event — with one
/// statement outside any explicit transaction, if the case is still at `expected_version`
/// (every update of a case moves its version, so nothing written since the caller read it is
/// overwritten). `None`, and nothing written, when it moved on: the caller then takes the
/// locked path. Three round trips and the BEGIN/COMMIT pair fewer than writing under a lock.
pub async fn save_if_unchanged(
    conn: &mut PgConnection,
    events: &EventLog,
    case: &CaseRow,
    expected_version: i64,
    entry: &TimelineEntry,
    event: &EncodedEvent,
) -> Result<Option<CaseRow>, sqlx::Error> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "WITH saved AS (
                 {CASE_UPDATE} WHERE id = $1 AND version = $15 RETURNING {CASE_COLUMNS}
             ), entry AS (
                 INSERT INTO cases.timeline
                     (id, case_id, at, actor, kind, from_value, to_value, note, customer_visible)
                 SELECT $16, id, $17, $18, $19, $20, $21, $22, $23 FROM saved
             ), announced AS ({})
             SELECT {CASE_COLUMNS} FROM saved",
            events.insert_one_sql("saved", 24)
        )
    });
    let query = bind_case(sqlx::query_as(sql), case)
        .bind(expected_version)
        .bind(Uuid::now_v7())
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(entry.kind)
        .bind(&entry.from_value)
        .bind(&entry.to_value)
        .bind(&entry.note)
        .bind(entry.customer_visible);
    complaints_kit::events::bind_event(query, event)
        .fetch_optional(conn)
        .await
}

pub async fn append_timeline(
    conn: &mut PgConnection,
    entry: &TimelineEntry,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cases.timeline (id, case_id, at, actor, kind, from_value, to_value, note, customer_visible)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(Uuid::now_v7())
    .bind(entry.case_id)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(entry.kind)
    .bind(&entry.from_value)
    .bind(&entry.to_value)
    .bind(&entry.note)
    .bind(entry.customer_visible)
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends several timeline entries with one statement.
pub async fn append_timeline_all(
    conn: &mut PgConnection,
    entries: &[TimelineEntry],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let arguments = ColumnArrays::new()
        .column(entries, |_| Uuid::now_v7())
        .column(entries, |e| e.case_id)
        .column(entries, |e| e.at)
        .column(entries, |e| e.actor.clone())
        .column(entries, |e| e.kind)
        .column(entries, |e| e.from_value.clone())
        .column(entries, |e| e.to_value.clone())
        .column(entries, |e| e.note.clone())
        .column(entries, |e| e.customer_visible)
        .finish()?;
    // Prepared and kept: the plan reads no table.
    sqlx::query_with(
        "INSERT INTO cases.timeline (id, case_id, at, actor, kind, from_value, to_value, note, customer_visible)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[],
             $6::text[], $7::text[], $8::text[], $9::bool[])",
        arguments,
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn timeline(
    pool: &PgPool,
    case_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<TimelineRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, case_id, at, actor, kind, from_value, to_value, note, customer_visible
         FROM cases.timeline
         WHERE case_id = $1 AND ($2::timestamptz IS NULL OR (at, id) > ($2, $3))
         ORDER BY at, id
         LIMIT $4",
    )
    .bind(case_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1).unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Records an escalation id; false when it had been recorded before.
pub async fn record_escalation(
    conn: &mut PgConnection,
    escalation_id: &str,
    case_id: Uuid,
    level: i32,
    owner_id: &str,
    reason: &str,
    actor: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO cases.escalations (escalation_id, case_id, level, owner_id, reason, actor)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (escalation_id) DO NOTHING",
    )
    .bind(escalation_id)
    .bind(case_id)
    .bind(level)
    .bind(owner_id)
    .bind(reason)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub struct ListFilter {
    pub department_id: Option<String>,
    pub owner_id: Option<String>,
    pub status: Option<i16>,
    /// Restricts to a department or an owner (for agents and supervisors).
    pub visible_to: Option<(Option<String>, String)>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<Vec<CaseRow>, sqlx::Error> {
    let (scope_dept, scope_owner) = match &filter.visible_to {
        Some((dept, owner)) => (dept.clone(), Some(owner.clone())),
        None => (None, None),
    };
    sqlx::query_as(&format!(
        "SELECT {CASE_COLUMNS} FROM cases.cases
         WHERE ($1::text IS NULL OR department_id = $1)
           AND ($2::text IS NULL OR owner_id = $2)
           AND ($3::smallint IS NULL OR status = $3)
           AND ($4::text IS NULL OR department_id = $5 OR owner_id = $4)
           AND ($6::timestamptz IS NULL OR (opened_at, id) < ($6, $7))
         ORDER BY opened_at DESC, id DESC
         LIMIT $8"
    ))
    .bind(&filter.department_id)
    .bind(&filter.owner_id)
    .bind(filter.status)
    .bind(scope_owner)
    .bind(scope_dept)
    .bind(filter.after.map(|a| a.0))
    .bind(filter.after.map(|a| a.1).unwrap_or_default())
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

// ---- people ----------------------------------------------------------------------------

pub async fn agent(conn: &mut PgConnection, id: &str) -> Result<Option<AgentRow>, sqlx::Error> {
    sqlx::query_as(&format!("{AGENT_SELECT} WHERE a.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Writes an agent's editable fields if it is still at `version`; `None` when it is not.
pub async fn update_agent(
    conn: &mut PgConnection,
    agent: &AgentRow,
    version: i64,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE cases.agents
         SET display_name = $3, skills = $4, languages = $5, capacity = $6, available = $7,
             senior = $8, version = version + 1
         WHERE id = $1 AND version = $2",
    )
    .bind(&agent.id)
    .bind(version)
    .bind(&agent.display_name)
    .bind(&agent.skills)
    .bind(&agent.languages)
    .bind(agent.capacity)
    .bind(agent.available)
    .bind(agent.senior)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn update_department(
    conn: &mut PgConnection,
    department: &DepartmentRow,
    version: i64,
) -> Result<Option<DepartmentRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE cases.departments
         SET name = $3, categories = $4, escalation_chain = $5, version = version + 1
         WHERE id = $1 AND version = $2
         RETURNING id, name, categories, escalation_chain, version",
    )
    .bind(&department.id)
    .bind(version)
    .bind(&department.name)
    .bind(&department.categories)
    .bind(&department.escalation_chain)
    .fetch_optional(conn)
    .await
}

// ---- cases, extra reads ----------------------------------------------------------------

/// The newest case of a complaint reference (what the customer quotes).
pub async fn get_by_reference(
    pool: &PgPool,
    reference: &str,
) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CASE_COLUMNS} FROM cases.cases WHERE complaint_reference = $1
         ORDER BY opened_at DESC LIMIT 1"
    ))
    .bind(reference)
    .fetch_optional(pool)
    .await
}

pub async fn get_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<CaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CASE_COLUMNS} FROM cases.cases WHERE id = ANY($1)"
    ))
    // Planned for each call (see "Plans" in `complaints_kit::db`).
    .persistent(false)
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Customer-visible entries of a case, oldest first (at most 500).
pub async fn customer_timeline(
    pool: &PgPool,
    case_id: Uuid,
) -> Result<Vec<TimelineRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, case_id, at, actor, kind, from_value, to_value, note, customer_visible
         FROM cases.timeline
         WHERE case_id = $1 AND customer_visible
         ORDER BY at, id
         LIMIT 500",
    )
    .bind(case_id)
    .fetch_all(pool)
    .await
}

/// Appends an entry once per `request_id`; `None` when that request id was used before.
pub async fn append_timeline_once(
    conn: &mut PgConnection,
    entry: &TimelineEntry,
    request_id: &str,
) -> Result<Option<TimelineRow>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO cases.timeline (id, case_id, at, actor, kind, from_value, to_value, note, customer_visible, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (request_id) DO NOTHING
         RETURNING id, case_id, at, actor, kind, from_value, to_value, note, customer_visible",
    )
    .bind(Uuid::now_v7())
    .bind(entry.case_id)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(entry.kind)
    .bind(&entry.from_value)
    .bind(&entry.to_value)
    .bind(&entry.note)
    .bind(entry.customer_visible)
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

pub async fn timeline_by_request(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<TimelineRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, case_id, at, actor, kind, from_value, to_value, note, customer_visible
         FROM cases.timeline WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

// ---- sub-tasks -------------------------------------------------------------------------

const SUB_TASK_COLUMNS: &str = "id, case_id, department_id, owner_id, title, detail, due_at, status, result, \
    customer_visible, purpose, created_by, created_at, completed_at, version";

pub const PURPOSE_COORDINATION: &str = "coordination";
pub const PURPOSE_REVIEW: &str = "dissatisfaction_review";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SubTaskRow {
    pub id: Uuid,
    pub case_id: Uuid,
    pub department_id: String,
    pub owner_id: String,
    pub title: String,
    pub detail: String,
    pub due_at: DateTime<Utc>,
    pub status: i16,
    pub result: String,
    pub customer_visible: bool,
    pub purpose: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub version: i64,
}

/// Inserts a sub-task; `None` when its request id was used before.
pub async fn insert_sub_task(
    conn: &mut PgConnection,
    task: &SubTaskRow,
    request_id: &str,
) -> Result<Option<SubTaskRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO cases.sub_tasks ({SUB_TASK_COLUMNS}, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (request_id) DO NOTHING
         RETURNING {SUB_TASK_COLUMNS}"
    ))
    .bind(task.id)
    .bind(task.case_id)
    .bind(&task.department_id)
    .bind(&task.owner_id)
    .bind(&task.title)
    .bind(&task.detail)
    .bind(task.due_at)
    .bind(task.status)
    .bind(&task.result)
    .bind(task.customer_visible)
    .bind(&task.purpose)
    .bind(&task.created_by)
    .bind(task.created_at)
    .bind(task.completed_at)
    .bind(task.version)
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

pub async fn sub_task_by_request(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<SubTaskRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SUB_TASK_COLUMNS} FROM cases.sub_tasks WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

pub async fn sub_task(pool: &PgPool, id: Uuid) -> Result<Option<SubTaskRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SUB_TASK_COLUMNS} FROM cases.sub_tasks WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn lock_sub_task(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<SubTaskRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SUB_TASK_COLUMNS} FROM cases.sub_tasks WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn save_sub_task(
    conn: &mut PgConnection,
    task: &SubTaskRow,
) -> Result<SubTaskRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE cases.sub_tasks SET status = $2, result = $3, completed_at = $4, version = version + 1
         WHERE id = $1 RETURNING {SUB_TASK_COLUMNS}"
    ))
    .bind(task.id)
    .bind(task.status)
    .bind(&task.result)
    .bind(task.completed_at)
    .fetch_one(conn)
    .await
}

/// Open sub-tasks of a case with a given purpose.
pub async fn open_sub_tasks(
    conn: &mut PgConnection,
    case_id: Uuid,
    purpose: &str,
) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM cases.sub_tasks WHERE case_id = $1 AND purpose = $2 AND status IN (1, 2)",
    )
    .bind(case_id)
    .bind(purpose)
    .fetch_one(conn)
    .await?;
    Ok(n)
}

/// Sub-tasks of a case (`case_id`) or asked of a department, oldest first.
pub async fn list_sub_tasks(
    pool: &PgPool,
    case_id: Option<Uuid>,
    department_id: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<SubTaskRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {SUB_TASK_COLUMNS} FROM cases.sub_tasks
         WHERE ($1::uuid IS NULL OR case_id = $1)
           AND ($2::text IS NULL OR department_id = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
         ORDER BY created_at, id
         LIMIT $5"
    ))
    .bind(case_id)
    .bind(department_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1).unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

// ---- problem ledger --------------------------------------------------------------------

const PROBLEM_SELECT: &str = "SELECT p.id, p.title, p.category, p.product_ref, p.root_cause, p.corrective_action,
        p.owner_id, p.status, p.created_at, p.updated_at, p.version,
        (SELECT count(*) FROM cases.cases c WHERE c.problem_id = p.id) AS linked_cases,
        (SELECT count(DISTINCT NULLIF(c.customer_id, '')) FROM cases.cases c WHERE c.problem_id = p.id) AS linked_customers
     FROM cases.problems p";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ProblemRow {
    pub id: Uuid,
    pub title: String,
    pub category: String,
    pub product_ref: String,
    pub root_cause: String,
    pub corrective_action: String,
    pub owner_id: String,
    pub status: i16,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub linked_cases: i64,
    pub linked_customers: i64,
}

/// Inserts a problem; false when its request id was used before.
pub async fn insert_problem(
    conn: &mut PgConnection,
    problem: &ProblemRow,
    created_by: &str,
    request_id: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO cases.problems (id, title, category, product_ref, root_cause, corrective_action,
             owner_id, status, created_by, created_at, updated_at, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(problem.id)
    .bind(&problem.title)
    .bind(&problem.category)
    .bind(&problem.product_ref)
    .bind(&problem.root_cause)
    .bind(&problem.corrective_action)
    .bind(&problem.owner_id)
    .bind(problem.status)
    .bind(created_by)
    .bind(problem.created_at)
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn problem_id_by_request(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    let row: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM cases.problems WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|r| r.0))
}

pub async fn problem(conn: &mut PgConnection, id: Uuid) -> Result<Option<ProblemRow>, sqlx::Error> {
    sqlx::query_as(&format!("{PROBLEM_SELECT} WHERE p.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Writes a problem's editable fields if it is still at `version`.
pub async fn update_problem(
    conn: &mut PgConnection,
    problem: &ProblemRow,
    version: i64,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE cases.problems
         SET title = $3, root_cause = $4, corrective_action = $5, owner_id = $6, status = $7,
             updated_at = now(), version = version + 1
         WHERE id = $1 AND version = $2",
    )
    .bind(problem.id)
    .bind(version)
    .bind(&problem.title)
    .bind(&problem.root_cause)
    .bind(&problem.corrective_action)
    .bind(&problem.owner_id)
    .bind(problem.status)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Problems ranked by linked cases, then distinct customers; `offset` pages through them.
pub async fn ranked_problems(
    pool: &PgPool,
    status: Option<i16>,
    offset: i64,
    limit: i64,
) -> Result<Vec<ProblemRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT * FROM ({PROBLEM_SELECT} WHERE ($1::smallint IS NULL OR p.status = $1)) ranked
         ORDER BY linked_cases DESC, linked_customers DESC, created_at, id
         OFFSET $2 LIMIT $3"
    ))
    .bind(status)
    .bind(offset)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RecurrenceRow {
    pub category: String,
    pub product_ref: String,
    pub cases: i64,
    pub customers: i64,
    pub first_opened_at: DateTime<Utc>,
    pub last_opened_at: DateTime<Utc>,
    pub case_ids: Vec<Uuid>,
}

/// Cases not in the ledger that share category and product within the window.
pub async fn recurring_complaints(
    pool: &PgPool,
    since: DateTime<Utc>,
    min_cases: i64,
) -> Result<Vec<RecurrenceRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT category, product_ref, count(*) AS cases,
                count(DISTINCT NULLIF(customer_id, '')) AS customers,
                min(opened_at) AS first_opened_at, max(opened_at) AS last_opened_at,
                (array_agg(id ORDER BY opened_at DESC, id DESC))[1:10] AS case_ids
         FROM cases.cases
         WHERE opened_at >= $1 AND product_ref <> '' AND problem_id IS NULL AND status <> 10
         GROUP BY category, product_ref
         HAVING count(*) >= $2
         ORDER BY count(*) DESC, count(DISTINCT NULLIF(customer_id, '')) DESC, category, product_ref
         LIMIT 100",
    )
    .bind(since)
    .bind(min_cases)
    .fetch_all(pool)
    .await
}
