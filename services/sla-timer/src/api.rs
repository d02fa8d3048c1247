//! gRPC handlers of `SlaService`: decode and validate, authorise, call the engine or the store,
//! encode. Policy and calendar rules live in `domain`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use complaints_kit::Shutdown;
use complaints_kit::auth::{self, Principal, Role};
use complaints_kit::grpc::{self, FieldErrors};
use complaints_kit::pagination;
use complaints_kit::time::{
    from_pb_duration, from_timestamp, opt_timestamp, to_pb_duration, to_timestamp,
};
use complaints_proto::common::v1::{Channel, Complexity, CustomerTier, Priority, Severity};
use complaints_proto::events::v1::{Event, event::Payload};
use complaints_proto::sla::v1 as pb;
use complaints_proto::sla::v1::sla_service_server::SlaService;
use prost::Message;
use sqlx::PgPool;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::domain::calendar::{BusinessCalendar, WorkRange};
use crate::domain::days;
use crate::domain::policy::{self, CaseFacts, Criteria, Measure, Policy, Warning};
use crate::engine::{Engine, calendar_from_row};
use crate::store::{self, ClockRow, MET};

const READERS: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::Quality,
    Role::Admin,
    Role::Service,
];
const MANAGERS: &[Role] = &[Role::Admin];
const MONITORS: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::Quality,
    Role::Admin,
    Role::Service,
];

pub struct SlaApi {
    pool: PgPool,
    engine: Engine,
    shutdown: Option<Shutdown>,
}

fn internal(error: anyhow::Error) -> Status {
    if let Some(db) = error.downcast_ref::<sqlx::Error>() {
        return grpc::storage(db);
    }
    tracing::error!(error = %error, "sla request failed");
    Status::internal("internal error")
}

fn db(error: sqlx::Error) -> Status {
    grpc::storage(&error)
}

// --- Conversions ---------------------------------------------------------------------------

fn parse_hm(text: &str, is_end: bool) -> Option<NaiveTime> {
    if is_end && text == "24:00" {
        return Some(NaiveTime::MIN);
    }
    let time = NaiveTime::parse_from_str(text, "%H:%M").ok()?;
    // 00:00 as an end would mean midnight at the end of the day: spell it 24:00.
    (!(is_end && time == NaiveTime::MIN)).then_some(time)
}

fn format_hm(time: NaiveTime, is_end: bool) -> String {
    if is_end && time == NaiveTime::MIN {
        "24:00".into()
    } else {
        time.format("%H:%M").to_string()
    }
}

fn ranges_from_proto(
    field: &str,
    ranges: &[pb::WorkingRange],
    errors: &mut FieldErrors,
) -> Vec<WorkRange> {
    let mut out = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        let start = parse_hm(&r.start, false);
        let end = parse_hm(&r.end, true);
        if start.is_none() {
            errors.add(format!("{field}[{i}].start"), "must be HH:MM (00:00–23:59)");
        }
        if end.is_none() {
            errors.add(format!("{field}[{i}].end"), "must be HH:MM (00:01–24:00)");
        }
        if let (Some(start), Some(end)) = (start, end) {
            out.push(WorkRange { start, end });
        }
    }
    out
}

fn ranges_to_proto(ranges: &[WorkRange]) -> Vec<pb::WorkingRange> {
    ranges
        .iter()
        .map(|r| pb::WorkingRange {
            start: format_hm(r.start, false),
            end: format_hm(r.end, true),
        })
        .collect()
}

fn parse_days(
    field: &str,
    days: &[pb::CalendarDay],
    errors: &mut FieldErrors,
) -> Vec<(NaiveDate, String)> {
    let mut out = Vec::new();
    for (i, day) in days.iter().enumerate() {
        match NaiveDate::parse_from_str(&day.date, "%Y-%m-%d") {
            Ok(date) => out.push((date, day.name.trim().to_owned())),
            Err(_) => errors.add(format!("{field}[{i}].date"), "must be YYYY-MM-DD"),
        }
    }
    out
}

