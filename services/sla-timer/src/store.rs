//! SQL of the `sla` schema.

use chrono::{DateTime, Duration, Utc};
use complaints_kit::db::{ColumnArrays, array_literal};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::clock::{ClockTiming, Pause};

pub const RUNNING: i16 = 1;
pub const PAUSED: i16 = 2;
pub const MET: i16 = 3;
pub const BREACHED: i16 = 4;
pub const CANCELLED: i16 = 5;

const CLOCK_COLUMNS: &str = "id, case_id, kind, cycle, state, policy_id, policy_reason, calendar_id, business, \
    target_ms, consumed_ms, running_since, started_at, due_at, warned_percent, breached_at, met_at, met_on_time, \
    escalation_level, next_fire_at, department_id, severity, origin_at, policy_version, thresholds_ms, ladder_ms, \
    warned_ms, plan_note";

/// Every column of clocks as arrays, in [`CLOCK_COLUMNS`] order, for [`CLOCK_ARRAYS`].
fn clock_arrays(clocks: &[ClockRow]) -> Result<sqlx::postgres::PgArguments, sqlx::Error> {
    ColumnArrays::new()
        .column(clocks, |c| c.id)
        .column(clocks, |c| c.case_id)
        .column(clocks, |c| c.kind)
        .column(clocks, |c| c.cycle)
        .column(clocks, |c| c.state)
        .column(clocks, |c| c.policy_id.clone())
        .column(clocks, |c| c.policy_reason.clone())
        .column(clocks, |c| c.calendar_id.clone())
        .column(clocks, |c| c.business)
        .column(clocks, |c| c.target_ms)
        .column(clocks, |c| c.consumed_ms)
        .column(clocks, |c| c.running_since)
        .column(clocks, |c| c.started_at)
        .column(clocks, |c| c.due_at)
        .column(clocks, |c| c.warned_percent)
        .column(clocks, |c| c.breached_at)
        .column(clocks, |c| c.met_at)
        .column(clocks, |c| c.met_on_time)
        .column(clocks, |c| c.escalation_level)
        .column(clocks, |c| c.next_fire_at)
        .column(clocks, |c| c.department_id.clone())
        .column(clocks, |c| c.severity)
        .column(clocks, |c| c.origin_at)
        .column(clocks, |c| c.policy_version)
        .column(clocks, |c| array_literal(&c.thresholds_ms))
        .column(clocks, |c| array_literal(&c.ladder_ms))
        .column(clocks, |c| c.warned_ms)
        .column(clocks, |c| c.plan_note.clone())
        .finish()
}

/// The rows [`clock_arrays`] binds, as `m` with every column of [`CLOCK_COLUMNS`] (the two
/// columns of arrays come as text, cast back in [`CLOCK_VALUES`]).
const CLOCK_ARRAYS: &str = "unnest($1::uuid[], $2::uuid[], $3::int2[], $4::int4[], $5::int2[], \
    $6::text[], $7::text[], $8::text[], $9::bool[], $10::int8[], $11::int8[], $12::timestamptz[], \
    $13::timestamptz[], $14::timestamptz[], $15::int4[], $16::timestamptz[], $17::timestamptz[], \
    $18::bool[], $19::int4[], $20::timestamptz[], $21::text[], $22::int2[], $23::timestamptz[], \
    $24::int8[], $25::text[], $26::text[], $27::int8[], $28::text[]) AS m(id, case_id, kind, cycle, \
    state, policy_id, policy_reason, calendar_id, business, target_ms, consumed_ms, running_since, \
    started_at, due_at, warned_percent, breached_at, met_at, met_on_time, escalation_level, \
    next_fire_at, department_id, severity, origin_at, policy_version, thresholds_ms, ladder_ms, \
    warned_ms, plan_note)";

/// The values of [`CLOCK_ARRAYS`]' rows, in [`CLOCK_COLUMNS`] order.
const CLOCK_VALUES: &str = "m.id, m.case_id, m.kind, m.cycle, m.state, m.policy_id, m.policy_reason, \
    m.calendar_id, m.business, m.target_ms, m.consumed_ms, m.running_since, m.started_at, m.due_at, \
    m.warned_percent, m.breached_at, m.met_at, m.met_on_time, m.escalation_level, m.next_fire_at, \
    m.department_id, m.severity, m.origin_at, m.policy_version, m.thresholds_ms::int8[], \
    m.ladder_ms::int8[], m.warned_ms, m.plan_note";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClockRow {
    pub id: Uuid,
    pub case_id: Uuid,
    pub kind: i16,
    pub cycle: i32,
    pub state: i16,
    pub policy_id: String,
    pub policy_reason: String,
    pub calendar_id: String,
    pub business: bool,
    pub target_ms: i64,
    pub consumed_ms: i64,
    pub running_since: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub due_at: Option<DateTime<Utc>>,
    pub warned_percent: i32,
    pub breached_at: Option<DateTime<Utc>>,
    pub met_at: Option<DateTime<Utc>>,
    pub met_on_time: Option<bool>,
    pub escalation_level: i32,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub department_id: String,
    pub severity: i16,
    pub origin_at: DateTime<Utc>,
    pub policy_version: i64,
    pub thresholds_ms: Vec<i64>,
    pub ladder_ms: Vec<i64>,
    pub warned_ms: i64,
    pub plan_note: String,
}

