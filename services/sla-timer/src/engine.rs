//! Clock operations inside a transaction: starting, meeting, pausing, resuming, cancelling and
//! re-planning clocks as case events and calendar changes arrive, and firing warnings, breaches
//! and escalations when due. The rules live in `domain`; this module loads, plans and saves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Duration, Utc};
use complaints_kit::events::EventLog;
use complaints_kit::time::{to_pb_duration, to_timestamp};
use complaints_proto::common::v1::ClockKind;
use complaints_proto::events::v1::{
    ClockBreached, ClockMet, ClockStarted, ClockWarning, event::Payload,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::calendar::{BusinessCalendar, Segment};
use crate::domain::clock::{self, NextFire, Pause};
use crate::domain::days;
use crate::domain::policy::{self, CaseFacts, Policy, PolicyMatch};
use crate::store::{self, BREACHED, CANCELLED, CaseRow, ClockRow, MET, PAUSED, RUNNING};

/// Calendars by id, reloaded when their version in the database moves (another replica or an
/// API call may have changed one).
#[derive(Clone, Default)]
pub struct CalendarCache {
    inner: Arc<RwLock<HashMap<String, Arc<BusinessCalendar>>>>,
}

/// The calendars one event (or one batch) has read, each read once (with its version checked,
/// see [`Engine::calendar`]) however many of its clocks use it. `share` share-locks each row
/// read, as clock starts need.
#[derive(Default)]
pub struct CalendarsRead {
    share: bool,
    read: HashMap<String, Arc<BusinessCalendar>>,
}

impl CalendarsRead {
    pub fn shared() -> Self {
        Self {
            share: true,
            ..Self::default()
        }
    }

    pub async fn get(
        &mut self,
        engine: &Engine,
        conn: &mut PgConnection,
        id: &str,
    ) -> anyhow::Result<Arc<BusinessCalendar>> {
        if let Some(calendar) = self.read.get(id) {
            return Ok(calendar.clone());
        }
        let calendar = engine.calendar(conn, id, self.share).await?;
        self.read.insert(id.to_owned(), calendar.clone());
        Ok(calendar)
    }
}

/// The policies as loaded, with the fingerprint (count, sum of versions) they were loaded at.
/// The policies, the fingerprint they were loaded under, and when it was last checked.
type PolicySnapshot = ((i64, i64), Arc<Vec<Policy>>, std::time::Instant);

/// How long the policy set is trusted without asking the database again. Changes made through
/// this replica invalidate it at once; other replicas' changes are seen within this time.
const POLICY_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// All policies, reloaded when any was created or updated.
#[derive(Clone, Default)]
pub struct PolicyCache {
    inner: Arc<Mutex<Option<PolicySnapshot>>>,
}

impl PolicyCache {
    /// Forgets the cached policies (after a change through this replica).
    pub fn invalidate(&self) {
        if let Ok(mut guard) = self.inner.lock() {
            *guard = None;
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    pub calendars: CalendarCache,
    pub policies: PolicyCache,
    pub events: EventLog,
}

/// A clock to start: of `kind` and `cycle` for `case`, counting from `origin`.
pub struct ClockStart<'a> {
    pub case: &'a CaseRow,
    pub kind: ClockKind,
    pub cycle: i32,
    pub origin: DateTime<Utc>,
    pub traceparent: &'a str,
}

/// What one firing did, for the metrics the service exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FiredKind {
    Warning { percent_used: u32 },
    Breach,
    Escalation { level: u32 },
}

#[derive(Clone, Debug)]
pub struct Fired {
    pub clock_id: Uuid,
    pub case_id: Uuid,
    pub kind: i16,
    pub severity: i16,
    pub department_id: String,
    pub what: FiredKind,
    /// When it was due; `lag` is how late it fired (commit time − due).
    pub due: DateTime<Utc>,
    pub lag: Duration,
}

/// The outcome of one scheduler pass.
#[derive(Clone, Debug, Default)]
pub struct FireReport {
    pub claimed: usize,
    pub fired: Vec<Fired>,
}

/// A deadline and how it is made up.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub clock: ClockRow,
    pub calendar: Arc<BusinessCalendar>,
    pub segments: Vec<Segment>,
    /// Pauses with the target time they excluded.
    pub pauses: Vec<(Pause, Duration)>,
    /// (used amount, instant when reached or planned, fired).
    pub warnings: Vec<(Duration, Option<DateTime<Utc>>, bool)>,
    /// (level, instant, fired).
    pub escalations: Vec<(u32, Option<DateTime<Utc>>, bool)>,
    pub notes: Vec<String>,
}

fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(to_timestamp(at))
}

pub fn calendar_from_row(row: &store::CalendarRow) -> anyhow::Result<BusinessCalendar> {
    let zone: chrono_tz::Tz = row.time_zone.parse().map_err(|_| {
        anyhow::anyhow!(
            "calendar {} has unknown time zone {}",
            row.id,
            row.time_zone
        )
    })?;
    Ok(BusinessCalendar::from_rules(
        &row.id,
        row.version,
        &row.name,
        zone,
        &row.source,
        row.rules.0.clone(),
    ))
}

pub fn facts_of(case: &CaseRow) -> CaseFacts {
    CaseFacts {
        severity: case.severity as i32,
        priority: case.priority as i32,
        complexity: case.complexity as i32,
        customer_tier: case.customer_tier as i32,
        channel: case.channel as i32,
        category: case.category.clone(),
    }
}

fn local(calendar: &BusinessCalendar, at: DateTime<Utc>) -> String {
    at.with_timezone(&calendar.time_zone)
        .format("%a %Y-%m-%d %H:%M %Z")
        .to_string()
}

impl CalendarCache {
    fn cached(&self, id: &str, version: i64) -> Option<Arc<BusinessCalendar>> {
        let map = self.inner.read().ok()?;
        map.get(id).filter(|c| c.version == version).cloned()
    }

    fn store(&self, calendar: BusinessCalendar) -> Arc<BusinessCalendar> {
        let calendar = Arc::new(calendar);
        if let Ok(mut map) = self.inner.write() {
            map.insert(calendar.id.clone(), calendar.clone());
        }
        calendar
    }
}

impl Engine {
    pub fn new(events: EventLog) -> Self {
        Self {
            calendars: CalendarCache::default(),
            policies: PolicyCache::default(),
            events,
        }
    }