/// A calendar from its message, or every wrong field.
fn calendar_from_proto(c: &pb::Calendar) -> Result<BusinessCalendar, Status> {
    let mut errors = FieldErrors::new();
    if !policy::is_slug(&c.id) {
        errors.add(
            "calendar.id",
            "required: 1–64 lower-case letters, digits or '-'",
        );
    }
    if c.name.trim().is_empty() || c.name.len() > 200 {
        errors.add("calendar.name", "required, at most 200 characters");
    }
    let zone: Option<chrono_tz::Tz> = if c.time_zone.trim().is_empty() {
        errors.add(
            "calendar.time_zone",
            "required: an IANA time zone such as Asia/Shanghai (the server's zone is never assumed)",
        );
        None
    } else {
        match c.time_zone.parse() {
            Ok(zone) => Some(zone),
            Err(_) => {
                errors.add("calendar.time_zone", "unknown IANA time zone");
                None
            }
        }
    };
    let mut weekly: [Vec<WorkRange>; 7] = Default::default();
    let mut seen = [false; 7];
    for (i, day) in c.weekly_hours.iter().enumerate() {
        let field = format!("calendar.weekly_hours[{i}]");
        let Some(weekday) = grpc::require_enum::<pb::Weekday>(
            &mut errors,
            &format!("{field}.weekday"),
            day.weekday,
        ) else {
            continue;
        };
        let index = weekday as usize - 1;
        if seen[index] {
            errors.add(format!("{field}.weekday"), "listed twice");
        }
        seen[index] = true;
        weekly[index] = ranges_from_proto(&format!("{field}.ranges"), &day.ranges, &mut errors);
    }
    let makeup_hours = ranges_from_proto("calendar.makeup_hours", &c.makeup_hours, &mut errors);
    let holidays = parse_days("calendar.holidays", &c.holidays, &mut errors);
    let makeup = parse_days("calendar.makeup_workdays", &c.makeup_workdays, &mut errors);
    let Some(zone) = zone else {
        return Err(errors.into_status());
    };
    let mut calendar = BusinessCalendar::weekdays(&c.id, zone, Vec::new());
    calendar.weekly = weekly;
    calendar.makeup_hours = makeup_hours;
    calendar.name = c.name.trim().to_owned();
    calendar.source = c.source.trim().to_owned();
    calendar.version = c.version as i64;
    for (date, name) in holidays {
        calendar.holidays.insert(date);
        if !name.is_empty() {
            calendar.day_names.insert(date, name);
        }
    }
    for (date, name) in makeup {
        calendar.makeup_workdays.insert(date);
        if !name.is_empty() {
            calendar.day_names.insert(date, name);
        }
    }
    for (field, problem) in calendar.violations() {
        errors.add(field, problem);
    }
    errors.into_result()?;
    Ok(calendar)
}

fn calendar_to_proto(c: &BusinessCalendar, updated_at: Option<DateTime<Utc>>) -> pb::Calendar {
    let day = |date: &NaiveDate| pb::CalendarDay {
        date: date.format("%Y-%m-%d").to_string(),
        name: c.day_names.get(date).cloned().unwrap_or_default(),
    };
    pb::Calendar {
        id: c.id.clone(),
        version: c.version.max(0) as u64,
        name: c.name.clone(),
        time_zone: c.time_zone.name().to_owned(),
        weekly_hours: c
            .weekly
            .iter()
            .enumerate()
            .filter(|(_, ranges)| !ranges.is_empty())
            .map(|(i, ranges)| pb::WeekdayHours {
                weekday: i as i32 + 1,
                ranges: ranges_to_proto(ranges),
            })
            .collect(),
        holidays: c.holidays.iter().map(day).collect(),
        makeup_workdays: c.makeup_workdays.iter().map(day).collect(),
        makeup_hours: ranges_to_proto(&c.makeup_hours),
        source: c.source.clone(),
        updated_at: opt_timestamp(updated_at),
    }
}

fn measure_from_proto(
    field: &str,
    target: Option<&pb::Target>,
    required: bool,
    errors: &mut FieldErrors,
) -> Option<Measure> {
    use pb::target::Measure as M;
    match target.and_then(|t| t.measure.as_ref()) {
        Some(M::BusinessTime(d)) => Some(Measure::business(from_pb_duration(d))),
        Some(M::CalendarTime(d)) => Some(Measure::calendar(from_pb_duration(d))),
        Some(M::WorkingDays(n)) => Some(Measure::WorkingDays((*n).min(100_000) as i32)),
        None => {
            if required {
                errors.add(
                    field,
                    "required: business_time, working_days or calendar_time",
                );
            }
            None
        }
    }
}

fn measure_to_proto(measure: Measure) -> pb::Target {
    use pb::target::Measure as M;
    pb::Target {
        measure: Some(match measure {
            Measure::BusinessMs(ms) => M::BusinessTime(to_pb_duration(Duration::milliseconds(ms))),
            Measure::WorkingDays(n) => M::WorkingDays(n.max(0) as u32),
            Measure::CalendarMs(ms) => M::CalendarTime(to_pb_duration(Duration::milliseconds(ms))),
        }),
    }
}

fn optional_enum<E: TryFrom<i32>>(errors: &mut FieldErrors, field: &str, raw: i32) -> Option<i32> {
    if raw == 0 {
        return None;
    }
    if E::try_from(raw).is_err() {
        errors.add(field, format!("unknown value {raw}"));
        return None;
    }
    Some(raw)
}

