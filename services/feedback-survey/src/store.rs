//! SQL of the `survey` schema.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::figures::Counts;
use crate::domain::questionnaire::{Question, Template};

pub use crate::domain::invitation::{ANSWERED, DECLINED, OPTED_OUT, SCHEDULED, SENT};

const COLUMNS: &str = "id, case_id, cycle, status, delivery, template_id, template_version, scheduled_for, \
    sent_at, expires_at, answered_at, answers, dissatisfied, department_id, owner_id, category, \
    version, customer_id, reminder_sent_at, opted_out_at, answered_via, answered_by, traceparent";

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
    pub version: i64,
    pub customer_id: String,
    pub reminder_sent_at: Option<DateTime<Utc>>,
    pub opted_out_at: Option<DateTime<Utc>>,
    pub answered_via: Option<String>,
    pub answered_by: Option<String>,
    /// W3C trace context of the complaint, from the resolution event.
    pub traceparent: String,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CaseRow {
    pub case_id: Uuid,
    pub department_id: String,
    pub owner_id: String,
    pub category: String,
    pub channel: i16,
    pub customer_id: String,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttemptRow {
    pub invitation_id: Uuid,
    pub outcome: String,
    pub agent_id: String,
    pub note: String,
    pub attempted_at: DateTime<Utc>,
}

pub async fn upsert_case(conn: &mut PgConnection, case: &CaseRow) -> Result<(), sqlx::Error> {
    upsert_cases(conn, std::slice::from_ref(case)).await
}

/// Records several cases with one statement (a case given twice keeps its last facts).
pub async fn upsert_cases(conn: &mut PgConnection, cases: &[CaseRow]) -> Result<(), sqlx::Error> {
    let mut last = std::collections::HashMap::new();
    for (i, case) in cases.iter().enumerate() {
        last.insert(case.case_id, i);
    }
    let rows: Vec<&CaseRow> = cases
        .iter()
        .enumerate()
        .filter(|(i, case)| last[&case.case_id] == *i)
        .map(|(_, case)| case)
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let arguments = complaints_kit::db::ColumnArrays::new()
        .column(&rows, |c| c.case_id)
        .column(&rows, |c| c.department_id.clone())
        .column(&rows, |c| c.owner_id.clone())
        .column(&rows, |c| c.category.clone())
        .column(&rows, |c| c.channel)
        .column(&rows, |c| c.customer_id.clone())
        .finish()?;
    // Prepared and kept: the plan reads no table (the conflicts are found in the primary key).
    sqlx::query_with(
        "INSERT INTO survey.cases (case_id, department_id, owner_id, category, channel, customer_id)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::text[])
         ON CONFLICT (case_id) DO UPDATE SET department_id = EXCLUDED.department_id,
             owner_id = EXCLUDED.owner_id, updated_at = now()",
        arguments,
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn case(conn: &mut PgConnection, case_id: Uuid) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT case_id, department_id, owner_id, category, channel, customer_id
         FROM survey.cases WHERE case_id = $1",
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
             template_version, scheduled_for, department_id, owner_id, category, customer_id,
             opted_out_at, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
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
    .bind(&invitation.customer_id)
    .bind(invitation.opted_out_at)
    .bind(&invitation.traceparent)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Filters of `ListInvitations`. `visible_to` holds an agent's (department, subject).
#[derive(Debug, Default)]
pub struct InvitationFilter {
    pub case_id: Option<Uuid>,
    pub delivery: Option<&'static str>,
    pub status: Option<i16>,
    pub department_id: Option<String>,
    /// Only those waiting whose time has come, at this instant.
    pub due_at: Option<DateTime<Utc>>,
    pub visible_to: Option<(Option<String>, String)>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

pub async fn list_invitations(
    pool: &PgPool,
    filter: &InvitationFilter,
) -> Result<Vec<InvitationRow>, sqlx::Error> {
    let (visible_department, visible_owner) = match &filter.visible_to {
        Some((department, owner)) => (Some(department.clone().unwrap_or_default()), Some(owner)),
        None => (None, None),
    };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM survey.invitations
         WHERE ($1::uuid IS NULL OR case_id = $1)
           AND ($2::text IS NULL OR delivery = $2)
           AND ($3::smallint IS NULL OR status = $3)
           AND ($4::text IS NULL OR department_id = $4)
           AND ($5::timestamptz IS NULL OR (status IN ({SCHEDULED}, {SENT}) AND scheduled_for <= $5
                AND (expires_at IS NULL OR expires_at > $5)))
           AND ($6::text IS NULL OR department_id = $6 OR owner_id = $7)
           AND ($8::timestamptz IS NULL OR (scheduled_for, id) > ($8, $9))
         ORDER BY scheduled_for, id
         LIMIT $10"
    ))
    .bind(filter.case_id)
    .bind(filter.delivery)
    .bind(filter.status)
    .bind(&filter.department_id)
    .bind(filter.due_at)
    .bind(visible_department)
    .bind(visible_owner)
    .bind(filter.after.map(|a| a.0))
    .bind(filter.after.map(|a| a.1))
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

pub async fn invitation(pool: &PgPool, id: Uuid) -> Result<Option<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM survey.invitations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn lock_invitation(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM survey.invitations WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Return-visit calls of the given invitations, oldest first.
pub async fn attempts_of(
    pool: &PgPool,
    invitation_ids: &[Uuid],
) -> Result<Vec<AttemptRow>, sqlx::Error> {
    if invitation_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT invitation_id, outcome, agent_id, note, attempted_at
         FROM survey.return_visit_attempts WHERE invitation_id = ANY($1)
         ORDER BY attempted_at, id",
    )
    .bind(invitation_ids)
    .fetch_all(pool)
    .await
}

/// Takes due link invitations and marks them sent, in one statement; concurrent claimers
/// never get the same invitation.
pub async fn claim_first_sends(
    pool: &PgPool,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE survey.invitations SET status = {SENT}, sent_at = $1, expires_at = $2,
             version = version + 1
         WHERE id IN (
             SELECT id FROM survey.invitations
             WHERE status = {SCHEDULED} AND delivery = 'link' AND scheduled_for <= $1
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

/// Takes the one reminder owed to each link invitation sent at or before `sent_before` and
/// still unanswered and unexpired at `now`.
pub async fn claim_reminders(
    pool: &PgPool,
    now: DateTime<Utc>,
    sent_before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE survey.invitations SET reminder_sent_at = $1, version = version + 1
         WHERE id IN (
             SELECT id FROM survey.invitations
             WHERE status = {SENT} AND delivery = 'link' AND reminder_sent_at IS NULL
               AND sent_at <= $2 AND (expires_at IS NULL OR expires_at > $1)
             ORDER BY sent_at
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    ))
    .bind(now)
    .bind(sent_before)
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

pub async fn by_token_hash(
    pool: &PgPool,
    token_hash: &[u8],
) -> Result<Option<InvitationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM survey.invitations WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(pool)
    .await
}

/// How answers arrived.
pub struct AnswerSource<'a> {
    /// `link` or `return_visit`.
    pub via: &'static str,
    /// The agent of a return visit.
    pub by: Option<&'a str>,
}

pub async fn record_answers(
    conn: &mut PgConnection,
    id: Uuid,
    answered_at: DateTime<Utc>,
    answers: &serde_json::Value,
    dissatisfied: bool,
    source: AnswerSource<'_>,
) -> Result<InvitationRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE survey.invitations SET status = {ANSWERED}, answered_at = $2, answers = $3,
             dissatisfied = $4, answered_via = $5, answered_by = $6,
             sent_at = coalesce(sent_at, $2), version = version + 1
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(answered_at)
    .bind(answers)
    .bind(dissatisfied)
    .bind(source.via)
    .bind(source.by)
    .fetch_one(conn)
    .await
}

pub struct NewAttempt<'a> {
    pub invitation_id: Uuid,
    pub request_id: &'a str,
    pub outcome: &'static str,
    pub agent_id: &'a str,
    pub note: &'a str,
    pub attempted_at: DateTime<Utc>,
}

/// Records a call; false when this request id was already recorded for the invitation.
pub async fn insert_attempt(
    conn: &mut PgConnection,
    attempt: &NewAttempt<'_>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO survey.return_visit_attempts
             (id, invitation_id, request_id, outcome, agent_id, note, attempted_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (invitation_id, request_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(attempt.invitation_id)
    .bind(attempt.request_id)
    .bind(attempt.outcome)
    .bind(attempt.agent_id)
    .bind(attempt.note)
    .bind(attempt.attempted_at)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn attempt_exists(
    conn: &mut PgConnection,
    invitation_id: Uuid,
    request_id: &str,
) -> Result<bool, sqlx::Error> {
    let (found,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM survey.return_visit_attempts
                        WHERE invitation_id = $1 AND request_id = $2)",
    )
    .bind(invitation_id)
    .bind(request_id)
    .fetch_one(conn)
    .await?;
    Ok(found)
}

pub async fn count_attempts(
    conn: &mut PgConnection,
    invitation_id: Uuid,
) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM survey.return_visit_attempts WHERE invitation_id = $1",
    )
    .bind(invitation_id)
    .fetch_one(conn)
    .await?;
    Ok(n)
}

/// A call without answers: the invitation counts as sent from the first call; a refusal
/// closes it.
pub async fn record_unanswered_call(
    conn: &mut PgConnection,
    id: Uuid,
    status: i16,
    at: DateTime<Utc>,
) -> Result<InvitationRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE survey.invitations SET status = $2, sent_at = coalesce(sent_at, $3),
             version = version + 1
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .bind(at)
    .fetch_one(conn)
    .await
}

