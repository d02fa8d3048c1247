//! SQL of the `intake` schema.

use chrono::{DateTime, Utc};
use complaints_kit::db::{HeldConnection, RawTransaction};
use complaints_kit::events::EncodedEvent;
use sqlx::{FromRow as _, PgConnection, PgPool, Row as _};
use uuid::Uuid;

use crate::domain::classify::Classification;
use crate::domain::record::NewComplaint;

const COLUMNS: &str = "id, reference, request_fingerprint, channel, complainant_name, phone, email, customer_id, \
    customer_tier, subject, description, demand, occurred_at, order_ref, product_ref, language, category, \
    matched_terms, severity, priority, complexity, reasons, status, rejection_reason, status_note, recorded_by, \
    received_at, version, linked_to, repeat_contacts, attachments, taxonomy_version, overridden, case_open";

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
    pub linked_to: Option<Uuid>,
    pub repeat_contacts: i32,
    pub attachments: serde_json::Value,
    pub taxonomy_version: i32,
    pub overridden: bool,
    pub case_open: bool,
}

/// A complaint about to be stored, with what intake decided about it.
pub struct NewComplaintRow<'a> {
    pub id: Uuid,
    pub complaint: &'a NewComplaint,
    /// `CMP-YYYYMMDD-NNNNNNN`: the day in the organisation's time zone and a number of the
    /// reference sequence.
    pub reference: &'a str,
    pub fingerprint: &'a str,
    pub classification: &'a Classification,
    pub received_at: DateTime<Utc>,
    pub status: i16,
    /// For a repeat contact: the complaint it is linked to.
    pub linked_to: Option<Uuid>,
}