/// A policy from its message, or every wrong field.
fn policy_from_proto(p: &pb::Policy) -> Result<Policy, Status> {
    let mut errors = FieldErrors::new();
    let c = p.criteria.clone().unwrap_or_default();
    let criteria = Criteria {
        severity: optional_enum::<Severity>(&mut errors, "policy.criteria.severity", c.severity),
        priority: optional_enum::<Priority>(&mut errors, "policy.criteria.priority", c.priority),
        complexity: optional_enum::<Complexity>(
            &mut errors,
            "policy.criteria.complexity",
            c.complexity,
        ),
        customer_tier: optional_enum::<CustomerTier>(
            &mut errors,
            "policy.criteria.customer_tier",
            c.customer_tier,
        ),
        channel: optional_enum::<Channel>(&mut errors, "policy.criteria.channel", c.channel),
        category: Some(c.category.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let first_response = measure_from_proto(
        "policy.first_response",
        p.first_response.as_ref(),
        true,
        &mut errors,
    );
    let customer_update = measure_from_proto(
        "policy.customer_update",
        p.customer_update.as_ref(),
        false,
        &mut errors,
    );
    let resolution = measure_from_proto(
        "policy.resolution",
        p.resolution.as_ref(),
        true,
        &mut errors,
    );
    let follow_up = measure_from_proto("policy.follow_up", p.follow_up.as_ref(), true, &mut errors);
    let mut warnings = Vec::new();
    for (i, w) in p.warnings.iter().enumerate() {
        use pb::warning_threshold::Threshold as T;
        match &w.threshold {
            Some(T::PercentUsed(percent)) => warnings.push(Warning::Percent(*percent)),
            Some(T::BeforeDeadline(d)) => warnings.push(Warning::BeforeDeadlineMs(
                from_pb_duration(d).num_milliseconds(),
            )),
            None => errors.add(
                format!("policy.warnings[{i}]"),
                "required: percent_used or before_deadline",
            ),
        }
    }
    let mut ladder_ms = Vec::new();
    for (i, step) in p.escalation_ladder.iter().enumerate() {
        if step.level != i as u32 + 1 {
            errors.add(
                format!("policy.escalation_ladder[{i}].level"),
                format!("levels climb one at a time from 1: expected {}", i + 1),
            );
        }
        match &step.after_breach {
            Some(d) => ladder_ms.push(from_pb_duration(d).num_milliseconds()),
            None => errors.add(
                format!("policy.escalation_ladder[{i}].after_breach"),
                "required",
            ),
        }
    }
    let (Some(first_response), Some(resolution), Some(follow_up)) =
        (first_response, resolution, follow_up)
    else {
        return Err(errors.into_status());
    };
    let policy = Policy {
        id: p.id.trim().to_owned(),
        version: p.version as i64,
        name: p.name.trim().to_owned(),
        calendar_id: p.calendar_id.trim().to_owned(),
        criteria,
        first_response,
        customer_update,
        resolution,
        follow_up,
        warnings,
        ladder_ms,
    };
    for (field, problem) in policy.violations() {
        errors.add(field, problem);
    }
    errors.into_result()?;
    Ok(policy)
}

fn policy_to_proto(p: &Policy, updated_at: Option<DateTime<Utc>>) -> pb::Policy {
    let c = &p.criteria;
    pb::Policy {
        id: p.id.clone(),
        version: p.version.max(0) as u64,
        name: p.name.clone(),
        calendar_id: p.calendar_id.clone(),
        criteria: Some(pb::PolicyCriteria {
            severity: c.severity.unwrap_or(0),
            priority: c.priority.unwrap_or(0),
            complexity: c.complexity.unwrap_or(0),
            customer_tier: c.customer_tier.unwrap_or(0),
            channel: c.channel.unwrap_or(0),
            category: c.category.clone().unwrap_or_default(),
        }),
        first_response: Some(measure_to_proto(p.first_response)),
        customer_update: p.customer_update.map(measure_to_proto),
        resolution: Some(measure_to_proto(p.resolution)),
        follow_up: Some(measure_to_proto(p.follow_up)),
        warnings: p
            .warnings
            .iter()
            .map(|w| pb::WarningThreshold {
                threshold: Some(match *w {
                    Warning::Percent(percent) => {
                        pb::warning_threshold::Threshold::PercentUsed(percent)
                    }
                    Warning::BeforeDeadlineMs(ms) => {
                        pb::warning_threshold::Threshold::BeforeDeadline(to_pb_duration(
                            Duration::milliseconds(ms),
                        ))
                    }
                }),
            })
            .collect(),
        escalation_ladder: p
            .ladder_ms
            .iter()
            .enumerate()
            .map(|(i, ms)| pb::EscalationStep {
                level: i as u32 + 1,
                after_breach: Some(to_pb_duration(Duration::milliseconds(*ms))),
            })
            .collect(),
        updated_at: opt_timestamp(updated_at),
    }
}

fn clock_to_proto(calendar: &BusinessCalendar, clock: &ClockRow, now: DateTime<Utc>) -> pb::Clock {
    let timing = clock.timing();
    let at = if clock.state == MET {
        clock.met_at.unwrap_or(now)
    } else {
        now
    };
    let used = if clock.is_active() {
        timing.used(calendar, at)
    } else {
        timing.consumed
    };
    let target = Duration::milliseconds(clock.target_ms);
    pb::Clock {
        id: clock.id.to_string(),
        case_id: clock.case_id.to_string(),
        kind: clock.kind as i32,
        state: clock.state as i32,
        target: Some(to_pb_duration(target)),
        business_time: clock.business,
        calendar_id: clock.calendar_id.clone(),
        policy_id: clock.policy_id.clone(),
        started_at: Some(to_timestamp(clock.started_at)),
        due_at: opt_timestamp(clock.due_at),
        met_at: opt_timestamp(clock.met_at),
        breached_at: opt_timestamp(clock.breached_at),
        remaining: Some(to_pb_duration(target - used)),
        percent_used: used.num_milliseconds() as f64 * 100.0
            / target.num_milliseconds().max(1) as f64,
        escalation_level: clock.escalation_level.max(0) as u32,
        met_on_time: clock.met_on_time.unwrap_or(false),
        cycle: clock.cycle.max(0) as u32,
        policy_version: clock.policy_version.max(0) as u64,
        department_id: clock.department_id.clone(),
        severity: clock.severity as i32,
    }
}

fn duration_or_zero(d: &Option<prost_types::Duration>) -> Duration {
    d.as_ref()
        .map(from_pb_duration)
        .unwrap_or_else(Duration::zero)
}

// --- Access --------------------------------------------------------------------------------

/// The department a monitoring query is limited to: the caller's own for agents and supervisors.
fn department_scope(who: &Principal, requested: &str) -> Result<Option<String>, Status> {
    let requested = Some(requested.trim().to_owned()).filter(|d| !d.is_empty());
    if who.sees_everything() {
        return Ok(requested);
    }
    let Some(own) = who.department.clone() else {
        return Err(Status::permission_denied(
            "agents and supervisors need a department in their token",
        ));
    };
    match requested {
        Some(other) if other != own => Err(Status::permission_denied(
            "agents and supervisors see only their own department",
        )),
        _ => Ok(Some(own)),
    }
}

fn optional_severity(raw: i32) -> Result<Option<i16>, Status> {
    let mut errors = FieldErrors::new();
    let value = optional_enum::<Severity>(&mut errors, "severity", raw);
    errors.into_result()?;
    Ok(value.map(|v| v as i16))
}

impl SlaApi {
    pub fn new(pool: PgPool, engine: Engine) -> Self {
        Self {
            pool,
            engine,
            shutdown: None,
        }
    }

    /// Ends open alert streams when the server shuts down.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    async fn calendars_of(
        &self,
        clocks: &[ClockRow],
    ) -> Result<HashMap<String, Arc<BusinessCalendar>>, Status> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let mut out = HashMap::new();
        for clock in clocks {
            if !out.contains_key(&clock.calendar_id) {
                let calendar = self
                    .engine
                    .calendar(&mut conn, &clock.calendar_id, false)
                    .await
                    .map_err(internal)?;
                out.insert(clock.calendar_id.clone(), calendar);
            }
        }
        Ok(out)
    }

    async fn clocks_to_proto(&self, clocks: &[ClockRow]) -> Result<Vec<pb::Clock>, Status> {
        let calendars = self.calendars_of(clocks).await?;
        let now = Utc::now();
        Ok(clocks
            .iter()
            .filter_map(|c| {
                calendars
                    .get(&c.calendar_id)
                    .map(|cal| clock_to_proto(cal, c, now))
            })
            .collect())
    }

    /// Agents and supervisors see the clocks of their department's cases or of cases they own.
    async fn may_see_case(&self, who: &Principal, case_id: uuid::Uuid) -> Result<bool, Status> {
        if who.sees_everything() {
            return Ok(true);
        }
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT department_id, owner_id FROM sla.cases WHERE case_id = $1")
                .bind(case_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
        Ok(row.is_some_and(|(department, owner)| {
            who.department.as_deref() == Some(department.as_str()) || who.subject == owner
        }))
    }

    async fn replan_and_store_calendar(
        &self,
        calendar: &mut BusinessCalendar,
        expected: u64,
    ) -> Result<(DateTime<Utc>, usize), Status> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let current = store::calendar_row(&mut tx, &calendar.id, true)
            .await
            .map_err(db)?
            .ok_or_else(|| grpc::not_found("calendar", &calendar.id))?;
        if current.version as u64 != expected {
            return Err(grpc::stale_version(
                &format!("calendar {}", calendar.id),
                expected,
                current.version as u64,
            ));
        }
        calendar.version = current.version + 1;
        let updated_at = store::update_calendar(&mut tx, calendar)
            .await
            .map_err(db)?;
        let replanned = self
            .engine
            .replan_calendar(&mut tx, calendar, Utc::now())
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(db)?;
        Ok((updated_at, replanned))
    }

    async fn calendar_exists(&self, id: &str) -> Result<bool, Status> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(store::calendar_row(&mut conn, id, false)
            .await
            .map_err(db)?
            .is_some())
    }
}

