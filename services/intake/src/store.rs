//! SQL of the `intake` schema.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::classify::Classification;
use crate::domain::record::NewComplaint;

const COLUMNS: &str = "id, reference, request_fingerprint, channel, complainant_name, phone, email, customer_id, \
    customer_tier, subject, description, demand, occurred_at, order_ref, product_ref, language, category, \
    matched_terms, severity, priority, complexity, reasons, status, rejection_reason, status_note, recorded_by, \
    received_at, version";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ComplaintRow {
    pub id: Uuid,
    pub reference: String,
    pub request_fingerprint: String,
    pub channel: i16,
    pub complainant_name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub customer_id: Option<String>,
    pub customer_tier: i16,
    pub subject: String,
    pub description: String,
    pub demand: String,
    pub occurred_at: Option<DateTime<Utc>>,
    pub order_ref: Option<String>,
    pub product_ref: Option<String>,
    pub language: String,
    pub category: String,
    pub matched_terms: Vec<String>,
    pub severity: i16,
    pub priority: i16,
    pub complexity: i16,
    pub reasons: Vec<String>,
    pub status: i16,
    pub rejection_reason: i16,
    pub status_note: String,
    pub recorded_by: Option<String>,
    pub received_at: DateTime<Utc>,
    pub version: i64,
}

/// A complaint about to be stored, with what intake decided about it.
pub struct NewComplaintRow<'a> {
    pub id: Uuid,
    pub complaint: &'a NewComplaint,
    pub fingerprint: &'a str,
    pub classification: &'a Classification,
    /// `YYYYMMDD` in the organisation's time zone, for the reference number.
    pub reference_day: &'a str,
    pub received_at: DateTime<Utc>,
    pub status: i16,
}

/// Inserts the complaint unless its `request_id` exists; `None` when it did.
pub async fn insert_complaint(
    conn: &mut PgConnection,
    row: &NewComplaintRow<'_>,
) -> Result<Option<ComplaintRow>, sqlx::Error> {
    let NewComplaintRow {
        id,
        complaint,
        fingerprint,
        classification,
        reference_day,
        received_at,
        status,
    } = *row;
    sqlx::query_as(&format!(
        "INSERT INTO intake.complaints (id, reference, request_id, request_fingerprint, channel, complainant_name,
             phone, email, customer_id, customer_tier, subject, description, demand, occurred_at, order_ref,
             product_ref, language, category, matched_terms, severity, priority, complexity, reasons, status,
             recorded_by, received_at)
         VALUES ($1, 'CMP-' || $2 || '-' || lpad(nextval('intake.reference_seq')::text, 7, '0'), $3, $4, $5, $6,
             $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)
         ON CONFLICT (request_id) DO NOTHING
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(reference_day)
    .bind(&complaint.request_id)
    .bind(fingerprint)
    .bind(complaint.channel as i16)
    .bind(&complaint.name)
    .bind(&complaint.phone)
    .bind(&complaint.email)
    .bind(&complaint.customer_id)
    .bind(complaint.tier as i16)
    .bind(&complaint.subject)
    .bind(&complaint.description)
    .bind(&complaint.demand)
    .bind(complaint.occurred_at)
    .bind(&complaint.order_ref)
    .bind(&complaint.product_ref)
    .bind(&complaint.language)
    .bind(&classification.category)
    .bind(&classification.matched_terms)
    .bind(classification.severity as i16)
    .bind(classification.priority as i16)
    .bind(classification.complexity as i16)
    .bind(&classification.reasons)
    .bind(status)
    .bind(&complaint.recorded_by)
    .bind(received_at)
    .fetch_optional(conn)
    .await
}

pub async fn find_by_request_id(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<ComplaintRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM intake.complaints WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_optional(conn)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<ComplaintRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM intake.complaints WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<ComplaintRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM intake.complaints WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub struct ListFilter {
    pub channel: Option<i16>,
    pub status: Option<i16>,
    pub customer_id: Option<String>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Newest first, keyset-paginated on (received_at, id).
pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<Vec<ComplaintRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM intake.complaints
         WHERE ($1::smallint IS NULL OR channel = $1)
           AND ($2::smallint IS NULL OR status = $2)
           AND ($3::text IS NULL OR customer_id = $3)
           AND ($4::timestamptz IS NULL OR (received_at, id) < ($4, $5))
         ORDER BY received_at DESC, id DESC
         LIMIT $6"
    ))
    .bind(filter.channel)
    .bind(filter.status)
    .bind(&filter.customer_id)
    .bind(filter.after.map(|a| a.0))
    .bind(filter.after.map(|a| a.1).unwrap_or_default())
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: i16,
    rejection_reason: i16,
    note: &str,
) -> Result<ComplaintRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE intake.complaints
         SET status = $2, rejection_reason = $3, status_note = $4, version = version + 1
         WHERE id = $1
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .bind(rejection_reason)
    .bind(note)
    .fetch_one(conn)
    .await
}