/// Inserts complaints whose `request_id` is not taken yet, and with them, in the same
/// statement, the events that announce them (an event is written only if its complaint was,
/// in the order given). Returns the rows inserted; a complaint whose request id was taken
/// (a replay, or the same request committed concurrently) is left out.
pub async fn insert_complaints(
    conn: &mut PgConnection,
    rows: &[(NewComplaintRow<'_>, Option<EncodedEvent>)],
) -> Result<Vec<ComplaintRow>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = sqlx::QueryBuilder::new(
        "WITH input (n, id, reference, request_id, request_fingerprint, channel, complainant_name, phone,
             email, customer_id, customer_tier, subject, description, demand, occurred_at, order_ref,
             product_ref, language, category, matched_terms, severity, priority, complexity, reasons,
             status, recorded_by, received_at, linked_to, attachments, taxonomy_version,
             event_id, event_type, event_at, event_payload) AS (",
    );
    query.push_values(rows.iter().enumerate(), |mut b, (n, (row, event))| {
        let NewComplaintRow {
            id,
            reference,
            complaint,
            fingerprint,
            classification,
            received_at,
            status,
            linked_to,
        } = *row;
        b.push_bind(n as i32)
            .push_bind(id)
            .push_bind(reference)
            .push_bind(&complaint.request_id)
            .push_bind(fingerprint)
            .push_bind(complaint.channel as i16)
            .push_bind(&complaint.name)
            .push_bind(&complaint.phone)
            .push_bind(&complaint.email)
            .push_bind(&complaint.customer_id)
            .push_bind(complaint.tier as i16)
            .push_bind(&complaint.subject)
            .push_bind(&complaint.description)
            .push_bind(&complaint.demand)
            .push_bind(complaint.occurred_at)
            .push_bind(&complaint.order_ref)
            .push_bind(&complaint.product_ref)
            .push_bind(&complaint.language)
            .push_bind(&classification.category)
            .push_bind(&classification.matched_terms)
            .push_bind(classification.severity as i16)
            .push_bind(classification.priority as i16)
            .push_bind(classification.complexity as i16)
            .push_bind(&classification.reasons)
            .push_bind(status)
            .push_bind(&complaint.recorded_by)
            .push_bind(received_at)
            .push_bind(linked_to)
            .push_bind(serde_json::to_value(&complaint.attachments).unwrap_or_default())
            .push_bind(classification.taxonomy_version as i32)
            .push_bind(event.as_ref().map(|e| e.event_id))
            .push_bind(event.as_ref().map(|e| e.event_type))
            .push_bind(event.as_ref().map(|e| e.occurred_at))
            .push_bind(event.as_ref().map(|e| e.payload.clone()));
    });
    query.push(format!(
        "),
         complaint AS (
             INSERT INTO intake.complaints (id, reference, request_id, request_fingerprint, channel,
                 complainant_name, phone, email, customer_id, customer_tier, subject, description, demand,
                 occurred_at, order_ref, product_ref, language, category, matched_terms, severity, priority,
                 complexity, reasons, status, recorded_by, received_at, linked_to, attachments,
                 taxonomy_version)
             SELECT id, reference, request_id, request_fingerprint, channel, complainant_name, phone,
                 email, customer_id, customer_tier, subject, description, demand, occurred_at, order_ref,
                 product_ref, language, category, matched_terms, severity, priority, complexity, reasons,
                 status, recorded_by, received_at, linked_to, attachments, taxonomy_version
             -- In request-id order: two batches inserting the same ids never wait on each
             -- other in a cycle (the events keep arrival order below).
             FROM input ORDER BY request_id
             ON CONFLICT (request_id) DO NOTHING
             RETURNING {COLUMNS}),
         announced AS (
             INSERT INTO intake.event_outbox (event_id, aggregate_id, event_type, occurred_at, payload)
             SELECT i.event_id, i.id::text, i.event_type, i.event_at, i.event_payload
             FROM input i JOIN complaint c ON c.id = i.id
             WHERE i.event_id IS NOT NULL
             ORDER BY i.n)
         SELECT {COLUMNS} FROM complaint"
    ));
    // Prepared once per batch size: the plan reads no table, so a kept plan stays right.
    query.build_query_as().fetch_all(conn).await
}

/// The complaints stored under some request ids, with their request ids.
pub async fn find_by_request_ids(
    conn: &mut PgConnection,
    request_ids: &[&str],
) -> Result<Vec<(String, ComplaintRow)>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT request_id, {COLUMNS} FROM intake.complaints WHERE request_id = ANY($1)"
    ))
    // Unprepared (see "Plans" in `complaints_kit::db`); inside the submit transaction its
    // generic plan is built afresh each time.
    .persistent(false)
    .bind(request_ids)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("request_id")?, ComplaintRow::from_row(row)?)))
        .collect()
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
    pub category: Option<String>,
    pub severity: Option<i16>,
    pub received_from: Option<DateTime<Utc>>,
    pub received_to: Option<DateTime<Utc>>,
    /// Words that must all appear in subject, description or demand.
    pub words: Vec<String>,
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
           AND ($7::text IS NULL OR category = $7)
           AND ($8::smallint IS NULL OR severity = $8)
           AND ($9::timestamptz IS NULL OR received_at >= $9)
           AND ($10::timestamptz IS NULL OR received_at < $10)
           AND (cardinality($11::text[]) = 0 OR NOT EXISTS (
                SELECT 1 FROM unnest($11::text[]) AS w(word)
                WHERE strpos(lower(subject || ' ' || description || ' ' || demand), w.word) = 0))
         ORDER BY received_at DESC, id DESC
         LIMIT $6"
    ))
    .bind(filter.channel)
    .bind(filter.status)
    .bind(&filter.customer_id)
    .bind(filter.after.map(|a| a.0))
    .bind(filter.after.map(|a| a.1).unwrap_or_default())
    .bind(filter.limit)
    .bind(&filter.category)
    .bind(filter.severity)
    .bind(filter.received_from)
    .bind(filter.received_to)
    .bind(&filter.words)
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

/// A stored open, unlinked complaint a batch may be a repeat contact of (locked by the batch),
/// with what repeat matching and recording need of it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CandidateRow {
    pub id: Uuid,
    pub reference: String,
    pub customer_id: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub order_ref: Option<String>,
    pub product_ref: Option<String>,
    pub received_at: DateTime<Utc>,
    pub priority: i16,
}

