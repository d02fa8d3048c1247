//! Clock operations inside a transaction: starting, meeting, pausing, resuming and cancelling
//! clocks as case events arrive, and firing warnings, breaches and escalations when due. The
//! rules live in `domain`; this module loads, plans and saves.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use complaints_kit::events::EventLog;
use complaints_kit::time::{to_pb_duration, to_timestamp};
use complaints_proto::common::v1::{ClockKind, Complexity, Severity};
use complaints_proto::events::v1::{
    ClockBreached, ClockMet, ClockStarted, ClockWarning, event::Payload,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::calendar::BusinessCalendar;
use crate::domain::clock::NextFire;
use crate::domain::policy::{self, Measure, Policy};
use crate::store::{self, BREACHED, CANCELLED, CaseRow, ClockRow, MET, PAUSED, RUNNING};

#[derive(Clone)]
pub struct Engine {
    pub calendar: Arc<BusinessCalendar>,
    pub events: EventLog,
}

fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(to_timestamp(at))
}

impl Engine {
    fn policy_of(&self, clock: &ClockRow) -> Policy {
        policy::by_id(&clock.policy_id)
            .unwrap_or_else(|| policy::select(Severity::General, Complexity::Simple).0)
    }

    /// Recomputes the deadline and the next firing of a clock from its state.
    pub fn plan(&self, clock: &mut ClockRow) -> anyhow::Result<()> {
        let timing = clock.timing();
        if !clock.is_active() {
            clock.next_fire_at = None;
            return Ok(());
        }
        if let Some((due, _)) = timing.due(&self.calendar)? {
            clock.due_at = Some(due);
        } else if clock.state == PAUSED {
            clock.due_at = None;
        }
        let policy = self.policy_of(clock);
        let next = timing.next_fire(&self.calendar, &policy.fire_rules(), &clock.progress())?;
        clock.next_fire_at = next.map(|n| n.at());
        Ok(())
    }

    /// Starts a clock of `kind` for a case, counting from `origin`. Idempotent per cycle.
    pub async fn start_clock(
        &self,
        conn: &mut PgConnection,
        case: &CaseRow,
        kind: ClockKind,
        cycle: i32,
        origin: DateTime<Utc>,
        traceparent: &str,
    ) -> anyhow::Result<Option<ClockRow>> {
        let severity = Severity::try_from(case.severity as i32).unwrap_or(Severity::General);
        let complexity = Complexity::try_from(case.complexity as i32).unwrap_or(Complexity::Simple);
        let (policy, reason) = policy::select(severity, complexity);
        let Some(measure) = policy.measure(kind) else {
            return Ok(None);
        };
        let (target, business) = match measure {
            Measure::Business(d) => (d, true),
            Measure::WorkingDays(n) => (self.calendar.standard_day() * n, true),
            Measure::Calendar(d) => (d, false),
        };
        let started_at = if business {
            self.calendar.next_working_instant(origin)?
        } else {
            origin
        };
        let mut clock = ClockRow {
            id: Uuid::now_v7(),
            case_id: case.case_id,
            kind: kind as i16,
            cycle,
            state: RUNNING,
            policy_id: policy.id.to_owned(),
            policy_reason: reason,
            calendar_id: self.calendar.id.clone(),
            business,
            target_ms: target.num_milliseconds(),
            consumed_ms: 0,
            running_since: Some(started_at),
            started_at,
            due_at: None,
            warned_percent: 0,
            breached_at: None,
            met_at: None,
            met_on_time: None,
            escalation_level: 0,
            next_fire_at: None,
            department_id: case.department_id.clone(),
            severity: case.severity,
        };
        self.plan(&mut clock)?;
        if !store::insert_clock(conn, &clock).await? {
            return Ok(None);
        }
        self.events
            .append(
                conn,
                &case.case_id.to_string(),
                traceparent,
                Payload::ClockStarted(ClockStarted {
                    clock_id: clock.id.to_string(),
                    case_id: case.case_id.to_string(),
                    kind: kind as i32,
                    due_at: clock.due_at.map(to_timestamp),
                    target: Some(to_pb_duration(target)),
                }),
            )
            .await?;
        Ok(Some(clock))
    }

    /// The target was achieved at `at`.
    pub async fn meet(
        &self,
        conn: &mut PgConnection,
        mut clock: ClockRow,
        at: DateTime<Utc>,
        traceparent: &str,
    ) -> anyhow::Result<()> {
        let mut timing = clock.timing();
        timing.pause(&self.calendar, at);
        let elapsed = timing.consumed;
        let on_time = elapsed <= timing.target && clock.breached_at.is_none();
        clock.set_timing(&timing);
        clock.state = MET;
        clock.met_at = Some(at);
        clock.met_on_time = Some(on_time);
        clock.next_fire_at = None;
        store::save_clock(conn, &clock).await?;
        self.events
            .append(
                conn,
                &clock.case_id.to_string(),
                traceparent,
                Payload::ClockMet(ClockMet {
                    clock_id: clock.id.to_string(),
                    case_id: clock.case_id.to_string(),
                    kind: clock.kind as i32,
                    met_at: ts(at),
                    due_at: clock.due_at.map(to_timestamp),
                    on_time,
                    elapsed: Some(to_pb_duration(elapsed)),
                }),
            )
            .await?;
        Ok(())
    }