impl ClockRow {
    pub fn thresholds(&self) -> Vec<Duration> {
        self.thresholds_ms
            .iter()
            .map(|ms| Duration::milliseconds(*ms))
            .collect()
    }

    pub fn ladder(&self) -> Vec<Duration> {
        self.ladder_ms
            .iter()
            .map(|ms| Duration::milliseconds(*ms))
            .collect()
    }

    pub fn timing(&self) -> ClockTiming {
        ClockTiming {
            target: Duration::milliseconds(self.target_ms),
            business: self.business,
            consumed: Duration::milliseconds(self.consumed_ms),
            running_since: self.running_since,
        }
    }

    pub fn set_timing(&mut self, timing: &ClockTiming) {
        self.consumed_ms = timing.consumed.num_milliseconds();
        self.running_since = timing.running_since;
    }

    pub fn progress(&self) -> crate::domain::clock::Progress {
        crate::domain::clock::Progress {
            warned: Duration::milliseconds(self.warned_ms),
            breached_at: self.breached_at,
            escalation_level: self.escalation_level.max(0) as u32,
        }
    }

    /// Still counting (running, or breached and not yet met).
    pub fn is_active(&self) -> bool {
        matches!(self.state, RUNNING | PAUSED | BREACHED)
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CaseRow {
    pub case_id: Uuid,
    pub department_id: String,
    pub owner_id: String,
    pub category: String,
    pub severity: i16,
    pub priority: i16,
    pub complexity: i16,
    pub customer_tier: i16,
    pub channel: i16,
    pub received_at: DateTime<Utc>,
}

/// Records a case's current facts (keeping the trace it has).
pub async fn upsert_case(conn: &mut PgConnection, case: &CaseRow) -> Result<(), sqlx::Error> {
    upsert_cases(conn, &[(case.clone(), "")]).await
}

/// The complaint traces of some cases.
pub async fn case_traces(
    conn: &mut PgConnection,
    case_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>, sqlx::Error> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT case_id, traceparent FROM sla.cases WHERE case_id = ANY($1)")
            // Planned for each batch (see "Plans" in `complaints_kit::db`).
            .persistent(false)
            .bind(case_ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// What an event changes of a case's facts; `None` keeps what is stored.
#[derive(Debug, Default)]
pub struct CaseChange<'a> {
    pub department_id: Option<&'a str>,
    pub owner_id: Option<&'a str>,
    pub category: Option<&'a str>,
    pub severity: Option<i16>,
    pub priority: Option<i16>,
    pub complexity: Option<i16>,
}

/// Applies a change to a case's facts and returns the case as it now is, locked as [`case`]
/// locks it, with one statement. `None` for a case this service never saw opened.
pub async fn change_case(
    conn: &mut PgConnection,
    case_id: Uuid,
    change: CaseChange<'_>,
) -> Result<Option<CaseRow>, sqlx::Error> {
    Ok(change_cases(conn, &[(case_id, change)])
        .await?
        .remove(&case_id))
}

/// [`change_case`] for several cases (each given once), locked in `case_id` order first as
/// [`cases_locked`] locks them (one case needs no order: its update locks it): two statements
/// however many cases. Returns the cases as they now are; a case this service never saw opened
/// is absent.
pub async fn change_cases<'c>(
    conn: &mut PgConnection,
    changes: &[(Uuid, CaseChange<'c>)],
) -> Result<std::collections::HashMap<Uuid, CaseRow>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<Uuid> = changes.iter().map(|(id, _)| *id).collect();
    if ids.len() > 1 {
        cases_locked(conn, &ids).await?;
    }
    let field = |f: fn(&CaseChange<'c>) -> Option<&'c str>| -> Vec<Option<&'c str>> {
        changes.iter().map(|(_, c)| f(c)).collect()
    };
    let level = |f: fn(&CaseChange<'c>) -> Option<i16>| -> Vec<Option<i16>> {
        changes.iter().map(|(_, c)| f(c)).collect()
    };
    let rows: Vec<CaseRow> = sqlx::query_as(
        "UPDATE sla.cases c
         SET department_id = COALESCE(m.department_id, c.department_id),
             owner_id = COALESCE(m.owner_id, c.owner_id),
             category = COALESCE(m.category, c.category),
             severity = COALESCE(m.severity, c.severity),
             priority = COALESCE(m.priority, c.priority),
             complexity = COALESCE(m.complexity, c.complexity),
             updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::int2[],
                     $7::int2[])
              AS m(case_id, department_id, owner_id, category, severity, priority, complexity)
         WHERE c.case_id = m.case_id
         RETURNING c.case_id, c.department_id, c.owner_id, c.category, c.severity, c.priority,
             c.complexity, c.customer_tier, c.channel, c.received_at",
    )
    // Prepared: a consumer's transaction plans it once, generically (kit `CONSUMER_PLANS`).
    .bind(&ids)
    .bind(field(|c| c.department_id))
    .bind(field(|c| c.owner_id))
    .bind(field(|c| c.category))
    .bind(level(|c| c.severity))
    .bind(level(|c| c.priority))
    .bind(level(|c| c.complexity))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|c| (c.case_id, c)).collect())
}