type AlertStream = ReceiverStream<Result<pb::WatchClockAlertsResponse, Status>>;

#[tonic::async_trait]
impl SlaService for SlaApi {
    async fn list_case_clocks(
        &self,
        request: Request<pb::ListCaseClocksRequest>,
    ) -> Result<Response<pb::ListCaseClocksResponse>, Status> {
        let who = auth::principal(&request)?;
        who.require_any(READERS)?;
        let case_id = grpc::parse_uuid("case_id", &request.get_ref().case_id)?;
        if !self.may_see_case(&who, case_id).await? {
            return Err(grpc::not_found("case", &case_id.to_string()));
        }
        let clocks = store::clocks_of_case(&self.pool, case_id)
            .await
            .map_err(db)?;
        Ok(Response::new(pb::ListCaseClocksResponse {
            clocks: self.clocks_to_proto(&clocks).await?,
        }))
    }

    async fn explain_clock(
        &self,
        request: Request<pb::ExplainClockRequest>,
    ) -> Result<Response<pb::ExplainClockResponse>, Status> {
        let who = auth::principal(&request)?;
        who.require_any(READERS)?;
        let clock_id = grpc::parse_uuid("clock_id", &request.get_ref().clock_id)?;
        let clock = store::clock(&self.pool, clock_id)
            .await
            .map_err(db)?
            .ok_or_else(|| grpc::not_found("clock", &clock_id.to_string()))?;
        if !self.may_see_case(&who, clock.case_id).await? {
            return Err(grpc::not_found("clock", &clock_id.to_string()));
        }
        let now = Utc::now();
        let explained = self
            .engine
            .explain(&self.pool, clock, now)
            .await
            .map_err(internal)?;
        let calendar = &explained.calendar;
        let target = Duration::milliseconds(explained.clock.target_ms);
        Ok(Response::new(pb::ExplainClockResponse {
            clock: Some(clock_to_proto(calendar, &explained.clock, now)),
            policy_reason: explained.clock.policy_reason.clone(),
            calendar_version: calendar.version.max(0) as u64,
            time_zone: calendar.time_zone.name().to_owned(),
            origin_at: Some(to_timestamp(explained.clock.origin_at)),
            segments: explained
                .segments
                .iter()
                .map(|s| pb::TimeSegment {
                    start: Some(to_timestamp(s.start)),
                    end: Some(to_timestamp(s.end)),
                })
                .collect(),
            pauses: explained
                .pauses
                .iter()
                .map(|(p, excluded)| pb::ClockPause {
                    paused_at: Some(to_timestamp(p.paused_at)),
                    resumed_at: opt_timestamp(p.resumed_at),
                    excluded: Some(to_pb_duration(*excluded)),
                })
                .collect(),
            warnings: explained
                .warnings
                .iter()
                .map(|(used, at, fired)| pb::PlannedWarning {
                    percent_used: (used.num_milliseconds() * 100 / target.num_milliseconds().max(1))
                        as u32,
                    before_deadline: Some(to_pb_duration(target - *used)),
                    at: opt_timestamp(*at),
                    fired: *fired,
                })
                .collect(),
            escalations: explained
                .escalations
                .iter()
                .map(|(level, at, fired)| pb::PlannedEscalation {
                    level: *level,
                    at: opt_timestamp(*at),
                    fired: *fired,
                })
                .collect(),
            notes: explained.notes.clone(),
        }))
    }