pub async fn switch_to_return_visit(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<InvitationRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE survey.invitations SET delivery = 'return_visit', status = {SCHEDULED},
             version = version + 1
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
}

pub async fn is_opted_out(conn: &mut PgConnection, customer_id: &str) -> Result<bool, sqlx::Error> {
    if customer_id.is_empty() {
        return Ok(false);
    }
    let (found,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM survey.opt_outs WHERE customer_id = $1)")
            .bind(customer_id)
            .fetch_one(conn)
            .await?;
    Ok(found)
}

pub async fn record_opt_out(
    conn: &mut PgConnection,
    customer_id: &str,
    at: DateTime<Utc>,
    source: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO survey.opt_outs (customer_id, opted_out_at, source, reason)
         VALUES ($1, $2, $3, $4) ON CONFLICT (customer_id) DO NOTHING",
    )
    .bind(customer_id)
    .bind(at)
    .bind(source)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Withdraws the pending invitations of a customer (or only `invitation_id` when the customer
/// is unknown); returns how many.
pub async fn withdraw_pending(
    conn: &mut PgConnection,
    customer_id: Option<&str>,
    invitation_id: Option<Uuid>,
    at: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(&format!(
        "UPDATE survey.invitations SET status = {OPTED_OUT}, opted_out_at = $3,
             version = version + 1
         WHERE status IN ({SCHEDULED}, {SENT})
           AND (($1::text IS NOT NULL AND customer_id = $1) OR id = $2)"
    ))
    .bind(customer_id)
    .bind(invitation_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TemplateRow {
    pub template_id: String,
    pub version: i32,
    pub questions: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

impl TemplateRow {
    pub fn to_domain(&self) -> Result<Template, serde_json::Error> {
        Ok(Template {
            id: self.template_id.clone(),
            version: self.version.max(0) as u32,
            questions: serde_json::from_value::<Vec<Question>>(self.questions.clone())?,
        })
    }
}

const TEMPLATE_COLUMNS: &str = "template_id, version, questions, created_at, created_by";

/// Writes a template version unless it exists (the built-in `standard` v1 at start-up).
pub async fn ensure_template(pool: &PgPool, template: &Template) -> Result<(), sqlx::Error> {
    let questions =
        serde_json::to_value(&template.questions).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO survey.templates (template_id, version, questions, created_by)
         VALUES ($1, $2, $3, 'built-in') ON CONFLICT (template_id, version) DO NOTHING",
    )
    .bind(&template.id)
    .bind(template.version as i32)
    .bind(questions)
    .execute(pool)
    .await?;
    Ok(())
}

/// The latest version of a template, locked when `for_update` (new versions serialise on it).
pub async fn latest_template(
    conn: &mut PgConnection,
    template_id: &str,
) -> Result<Option<TemplateRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TEMPLATE_COLUMNS} FROM survey.templates WHERE template_id = $1
         ORDER BY version DESC LIMIT 1"
    ))
    .bind(template_id)
    .fetch_optional(conn)
    .await
}