pub async fn case(conn: &mut PgConnection, case_id: Uuid) -> Result<Option<CaseRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT case_id, department_id, owner_id, category, severity, priority, complexity, customer_tier,
             channel, received_at
         FROM sla.cases WHERE case_id = $1 FOR UPDATE",
    )
    .bind(case_id)
    .fetch_optional(conn)
    .await
}

/// Several cases, locked in `case_id` order (as [`case`] locks one).
pub async fn cases_locked(
    conn: &mut PgConnection,
    case_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, CaseRow>, sqlx::Error> {
    let rows: Vec<CaseRow> = sqlx::query_as(
        "SELECT case_id, department_id, owner_id, category, severity, priority, complexity, customer_tier,
             channel, received_at
         FROM sla.cases WHERE case_id = ANY($1) ORDER BY case_id FOR UPDATE",
    )
    // Prepared: a consumer's transaction plans it once, generically (kit `CONSUMER_PLANS`).
    .bind(case_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|c| (c.case_id, c)).collect())
}

/// Inserts clocks with one statement, skipping any whose (case, kind, cycle) already has one;
/// returns the ids of the clocks inserted.
pub async fn insert_clocks(
    conn: &mut PgConnection,
    clocks: &[ClockRow],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if clocks.is_empty() {
        return Ok(Vec::new());
    }
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "INSERT INTO sla.clocks ({CLOCK_COLUMNS}) SELECT {CLOCK_VALUES} FROM {CLOCK_ARRAYS}
             ON CONFLICT (case_id, kind, cycle) DO NOTHING RETURNING id"
        )
    });
    // Prepared and kept: the plan reads no table (the conflicts are found in the unique index).
    sqlx::query_scalar_with(sql, clock_arrays(clocks)?)
        .fetch_all(conn)
        .await
}

/// Records cases as opened (or their current facts), with their complaint's trace ("" keeps
/// the trace stored), in one statement; a case given twice keeps its last facts.
pub async fn upsert_cases(
    conn: &mut PgConnection,
    cases: &[(CaseRow, &str)],
) -> Result<(), sqlx::Error> {
    let mut last: std::collections::HashMap<Uuid, usize> = Default::default();
    for (i, (case, _)) in cases.iter().enumerate() {
        last.insert(case.case_id, i);
    }
    let rows: Vec<&(CaseRow, &str)> = cases
        .iter()
        .enumerate()
        .filter(|(i, (case, _))| last[&case.case_id] == *i)
        .map(|(_, row)| row)
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let arguments = ColumnArrays::new()
        .column(&rows, |(case, _)| case.case_id)
        .column(&rows, |(case, _)| case.department_id.clone())
        .column(&rows, |(case, _)| case.owner_id.clone())
        .column(&rows, |(case, _)| case.category.clone())
        .column(&rows, |(case, _)| case.severity)
        .column(&rows, |(case, _)| case.priority)
        .column(&rows, |(case, _)| case.complexity)
        .column(&rows, |(case, _)| case.customer_tier)
        .column(&rows, |(case, _)| case.channel)
        .column(&rows, |(case, _)| case.received_at)
        .column(&rows, |(_, traceparent)| (*traceparent).to_owned())
        .finish()?;
    // Prepared and kept: the plan reads no table (the conflicts are found in the primary key).
    sqlx::query_with(
        "INSERT INTO sla.cases (case_id, department_id, owner_id, category, severity, priority, complexity,
             customer_tier, channel, received_at, traceparent)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::int2[],
             $7::int2[], $8::int2[], $9::int2[], $10::timestamptz[], $11::text[])
         ON CONFLICT (case_id) DO UPDATE SET department_id = EXCLUDED.department_id,
             owner_id = EXCLUDED.owner_id, category = EXCLUDED.category, severity = EXCLUDED.severity,
             priority = EXCLUDED.priority, complexity = EXCLUDED.complexity,
             customer_tier = EXCLUDED.customer_tier,
             traceparent = CASE WHEN EXCLUDED.traceparent = '' THEN sla.cases.traceparent
                                ELSE EXCLUDED.traceparent END,
             updated_at = now()",
        arguments,
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn save_clock(conn: &mut PgConnection, clock: &ClockRow) -> Result<(), sqlx::Error> {
    save_clocks(conn, std::slice::from_ref(clock)).await
}