    async fn create_policy(
        &self,
        request: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::CreatePolicyResponse>, Status> {
        auth::principal(&request)?.require_any(MANAGERS)?;
        let body = request.into_inner();
        let request_id = body.request_id.trim().to_owned();
        let mut errors = FieldErrors::new();
        if request_id.is_empty() || request_id.len() > 200 {
            errors.add("request_id", "required, at most 200 characters");
        }
        let Some(message) = body.policy else {
            errors.add("policy", "required");
            return Err(errors.into_status());
        };
        errors.into_result()?;
        if let Some(row) = store::policy_by_request(&self.pool, &request_id)
            .await
            .map_err(db)?
        {
            return Ok(Response::new(pb::CreatePolicyResponse {
                policy: Some(policy_to_proto(&row.policy(), Some(row.updated_at))),
            }));
        }
        let mut policy = policy_from_proto(&message)?;
        if !self.calendar_exists(&policy.calendar_id).await? {
            return Err(grpc::invalid_field(
                "policy.calendar_id",
                "no such calendar",
            ));
        }
        policy.version = 1;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let inserted = store::insert_policy(&mut tx, &policy, Some(&request_id))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.engine.policies.invalidate();
        if !inserted {
            // Either the same request raced us, or the id is taken.
            if let Some(row) = store::policy_by_request(&self.pool, &request_id)
                .await
                .map_err(db)?
            {
                return Ok(Response::new(pb::CreatePolicyResponse {
                    policy: Some(policy_to_proto(&row.policy(), Some(row.updated_at))),
                }));
            }
            return Err(Status::already_exists(format!(
                "policy {} already exists",
                policy.id
            )));
        }
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let row = store::policy_row(&mut conn, &policy.id, false)
            .await
            .map_err(db)?
            .ok_or_else(|| Status::internal("policy vanished"))?;
        Ok(Response::new(pb::CreatePolicyResponse {
            policy: Some(policy_to_proto(&row.policy(), Some(row.updated_at))),
        }))
    }

    async fn update_policy(
        &self,
        request: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        auth::principal(&request)?.require_any(MANAGERS)?;
        let Some(message) = request.into_inner().policy else {
            return Err(grpc::invalid_field("policy", "required"));
        };
        if message.version == 0 {
            return Err(grpc::invalid_field(
                "policy.version",
                "required: the version the change is based on",
            ));
        }
        let mut policy = policy_from_proto(&message)?;
        if !self.calendar_exists(&policy.calendar_id).await? {
            return Err(grpc::invalid_field(
                "policy.calendar_id",
                "no such calendar",
            ));
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let current = store::policy_row(&mut tx, &policy.id, true)
            .await
            .map_err(db)?
            .ok_or_else(|| grpc::not_found("policy", &policy.id))?;
        if current.version as u64 != message.version {
            return Err(grpc::stale_version(
                &format!("policy {}", policy.id),
                message.version,
                current.version as u64,
            ));
        }
        policy.version = current.version + 1;
        let updated_at = store::update_policy(&mut tx, &policy).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.engine.policies.invalidate();
        // Clocks already running keep the version they were planned with; new clocks and
        // reclassified cases take this one.
        Ok(Response::new(pb::UpdatePolicyResponse {
            policy: Some(policy_to_proto(&policy, Some(updated_at))),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        auth::principal(&request)?.require_any(READERS)?;
        let id = request.get_ref().policy_id.trim();
        if id.is_empty() {
            return Err(grpc::invalid_field("policy_id", "required"));
        }
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let row = store::policy_row(&mut conn, id, false)
            .await
            .map_err(db)?
            .ok_or_else(|| grpc::not_found("policy", id))?;
        Ok(Response::new(pb::GetPolicyResponse {
            policy: Some(policy_to_proto(&row.policy(), Some(row.updated_at))),
        }))
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        auth::principal(&request)?.require_any(READERS)?;
        let body = request.get_ref();
        let limit = pagination::page_size(body.page_size)?;
        let after: Option<String> = pagination::decode(&body.page_token)?;
        let mut rows = store::list_policies(&self.pool, after.as_deref(), limit + 1)
            .await
            .map_err(db)?;
        let next_page_token = pagination::next_page(&mut rows, limit, |last| last.id.clone());
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: rows
                .iter()
                .map(|r| policy_to_proto(&r.policy(), Some(r.updated_at)))
                .collect(),
            next_page_token,
        }))
    }

    async fn match_policy(
        &self,
        request: Request<pb::MatchPolicyRequest>,
    ) -> Result<Response<pb::MatchPolicyResponse>, Status> {
        auth::principal(&request)?.require_any(READERS)?;
        let b = request.get_ref();
        let mut errors = FieldErrors::new();
        optional_enum::<Severity>(&mut errors, "severity", b.severity);
        optional_enum::<Priority>(&mut errors, "priority", b.priority);
        optional_enum::<Complexity>(&mut errors, "complexity", b.complexity);
        optional_enum::<CustomerTier>(&mut errors, "customer_tier", b.customer_tier);
        optional_enum::<Channel>(&mut errors, "channel", b.channel);
        errors.into_result()?;
        let facts = CaseFacts {
            severity: b.severity,
            priority: b.priority,
            complexity: b.complexity,
            customer_tier: b.customer_tier,
            channel: b.channel,
            category: b.category.trim().to_owned(),
        };
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let chosen = self
            .engine
            .policy_for(&mut conn, &facts)
            .await
            .map_err(|e| {
                if e.downcast_ref::<sqlx::Error>().is_some() {
                    internal(e)
                } else {
                    grpc::failed_precondition("POLICY", "policies", &e.to_string())
                }
            })?;
        Ok(Response::new(pb::MatchPolicyResponse {
            policy: Some(policy_to_proto(&chosen.policy, None)),
            reason: chosen.reason,
            matched_criteria: chosen.matched,
            candidate_policy_ids: chosen.candidates,
        }))
    }

    async fn create_calendar(
        &self,
        request: Request<pb::CreateCalendarRequest>,
    ) -> Result<Response<pb::CreateCalendarResponse>, Status> {
        auth::principal(&request)?.require_any(MANAGERS)?;
        let body = request.into_inner();
        let request_id = body.request_id.trim().to_owned();
        let mut errors = FieldErrors::new();
        if request_id.is_empty() || request_id.len() > 200 {
            errors.add("request_id", "required, at most 200 characters");
        }
        let Some(message) = body.calendar else {
            errors.add("calendar", "required");
            return Err(errors.into_status());
        };
        errors.into_result()?;
        let existing =
            |row: store::CalendarRow| -> Result<Response<pb::CreateCalendarResponse>, Status> {
                let calendar = calendar_from_row(&row).map_err(internal)?;
                Ok(Response::new(pb::CreateCalendarResponse {
                    calendar: Some(calendar_to_proto(&calendar, Some(row.updated_at))),
                }))
            };
        if let Some(row) = store::calendar_by_request(&self.pool, &request_id)
            .await
            .map_err(db)?
        {
            return existing(row);
        }
        let mut calendar = calendar_from_proto(&message)?;
        calendar.version = 1;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let inserted = store::insert_calendar(&mut tx, &calendar, Some(&request_id))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if !inserted {
            if let Some(row) = store::calendar_by_request(&self.pool, &request_id)
                .await
                .map_err(db)?
            {
                return existing(row);
            }
            return Err(Status::already_exists(format!(
                "calendar {} already exists",
                calendar.id
            )));
        }
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let row = store::calendar_row(&mut conn, &calendar.id, false)
            .await
            .map_err(db)?
            .ok_or_else(|| Status::internal("calendar vanished"))?;
        existing(row)
    }

    async fn update_calendar(
        &self,
        request: Request<pb::UpdateCalendarRequest>,
    ) -> Result<Response<pb::UpdateCalendarResponse>, Status> {
        auth::principal(&request)?.require_any(MANAGERS)?;
        let Some(message) = request.into_inner().calendar else {
            return Err(grpc::invalid_field("calendar", "required"));
        };
        if message.version == 0 {
            return Err(grpc::invalid_field(
                "calendar.version",
                "required: the version the change is based on",
            ));
        }
        let mut calendar = calendar_from_proto(&message)?;
        let (updated_at, replanned) = self
            .replan_and_store_calendar(&mut calendar, message.version)
            .await?;
        Ok(Response::new(pb::UpdateCalendarResponse {
            calendar: Some(calendar_to_proto(&calendar, Some(updated_at))),
            replanned_clocks: replanned as u32,
        }))
    }

    async fn get_calendar(
        &self,
        request: Request<pb::GetCalendarRequest>,
    ) -> Result<Response<pb::GetCalendarResponse>, Status> {
        auth::principal(&request)?.require_any(READERS)?;
        let id = request.get_ref().calendar_id.trim();
        if id.is_empty() {
            return Err(grpc::invalid_field("calendar_id", "required"));
        }
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let row = store::calendar_row(&mut conn, id, false)
            .await
            .map_err(db)?
            .ok_or_else(|| grpc::not_found("calendar", id))?;
        let calendar = calendar_from_row(&row).map_err(internal)?;
        Ok(Response::new(pb::GetCalendarResponse {
            calendar: Some(calendar_to_proto(&calendar, Some(row.updated_at))),
        }))
    }

    async fn list_calendars(
        &self,
        request: Request<pb::ListCalendarsRequest>,
    ) -> Result<Response<pb::ListCalendarsResponse>, Status> {
        auth::principal(&request)?.require_any(READERS)?;
        let body = request.get_ref();
        let limit = pagination::page_size(body.page_size)?;
        let after: Option<String> = pagination::decode(&body.page_token)?;
        let mut rows = store::list_calendars(&self.pool, after.as_deref(), limit + 1)
            .await
            .map_err(db)?;
        let next_page_token = pagination::next_page(&mut rows, limit, |last| last.id.clone());
        let mut calendars = Vec::with_capacity(rows.len());
        for row in &rows {
            let calendar = calendar_from_row(row).map_err(internal)?;
            calendars.push(calendar_to_proto(&calendar, Some(row.updated_at)));
        }
        Ok(Response::new(pb::ListCalendarsResponse {
            calendars,
            next_page_token,
        }))
    }

    async fn import_calendar_ics(
        &self,
        request: Request<pb::ImportCalendarIcsRequest>,
    ) -> Result<Response<pb::ImportCalendarIcsResponse>, Status> {
        auth::principal(&request)?.require_any(MANAGERS)?;
        let body = request.into_inner();
        let mut errors = FieldErrors::new();
        if body.calendar_id.trim().is_empty() {
            errors.add("calendar_id", "required");
        }
        if body.version == 0 {
            errors.add("version", "required: the version the import is based on");
        }
        if body.ics.len() > 2_000_000 {
            errors.add("ics", "at most 2 MB");
        }
        let imported = match days::parse_ics(&body.ics) {
            Ok(days) => Some(days),
            Err(e) => {
                errors.add("ics", e.to_string());
                None
            }
        };
        errors.into_result()?;
        let imported = imported.unwrap_or_default();
        let id = body.calendar_id.trim();
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let row = store::calendar_row(&mut conn, id, false)
            .await
            .map_err(db)?
            .ok_or_else(|| grpc::not_found("calendar", id))?;
        drop(conn);
        let mut calendar = calendar_from_row(&row).map_err(internal)?;
        let (holidays_added, workdays_added) = days::apply_days(&mut calendar, &imported);
        if !body.source.trim().is_empty() {
            calendar.source = if calendar.source.is_empty() {
                body.source.trim().to_owned()
            } else {
                format!("{}; {}", calendar.source, body.source.trim())
            };
        }
        let violations = calendar.violations();
        if !violations.is_empty() {
            let mut errors = FieldErrors::new();
            for (field, problem) in violations {
                errors.add(
                    "ics",
                    format!("the result would be invalid: {field}: {problem}"),
                );
            }
            return Err(errors.into_status());
        }
        let (updated_at, replanned) = self
            .replan_and_store_calendar(&mut calendar, body.version)
            .await?;
        Ok(Response::new(pb::ImportCalendarIcsResponse {
            calendar: Some(calendar_to_proto(&calendar, Some(updated_at))),
            holidays_added: holidays_added as u32,
            makeup_workdays_added: workdays_added as u32,
            ignored: imported.ignored,
            replanned_clocks: replanned as u32,
        }))
    }

    async fn list_cases_at_risk(
        &self,
        request: Request<pb::ListCasesAtRiskRequest>,
    ) -> Result<Response<pb::ListCasesAtRiskResponse>, Status> {
        let who = auth::principal(&request)?;
        who.require_any(MONITORS)?;
        let body = request.get_ref();
        let department = department_scope(&who, &body.department_id)?;
        let severity = optional_severity(body.severity)?;
        let within = duration_or_zero(&body.due_within);
        if within < Duration::zero() || within > Duration::days(366) {
            return Err(grpc::invalid_field("due_within", "must be 0 to 366 days"));
        }
        let limit = pagination::page_size(body.page_size)?;
        let after: Option<(DateTime<Utc>, uuid::Uuid)> = pagination::decode(&body.page_token)?;
        let mut clocks = store::clocks_at_risk(
            &self.pool,
            department.as_deref(),
            severity,
            Utc::now() + within,
            after,
            limit + 1,
        )
        .await
        .map_err(db)?;
        let more = clocks.len() as i64 > limit;
        clocks.truncate(limit as usize);
        let next_page_token = match (more, clocks.last()) {
            (true, Some(last)) => pagination::encode(&(last.due_at, last.id)),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListCasesAtRiskResponse {
            clocks: self.clocks_to_proto(&clocks).await?,
            next_page_token,
        }))
    }

    type WatchClockAlertsStream = AlertStream;

    async fn watch_clock_alerts(
        &self,
        request: Request<pb::WatchClockAlertsRequest>,
    ) -> Result<Response<Self::WatchClockAlertsStream>, Status> {
        let who = auth::principal(&request)?;
        who.require_any(MONITORS)?;
        let body = request.into_inner();
        let department = department_scope(&who, &body.department_id)?;
        let severity = optional_severity(body.severity)?;
        let position: (i64, i64) = match pagination::decode::<(i64, i64)>(&body.resume_token)
            .map_err(|_| grpc::invalid_field("resume_token", "not a token this service issued"))?
        {
            Some(p) => p,
            None => complaints_kit::events::live_feed_start(&self.pool)
                .await
                .map_err(db)?,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let pool = self.pool.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut position = position;
            loop {
                let rows = match store::alerts_after(&pool, position, 500).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        let _ = tx.send(Err(grpc::storage(&error))).await;
                        return;
                    }
                };
                let full = rows.len() == 500;
                let mut alerts = Vec::new();
                for (txid, seq, payload, case_department, case_severity) in rows {
                    position = (txid, seq);
                    if department
                        .as_deref()
                        .is_some_and(|d| case_department.as_deref() != Some(d))
                        || severity.is_some_and(|s| case_severity != Some(s))
                    {
                        continue;
                    }
                    let Ok(event) = Event::decode(payload.as_slice()) else {
                        continue;
                    };
                    let mut alert = pb::ClockAlert {
                        occurred_at: event.occurred_at,
                        department_id: case_department.unwrap_or_default(),
                        severity: case_severity.unwrap_or(0) as i32,
                        resume_token: pagination::encode(&(txid, seq)),
                        ..Default::default()
                    };
                    match event.payload {
                        Some(Payload::ClockWarning(w)) => {
                            alert.kind = pb::AlertKind::Warning as i32;
                            alert.clock_id = w.clock_id;
                            alert.case_id = w.case_id;
                            alert.clock_kind = w.kind;
                            alert.percent_used = w.percent_used;
                            alert.due_at = w.due_at;
                        }
                        Some(Payload::ClockBreached(b)) => {
                            alert.kind = pb::AlertKind::Breach as i32;
                            alert.clock_id = b.clock_id;
                            alert.case_id = b.case_id;
                            alert.clock_kind = b.kind;
                            alert.percent_used = 100;
                            alert.due_at = b.due_at;
                            alert.escalation_level = b.escalation_level;
                        }
                        _ => continue,
                    }
                    alerts.push(alert);
                }
                if !alerts.is_empty()
                    && tx
                        .send(Ok(pb::WatchClockAlertsResponse { alerts }))
                        .await
                        .is_err()
                {
                    return;
                }
                if full {
                    continue;
                }
                let stop = async {
                    match &shutdown {
                        Some(s) => s.wait().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(StdDuration::from_millis(250)) => {}
                    _ = tx.closed() => return,
                    _ = stop => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_compliance(
        &self,
        request: Request<pb::GetComplianceRequest>,
    ) -> Result<Response<pb::GetComplianceResponse>, Status> {
        let who = auth::principal(&request)?;
        who.require_any(&[Role::Supervisor, Role::Quality, Role::Admin, Role::Service])?;
        let body = request.get_ref();
        let department = department_scope(&who, &body.department_id)?;
        let mut errors = FieldErrors::new();
        let start = body.period_start.as_ref().and_then(from_timestamp);
        let end = body.period_end.as_ref().and_then(from_timestamp);
        if start.is_none() {
            errors.add("period_start", "required");
        }
        if end.is_none() {
            errors.add("period_end", "required");
        }
        if let (Some(s), Some(e)) = (start, end)
            && (e <= s || e - s > Duration::days(400))
        {
            errors.add("period_end", "must be after period_start, within 400 days");
        }
        let severity = optional_enum::<Severity>(&mut errors, "severity", body.severity);
        errors.into_result()?;
        let (Some(start), Some(end)) = (start, end) else {
            return Err(grpc::invalid_field("period_start", "required"));
        };
        let rows = store::compliance(
            &self.pool,
            start,
            end,
            department.as_deref(),
            severity.map(|s| s as i16),
        )
        .await
        .map_err(db)?;
        Ok(Response::new(pb::GetComplianceResponse {
            figures: rows
                .into_iter()
                .map(|r| {
                    let concluded = r.met_on_time + r.met_late + r.breached_open;
                    pb::ComplianceFigures {
                        kind: r.kind as i32,
                        met_on_time: r.met_on_time as u32,
                        met_late: r.met_late as u32,
                        breached_open: r.breached_open as u32,
                        on_time_rate: if concluded == 0 {
                            1.0
                        } else {
                            r.met_on_time as f64 / concluded as f64
                        },
                    }
                })
                .collect(),
        }))
    }
}