pub async fn template(
    conn: &mut PgConnection,
    template_id: &str,
    version: u32,
) -> Result<Option<TemplateRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TEMPLATE_COLUMNS} FROM survey.templates WHERE template_id = $1 AND version = $2"
    ))
    .bind(template_id)
    .bind(version as i32)
    .fetch_optional(conn)
    .await
}

pub async fn template_by_request_id(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<TemplateRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TEMPLATE_COLUMNS} FROM survey.templates WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

/// Serialises the creation of versions of one template id (also a new one).
pub async fn lock_template_id(
    conn: &mut PgConnection,
    template_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('survey-template:' || $1))")
        .bind(template_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert_template(
    conn: &mut PgConnection,
    template: &Template,
    created_by: &str,
    request_id: &str,
) -> Result<TemplateRow, sqlx::Error> {
    let questions =
        serde_json::to_value(&template.questions).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query_as(&format!(
        "INSERT INTO survey.templates (template_id, version, questions, created_by, request_id)
         VALUES ($1, $2, $3, $4, $5) RETURNING {TEMPLATE_COLUMNS}"
    ))
    .bind(&template.id)
    .bind(template.version as i32)
    .bind(questions)
    .bind(created_by)
    .bind(request_id)
    .fetch_one(conn)
    .await
}

pub async fn list_templates(
    pool: &PgPool,
    template_id: Option<&str>,
    after: Option<(String, i32)>,
    limit: i64,
) -> Result<Vec<TemplateRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TEMPLATE_COLUMNS} FROM survey.templates
         WHERE ($1::text IS NULL OR template_id = $1)
           AND ($2::text IS NULL OR (template_id, version) > ($2, $3))
         ORDER BY template_id, version LIMIT $4"
    ))
    .bind(template_id)
    .bind(after.as_ref().map(|a| a.0.clone()))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Which invitation column figures are grouped by.