/// Saves what re-planning, pausing, firing or cancelling changes of clocks, with one statement
/// (each clock given once).
pub async fn save_clocks(conn: &mut PgConnection, clocks: &[ClockRow]) -> Result<(), sqlx::Error> {
    if clocks.is_empty() {
        return Ok(());
    }
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "UPDATE sla.clocks c
             SET state = m.state, consumed_ms = m.consumed_ms, running_since = m.running_since,
                 started_at = m.started_at, due_at = m.due_at, warned_percent = m.warned_percent,
                 breached_at = m.breached_at, met_at = m.met_at, met_on_time = m.met_on_time,
                 escalation_level = m.escalation_level, next_fire_at = m.next_fire_at,
                 department_id = m.department_id, severity = m.severity, target_ms = m.target_ms,
                 business = m.business, policy_id = m.policy_id, policy_version = m.policy_version,
                 policy_reason = m.policy_reason, calendar_id = m.calendar_id,
                 thresholds_ms = m.thresholds_ms::int8[], ladder_ms = m.ladder_ms::int8[],
                 warned_ms = m.warned_ms, plan_note = m.plan_note
             FROM {CLOCK_ARRAYS} WHERE c.id = m.id"
        )
    });
    sqlx::query_with(sql, clock_arrays(clocks)?)
        // Planned for each batch (see "Plans" in `complaints_kit::db`): a join with `unnest`.
        .persistent(false)
        .execute(conn)
        .await?;
    Ok(())
}

/// Every clock of a case, oldest first.
pub async fn clocks_of_case(pool: &PgPool, case_id: Uuid) -> Result<Vec<ClockRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLOCK_COLUMNS} FROM sla.clocks WHERE case_id = $1 ORDER BY started_at, kind, cycle"
    ))
    .bind(case_id)
    .fetch_all(pool)
    .await
}

/// Locks every clock of a case.
pub async fn lock_clocks(
    conn: &mut PgConnection,
    case_id: Uuid,
) -> Result<CaseClocks, sqlx::Error> {
    // Every clock of the case is locked (a handful) and what an event needs is derived in
    // memory: with the state in the query, plans ANDed in the partial index of every open
    // clock in the system (0.5 ms a call after twenty thousand clocks); and the cycles used
    // and whether the first response was given cost two more statements per event.
    let clocks: Vec<ClockRow> = sqlx::query_as(&format!(
        "SELECT {CLOCK_COLUMNS} FROM sla.clocks WHERE case_id = $1 ORDER BY kind, cycle FOR UPDATE"
    ))
    .bind(case_id)
    .fetch_all(conn)
    .await?;
    Ok(CaseClocks(clocks))
}

