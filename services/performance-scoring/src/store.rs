//! SQL of the `scoring` schema.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::kpi::Counts;

/// Sets some facts of a case, creating its row when it is the first event seen for it.
pub async fn upsert_opened(
    conn: &mut PgConnection,
    case_id: Uuid,
    department_id: &str,
    owner_id: &str,
    category: &str,
    severity: i16,
    opened_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scoring.case_facts (case_id, department_id, owner_id, category, severity, opened_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (case_id) DO UPDATE SET department_id = EXCLUDED.department_id,
             owner_id = EXCLUDED.owner_id, category = EXCLUDED.category, severity = EXCLUDED.severity,
             opened_at = EXCLUDED.opened_at, updated_at = now()",
    )
    .bind(case_id)
    .bind(department_id)
    .bind(owner_id)
    .bind(category)
    .bind(severity)
    .bind(opened_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs an update of one case's facts, creating the row first if needed.
pub async fn update_facts(
    conn: &mut PgConnection,
    case_id: Uuid,
    set: &str,
    bind: FactValue,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO scoring.case_facts (case_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(case_id)
        .execute(&mut *conn)
        .await?;
    let sql = format!("UPDATE scoring.case_facts SET {set}, updated_at = now() WHERE case_id = $1");
    let query = sqlx::query(&sql).bind(case_id);
    let query = match bind {
        FactValue::None => query,
        FactValue::Time(t) => query.bind(t),
        FactValue::Bool(b) => query.bind(b),
        FactValue::Owner(dept, owner) => query.bind(dept).bind(owner),
        FactValue::Survey { csat, nps, solved } => query.bind(csat).bind(nps).bind(solved),
    };
    query.execute(conn).await?;
    Ok(())
}

pub enum FactValue {
    None,
    Time(DateTime<Utc>),
    Bool(bool),
    Owner(String, String),
    Survey {
        csat: Option<i16>,
        nps: Option<i16>,
        solved: Option<bool>,
    },
}

/// Counts over the cases opened in [start, end) of an agent or a department.
pub async fn counts(
    pool: &PgPool,
    by_department: bool,
    subject: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Counts, sqlx::Error> {
    let column = if by_department {
        "department_id"
    } else {
        "owner_id"
    };
    let row: (i64, i64, i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*),
                count(*) FILTER (WHERE resolved),
                count(*) FILTER (WHERE first_response_on_time IS TRUE AND NOT first_response_breached),
                count(*) FILTER (WHERE first_response_on_time IS NOT NULL OR first_response_breached),
                coalesce(sum(csat), 0)::bigint,
                count(csat),
                count(*) FILTER (WHERE csat >= 4),
                count(*) FILTER (WHERE nps >= 9),
                count(*) FILTER (WHERE nps <= 6),
                count(nps)
         FROM scoring.case_facts
         WHERE {column} = $1 AND opened_at >= $2 AND opened_at < $3"
    ))
    .bind(subject)
    .bind(start)
    .bind(end)
    .fetch_one(pool)
    .await?;
    let n = |v: i64| v.max(0) as u64;
    Ok(Counts {
        cases_opened: n(row.0),
        cases_resolved: n(row.1),
        first_response_on_time: n(row.2),
        first_response_measured: n(row.3),
        csat_sum: n(row.4),
        csat_responses: n(row.5),
        csat_satisfied: n(row.6),
        nps_promoters: n(row.7),
        nps_detractors: n(row.8),
        nps_responses: n(row.9),
    })
}