#[derive(Clone, Copy, Debug)]
pub enum FiguresGroup {
    Total,
    Department,
    Agent,
    Category,
}

/// Counts behind the figures of invitations issued in [start, end), per group.
pub async fn figure_counts(
    pool: &PgPool,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    group: FiguresGroup,
    department_id: Option<&str>,
) -> Result<Vec<(String, Counts)>, sqlx::Error> {
    let key = match group {
        FiguresGroup::Total => "''",
        FiguresGroup::Department => "department_id",
        FiguresGroup::Agent => "owner_id",
        FiguresGroup::Category => "category",
    };
    let rows: Vec<FigureRow> = sqlx::query_as(&format!(
        "SELECT {key} AS grp,
             count(*) AS issued,
             count(*) FILTER (WHERE sent_at IS NOT NULL) AS sent,
             count(*) FILTER (WHERE status = {OPTED_OUT}) AS opted_out,
             count(*) FILTER (WHERE status = {ANSWERED}) AS responses,
             count(*) FILTER (WHERE status = {ANSWERED} AND answered_via = 'return_visit') AS return_visit_responses,
             count(answers->>'csat') FILTER (WHERE status = {ANSWERED}) AS csat_responses,
             coalesce(sum((answers->>'csat')::int) FILTER (WHERE status = {ANSWERED}), 0)::bigint AS csat_sum,
             count(*) FILTER (WHERE status = {ANSWERED} AND (answers->>'csat')::int >= 4) AS csat_satisfied,
             count(answers->>'nps') FILTER (WHERE status = {ANSWERED}) AS nps_responses,
             count(*) FILTER (WHERE status = {ANSWERED} AND (answers->>'nps')::int >= 9) AS promoters,
             count(*) FILTER (WHERE status = {ANSWERED} AND (answers->>'nps')::int BETWEEN 7 AND 8) AS passives,
             count(*) FILTER (WHERE status = {ANSWERED} AND (answers->>'nps')::int <= 6) AS detractors,
             count(answers->>'solved') FILTER (WHERE status = {ANSWERED}) AS solved_answers,
             count(*) FILTER (WHERE status = {ANSWERED} AND (answers->>'solved')::boolean) AS solved_yes,
             count(*) FILTER (WHERE status = {ANSWERED} AND dissatisfied) AS dissatisfied
         FROM survey.invitations
         WHERE scheduled_for >= $1 AND scheduled_for < $2
           AND ($3::text IS NULL OR department_id = $3)
         GROUP BY 1 ORDER BY 1"
    ))
    .bind(start)
    .bind(end)
    .bind(department_id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(FigureRow::into_counts).collect())
}

#[derive(sqlx::FromRow)]
struct FigureRow {
    grp: String,
    issued: i64,
    sent: i64,
    opted_out: i64,
    responses: i64,
    return_visit_responses: i64,
    csat_responses: i64,
    csat_sum: i64,
    csat_satisfied: i64,
    nps_responses: i64,
    promoters: i64,
    passives: i64,
    detractors: i64,
    solved_answers: i64,
    solved_yes: i64,
    dissatisfied: i64,
}

impl FigureRow {
    fn into_counts(self) -> (String, Counts) {
        let n = |v: i64| v.max(0) as u64;
        (
            self.grp,
            Counts {
                issued: n(self.issued),
                sent: n(self.sent),
                opted_out: n(self.opted_out),
                responses: n(self.responses),
                return_visit_responses: n(self.return_visit_responses),
                csat_responses: n(self.csat_responses),
                csat_sum: n(self.csat_sum),
                csat_satisfied: n(self.csat_satisfied),
                nps_responses: n(self.nps_responses),
                promoters: n(self.promoters),
                passives: n(self.passives),
                detractors: n(self.detractors),
                solved_answers: n(self.solved_answers),
                solved_yes: n(self.solved_yes),
                dissatisfied: n(self.dissatisfied),
            },
        )
    }
}