/// What a batch's repeat-contact lookup looks for: open, unlinked complaints received since
/// `since` of any of these customers (by id, phone or email).
pub struct CandidateLookup<'a> {
    pub customer_ids: Vec<&'a str>,
    pub phones: Vec<&'a str>,
    pub emails: Vec<&'a str>,
    pub since: DateTime<Utc>,
}

/// A batch's transaction, just begun, with what its first round trip read.
pub struct Begun<'h> {
    pub transaction: RawTransaction<'h>,
    /// Stored open, unlinked complaints of the batch's customers, each once, locked until
    /// the transaction ends.
    pub candidates: Vec<CandidateRow>,
    /// Numbers taken from the reference sequence, as many as asked for.
    pub reference_numbers: Vec<i64>,
}

/// Begins a batch's transaction: serialises submissions of the customers given, so two first
/// contacts of one customer cannot both open a case, finds the stored complaints the batch may
/// be a repeat contact of, and takes `reserve` numbers from the reference sequence, all in one
/// round trip. A contact is the same customer's when any of its identifiers matches, so every
/// identifier given (`customer:…`, `phone:…`, `email:…`) is locked, in one order for all. No
/// identifiers: no lock, but the same `lock_timeout`. The candidates
/// (`intake.lock_repeat_candidates`: for each identifier its 50 newest) are read after the
/// customers' locks are granted, so a contact committed by the holder of one is seen, and are
/// locked themselves (in id order), so none is closed or linked elsewhere before the batch
/// commits.
pub async fn begin_for_customer<'h>(
    connection: &'h mut HeldConnection,
    identifiers: &[String],
    lookup: Option<&CandidateLookup<'_>>,
    reserve: usize,
    lock_timeout: std::time::Duration,
) -> Result<Begun<'h>, sqlx::Error> {
    let sql = begin_sql(identifiers, lookup, reserve, lock_timeout);
    let (transaction, rows) = RawTransaction::begin(connection, &sql).await?;
    let mut candidates = Vec::new();
    let mut reference_numbers = Vec::with_capacity(reserve);
    // Rows of three statements: the locks' one (`locked`), the numbers, the candidates.
    for row in &rows {
        if row.try_column("reference_number").is_ok() {
            reference_numbers.push(row.try_get("reference_number")?);
        } else if row.try_column("id").is_ok() {
            candidates.push(CandidateRow::from_row(row)?);
        }
    }
    if reference_numbers.len() != reserve {
        return Err(sqlx::Error::Protocol(format!(
            "the reference sequence gave {} numbers, not {reserve}",
            reference_numbers.len()
        )));
    }
    Ok(Begun {
        transaction,
        candidates,
        reference_numbers,
    })
}