/// Every clock of several cases, locked (in case, kind, cycle order), by case; a case without
/// clocks is absent.
pub async fn lock_clocks_of(
    conn: &mut PgConnection,
    case_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, CaseClocks>, sqlx::Error> {
    let clocks: Vec<ClockRow> = sqlx::query_as(&format!(
        "SELECT {CLOCK_COLUMNS} FROM sla.clocks WHERE case_id = ANY($1)
         ORDER BY case_id, kind, cycle FOR UPDATE"
    ))
    // Prepared: a consumer's transaction plans it once, generically (kit `CONSUMER_PLANS`).
    .bind(case_ids)
    .fetch_all(conn)
    .await?;
    let mut by_case: std::collections::HashMap<Uuid, CaseClocks> = Default::default();
    for clock in clocks {
        by_case.entry(clock.case_id).or_default().0.push(clock);
    }
    Ok(by_case)
}

/// Saves clocks that were met (state, time used, when, whether on time; nothing left to
/// fire) with one statement.
pub async fn save_met_clocks(
    conn: &mut PgConnection,
    clocks: &[ClockRow],
) -> Result<(), sqlx::Error> {
    if clocks.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = clocks.iter().map(|c| c.id).collect();
    let consumed: Vec<i64> = clocks.iter().map(|c| c.consumed_ms).collect();
    let running: Vec<Option<DateTime<Utc>>> = clocks.iter().map(|c| c.running_since).collect();
    let met_at: Vec<Option<DateTime<Utc>>> = clocks.iter().map(|c| c.met_at).collect();
    let on_time: Vec<Option<bool>> = clocks.iter().map(|c| c.met_on_time).collect();
    sqlx::query(
        "UPDATE sla.clocks c
         SET state = $6, consumed_ms = m.consumed_ms, running_since = m.running_since,
             met_at = m.met_at, met_on_time = m.met_on_time, next_fire_at = NULL
         FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::bool[])
              AS m(id, consumed_ms, running_since, met_at, met_on_time)
         WHERE c.id = m.id",
    )
    // Prepared: a consumer's transaction plans it once, generically (kit `CONSUMER_PLANS`).
    .bind(&ids)
    .bind(&consumed)
    .bind(&running)
    .bind(&met_at)
    .bind(&on_time)
    .bind(MET)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every clock of one case, as locked by [`lock_clocks`] and kept up to date by the caller
/// (see [`CaseClocks::met`]) while it changes them in the same transaction.
#[derive(Clone, Debug, Default)]
pub struct CaseClocks(pub Vec<ClockRow>);

impl CaseClocks {
    /// The clocks still counting (running, paused, breached).
    pub fn active(&self) -> Vec<ClockRow> {
        self.0.iter().filter(|c| c.is_active()).cloned().collect()
    }

    /// The clocks of `kind` still counting.
    pub fn active_of_kind(&self, kind: i16) -> Vec<ClockRow> {
        self.0
            .iter()
            .filter(|c| c.kind == kind && c.is_active())
            .cloned()
            .collect()
    }

    /// The highest cycle of `kind` the case ever had, whatever its state; 0 if none.
    pub fn max_cycle(&self, kind: i16) -> i32 {
        self.0
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.cycle)
            .max()
            .unwrap_or(0)
    }

    /// Whether a clock of `kind` was met (for the first-response kind: the customer got a
    /// first response).
    pub fn any_met(&self, kind: i16) -> bool {
        self.0.iter().any(|c| c.kind == kind && c.state == MET)
    }

    /// Records that the caller met clock `id` in this transaction.
    pub fn met(&mut self, id: Uuid) {
        if let Some(clock) = self.0.iter_mut().find(|c| c.id == id) {
            clock.state = MET;
        }
    }
}

/// The latest follow-up clock of a case that was never met, even if a reopen cancelled it: a
/// survey answer that raced the reopen still meets it.
pub async fn lock_unmet_follow_up(
    conn: &mut PgConnection,
    case_id: Uuid,
    kind: i16,
) -> Result<Option<ClockRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLOCK_COLUMNS} FROM sla.clocks WHERE case_id = $1 AND kind = $2 AND met_at IS NULL
         ORDER BY cycle DESC LIMIT 1 FOR UPDATE"
    ))
    .bind(case_id)
    .bind(kind)
    .fetch_optional(conn)
    .await
}

/// Remembers a case's survey answer for a follow-up clock not started yet (the newest answer
/// is kept).
pub async fn remember_survey_answer(
    conn: &mut PgConnection,
    case_id: Uuid,
    answered_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sla.survey_answers (case_id, answered_at) VALUES ($1, $2)
         ON CONFLICT (case_id) DO UPDATE
         SET answered_at = greatest(sla.survey_answers.answered_at, EXCLUDED.answered_at)",
    )
    .bind(case_id)
    .bind(answered_at)
    .execute(conn)
    .await
    .map(drop)
}

/// When the case's survey was answered, if that was at or after `since` (the resolution whose
/// follow-up is starting).
pub async fn survey_answered_since(
    conn: &mut PgConnection,
    case_id: Uuid,
    since: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT answered_at FROM sla.survey_answers WHERE case_id = $1 AND answered_at >= $2",
    )
    .bind(case_id)
    .bind(since)
    .fetch_optional(conn)
    .await
}

