//! SQL of the `survey` schema.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub const SCHEDULED: i16 = 1;
pub const SENT: i16 = 2;
pub const ANSWERED: i16 = 3;

const COLUMNS: &str = "id, case_id, cycle, status, delivery, template_id, template_version, scheduled_for, \
    sent_at, expires_at, answered_at, answers, dissatisfied, department_id, owner_id, category";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct InvitationRow {
    pub id: Uuid,
    pub case_id: Uuid,
    pub cycle: i32,
    pub status: i16,
    pub delivery: String,
    pub template_id: String,
    pub template_version: i32,
    pub scheduled_for: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub answered_at: Option<DateTime<Utc>>,
    pub answers: Option<serde_json::Value>,
    pub dissatisfied: bool,
    pub department_id: String,
    pub owner_id: String,
    pub category: String,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CaseRow {
    pub case_id: Uuid,
    pub department_id: String,
    pub owner_id: String,
    pub category: String,
    pub channel: i16,
}

pub async fn upsert_case(conn: &mut PgConnection, case: &CaseRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO survey.cases (case_id, department_id, owner_id, category, channel)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (case_id) DO UPDATE SET department_id = EXCLUDED.department_id,
             owner_id = EXCLUDED.owner_id, updated_at = now()",
    )
    .bind(case.case_id)
    .bind(&case.department_id)
    .bind(&case.owner_id)
    .bind(&case.category)
    .bind(case.channel)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn case(conn: &mut PgConnection, case_id: Uuid) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT case_id, department_id, owner_id, category, channel FROM survey.cases WHERE case_id = $1",
    )
    .bind(case_id)
    .fetch_optional(conn)
    .await
}

pub async fn next_cycle(conn: &mut PgConnection, case_id: Uuid) -> Result<i32, sqlx::Error> {
    let (max,): (Option<i32>,) =
        sqlx::query_as("SELECT max(cycle) FROM survey.invitations WHERE case_id = $1")
            .bind(case_id)
            .fetch_one(conn)
            .await?;
    Ok(max.unwrap_or(0) + 1)
}

pub async fn insert_invitation(
    conn: &mut PgConnection,
    invitation: &InvitationRow,
    token_hash: &[u8],
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO survey.invitations (id, case_id, cycle, status, delivery, token_hash, template_id,
             template_version, scheduled_for, department_id, owner_id, category)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (case_id, cycle) DO NOTHING",
    )
    .bind(invitation.id)
    .bind(invitation.case_id)
    .bind(invitation.cycle)
    .bind(invitation.status)
    .bind(&invitation.delivery)
    .bind(token_hash)
    .bind(&invitation.template_id)
    .bind(invitation.template_version)
    .bind(invitation.scheduled_for)
    .bind(&invitation.department_id)
    .bind(&invitation.owner_id)
    .bind(&invitation.category)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn invitations_of_case(
    pool: &PgPool,
    case_id: Uuid,
) -> Result<Vec<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM survey.invitations WHERE case_id = $1 ORDER BY cycle"
    ))
    .bind(case_id)
    .fetch_all(pool)
    .await
}

/// Takes due invitations and marks them sent, in one statement; concurrent claimers never
/// get the same invitation.
pub async fn claim_due(
    pool: &PgPool,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE survey.invitations SET status = {SENT}, sent_at = $1, expires_at = $2
         WHERE id IN (
             SELECT id FROM survey.invitations
             WHERE status = {SCHEDULED} AND scheduled_for <= $1
             ORDER BY scheduled_for
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    ))
    .bind(now)
    .bind(expires_at)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn lock_by_token_hash(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<Option<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM survey.invitations WHERE token_hash = $1 FOR UPDATE"
    ))
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

pub async fn record_answers(
    conn: &mut PgConnection,
    id: Uuid,
    answered_at: DateTime<Utc>,
    answers: &serde_json::Value,
    dissatisfied: bool,
) -> Result<InvitationRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE survey.invitations SET status = {ANSWERED}, answered_at = $2, answers = $3, dissatisfied = $4
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(answered_at)
    .bind(answers)
    .bind(dissatisfied)
    .fetch_one(conn)
    .await
}