/// The one simple query that begins a batch (see [`begin_for_customer`]).
///
/// The `BEGIN` comes first: whatever fails after it (a lock that timed out, SQLSTATE 55P03)
/// leaves a failed transaction block, which `RawTransaction` rolls back, so the connection
/// ends clean either way. The locks are taken in the array's (sorted) order by one statement
/// whatever their count; lock ids are numbers computed here. The transaction keeps generic
/// plans, made without sequential scans: each of its statements reads a few rows by key, so an
/// index scan is right at any table size, and a plan kept from a nearly empty table stays
/// right (one that joined `unnest(…)` to a scan of the whole table made every repeat contact's
/// batch slower as the table grew). The lookup is a nested loop of index scans in every plan,
/// and re-planning it for each batch's identifiers cost more than running it (0.7 ms against
/// 0.1 ms); the function keeps its plan for the session.
///
/// A simple query carries no parameters, so the lookup's values are written into its text,
/// each dollar-quoted with a tag that it does not contain: nothing inside is an escape or a
/// quote to PostgreSQL (whatever `standard_conforming_strings` says), so no text from a
/// request is ever read as SQL. (Written as hexadecimal decoded by `convert_from`, a STABLE
/// function, the values were no constants to the planner, and the inlined lookup became a scan
/// of the whole table.) The kit's pool never logs statement texts; PostgreSQL's own log does
/// when the statement fails (`log_min_error_statement`, default `error`: a lock that timed out
/// writes the identifiers to the server's log), and `pg_stat_activity` shows it while it runs.
pub fn begin_sql(
    identifiers: &[String],
    lookup: Option<&CandidateLookup<'_>>,
    reserve: usize,
    lock_timeout: std::time::Duration,
) -> String {
    use std::fmt::Write as _;
    let mut ids: Vec<i64> = identifiers.iter().map(|k| customer_lock_id(k)).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut sql = format!(
        "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; \
         SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    );
    if !ids.is_empty() {
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let _ = write!(
            sql,
            "; SELECT count(pg_advisory_xact_lock(k)) AS locked FROM unnest('{{{}}}'::bigint[]) AS k",
            list.join(",")
        );
    }
    if reserve > 0 {
        // Sequences ignore transactions: the numbers are taken even if the batch fails.
        let _ = write!(
            sql,
            "; SELECT nextval('intake.reference_seq') AS reference_number \
             FROM generate_series(1, {reserve})"
        );
    }
    if let Some(lookup) = lookup {
        let _ = write!(
            sql,
            "; SELECT * FROM intake.lock_repeat_candidates({}, {}, {}, '{}'::timestamptz)",
            text_array_literal(&lookup.customer_ids),
            text_array_literal(&lookup.phones),
            text_array_literal(&lookup.emails),
            lookup
                .since
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
    }
    sql
}

/// A `text[]` constant holding `values`, each dollar-quoted ([`dollar_quoted`]).
fn text_array_literal(values: &[&str]) -> String {
    if values.is_empty() {
        return "'{}'::text[]".into();
    }
    let quoted: Vec<String> = values.iter().map(|v| dollar_quoted(v)).collect();
    format!("ARRAY[{}]::text[]", quoted.join(", "))
}

/// `value` as a dollar-quoted string constant, `$v$…$v$`, with a tag (`$v$`, `$v0$`, `$v1$`, …)
/// whose first occurrence after the opening one is the closing one. A value holding a NUL (which
/// PostgreSQL's text cannot hold, and which would end the query's text) becomes NULL, which
/// matches nothing.
fn dollar_quoted(value: &str) -> String {
    if value.contains('\0') {
        return "NULL".into();
    }
    let mut tag = String::from("$v$");
    let mut n = 0;
    loop {
        let quoted = format!("{tag}{value}{tag}");
        if quoted[tag.len()..].find(&tag) == Some(value.len()) {
            return quoted;
        }
        tag = format!("$v{n}$");
        n += 1;
    }
}

/// The advisory-lock id of a customer identifier: FNV-1a (64 bit) of a namespaced key, the
/// same in every replica and release.
pub fn customer_lock_id(key: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "intake-customer:".bytes().chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::customer_lock_id;

    #[test]
    fn a_batch_begins_with_its_locks_in_order_then_its_numbers_and_lookup() {
        use super::{CandidateLookup, begin_sql};
        let timeout = std::time::Duration::from_millis(1500);
        let identifiers = ["phone:+86139".to_owned(), "customer:C-1".to_owned()];
        let mut ids = [
            customer_lock_id("phone:+86139"),
            customer_lock_id("customer:C-1"),
        ];
        ids.sort_unstable();
        let since = chrono::DateTime::parse_from_rfc3339("2026-11-06T08:00:00.5Z")
            .unwrap()
            .to_utc();
        let lookup = CandidateLookup {
            customer_ids: vec!["C-1"],
            phones: vec!["+86139", "x'); --"],
            emails: vec![],
            since,
        };
        assert_eq!(
            begin_sql(&identifiers, Some(&lookup), 3, timeout),
            format!(
                "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; \
                 SET LOCAL lock_timeout = '1500ms'; \
                 SELECT count(pg_advisory_xact_lock(k)) AS locked FROM unnest('{{{},{}}}'::bigint[]) AS k; \
                 SELECT nextval('intake.reference_seq') AS reference_number FROM generate_series(1, 3); \
                 SELECT * FROM intake.lock_repeat_candidates(ARRAY[$v$C-1$v$]::text[], \
                 ARRAY[$v$+86139$v$, $v$x'); --$v$]::text[], '{{}}'::text[], \
                 '2026-11-06T08:00:00.500000Z'::timestamptz)",
                ids[0], ids[1]
            )
        );
        // Nothing to lock or look up: the transaction's settings and its BEGIN only.
        assert_eq!(
            begin_sql(&[], None, 0, timeout),
            "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off; \
             SET LOCAL lock_timeout = '1500ms'"
        );
    }

    #[test]
    fn a_value_is_dollar_quoted_with_a_tag_it_cannot_close_early() {
        use super::dollar_quoted;
        assert_eq!(dollar_quoted("O'Brien\\"), "$v$O'Brien\\$v$");
        // The tag itself, or the start of it at the end (which would close early with the
        // closing tag's first characters).
        assert_eq!(dollar_quoted("a$v$b"), "$v0$a$v$b$v0$");
        assert_eq!(dollar_quoted("a$v"), "$v0$a$v$v0$");
        assert_eq!(dollar_quoted("$v$ $v0$"), "$v1$$v$ $v0$$v1$");
        assert_eq!(dollar_quoted("$v0"), "$v$$v0$v$");
        assert_eq!(dollar_quoted(""), "$v$$v$");
        assert_eq!(dollar_quoted("a\0b"), "NULL");
    }

    #[test]
    fn customer_lock_ids_are_stable_and_tell_customers_apart() {
        // FNV-1a of the namespace alone, computed independently: replicas of different builds
        // must agree on every id.
        assert_eq!(customer_lock_id(""), 0x52df_8a33_7576_01ae_u64 as i64);
        assert_eq!(customer_lock_id("CUST-1"), customer_lock_id("CUST-1"));
        assert_ne!(customer_lock_id("CUST-1"), customer_lock_id("CUST-2"));
    }
}

/// Counts a repeat contact on the earlier complaint and sets its (possibly raised) priority.
pub async fn record_repeat(
    conn: &mut PgConnection,
    id: Uuid,
    priority: i16,
) -> Result<ComplaintRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE intake.complaints SET repeat_contacts = repeat_contacts + 1, priority = $2, version = version + 1
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(priority)
    .fetch_one(conn)
    .await
}

/// The statement of [`record_repeats`].
pub const RECORD_REPEATS: &str = "WITH counted AS (
         UPDATE intake.complaints c
         SET repeat_contacts = c.repeat_contacts + r.n, priority = r.priority,
             version = c.version + r.n
         FROM unnest($1::uuid[], $2::integer[], $3::smallint[]) AS r(id, n, priority)
         WHERE c.id = r.id
         RETURNING c.id),
     announced AS (
         -- Sequence numbers follow the order given. Written once every complaint is counted
         -- (`done`): an event's position is taken when it is written, and must come after
         -- the events of a batch this one waited for on a complaint's lock.
         INSERT INTO intake.event_outbox (event_id, aggregate_id, event_type, occurred_at, payload)
         SELECT e.id, e.aggregate, e.kind, e.at, e.payload
         FROM unnest($4::uuid[], $5::text[], $6::text[], $7::timestamptz[], $8::bytea[])
              WITH ORDINALITY AS e(id, aggregate, kind, at, payload, n)
              CROSS JOIN (SELECT count(*) FROM counted) done
         ORDER BY e.n)
     SELECT count(*) FROM counted";