    /// Ships the standard and mainland-China calendars and the default policies the first time
    /// the schema is used (replicas racing here insert once).
    pub async fn seed_defaults(
        &self,
        pool: &PgPool,
        org_timezone: chrono_tz::Tz,
    ) -> anyhow::Result<()> {
        let mut tx = pool.begin().await?;
        let mut standard = crate::standard_calendar(org_timezone);
        standard.name = "Monday to Friday, 09:00–12:00 and 13:00–18:00".into();
        store::insert_calendar(&mut tx, &standard, None).await?;
        store::insert_calendar(&mut tx, &days::cn_mainland_calendar(), None).await?;
        for policy in policy::defaults(crate::default_calendar_id(org_timezone)) {
            store::insert_policy(&mut tx, &policy, None).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A calendar at its current version. `share` takes a share lock on its row so that a
    /// concurrent calendar change waits for (and then re-plans) the clock being started.
    pub async fn calendar(
        &self,
        conn: &mut PgConnection,
        id: &str,
        share: bool,
    ) -> anyhow::Result<Arc<BusinessCalendar>> {
        let sql = if share {
            "SELECT version FROM sla.calendars WHERE id = $1 FOR SHARE"
        } else {
            "SELECT version FROM sla.calendars WHERE id = $1"
        };
        let version: Option<(i64,)> = sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((version,)) = version else {
            anyhow::bail!("calendar {id} does not exist");
        };
        if let Some(calendar) = self.calendars.cached(id, version) {
            return Ok(calendar);
        }
        let row = store::calendar_row(conn, id, false)
            .await?
            .ok_or_else(|| anyhow::anyhow!("calendar {id} does not exist"))?;
        Ok(self.calendars.store(calendar_from_row(&row)?))
    }

    /// Calendars for a batch: one query for every version, loads only what changed.
    async fn calendars_now(
        &self,
        conn: &mut PgConnection,
    ) -> anyhow::Result<HashMap<String, Arc<BusinessCalendar>>> {
        let mut out = HashMap::new();
        for (id, version) in store::calendar_versions(conn).await? {
            let calendar = match self.calendars.cached(&id, version) {
                Some(c) => c,
                None => self.calendar(conn, &id, false).await?,
            };
            out.insert(id, calendar);
        }
        Ok(out)
    }

    pub async fn policies(&self, conn: &mut PgConnection) -> anyhow::Result<Arc<Vec<Policy>>> {
        if let Ok(guard) = self.policies.inner.lock()
            && let Some((_, policies, checked)) = guard.as_ref()
            && checked.elapsed() < POLICY_RECHECK
        {
            return Ok(policies.clone());
        }
        let fingerprint = store::policies_fingerprint(conn).await?;
        if let Ok(mut guard) = self.policies.inner.lock()
            && let Some((seen, policies, checked)) = guard.as_mut()
            && *seen == fingerprint
        {
            *checked = std::time::Instant::now();
            return Ok(policies.clone());
        }
        let policies: Arc<Vec<Policy>> = Arc::new(
            store::all_policies(conn)
                .await?
                .iter()
                .map(store::PolicyRow::policy)
                .collect(),
        );
        if let Ok(mut guard) = self.policies.inner.lock() {
            *guard = Some((fingerprint, policies.clone(), std::time::Instant::now()));
        }
        Ok(policies)
    }

    pub async fn policy_for(
        &self,
        conn: &mut PgConnection,
        facts: &CaseFacts,
    ) -> anyhow::Result<PolicyMatch> {
        let policies = self.policies(conn).await?;
        choose(&policies, facts)
    }

    /// Recomputes the deadline and the next firing of a clock from its state.
    pub fn plan(&self, calendar: &BusinessCalendar, clock: &mut ClockRow) -> anyhow::Result<()> {
        let timing = clock.timing();
        if !clock.is_active() {
            clock.next_fire_at = None;
            return Ok(());
        }
        if let Some((due, _)) = timing.due(calendar)? {
            clock.due_at = Some(due);
        } else if clock.state == PAUSED {
            clock.due_at = None;
        }
        let (thresholds, ladder) = (clock.thresholds(), clock.ladder());
        let rules = clock::FireRules {
            thresholds: &thresholds,
            ladder: &ladder,
        };
        let next = timing.next_fire(calendar, &rules, &clock.progress())?;
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
        let start = ClockStart {
            case,
            kind,
            cycle,
            origin,
            traceparent,
        };
        let mut calendars = CalendarsRead::shared();
        Ok(self
            .start_clocks(conn, &mut calendars, &[start])
            .await?
            .pop())
    }

    /// Starts several clocks with set-based statements: each calendar involved is read (and
    /// share-locked: `calendars` must be [`CalendarsRead::shared`]) once for the transaction,
    /// the clocks are planned in memory, then inserted and announced with one statement each.
    /// Clocks whose (case, kind, cycle) already exists are skipped; returns the clocks started,
    /// in the order given.
    pub async fn start_clocks(
        &self,
        conn: &mut PgConnection,
        calendars: &mut CalendarsRead,
        starts: &[ClockStart<'_>],
    ) -> anyhow::Result<Vec<ClockRow>> {
        debug_assert!(calendars.share, "clocks start on share-locked calendars");
        let mut clocks = Vec::with_capacity(starts.len());
        let mut announcements = Vec::with_capacity(starts.len());
        for start in starts {
            let case = start.case;
            let chosen = self.policy_for(conn, &facts_of(case)).await?;
            let Some(measure) = chosen.policy.measure(start.kind) else {
                continue;
            };
            let calendar = calendars
                .get(self, conn, &chosen.policy.calendar_id)
                .await?;
            let (target, business) = measure.resolve(calendar.standard_day());
            let started_at = if business {
                calendar.next_working_instant(start.origin)?
            } else {
                start.origin
            };
            let mut clock = ClockRow {
                id: Uuid::now_v7(),
                case_id: case.case_id,
                kind: start.kind as i16,
                cycle: start.cycle,
                state: RUNNING,
                policy_id: chosen.policy.id.clone(),
                policy_reason: chosen.reason.clone(),
                calendar_id: calendar.id.clone(),
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
                origin_at: start.origin,
                policy_version: chosen.policy.version,
                thresholds_ms: millis(&chosen.policy.warning_thresholds(target)),
                ladder_ms: chosen.policy.ladder_ms.clone(),
                warned_ms: 0,
                plan_note: String::new(),
            };
            self.plan(&calendar, &mut clock)?;
            clocks.push(clock);
            announcements.push((start.traceparent, target));
        }
        let inserted: std::collections::HashSet<Uuid> = store::insert_clocks(conn, &clocks)
            .await?
            .into_iter()
            .collect();
        let mut started = Vec::with_capacity(inserted.len());
        let mut events = Vec::with_capacity(inserted.len());
        for (clock, (traceparent, target)) in clocks.into_iter().zip(announcements) {
            if !inserted.contains(&clock.id) {
                continue;
            }
            events.push((
                clock.case_id.to_string(),
                traceparent.to_owned(),
                Payload::ClockStarted(ClockStarted {
                    clock_id: clock.id.to_string(),
                    case_id: clock.case_id.to_string(),
                    kind: clock.kind as i32,
                    due_at: clock.due_at.map(to_timestamp),
                    target: Some(to_pb_duration(target)),
                }),
            ));
            started.push(clock);
        }
        self.events.append_all(conn, events).await?;
        Ok(started)
    }

    /// The target was achieved at `at`.
    pub async fn meet(
        &self,
        conn: &mut PgConnection,
        clock: ClockRow,
        at: DateTime<Utc>,
        traceparent: &str,
    ) -> anyhow::Result<()> {
        let mut calendars = CalendarsRead::default();
        self.meet_all(conn, &mut calendars, vec![(clock, at, traceparent)])
            .await
    }

    /// Meets several clocks (each target achieved at its instant) with one update and one
    /// event statement; each calendar involved is read once (for the transaction, through
    /// `calendars`).
    pub async fn meet_all(
        &self,
        conn: &mut PgConnection,
        calendars: &mut CalendarsRead,
        met: Vec<(ClockRow, DateTime<Utc>, &str)>,
    ) -> anyhow::Result<()> {
        if met.is_empty() {
            return Ok(());
        }
        let mut clocks = Vec::with_capacity(met.len());
        let mut events = Vec::with_capacity(met.len());
        for (mut clock, at, traceparent) in met {
            let calendar = calendars.get(self, conn, &clock.calendar_id).await?;
            let mut timing = clock.timing();
            timing.pause(&calendar, at);
            let elapsed = timing.consumed;
            let on_time = elapsed <= timing.target && clock.breached_at.is_none();
            clock.set_timing(&timing);
            clock.state = MET;
            clock.met_at = Some(at);
            clock.met_on_time = Some(on_time);
            clock.next_fire_at = None;
            events.push((
                clock.case_id.to_string(),
                traceparent.to_owned(),
                Payload::ClockMet(ClockMet {
                    clock_id: clock.id.to_string(),
                    case_id: clock.case_id.to_string(),
                    kind: clock.kind as i32,
                    met_at: ts(at),
                    due_at: clock.due_at.map(to_timestamp),
                    on_time,
                    elapsed: Some(to_pb_duration(elapsed)),
                }),
            ));
            clocks.push(clock);
        }
        store::save_met_clocks(conn, &clocks).await?;
        self.events.append_all(conn, events).await?;
        Ok(())
    }

    pub async fn pause(
        &self,
        conn: &mut PgConnection,
        calendars: &mut CalendarsRead,
        mut clock: ClockRow,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        if clock.running_since.is_none() {
            return Ok(());
        }
        let calendar = calendars.get(self, conn, &clock.calendar_id).await?;
        let mut timing = clock.timing();
        timing.pause(&calendar, at);
        clock.set_timing(&timing);
        if clock.state == RUNNING {
            clock.state = PAUSED;
        }
        self.plan(&calendar, &mut clock)?;
        clock.next_fire_at = None;
        store::save_clock(conn, &clock).await?;
        store::record_pause(conn, clock.id, at).await?;
        Ok(())
    }

    pub async fn resume(
        &self,
        conn: &mut PgConnection,
        calendars: &mut CalendarsRead,
        mut clock: ClockRow,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        if clock.running_since.is_some() {
            return Ok(());
        }
        let calendar = calendars.get(self, conn, &clock.calendar_id).await?;
        let mut timing = clock.timing();
        timing.resume(at);
        clock.set_timing(&timing);
        if clock.state == PAUSED {
            clock.state = RUNNING;
        }
        self.plan(&calendar, &mut clock)?;
        store::save_clock(conn, &clock).await?;
        store::record_resume(conn, clock.id, at).await?;
        Ok(())
    }

    pub async fn cancel(
        &self,
        conn: &mut PgConnection,
        calendars: &mut CalendarsRead,
        mut clock: ClockRow,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let calendar = calendars.get(self, conn, &clock.calendar_id).await?;
        Self::stop(&calendar, &mut clock, at);
        store::save_clock(conn, &clock).await.map_err(Into::into)
    }

    /// Cancels a clock in memory: the time it used up to `at` is kept, nothing more fires.
    fn stop(calendar: &BusinessCalendar, clock: &mut ClockRow, at: DateTime<Utc>) {
        let mut timing = clock.timing();
        timing.pause(calendar, at);
        clock.set_timing(&timing);
        clock.state = CANCELLED;
        clock.next_fire_at = None;
    }

    /// Recounts the time a clock used from its runs (start, pauses) under `calendar` and its
    /// measure, so a changed calendar or target applies to the whole life of the clock.
    /// `pauses` are the clock's, in order.
    fn recount(
        calendar: &BusinessCalendar,
        clock: &mut ClockRow,
        pauses: &[Pause],
    ) -> anyhow::Result<()> {
        let runs = clock::runs(clock.origin_at, pauses, None);
        let mut consumed = Duration::zero();
        let mut running_since = None;
        for run in &runs {
            match run.end {
                Some(end) => consumed += clock::measured(calendar, clock.business, run.start, end),
                None => running_since = Some(run.start),
            }
        }
        clock.consumed_ms = consumed.num_milliseconds();
        clock.running_since = running_since;
        // When it started counting, as a clock started now would: business time from the
        // first working minute after the wait began, calendar time from the wait's start.
        clock.started_at = if clock.business {
            calendar.next_working_instant(clock.origin_at)?
        } else {
            clock.origin_at
        };
        Ok(())
    }

    /// Re-plans every open clock of a calendar after it changed. Returns how many.
    pub async fn replan_calendar(
        &self,
        conn: &mut PgConnection,
        calendar: &BusinessCalendar,
        now: DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        let clocks = store::lock_open_clocks_of_calendar(conn, &calendar.id).await?;
        let count = clocks.len();
        if clocks.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = clocks.iter().map(|c| c.id).collect();
        let pauses = store::pauses_of_clocks(conn, &ids).await?;
        for mut clock in clocks {
            let before = clock.due_at;
            let paused = pauses.get(&clock.id).map(Vec::as_slice).unwrap_or_default();
            Self::recount(calendar, &mut clock, paused)?;
            self.plan(calendar, &mut clock)?;
            if clock.due_at != before {
                clock.plan_note = format!(
                    "re-planned {} after calendar {} changed to version {}: due {} (was {})",
                    local(calendar, now),
                    calendar.id,
                    calendar.version,
                    clock
                        .due_at
                        .map(|d| local(calendar, d))
                        .unwrap_or_else(|| "—".into()),
                    before
                        .map(|d| local(calendar, d))
                        .unwrap_or_else(|| "—".into()),
                );
            }
            store::save_clock(conn, &clock).await?;
        }
        Ok(count)
    }

    /// Re-plans the open clocks of cases (each given once, with why) whose severity, priority,
    /// complexity, tier or category changed: the policy is chosen again and each clock takes
    /// its new target, keeping the time it already used (recounted in the new measure). The
    /// policies, the clocks, their pauses and each calendar are read once for all of them, and
    /// every clock is saved with one statement; a clock whose kind the new policy does not
    /// measure is cancelled. Returns how many clocks it re-planned.
    pub async fn reclassify_all(
        &self,
        conn: &mut PgConnection,
        calendars: &mut CalendarsRead,
        cases: &[(&CaseRow, &str)],
        now: DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        if cases.is_empty() {
            return Ok(0);
        }
        let policies = self.policies(conn).await?;
        let mut chosen = HashMap::with_capacity(cases.len());
        for (case, why) in cases {
            chosen.insert(
                case.case_id,
                (*case, *why, choose(&policies, &facts_of(case))?),
            );
        }
        let ids: Vec<Uuid> = cases.iter().map(|(case, _)| case.case_id).collect();
        let clocks: Vec<ClockRow> = store::lock_clocks_of(conn, &ids)
            .await?
            .into_values()
            .flat_map(|clocks| clocks.active())
            .collect();
        if clocks.is_empty() {
            return Ok(0);
        }
        let clock_ids: Vec<Uuid> = clocks.iter().map(|c| c.id).collect();
        let pauses = store::pauses_of_clocks(conn, &clock_ids).await?;
        let mut saved = Vec::with_capacity(clocks.len());
        for mut clock in clocks {
            let Some((case, why, chosen)) = chosen.get(&clock.case_id) else {
                continue;
            };
            let kind = ClockKind::try_from(clock.kind as i32).unwrap_or(ClockKind::Unspecified);
            let Some(measure) = chosen.policy.measure(kind) else {
                let calendar = calendars.get(self, conn, &clock.calendar_id).await?;
                Self::stop(&calendar, &mut clock, now);
                saved.push(clock);
                continue;
            };
            let calendar = calendars
                .get(self, conn, &chosen.policy.calendar_id)
                .await?;
            let (target, business) = measure.resolve(calendar.standard_day());
            let before = (clock.policy_id.clone(), clock.policy_version, clock.due_at);
            clock.severity = case.severity;
            clock.department_id = case.department_id.clone();
            clock.target_ms = target.num_milliseconds();
            clock.business = business;
            clock.calendar_id = calendar.id.clone();
            clock.policy_id = chosen.policy.id.clone();
            clock.policy_version = chosen.policy.version;
            clock.policy_reason = chosen.reason.clone();
            clock.thresholds_ms = millis(&chosen.policy.warning_thresholds(target));
            clock.ladder_ms = chosen.policy.ladder_ms.clone();
            let paused = pauses.get(&clock.id).map(Vec::as_slice).unwrap_or_default();
            Self::recount(&calendar, &mut clock, paused)?;
            self.plan(&calendar, &mut clock)?;
            clock.plan_note = format!(
                "re-planned {} after reclassification ({why}): policy {} v{} → {} v{}, due {} (was {})",
                local(&calendar, now),
                before.0,
                before.1,
                clock.policy_id,
                clock.policy_version,
                clock
                    .due_at
                    .map(|d| local(&calendar, d))
                    .unwrap_or_else(|| "—".into()),
                before
                    .2
                    .map(|d| local(&calendar, d))
                    .unwrap_or_else(|| "—".into()),
            );
            saved.push(clock);
        }
        store::save_clocks(conn, &saved).await?;
        Ok(saved.len())
    }

    /// Fires what is due on one clock (possibly several steps after downtime). Returns what
    /// fired with the instant each was due.
    async fn fire_clock(
        &self,
        conn: &mut PgConnection,
        calendar: &BusinessCalendar,
        mut clock: ClockRow,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(FiredKind, DateTime<Utc>, ClockRow)>> {
        let mut fired = Vec::new();
        let (thresholds, ladder) = (clock.thresholds(), clock.ladder());
        let rules = clock::FireRules {
            thresholds: &thresholds,
            ladder: &ladder,
        };
        for _ in 0..32 {
            let timing = clock.timing();
            let next = timing.next_fire(calendar, &rules, &clock.progress())?;
            let Some(next) = next.filter(|n| n.at() <= now) else {
                break;
            };
            let case = clock.case_id.to_string();
            let what = match next {
                NextFire::Warning { used, .. } => {
                    let percent = (used.num_milliseconds() * 100 / clock.target_ms.max(1)) as u32;
                    clock.warned_ms = used.num_milliseconds();
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
                    FiredKind::Warning {
                        percent_used: percent,
                    }
                }
                NextFire::Breach { at } => {
                    clock.state = BREACHED;
                    clock.breached_at = Some(at);
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
                                escalation_level: u32::from(!ladder.is_empty()),
                            }),
                        )
                        .await?;
                    FiredKind::Breach
                }
                NextFire::Escalation { level, .. } => {
                    clock.escalation_level = level as i32;
                    self.queue_escalation(conn, &clock, level).await?;
                    FiredKind::Escalation { level }
                }
            };
            fired.push((what, next.at(), clock.clone()));
        }
        self.plan(calendar, &mut clock)?;
        store::save_clock(conn, &clock).await?;
        Ok(fired)
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

    /// Claims and fires up to `limit` due clocks in one transaction. Returns how many clocks it
    /// claimed and the firing lags (commit time − due, for `sla_firing_lag_seconds`).
    pub async fn fire_due(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
        limit: i64,
    ) -> anyhow::Result<(usize, Vec<Duration>)> {
        let report = self.fire_due_report(pool, now, limit).await?;
        Ok((report.claimed, report.fired.iter().map(|f| f.lag).collect()))
    }

    /// Like [`Engine::fire_due`], with what fired on which clock (kind, severity, department)
    /// for `sla_warnings_total` and `sla_breaches_total`.
    pub async fn fire_due_report(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
        limit: i64,
    ) -> anyhow::Result<FireReport> {
        let started = std::time::Instant::now();
        let mut tx = pool.begin().await?;
        let clocks = store::claim_due_clocks(&mut tx, now, limit).await?;
        let claimed = clocks.len();
        if claimed == 0 {
            tx.commit().await?;
            return Ok(FireReport::default());
        }
        let calendars = self.calendars_now(&mut tx).await?;
        let mut fired = Vec::new();
        let case_ids: Vec<Uuid> = clocks.iter().map(|c| c.case_id).collect();
        let traces = store::case_traces(&mut tx, &case_ids).await?;
        for clock in clocks {
            let calendar = match calendars.get(&clock.calendar_id) {
                Some(c) => c.clone(),
                None => self.calendar(&mut tx, &clock.calendar_id, false).await?,
            };
            // Firing hours after intake is still part of the complaint's trace.
            let span = tracing::info_span!(
                "sla.fire",
                otel.name = "fire SLA clock",
                case.id = %clock.case_id,
                sla.clock.id = %clock.id,
            );
            if let Some(trace) = traces.get(&clock.case_id) {
                complaints_kit::telemetry::continue_trace(&span, trace);
            }
            use tracing::Instrument as _;
            fired.extend(
                self.fire_clock(&mut tx, &calendar, clock, now)
                    .instrument(span)
                    .await?,
            );
        }
        tx.commit().await?;
        // `now` may be a test's; the real time spent firing is added to its lateness.
        let spent = Duration::from_std(started.elapsed()).unwrap_or_else(|_| Duration::zero());
        if !fired.is_empty() {
            self.events.committed();
        }
        Ok(FireReport {
            claimed,
            fired: fired
                .into_iter()
                .map(|(what, due, clock)| Fired {
                    clock_id: clock.id,
                    case_id: clock.case_id,
                    kind: clock.kind,
                    severity: clock.severity,
                    department_id: clock.department_id,
                    what,
                    due,
                    lag: now - due + spent,
                })
                .collect(),
        })
    }

    /// Why a clock is due when it is.
    pub async fn explain(
        &self,
        pool: &PgPool,
        clock: ClockRow,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Explanation> {
        let mut conn = pool.acquire().await?;
        let calendar = self.calendar(&mut conn, &clock.calendar_id, false).await?;
        let pauses = store::pauses_of_clocks(&mut conn, &[clock.id])
            .await?
            .remove(&clock.id)
            .unwrap_or_default();
        drop(conn);
        let stopped = match clock.state {
            MET | CANCELLED => clock.met_at.or(Some(now)),
            _ => None,
        };
        let runs = clock::runs(clock.origin_at, &pauses, stopped);
        let target = Duration::milliseconds(clock.target_ms);
        let (segments, _) = clock::explain_segments(&calendar, clock.business, target, &runs)?;
        let excluded = pauses
            .iter()
            .map(|p| {
                let end = p.resumed_at.unwrap_or(now);
                (
                    *p,
                    clock::measured(&calendar, clock.business, p.paused_at, end),
                )
            })
            .collect();
        let reached = |amount: Duration| clock::instant_at(&segments, amount);
        let warnings = clock
            .thresholds()
            .into_iter()
            .map(|t| (t, reached(t), t <= Duration::milliseconds(clock.warned_ms)))
            .collect();
        let escalation_base = clock.breached_at.or(clock.due_at);
        let escalations = clock
            .ladder()
            .into_iter()
            .enumerate()
            .map(|(i, wait)| {
                let level = i as u32 + 1;
                (
                    level,
                    escalation_base.map(|b| b + wait),
                    level <= clock.escalation_level.max(0) as u32,
                )
            })
            .collect();
        let mut notes = vec![clock.policy_reason.clone()];
        if clock.business {
            notes.push(format!(
                "counts business time of calendar {} v{} ({})",
                calendar.id,
                calendar.version,
                calendar.time_zone.name()
            ));
            if clock.started_at > clock.origin_at {
                notes.push(format!(
                    "the wait began {}, outside working time; the clock counts from the next working minute, {}",
                    local(&calendar, clock.origin_at),
                    local(&calendar, clock.started_at)
                ));
            }
        } else {
            notes.push("counts calendar time: nights, weekends and holidays included".into());
        }
        if !pauses.is_empty() {
            notes.push(format!(
                "{} pause(s); only the {} time inside them was excluded",
                pauses.len(),
                if clock.business {
                    "business"
                } else {
                    "calendar"
                }
            ));
        }
        if !clock.plan_note.is_empty() {
            notes.push(clock.plan_note.clone());
        }
        Ok(Explanation {
            clock,
            calendar,
            segments,
            pauses: excluded,
            warnings,
            escalations,
            notes,
        })
    }
}

/// The policy for a case's facts; an error when none matches.
fn choose(policies: &[Policy], facts: &CaseFacts) -> anyhow::Result<PolicyMatch> {
    policy::select(policies, facts)
        .ok_or_else(|| anyhow::anyhow!("no SLA policy matches the case (add a catch-all policy)"))
}

fn millis(durations: &[Duration]) -> Vec<i64> {
    durations.iter().map(|d| d.num_milliseconds()).collect()
}

pub const ACTIVE_STATES: [i16; 3] = [RUNNING, PAUSED, BREACHED];