/// Claims due clocks; rows another scheduler replica holds are skipped, never fired twice.
pub async fn claim_due_clocks(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ClockRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLOCK_COLUMNS} FROM sla.clocks
         WHERE next_fire_at <= $1
         ORDER BY next_fire_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn record_pause(
    conn: &mut PgConnection,
    clock_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sla.clock_pauses (clock_id, paused_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(clock_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn record_resume(
    conn: &mut PgConnection,
    clock_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sla.clock_pauses SET resumed_at = $2 WHERE clock_id = $1 AND resumed_at IS NULL",
    )
    .bind(clock_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn queue_escalation(
    conn: &mut PgConnection,
    escalation_id: &str,
    case_id: Uuid,
    clock_id: Uuid,
    level: i32,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sla.pending_escalations (escalation_id, case_id, clock_id, level, reason)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (escalation_id) DO NOTHING",
    )
    .bind(escalation_id)
    .bind(case_id)
    .bind(clock_id)
    .bind(level)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PendingEscalation {
    pub escalation_id: String,
    pub case_id: Uuid,
    pub level: i32,
    pub reason: String,
    pub attempts: i32,
}

pub async fn claim_pending_escalations(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<PendingEscalation>, sqlx::Error> {
    sqlx::query_as(
        "SELECT escalation_id, case_id, level, reason, attempts FROM sla.pending_escalations
         WHERE delivered_at IS NULL AND next_attempt_at <= $1
         ORDER BY next_attempt_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn mark_escalation_delivered(
    conn: &mut PgConnection,
    id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sla.pending_escalations SET delivered_at = now(), attempts = attempts + 1 WHERE escalation_id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn mark_escalation_failed(
    conn: &mut PgConnection,
    id: &str,
    retry_at: DateTime<Utc>,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sla.pending_escalations SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3
         WHERE escalation_id = $1",
    )
    .bind(id)
    .bind(retry_at)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

// --- Clocks: explanation, re-planning, queries --------------------------------------------

pub async fn clock(pool: &PgPool, id: Uuid) -> Result<Option<ClockRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLOCK_COLUMNS} FROM sla.clocks WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The pauses of several clocks with one statement, each clock's in order; a clock never
/// paused is absent.
pub async fn pauses_of_clocks(
    conn: &mut PgConnection,
    clock_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Vec<Pause>>, sqlx::Error> {
    let rows: Vec<(Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT clock_id, paused_at, resumed_at FROM sla.clock_pauses WHERE clock_id = ANY($1)
         ORDER BY clock_id, paused_at",
    )
    // Planned for each call (see "Plans" in `complaints_kit::db`).
    .persistent(false)
    .bind(clock_ids)
    .fetch_all(conn)
    .await?;
    let mut by_clock: std::collections::HashMap<Uuid, Vec<Pause>> = Default::default();
    for (clock_id, paused_at, resumed_at) in rows {
        by_clock.entry(clock_id).or_default().push(Pause {
            paused_at,
            resumed_at,
        });
    }
    Ok(by_clock)
}

/// Locks the open clocks planned on a calendar.
pub async fn lock_open_clocks_of_calendar(
    conn: &mut PgConnection,
    calendar_id: &str,
) -> Result<Vec<ClockRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLOCK_COLUMNS} FROM sla.clocks WHERE calendar_id = $1 AND state IN (1, 2, 4)
         ORDER BY id FOR UPDATE"
    ))
    .bind(calendar_id)
    .fetch_all(conn)
    .await
}

/// Running or breached clocks that warned, breached, or fall due before `due_before`, by
/// deadline; keyset-paginated after `(due_at, id)`.
pub async fn clocks_at_risk(
    pool: &PgPool,
    department_id: Option<&str>,
    severity: Option<i16>,
    due_before: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ClockRow>, sqlx::Error> {
    let (after_due, after_id) = after.unzip();
    sqlx::query_as(&format!(
        "SELECT {CLOCK_COLUMNS} FROM sla.clocks
         WHERE state IN (1, 4) AND due_at IS NOT NULL
           AND (warned_ms > 0 OR state = 4 OR due_at <= $1)
           AND ($2::text IS NULL OR department_id = $2)
           AND ($3::smallint IS NULL OR severity = $3)
           AND ($4::timestamptz IS NULL OR (due_at, id) > ($4, $5))
         ORDER BY due_at, id
         LIMIT $6"
    ))
    .bind(due_before)
    .bind(department_id)
    .bind(severity)
    .bind(after_due)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Counts of open clocks by kind, state and severity (for `sla_open_clocks`).
pub async fn open_clock_counts(pool: &PgPool) -> Result<Vec<(i16, i16, i16, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, state, severity, count(*) FROM sla.clocks WHERE state IN (1, 2, 4)
         GROUP BY kind, state, severity ORDER BY kind, state, severity",
    )
    .fetch_all(pool)
    .await
}

/// Cases with a clock that warned or breached, by severity and department (for `sla_cases_at_risk`).
pub async fn at_risk_counts(pool: &PgPool) -> Result<Vec<(i16, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT severity, department_id, count(DISTINCT case_id) FROM sla.clocks
         WHERE state IN (1, 4) AND (warned_ms > 0 OR state = 4)
         GROUP BY severity, department_id ORDER BY severity, department_id",
    )
    .fetch_all(pool)
    .await
}

#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct ComplianceRow {
    pub kind: i16,
    pub met_on_time: i64,
    pub met_late: i64,
    pub breached_open: i64,
}

/// Clocks concluded in `[from, to)`: met (on time or late) then, or breached then and still unmet
/// at `to`.
pub async fn compliance(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    department_id: Option<&str>,
    severity: Option<i16>,
) -> Result<Vec<ComplianceRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind,
             count(*) FILTER (WHERE met_at >= $1 AND met_at < $2 AND met_on_time) AS met_on_time,
             count(*) FILTER (WHERE met_at >= $1 AND met_at < $2 AND NOT met_on_time) AS met_late,
             count(*) FILTER (WHERE breached_at >= $1 AND breached_at < $2
                              AND (met_at IS NULL OR met_at >= $2) AND state <> 5) AS breached_open
         FROM sla.clocks
         WHERE ((met_at >= $1 AND met_at < $2) OR (breached_at >= $1 AND breached_at < $2))
           AND ($3::text IS NULL OR department_id = $3)
           AND ($4::smallint IS NULL OR severity = $4)
         GROUP BY kind ORDER BY kind",
    )
    .bind(from)
    .bind(to)
    .bind(department_id)
    .bind(severity)
    .fetch_all(pool)
    .await
}

/// Warning and breach events after `after` (released below the oldest running transaction, as
/// the event stream does), with the department and severity of their case.
pub async fn alerts_after(
    pool: &PgPool,
    after: (i64, i64),
    limit: i64,
) -> Result<Vec<(i64, i64, Vec<u8>, Option<String>, Option<i16>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.txid, o.seq, o.payload, c.department_id, c.severity
         FROM sla.event_outbox o LEFT JOIN sla.cases c ON c.case_id::text = o.aggregate_id
         WHERE o.event_type IN ('ClockWarning', 'ClockBreached')
           AND (o.txid, o.seq) > ($1, $2)
           AND o.txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
         ORDER BY o.txid, o.seq
         LIMIT $3",
    )
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(pool)
    .await
}