/// Counts repeat contacts on the complaints they are linked to and sets their (possibly
/// raised) priorities, and writes the events that announce them, in one statement: `roots`
/// holds (complaint, repeat contacts to add, priority now), `events` the announcements in
/// their order.
pub async fn record_repeats(
    conn: &mut PgConnection,
    roots: &[(Uuid, i32, i16)],
    events: &[EncodedEvent],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = roots.iter().map(|r| r.0).collect();
    let counts: Vec<i32> = roots.iter().map(|r| r.1).collect();
    let priorities: Vec<i16> = roots.iter().map(|r| r.2).collect();
    let event_ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let aggregates: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.occurred_at).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    // Prepared and kept: made in the submit transaction, which plans without sequential
    // scans (see `begin_sql`), the kept plan reads each complaint by its key at any table size.
    let updated = sqlx::query_scalar::<_, i64>(RECORD_REPEATS)
        .bind(&ids)
        .bind(&counts)
        .bind(&priorities)
        .bind(&event_ids)
        .bind(&aggregates)
        .bind(&types)
        .bind(&times)
        .bind(&payloads)
        .fetch_one(conn)
        .await?;
    if updated != roots.len() as i64 {
        return Err(sqlx::Error::Protocol(format!(
            "{updated} of {} complaints counted a repeat contact",
            roots.len()
        )));
    }
    Ok(())
}

