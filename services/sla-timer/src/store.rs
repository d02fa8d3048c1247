//! SQL of the `sla` schema.

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::clock::ClockTiming;

pub const RUNNING: i16 = 1;
pub const PAUSED: i16 = 2;
pub const MET: i16 = 3;
pub const BREACHED: i16 = 4;
pub const CANCELLED: i16 = 5;

const CLOCK_COLUMNS: &str = "id, case_id, kind, cycle, state, policy_id, policy_reason, calendar_id, business, \
    target_ms, consumed_ms, running_since, started_at, due_at, warned_percent, breached_at, met_at, met_on_time, \
    escalation_level, next_fire_at, department_id, severity";

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
}

impl ClockRow {
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
            warned_percent: self.warned_percent.max(0) as u32,
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

pub async fn upsert_case(conn: &mut PgConnection, case: &CaseRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sla.cases (case_id, department_id, owner_id, category, severity, priority, complexity,
             customer_tier, channel, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (case_id) DO UPDATE SET department_id = EXCLUDED.department_id,
             owner_id = EXCLUDED.owner_id, updated_at = now()",
    )
    .bind(case.case_id)
    .bind(&case.department_id)
    .bind(&case.owner_id)
    .bind(&case.category)
    .bind(case.severity)
    .bind(case.priority)
    .bind(case.complexity)
    .bind(case.customer_tier)
    .bind(case.channel)
    .bind(case.received_at)
    .execute(conn)
    .await?;
    Ok(())
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

/// Inserts a clock; false when that (case, kind, cycle) already has one.
pub async fn insert_clock(conn: &mut PgConnection, clock: &ClockRow) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(&format!(
        "INSERT INTO sla.clocks ({CLOCK_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)
         ON CONFLICT (case_id, kind, cycle) DO NOTHING"
    ))
    .bind(clock.id)
    .bind(clock.case_id)
    .bind(clock.kind)
    .bind(clock.cycle)
    .bind(clock.state)
    .bind(&clock.policy_id)
    .bind(&clock.policy_reason)
    .bind(&clock.calendar_id)
    .bind(clock.business)
    .bind(clock.target_ms)
    .bind(clock.consumed_ms)
    .bind(clock.running_since)
    .bind(clock.started_at)
    .bind(clock.due_at)
    .bind(clock.warned_percent)
    .bind(clock.breached_at)
    .bind(clock.met_at)
    .bind(clock.met_on_time)
    .bind(clock.escalation_level)
    .bind(clock.next_fire_at)
    .bind(&clock.department_id)
    .bind(clock.severity)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn save_clock(conn: &mut PgConnection, clock: &ClockRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sla.clocks
         SET state = $2, consumed_ms = $3, running_since = $4, due_at = $5, warned_percent = $6,
             breached_at = $7, met_at = $8, met_on_time = $9, escalation_level = $10, next_fire_at = $11,
             department_id = $12
         WHERE id = $1",
    )
    .bind(clock.id)
    .bind(clock.state)
    .bind(clock.consumed_ms)
    .bind(clock.running_since)
    .bind(clock.due_at)
    .bind(clock.warned_percent)
    .bind(clock.breached_at)
    .bind(clock.met_at)
    .bind(clock.met_on_time)
    .bind(clock.escalation_level)
    .bind(clock.next_fire_at)
    .bind(&clock.department_id)
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

/// Locks the still-counting clocks of a case.
pub async fn lock_active_clocks(
    conn: &mut PgConnection,
    case_id: Uuid,
) -> Result<Vec<ClockRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CLOCK_COLUMNS} FROM sla.clocks WHERE case_id = $1 AND state IN (1, 2, 4)
         ORDER BY kind, cycle FOR UPDATE"
    ))
    .bind(case_id)
    .fetch_all(conn)
    .await
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

pub async fn max_cycle(
    conn: &mut PgConnection,
    case_id: Uuid,
    kind: i16,
) -> Result<i32, sqlx::Error> {
    let (cycle,): (Option<i32>,) =
        sqlx::query_as("SELECT max(cycle) FROM sla.clocks WHERE case_id = $1 AND kind = $2")
            .bind(case_id)
            .bind(kind)
            .fetch_one(conn)
            .await?;
    Ok(cycle.unwrap_or(0))
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