// --- Calendars -----------------------------------------------------------------------------

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CalendarRow {
    pub id: String,
    pub version: i64,
    pub name: String,
    pub time_zone: String,
    pub rules: sqlx::types::Json<crate::domain::calendar::CalendarRules>,
    pub source: String,
    pub updated_at: DateTime<Utc>,
}

const CALENDAR_COLUMNS: &str = "id, version, name, time_zone, rules, source, updated_at";

/// Inserts a calendar at version 1; false when the id (or request id) is taken.
pub async fn insert_calendar(
    conn: &mut PgConnection,
    calendar: &crate::domain::calendar::BusinessCalendar,
    request_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO sla.calendars (id, version, name, time_zone, rules, source, request_id)
         VALUES ($1, 1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&calendar.id)
    .bind(&calendar.name)
    .bind(calendar.time_zone.name())
    .bind(sqlx::types::Json(calendar.rules()))
    .bind(&calendar.source)
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn calendar_by_request(
    pool: &PgPool,
    request_id: &str,
) -> Result<Option<CalendarRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CALENDAR_COLUMNS} FROM sla.calendars WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_optional(pool)
    .await
}

pub async fn calendar_row(
    conn: &mut PgConnection,
    id: &str,
    lock: bool,
) -> Result<Option<CalendarRow>, sqlx::Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {CALENDAR_COLUMNS} FROM sla.calendars WHERE id = $1{suffix}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Stores a new version of a calendar (the caller checked the expected version under lock).
pub async fn update_calendar(
    conn: &mut PgConnection,
    calendar: &crate::domain::calendar::BusinessCalendar,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let (updated_at,): (DateTime<Utc>,) = sqlx::query_as(
        "UPDATE sla.calendars SET version = $2, name = $3, time_zone = $4, rules = $5, source = $6,
             updated_at = now()
         WHERE id = $1 RETURNING updated_at",
    )
    .bind(&calendar.id)
    .bind(calendar.version)
    .bind(&calendar.name)
    .bind(calendar.time_zone.name())
    .bind(sqlx::types::Json(calendar.rules()))
    .bind(&calendar.source)
    .fetch_one(conn)
    .await?;
    Ok(updated_at)
}

pub async fn list_calendars(
    pool: &PgPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<CalendarRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CALENDAR_COLUMNS} FROM sla.calendars WHERE ($1::text IS NULL OR id > $1)
         ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Every calendar's id and version, to refresh a cache cheaply.
pub async fn calendar_versions(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT id, version FROM sla.calendars")
        .fetch_all(conn)
        .await
}

// --- Policies ------------------------------------------------------------------------------

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PolicyRow {
    pub id: String,
    pub version: i64,
    pub definition: sqlx::types::Json<crate::domain::policy::Policy>,
    pub updated_at: DateTime<Utc>,
}

impl PolicyRow {
    pub fn policy(&self) -> crate::domain::policy::Policy {
        let mut policy = self.definition.0.clone();
        policy.id = self.id.clone();
        policy.version = self.version;
        policy
    }
}

const POLICY_COLUMNS: &str = "id, version, definition, updated_at";