/// Links a complaint to an earlier one (or unlinks it with `None`), setting its status.
pub async fn set_link(
    conn: &mut PgConnection,
    id: Uuid,
    linked_to: Option<Uuid>,
    status: i16,
    note: &str,
) -> Result<ComplaintRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE intake.complaints SET linked_to = $2, status = $3, status_note = $4, version = version + 1
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(linked_to)
    .bind(status)
    .bind(note)
    .fetch_one(conn)
    .await
}

pub async fn set_classification(
    conn: &mut PgConnection,
    id: Uuid,
    category: &str,
    severity: i16,
    priority: i16,
    complexity: i16,
    reasons: &[String],
) -> Result<ComplaintRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE intake.complaints SET category = $2, severity = $3, priority = $4, complexity = $5, reasons = $6,
             overridden = true, version = version + 1
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(category)
    .bind(severity)
    .bind(priority)
    .bind(complexity)
    .bind(reasons)
    .fetch_one(conn)
    .await
}

pub async fn record_override(
    conn: &mut PgConnection,
    complaint_id: Uuid,
    actor: &str,
    reason: &str,
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO intake.classification_overrides (id, complaint_id, actor, reason, before, after)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7())
    .bind(complaint_id)
    .bind(actor)
    .bind(reason)
    .bind(before)
    .bind(after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Complaints of one customer across channels, newest first.
pub async fn customer_history(
    pool: &PgPool,
    customer_id: Option<&str>,
    phone: Option<&str>,
    email: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ComplaintRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM intake.complaints
         WHERE (customer_id = $1 OR phone = $2 OR email = $3)
           AND ($4::timestamptz IS NULL OR (received_at, id) < ($4, $5))
         ORDER BY received_at DESC, id DESC
         LIMIT $6"
    ))
    .bind(customer_id)
    .bind(phone)
    .bind(email)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1).unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn customer_channels(
    pool: &PgPool,
    customer_id: Option<&str>,
    phone: Option<&str>,
    email: Option<&str>,
) -> Result<Vec<(i16, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT channel, count(*) FROM intake.complaints
         WHERE customer_id = $1 OR phone = $2 OR email = $3 GROUP BY channel",
    )
    .bind(customer_id)
    .bind(phone)
    .bind(email)
    .fetch_all(pool)
    .await
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TaxonomyRow {
    pub version: i32,
    pub rules: serde_json::Value,
    pub request_id: Option<String>,
    pub published_by: String,
    pub published_at: DateTime<Utc>,
}

/// The given taxonomy version, or the newest with `None`.
pub async fn taxonomy(
    pool: &PgPool,
    version: Option<i32>,
) -> Result<Option<TaxonomyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, rules, request_id, published_by, published_at FROM intake.taxonomy_versions
         WHERE $1::integer IS NULL OR version = $1
         ORDER BY version DESC LIMIT 1",
    )
    .bind(version)
    .fetch_optional(pool)
    .await
}

