//! SQL of the `cases` schema.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::routing::{AgentLoad, Department};

const CASE_COLUMNS: &str = "id, complaint_id, complaint_reference, status, department_id, owner_id, category, \
    severity, priority, complexity, channel, customer_tier, customer_id, escalation_level, received_at, \
    opened_at, acknowledged_at, resolved_at, closed_at, version";

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
}

impl AgentRow {
    pub fn load(&self) -> AgentLoad {
        AgentLoad {
            id: self.id.clone(),
            available: self.available,
            senior: self.senior,
            capacity: self.capacity.max(0) as u32,
            open_cases: self.open_cases.max(0) as u32,
        }
    }
}

pub async fn departments(conn: &mut PgConnection) -> Result<Vec<DepartmentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, categories, escalation_chain FROM cases.departments ORDER BY id",
    )
    .fetch_all(conn)
    .await
}

pub async fn department(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<DepartmentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, categories, escalation_chain FROM cases.departments WHERE id = $1",
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
         RETURNING id, name, categories, escalation_chain",
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
        "SELECT id, name, categories, escalation_chain FROM cases.departments WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

const AGENT_SELECT: &str = "SELECT a.id, a.department_id, a.display_name, a.skills, a.capacity, a.available, a.senior,
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

/// Inserts the case unless one exists for the complaint; `None` when it did.
pub async fn insert_case(
    conn: &mut PgConnection,
    case: &CaseRow,
) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO cases.cases ({CASE_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
         ON CONFLICT (complaint_id) DO NOTHING
         RETURNING {CASE_COLUMNS}"
    ))
    .bind(case.id)
    .bind(case.complaint_id)
    .bind(&case.complaint_reference)
    .bind(case.status)
    .bind(&case.department_id)
    .bind(&case.owner_id)
    .bind(&case.category)
    .bind(case.severity)
    .bind(case.priority)
    .bind(case.complexity)
    .bind(case.channel)
    .bind(case.customer_tier)
    .bind(&case.customer_id)
    .bind(case.escalation_level)
    .bind(case.received_at)
    .bind(case.opened_at)
    .bind(case.acknowledged_at)
    .bind(case.resolved_at)
    .bind(case.closed_at)
    .bind(case.version)
    .fetch_optional(conn)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CASE_COLUMNS} FROM cases.cases WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
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

/// Writes the mutable fields and bumps the version.
pub async fn save(conn: &mut PgConnection, case: &CaseRow) -> Result<CaseRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE cases.cases
         SET status = $2, department_id = $3, owner_id = $4, category = $5, severity = $6, priority = $7,
             complexity = $8, escalation_level = $9, acknowledged_at = $10, resolved_at = $11, closed_at = $12,
             version = version + 1
         WHERE id = $1
         RETURNING {CASE_COLUMNS}"
    ))
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
    .fetch_one(conn)
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