    pub async fn pause(
        &self,
        conn: &mut PgConnection,
        mut clock: ClockRow,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        if clock.running_since.is_none() {
            return Ok(());
        }
        let mut timing = clock.timing();
        timing.pause(&self.calendar, at);
        clock.set_timing(&timing);
        if clock.state == RUNNING {
            clock.state = PAUSED;
        }
        self.plan(&mut clock)?;
        clock.next_fire_at = None;
        store::save_clock(conn, &clock).await?;
        store::record_pause(conn, clock.id, at).await?;
        Ok(())
    }

    pub async fn resume(
        &self,
        conn: &mut PgConnection,
        mut clock: ClockRow,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        if clock.running_since.is_some() {
            return Ok(());
        }
        let mut timing = clock.timing();
        timing.resume(at);
        clock.set_timing(&timing);
        if clock.state == PAUSED {
            clock.state = RUNNING;
        }
        self.plan(&mut clock)?;
        store::save_clock(conn, &clock).await?;
        store::record_resume(conn, clock.id, at).await?;
        Ok(())
    }

    pub async fn cancel(
        &self,
        conn: &mut PgConnection,
        mut clock: ClockRow,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let mut timing = clock.timing();
        timing.pause(&self.calendar, at);
        clock.set_timing(&timing);
        clock.state = CANCELLED;
        clock.next_fire_at = None;
        store::save_clock(conn, &clock).await.map_err(Into::into)
    }

    /// Fires what is due on one clock (possibly several steps after downtime).
    async fn fire_clock(
        &self,
        conn: &mut PgConnection,
        mut clock: ClockRow,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut lags = Vec::new();
        let policy = self.policy_of(&clock);
        for _ in 0..16 {
            let timing = clock.timing();
            let next = timing.next_fire(&self.calendar, &policy.fire_rules(), &clock.progress())?;
            let Some(next) = next.filter(|n| n.at() <= now) else {
                break;
            };
            lags.push(now - next.at());
            let case = clock.case_id.to_string();
            match next {
                NextFire::Warning { percent, .. } => {
                    clock.warned_percent = percent as i32;
                    self.events
                        .append(
                            conn,
                            &case,
                            "",
                            Payload::ClockWarning(ClockWarning {
                                clock_id: clock.id.to_string(),
                                case_id: case.clone(),
                                kind: clock.kind as i32,
                                percent_used: percent,
                                due_at: clock.due_at.map(to_timestamp),
                            }),
                        )
                        .await?;
                }
                NextFire::Breach { at } => {
                    clock.state = BREACHED;
                    clock.breached_at = Some(at);
                    clock.escalation_level = 1;
                    self.events
                        .append(
                            conn,
                            &case,
                            "",
                            Payload::ClockBreached(ClockBreached {
                                clock_id: clock.id.to_string(),
                                case_id: case.clone(),
                                kind: clock.kind as i32,
                                due_at: ts(at),
                                escalation_level: 1,
                            }),
                        )
                        .await?;
                    self.queue_escalation(conn, &clock, 1).await?;
                }
                NextFire::Escalation { level, .. } => {
                    clock.escalation_level = level as i32;
                    self.queue_escalation(conn, &clock, level).await?;
                }
            }
        }
        self.plan(&mut clock)?;
        store::save_clock(conn, &clock).await?;
        Ok(lags)
    }

    async fn queue_escalation(
        &self,
        conn: &mut PgConnection,
        clock: &ClockRow,
        level: u32,
    ) -> anyhow::Result<()> {
        let kind = ClockKind::try_from(clock.kind as i32).unwrap_or(ClockKind::Unspecified);
        let reason = format!(
            "SLA breach: {} target missed (due {}); escalation level {level}",
            kind.as_str_name(),
            clock.due_at.map(|d| d.to_rfc3339()).unwrap_or_default()
        );
        let escalation_id = format!("sla:{}:{level}", clock.id);
        store::queue_escalation(
            conn,
            &escalation_id,
            clock.case_id,
            clock.id,
            level as i32,
            &reason,
        )
        .await?;
        Ok(())
    }

    /// Claims and fires up to `limit` due clocks in one transaction. Returns the firing lags.
    pub async fn fire_due(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
        limit: i64,
    ) -> anyhow::Result<(usize, Vec<Duration>)> {
        let mut tx = pool.begin().await?;
        let clocks = store::claim_due_clocks(&mut tx, now, limit).await?;
        let claimed = clocks.len();
        let mut lags = Vec::new();
        for clock in clocks {
            lags.extend(self.fire_clock(&mut tx, clock, now).await?);
        }
        tx.commit().await?;
        if !lags.is_empty() {
            self.events.committed();
        }
        Ok((claimed, lags))
    }
}

/// A clock kind's clocks that are still counting.
pub fn active_of_kind(clocks: &[ClockRow], kind: ClockKind) -> Vec<ClockRow> {
    clocks
        .iter()
        .filter(|c| c.kind == kind as i16 && c.is_active())
        .cloned()
        .collect()
}

pub const ACTIVE_STATES: [i16; 3] = [RUNNING, PAUSED, BREACHED];