pub async fn taxonomy_by_request(
    pool: &PgPool,
    request_id: &str,
) -> Result<Option<TaxonomyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, rules, request_id, published_by, published_at FROM intake.taxonomy_versions
         WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(pool)
    .await
}

/// Publishes rules as the next version; `None` when the request id was already used.
pub async fn publish_taxonomy(
    pool: &PgPool,
    rules: &serde_json::Value,
    request_id: Option<&str>,
    by: &str,
) -> Result<Option<TaxonomyRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One publisher at a time, so versions are dense and never collide.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('intake-taxonomy'))")
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query_as(
        "INSERT INTO intake.taxonomy_versions (version, rules, request_id, published_by)
         SELECT coalesce(max(version), 0) + 1, $1, $2, $3 FROM intake.taxonomy_versions
         ON CONFLICT (request_id) DO NOTHING
         RETURNING version, rules, request_id, published_by, published_at",
    )
    .bind(rules)
    .bind(request_id)
    .bind(by)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Remembers which case each complaint got: (complaint, case) pairs, one statement.
pub async fn set_cases(conn: &mut PgConnection, pairs: &[(Uuid, Uuid)]) -> Result<(), sqlx::Error> {
    // A complaint given a second case (a review) in the same run keeps the later one; one
    // statement may not update a row twice.
    // In complaint order, so concurrent writers lock rows in one order.
    let latest: std::collections::BTreeMap<Uuid, Uuid> = pairs.iter().copied().collect();
    let (complaints, cases): (Vec<Uuid>, Vec<Uuid>) = latest.into_iter().unzip();
    sqlx::query(
        "INSERT INTO intake.complaint_cases (complaint_id, case_id)
         SELECT * FROM unnest($1::uuid[], $2::uuid[])
         ON CONFLICT (complaint_id) DO UPDATE SET case_id = excluded.case_id",
    )
    .bind(&complaints)
    .bind(&cases)
    .execute(conn)
    .await?;
    Ok(())
}

/// The case a complaint got, if it got one yet.
pub async fn case_of(
    conn: &mut PgConnection,
    complaint_id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    // `complaints.case_id`: recorded there by replicas of earlier releases.
    sqlx::query_scalar(
        "SELECT coalesce(
             (SELECT case_id FROM intake.complaint_cases WHERE complaint_id = $1),
             (SELECT case_id FROM intake.complaints WHERE id = $1))",
    )
    .bind(complaint_id)
    .fetch_one(conn)
    .await
}

/// Locks, in id order, the complaints of `cases` (as [`set_case_open`] finds them) and the
/// complaints `joining` them, so that the updates that follow wait for no other row.
pub async fn lock_complaints_of_cases(
    conn: &mut PgConnection,
    cases: &[Uuid],
    joining: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT c.id FROM intake.complaints c
         WHERE c.id = ANY (ARRAY(
                   SELECT complaint_id FROM intake.complaint_cases WHERE case_id = ANY ($1)
                   UNION SELECT id FROM intake.complaints WHERE case_id = ANY ($1)
                   UNION SELECT unnest($2::uuid[])))
         ORDER BY c.id
         FOR NO KEY UPDATE OF c",
    )
    .bind(cases)
    .bind(joining)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks whether a case (and so its complaint) is still open.
pub async fn set_case_open(
    conn: &mut PgConnection,
    case_id: Uuid,
    open: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE intake.complaints SET case_open = $2
         WHERE id = ANY (ARRAY(SELECT complaint_id FROM intake.complaint_cases WHERE case_id = $1))",
    )
    .bind(case_id)
    .bind(open)
    .execute(&mut *conn)
    .await?;
    // `complaints.case_id`: recorded there by replicas of earlier releases, and only where no
    // later case was recorded in `complaint_cases`.
    sqlx::query(
        "UPDATE intake.complaints c SET case_open = $2
         WHERE c.case_id = $1
           AND NOT EXISTS (SELECT 1 FROM intake.complaint_cases cc WHERE cc.complaint_id = c.id)",
    )
    .bind(case_id)
    .bind(open)
    .execute(conn)
    .await?;
    Ok(())
}