/// Inserts a policy at version 1; false when the id (or request id) is taken.
pub async fn insert_policy(
    conn: &mut PgConnection,
    policy: &crate::domain::policy::Policy,
    request_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO sla.policies (id, version, definition, request_id) VALUES ($1, 1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(&policy.id)
    .bind(sqlx::types::Json(policy))
    .bind(request_id)
    .execute(&mut *conn)
    .await?;
    if result.rows_affected() == 1 {
        record_policy_version(conn, policy, 1).await?;
    }
    Ok(result.rows_affected() == 1)
}

async fn record_policy_version(
    conn: &mut PgConnection,
    policy: &crate::domain::policy::Policy,
    version: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sla.policy_versions (policy_id, version, definition) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(&policy.id)
    .bind(version)
    .bind(sqlx::types::Json(policy))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn policy_by_request(
    pool: &PgPool,
    request_id: &str,
) -> Result<Option<PolicyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM sla.policies WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_optional(pool)
    .await
}

pub async fn policy_row(
    conn: &mut PgConnection,
    id: &str,
    lock: bool,
) -> Result<Option<PolicyRow>, sqlx::Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM sla.policies WHERE id = $1{suffix}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Stores a new version of a policy (the caller checked the expected version under lock).
pub async fn update_policy(
    conn: &mut PgConnection,
    policy: &crate::domain::policy::Policy,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let (updated_at,): (DateTime<Utc>,) = sqlx::query_as(
        "UPDATE sla.policies SET version = $2, definition = $3, updated_at = now()
         WHERE id = $1 RETURNING updated_at",
    )
    .bind(&policy.id)
    .bind(policy.version)
    .bind(sqlx::types::Json(policy))
    .fetch_one(&mut *conn)
    .await?;
    record_policy_version(conn, policy, policy.version).await?;
    Ok(updated_at)
}

pub async fn list_policies(
    pool: &PgPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<PolicyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM sla.policies WHERE ($1::text IS NULL OR id > $1)
         ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn all_policies(conn: &mut PgConnection) -> Result<Vec<PolicyRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM sla.policies ORDER BY id"
    ))
    .fetch_all(conn)
    .await
}

/// Changes whenever a policy is created or updated (versions only grow).
pub async fn policies_fingerprint(conn: &mut PgConnection) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT count(*), coalesce(sum(version), 0)::bigint FROM sla.policies")
        .fetch_one(conn)
        .await
}

/// Moves a case's open clocks to its new department.
pub async fn move_open_clocks(
    conn: &mut PgConnection,
    case_id: Uuid,
    department_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sla.clocks SET department_id = $2 WHERE case_id = $1 AND state IN (1, 2, 4)",
    )
    .bind(case_id)
    .bind(department_id)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(kind: i16, cycle: i32, state: i16) -> ClockRow {
        let at = Utc::now();
        ClockRow {
            id: Uuid::new_v4(),
            case_id: Uuid::nil(),
            kind,
            cycle,
            state,
            policy_id: "p".into(),
            policy_reason: String::new(),
            calendar_id: "c".into(),
            business: false,
            target_ms: 1,
            consumed_ms: 0,
            running_since: Some(at),
            started_at: at,
            due_at: None,
            warned_percent: 0,
            breached_at: None,
            met_at: None,
            met_on_time: None,
            escalation_level: 0,
            next_fire_at: None,
            department_id: String::new(),
            severity: 1,
            origin_at: at,
            policy_version: 1,
            thresholds_ms: Vec::new(),
            ladder_ms: Vec::new(),
            warned_ms: 0,
            plan_note: String::new(),
        }
    }

    #[test]
    fn case_clocks_answer_from_every_clock_of_the_case() {
        let (first, resolution, update) = (1, 2, 3);
        let mut clocks = CaseClocks(vec![
            clock(first, 1, RUNNING),
            clock(resolution, 1, CANCELLED),
            clock(resolution, 2, BREACHED),
            clock(update, 1, MET),
            clock(update, 2, PAUSED),
        ]);
        let ids = |v: Vec<ClockRow>| v.into_iter().map(|c| (c.kind, c.cycle)).collect::<Vec<_>>();
        assert_eq!(ids(clocks.active()), vec![(1, 1), (2, 2), (3, 2)]);
        assert_eq!(ids(clocks.active_of_kind(resolution)), vec![(2, 2)]);
        // Cycles count whatever their state: a cancelled or met cycle is never reused.
        assert_eq!(clocks.max_cycle(resolution), 2);
        assert_eq!(clocks.max_cycle(update), 2);
        assert_eq!(clocks.max_cycle(4), 0);
        assert!(clocks.any_met(update));
        assert!(!clocks.any_met(first));
        // Meeting a clock in the transaction is seen by what the event does next.
        let id = clocks.0[0].id;
        clocks.met(id);
        assert!(clocks.any_met(first));
        assert!(clocks.active_of_kind(first).is_empty());
        clocks.met(Uuid::new_v4());
        assert_eq!(clocks.active().len(), 2);
    }
}
