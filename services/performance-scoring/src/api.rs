//! gRPC handlers of `ScoringService`: decode and validate, authorise, call the reports, store
//! or evaluation, encode. No scoring rules live here.

use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use chrono_tz::Tz;
use complaints_kit::auth::{self, Principal, Role};
use complaints_kit::grpc::{self, FieldErrors};
use complaints_kit::pagination;
use complaints_kit::time::{from_timestamp, to_timestamp};
use complaints_proto::common::v1::Severity;
use complaints_proto::scoring::v1 as pb;
use complaints_proto::scoring::v1::scoring_service_server::ScoringService;
use sqlx::PgPool;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::facts::{AGENT, DEPARTMENT, ORGANISATION, TEAM};
use crate::domain::kpi::{Rate, per_10k_orders};
use crate::domain::model::{self, Grade, Indicator, ModelDefinition, ScoreCard, Thresholds};
use crate::domain::period::{Period, PeriodKind, Quarter, day_start, days_overlapping};
use crate::domain::trend;
use crate::evaluation::{self, EvaluationError, EvaluationRequest, TRIGGER_ON_DEMAND};
use crate::reports;
use crate::store::{self, EvaluationRecord, OrderFigures, Scope, StoredModel};

const MAX_ID_LEN: usize = 128;
const MAX_TREND_POINTS: usize = 120;
const MAX_ORDER_DAYS: usize = 3_700;

pub struct ScoringApi {
    pool: PgPool,
    org_timezone: Tz,
    restart_consumers: Arc<Notify>,
}

impl ScoringApi {
    pub fn new(pool: PgPool, org_timezone: Tz, restart_consumers: Arc<Notify>) -> Self {
        Self {
            pool,
            org_timezone,
            restart_consumers,
        }
    }

    async fn scoring_model(&self, version: u32) -> Result<StoredModel, Status> {
        store::model(&self.pool, (version > 0).then_some(version))
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("scoring model", &version.to_string()))
    }
}

// --- Access ------------------------------------------------------------------------------------

/// What a caller may read.
enum Access {
    Everything,
    /// A supervisor: their department's figures.
    Department(String),
    /// An agent: their own figures.
    Own(String),
}

fn access(principal: &Principal) -> Result<Access, Status> {
    if principal.sees_everything() {
        return Ok(Access::Everything);
    }
    if principal.has(Role::Supervisor) {
        return principal
            .department
            .clone()
            .filter(|d| !d.is_empty())
            .map(Access::Department)
            .ok_or_else(|| {
                Status::permission_denied("a supervisor's token must name a department")
            });
    }
    if principal.has(Role::Agent) {
        return Ok(Access::Own(principal.subject.clone()));
    }
    Err(Status::permission_denied(
        "this call needs an agent, supervisor, quality, admin or service role",
    ))
}

/// The department filter a caller's figures of `kind`/`subject` are restricted to.
fn subject_filter(access: &Access, kind: i16, subject: &str) -> Result<Option<String>, Status> {
    match access {
        Access::Everything => Ok(None),
        Access::Department(d) => match kind {
            DEPARTMENT if subject != d => Err(Status::permission_denied(
                "supervisors read the figures of their own department",
            )),
            ORGANISATION => Ok(None),
            // An agent or team: only their work on this department's cases.
            _ => Ok(Some(d.clone())),
        },
        Access::Own(agent) => {
            if kind == AGENT && subject == agent {
                Ok(None)
            } else {
                Err(Status::permission_denied(
                    "agents may read only their own scorecard",
                ))
            }
        }
    }
}

// --- Decoding ----------------------------------------------------------------------------------

fn subject_kind(errors: &mut FieldErrors, field: &str, raw: i32) -> Option<i16> {
    grpc::require_enum::<pb::SubjectKind>(errors, field, raw).map(|k| match k {
        pb::SubjectKind::Agent => AGENT,
        pb::SubjectKind::Department => DEPARTMENT,
        pb::SubjectKind::Team => TEAM,
        pb::SubjectKind::Organisation | pb::SubjectKind::Unspecified => ORGANISATION,
    })
}

fn kind_to_pb(kind: i16) -> i32 {
    (match kind {
        AGENT => pb::SubjectKind::Agent,
        DEPARTMENT => pb::SubjectKind::Department,
        TEAM => pb::SubjectKind::Team,
        ORGANISATION => pb::SubjectKind::Organisation,
        _ => pb::SubjectKind::Unspecified,
    }) as i32
}

fn subject_id(errors: &mut FieldErrors, field: &str, kind: Option<i16>, raw: &str) -> String {
    let id = raw.trim().to_owned();
    match kind {
        Some(ORGANISATION) if !id.is_empty() => {
            errors.add(field, "must be empty for the organisation")
        }
        Some(ORGANISATION) | None => {}
        Some(_) if id.is_empty() => errors.add(field, "required"),
        Some(_) if id.len() > MAX_ID_LEN => errors.add(field, "too long"),
        Some(_) => {}
    }
    id
}

fn required_id(errors: &mut FieldErrors, field: &str, raw: &str) -> String {
    let id = raw.trim().to_owned();
    if id.is_empty() {
        errors.add(field, "required");
    } else if id.len() > MAX_ID_LEN {
        errors.add(field, "too long");
    }
    id
}

fn parse_date(errors: &mut FieldErrors, field: &str, raw: &str) -> Option<NaiveDate> {
    if raw.trim().is_empty() {
        errors.add(field, "required, as YYYY-MM-DD");
        return None;
    }
    match NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d") {
        Ok(d) if (1970..=9999).contains(&chrono::Datelike::year(&d)) => Some(d),
        _ => {
            errors.add(field, "must be a date YYYY-MM-DD");
            None
        }
    }
}

fn period_kind(errors: &mut FieldErrors, field: &str, raw: i32) -> Option<PeriodKind> {
    grpc::require_enum::<pb::PeriodKind>(errors, field, raw).map(|k| match k {
        pb::PeriodKind::Day => PeriodKind::Day,
        pb::PeriodKind::Week => PeriodKind::Week,
        pb::PeriodKind::Month => PeriodKind::Month,
        pb::PeriodKind::Quarter | pb::PeriodKind::Unspecified => PeriodKind::Quarter,
    })
}

fn period(errors: &mut FieldErrors, field: &str, raw: Option<&pb::Period>) -> Option<Period> {
    let Some(raw) = raw else {
        errors.add(field, "required");
        return None;
    };
    let kind = period_kind(errors, &format!("{field}.kind"), raw.kind);
    let date = parse_date(errors, &format!("{field}.date"), &raw.date);
    Some(Period::containing(kind?, date?))
}

fn period_to_pb(p: &Period) -> pb::Period {
    pb::Period {
        kind: (match p.kind {
            PeriodKind::Day => pb::PeriodKind::Day,
            PeriodKind::Week => pb::PeriodKind::Week,
            PeriodKind::Month => pb::PeriodKind::Month,
            PeriodKind::Quarter => pb::PeriodKind::Quarter,
        }) as i32,
        date: p.first.to_string(),
        last_date: p.last.to_string(),
    }
}

fn indicator_from_pb(raw: pb::Indicator) -> Option<Indicator> {
    Some(match raw {
        pb::Indicator::Unspecified => return None,
        pb::Indicator::ResolutionRate => Indicator::ResolutionRate,
        pb::Indicator::FirstContactResolutionRate => Indicator::FirstContactResolutionRate,
        pb::Indicator::FirstResponseOnTimeRate => Indicator::FirstResponseOnTimeRate,
        pb::Indicator::ResolutionOnTimeRate => Indicator::ResolutionOnTimeRate,
        pb::Indicator::ReopenRate => Indicator::ReopenRate,
        pb::Indicator::EscalationRate => Indicator::EscalationRate,
        pb::Indicator::SatisfactionRate => Indicator::SatisfactionRate,
        pb::Indicator::SurveyResponseRate => Indicator::SurveyResponseRate,
        pb::Indicator::HandlingTimeAverageHours => Indicator::HandlingTimeAverageHours,
        pb::Indicator::HandlingTimeP90Hours => Indicator::HandlingTimeP90Hours,
        pb::Indicator::CsatAverage => Indicator::CsatAverage,
        pb::Indicator::Nps => Indicator::Nps,
    })
}

fn indicator_to_pb(i: Indicator) -> i32 {
    (match i {
        Indicator::ResolutionRate => pb::Indicator::ResolutionRate,
        Indicator::FirstContactResolutionRate => pb::Indicator::FirstContactResolutionRate,
        Indicator::FirstResponseOnTimeRate => pb::Indicator::FirstResponseOnTimeRate,
        Indicator::ResolutionOnTimeRate => pb::Indicator::ResolutionOnTimeRate,
        Indicator::ReopenRate => pb::Indicator::ReopenRate,
        Indicator::EscalationRate => pb::Indicator::EscalationRate,
        Indicator::SatisfactionRate => pb::Indicator::SatisfactionRate,
        Indicator::SurveyResponseRate => pb::Indicator::SurveyResponseRate,
        Indicator::HandlingTimeAverageHours => pb::Indicator::HandlingTimeAverageHours,
        Indicator::HandlingTimeP90Hours => pb::Indicator::HandlingTimeP90Hours,
        Indicator::CsatAverage => pb::Indicator::CsatAverage,
        Indicator::Nps => pb::Indicator::Nps,
    }) as i32
}

// --- Encoding ----------------------------------------------------------------------------------

fn ratio(rate: Rate) -> Option<pb::Ratio> {
    Some(pb::Ratio {
        numerator: rate.numerator,
        denominator: rate.denominator,
        value: rate.value,
    })
}

fn duration(seconds: f64) -> prost_types::Duration {
    let whole = seconds.floor();
    prost_types::Duration {
        seconds: whole as i64,
        nanos: ((seconds - whole) * 1e9) as i32,
    }
}

fn grade_to_pb(grade: Option<Grade>) -> (i32, String) {
    match grade {
        None => (pb::Grade::Unspecified as i32, String::new()),
        Some(g) => (i32::from(g.number()), g.label().to_owned()),
    }
}

fn score_to_pb(s: &ScoreCard) -> pb::Score {
    let (grade, grade_label) = grade_to_pb(s.grade);
    pb::Score {
        model_version: s.model_version,
        total: s.total,
        grade,
        grade_label,
        not_graded_reason: s.not_graded_reason.clone(),
        sample: s.sample,
        indicators: s
            .lines
            .iter()
            .map(|l| pb::IndicatorScore {
                indicator: indicator_to_pb(l.indicator),
                value: l.value,
                target: l.target,
                floor: l.floor,
                weight: l.weight,
                normalised: l.normalised,
                contribution: l.contribution,
            })
            .collect(),
    }
}

fn complaint_rate(orders: &OrderFigures) -> pb::ComplaintRate {
    pb::ComplaintRate {
        complaints: orders.complaints,
        orders: orders.orders,
        days_with_orders: orders.days_with_orders,
        per_10k_orders: per_10k_orders(orders.complaints, orders.orders),
    }
}

fn model_to_pb(m: &StoredModel) -> pb::ScoringModel {
    pb::ScoringModel {
        version: m.version,
        name: m.name.clone(),
        indicators: m
            .definition
            .indicators
            .iter()
            .map(|i| pb::ModelIndicator {
                indicator: indicator_to_pb(i.indicator),
                target: i.target,
                floor: i.floor,
                weight: i.weight,
            })
            .collect(),
        thresholds: Some(pb::GradeThresholds {
            a: m.definition.thresholds.a,
            b: m.definition.thresholds.b,
            c: m.definition.thresholds.c,
            d: m.definition.thresholds.d,
        }),
        minimum_sample: m.definition.minimum_sample,
        created_at: Some(to_timestamp(m.created_at)),
        created_by: m.created_by.clone(),
    }
}

fn evaluation_to_pb(e: &EvaluationRecord) -> pb::Evaluation {
    pb::Evaluation {
        id: e.id.to_string(),
        year: e.year,
        quarter: e.quarter,
        model_version: e.model_version,
        revision: e.revision,
        trigger: (if e.trigger == evaluation::TRIGGER_SCHEDULED {
            pb::EvaluationTrigger::Scheduled
        } else {
            pb::EvaluationTrigger::OnDemand
        }) as i32,
        published_at: Some(to_timestamp(e.published_at)),
        run_by: e.run_by.clone(),
        reason: e.reason.clone(),
        quarter_complete: e.quarter_complete,
        subjects: e.subjects,
        subjects_graded: e.subjects_graded,
        supersedes_id: e.supersedes_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

fn severity_name(severity: i16) -> String {
    Severity::try_from(i32::from(severity))
        .unwrap_or(Severity::Unspecified)
        .as_str_name()
        .to_owned()
}

fn share(part: i64, whole: i64) -> f64 {
    if whole > 0 {
        part as f64 / whole as f64
    } else {
        0.0
    }
}

const ALL_ROLES: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::Quality,
    Role::Admin,
    Role::Service,
];

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    async fn get_scorecard(
        &self,
        request: Request<pb::GetScorecardRequest>,
    ) -> Result<Response<pb::GetScorecardResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ALL_ROLES)?;
        let access = access(&principal)?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let kind = subject_kind(&mut errors, "subject_kind", request.subject_kind);
        let subject = subject_id(&mut errors, "subject_id", kind, &request.subject_id);
        let tz = self.org_timezone;
        let (days, named_period) = if request.period.is_some() {
            if request.period_start.is_some() || request.period_end.is_some() {
                errors.add(
                    "period",
                    "give either period or period_start and period_end",
                );
            }
            let p = period(&mut errors, "period", request.period.as_ref());
            (p.map(|p| (p.first, p.end_exclusive())), p)
        } else {
            let start = request.period_start.as_ref().and_then(from_timestamp);
            let end = request.period_end.as_ref().and_then(from_timestamp);
            if start.is_none() {
                errors.add(
                    "period_start",
                    "a valid timestamp is required (or a period)",
                );
            }
            if end.is_none() {
                errors.add("period_end", "a valid timestamp is required (or a period)");
            }
            match (start, end) {
                (Some(s), Some(e)) if e <= s => {
                    errors.add("period_end", "must be after period_start");
                    (None, None)
                }
                (Some(s), Some(e)) => (Some(days_overlapping(s, e, tz)), None),
                _ => (None, None),
            }
        };
        errors.into_result()?;
        let (Some(kind), Some((first, end_exclusive))) = (kind, days) else {
            return Err(Status::invalid_argument("incomplete request"));
        };
        let department = subject_filter(&access, kind, &subject)?;
        let scoring_model = self.scoring_model(request.model_version).await?;
        let scope = Scope {
            kind,
            subject_id: &subject,
            department_id: department.as_deref(),
            first,
            end_exclusive,
        };
        let f = reports::scorecard(&self.pool, &scope, &scoring_model)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let i = &f.indicators;
        let total = f.counters.cases_opened;
        let mut severities: std::collections::BTreeMap<i16, i64> = Default::default();
        let mut categories: std::collections::BTreeMap<String, i64> = Default::default();
        for (category, severity, cases) in &f.categories {
            *severities.entry(*severity).or_default() += cases;
            *categories.entry(category.clone()).or_default() += cases;
        }
        Ok(Response::new(pb::GetScorecardResponse {
            scorecard: Some(pb::Scorecard {
                subject_kind: kind_to_pb(kind),
                subject_id: subject,
                period_start: Some(to_timestamp(day_start(first, tz))),
                period_end: Some(to_timestamp(day_start(end_exclusive, tz))),
                cases_opened: i.cases_opened,
                cases_resolved: i.cases_resolved,
                resolution_rate: ratio(i.resolution_rate),
                first_response_on_time_rate: ratio(i.first_response_on_time_rate),
                csat_average: i.csat_average,
                csat_responses: i.csat_responses,
                satisfaction_rate: ratio(i.satisfaction_rate),
                nps: i.nps,
                nps_responses: i.nps_responses,
                first_contact_resolution_rate: ratio(i.first_contact_resolution_rate),
                resolution_on_time_rate: ratio(i.resolution_on_time_rate),
                handling_time_average: i.handling_time_average_secs.map(duration),
                handling_time_p90: i.handling_time_p90_secs.map(|s| duration(s as f64)),
                handling_time_samples: i.handling_time_samples,
                reopen_rate: ratio(i.reopen_rate),
                escalations: i.escalations,
                escalation_rate: ratio(i.escalation_rate),
                survey_response_rate: ratio(i.survey_response_rate),
                categories: categories
                    .into_iter()
                    .map(|(category, cases)| pb::CategoryCount {
                        category,
                        cases: cases.max(0) as u64,
                        share: share(cases, total),
                    })
                    .collect(),
                severities: severities
                    .into_iter()
                    .map(|(severity, cases)| pb::SeverityCount {
                        severity: severity_name(severity),
                        cases: cases.max(0) as u64,
                        share: share(cases, total),
                    })
                    .collect(),
                complaint_rate: f.orders.as_ref().map(complaint_rate),
                score: Some(score_to_pb(&f.score)),
                period: named_period.as_ref().map(period_to_pb),
            }),
        }))
    }

    async fn get_leaderboard(
        &self,
        request: Request<pb::GetLeaderboardRequest>,
    ) -> Result<Response<pb::GetLeaderboardResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Supervisor, Role::Quality, Role::Admin, Role::Service])?;
        let access = access(&principal)?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let department = required_id(&mut errors, "department_id", &request.department_id);
        let kind = subject_kind(&mut errors, "subject_kind", request.subject_kind);
        if kind.is_some_and(|k| k != AGENT && k != TEAM) {
            errors.add(
                "subject_kind",
                "must be SUBJECT_KIND_AGENT or SUBJECT_KIND_TEAM",
            );
        }
        let period = period(&mut errors, "period", request.period.as_ref());
        let page_size = match pagination::page_size(request.page_size) {
            Ok(n) => n as usize,
            Err(_) => {
                errors.add(
                    "page_size",
                    format!("must be at most {}", pagination::MAX_PAGE_SIZE),
                );
                0
            }
        };
        let offset: usize = match pagination::decode::<usize>(&request.page_token) {
            Ok(o) => o.unwrap_or(0),
            Err(_) => {
                errors.add("page_token", "not a token this service issued");
                0
            }
        };
        errors.into_result()?;
        let (Some(kind), Some(period)) = (kind, period) else {
            return Err(Status::invalid_argument("incomplete request"));
        };
        if let Access::Department(d) = &access
            && *d != department
        {
            return Err(Status::permission_denied(
                "supervisors read the leaderboard of their own department",
            ));
        }
        let scoring_model = self.scoring_model(request.model_version).await?;
        let ranked = reports::leaderboard(&self.pool, kind, &department, &period, &scoring_model)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let next = offset + page_size;
        let next_page_token = if next < ranked.len() {
            pagination::encode(&next)
        } else {
            String::new()
        };
        let entries = ranked
            .into_iter()
            .skip(offset)
            .take(page_size)
            .map(|r| {
                let (grade, grade_label) = grade_to_pb(r.score.grade);
                pb::LeaderboardEntry {
                    rank: r.rank,
                    subject_id: r.subject_id,
                    cases_opened: r.cases_opened,
                    total: r.score.total,
                    grade,
                    grade_label,
                }
            })
            .collect();
        Ok(Response::new(pb::GetLeaderboardResponse {
            period: Some(period_to_pb(&period)),
            model_version: scoring_model.version,
            entries,
            next_page_token,
        }))
    }

    async fn get_trend(
        &self,
        request: Request<pb::GetTrendRequest>,
    ) -> Result<Response<pb::GetTrendResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ALL_ROLES)?;
        let access = access(&principal)?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let kind = subject_kind(&mut errors, "subject_kind", request.subject_kind);
        let subject = subject_id(&mut errors, "subject_id", kind, &request.subject_id);
        let period_kind = period_kind(&mut errors, "period_kind", request.period_kind);
        let from = parse_date(&mut errors, "from_date", &request.from_date);
        let to = parse_date(&mut errors, "to_date", &request.to_date);
        if let (Some(f), Some(t)) = (from, to)
            && t < f
        {
            errors.add("to_date", "must not be before from_date");
        }
        let baseline = period(&mut errors, "baseline", request.baseline.as_ref());
        let periods = match (period_kind, from, to) {
            (Some(k), Some(f), Some(t)) if f <= t => {
                let periods = reports::periods_between(k, f, t, MAX_TREND_POINTS);
                if periods.is_none() {
                    errors.add("to_date", format!("at most {MAX_TREND_POINTS} periods"));
                }
                periods
            }
            _ => None,
        };
        errors.into_result()?;
        let (Some(kind), Some(periods), Some(baseline)) = (kind, periods, baseline) else {
            return Err(Status::invalid_argument("incomplete request"));
        };
        let department = subject_filter(&access, kind, &subject)?;
        let point = |p: Period| {
            let pool = self.pool.clone();
            let subject = subject.clone();
            let department = department.clone();
            async move {
                reports::trend_point(&pool, kind, &subject, department.as_deref(), p)
                    .await
                    .map_err(|e| grpc::storage(&e))
            }
        };
        let base = point(baseline).await?;
        let base_rate = base
            .orders
            .as_ref()
            .and_then(|o| per_10k_orders(o.complaints, o.orders));
        let encode = |f: &reports::TrendFigures, is_baseline: bool| {
            let rate = f
                .orders
                .as_ref()
                .and_then(|o| per_10k_orders(o.complaints, o.orders));
            let change = (!is_baseline)
                .then(|| trend::complaint_rate_change(rate, base_rate))
                .flatten();
            let nps_change = (!is_baseline)
                .then(|| trend::nps_change(f.indicators.nps, base.indicators.nps))
                .flatten();
            pb::TrendPoint {
                period: Some(period_to_pb(&f.period)),
                cases_opened: f.indicators.cases_opened,
                satisfaction_rate: ratio(f.indicators.satisfaction_rate),
                nps: f.indicators.nps,
                nps_responses: f.indicators.nps_responses,
                complaint_rate: f.orders.as_ref().map(complaint_rate),
                complaint_rate_change: change,
                nps_change,
                satisfaction_target_met: trend::satisfaction_met(
                    f.indicators.satisfaction_rate.value,
                ),
                complaint_rate_target_met: trend::complaint_rate_met(change),
                nps_target_met: trend::nps_met(nps_change),
            }
        };
        let mut points = Vec::with_capacity(periods.len());
        for p in periods {
            let figures = point(p).await?;
            points.push(encode(&figures, false));
        }
        Ok(Response::new(pb::GetTrendResponse {
            targets: Some(pb::TrendTargets {
                satisfaction_rate: trend::SATISFACTION_TARGET,
                complaint_rate_change: trend::COMPLAINT_RATE_CHANGE_TARGET,
                nps_change: trend::NPS_CHANGE_TARGET,
            }),
            baseline: Some(encode(&base, true)),
            points,
        }))
    }

    async fn record_order_volumes(
        &self,
        request: Request<pb::RecordOrderVolumesRequest>,
    ) -> Result<Response<pb::RecordOrderVolumesResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Service, Role::Admin])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let request_id = required_id(&mut errors, "request_id", &request.request_id);
        if request.days.is_empty() {
            errors.add("days", "at least one day is required");
        } else if request.days.len() > MAX_ORDER_DAYS {
            errors.add("days", format!("at most {MAX_ORDER_DAYS} days per call"));
        }
        let mut days = Vec::with_capacity(request.days.len());
        let mut seen = std::collections::HashSet::new();
        for (i, day) in request.days.iter().enumerate() {
            let field = format!("days[{i}].date");
            if let Some(date) = parse_date(&mut errors, &field, &day.date) {
                if !seen.insert(date) {
                    errors.add(field, "listed twice");
                }
                if day.orders > i64::MAX as u64 {
                    errors.add(format!("days[{i}].orders"), "too large");
                }
                days.push((date, day.orders.min(i64::MAX as u64) as i64));
            }
        }
        errors.into_result()?;
        let recorded =
            store::record_order_volumes(&self.pool, &request_id, &days, &principal.subject)
                .await
                .map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::RecordOrderVolumesResponse {
            days_recorded: recorded,
        }))
    }

    async fn assign_agent_to_team(
        &self,
        request: Request<pb::AssignAgentToTeamRequest>,
    ) -> Result<Response<pb::AssignAgentToTeamResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Supervisor, Role::Admin])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let request_id = required_id(&mut errors, "request_id", &request.request_id);
        let agent = required_id(&mut errors, "agent_id", &request.agent_id);
        let department = required_id(&mut errors, "department_id", &request.department_id);
        let team = request.team_id.trim().to_owned();
        if team.len() > MAX_ID_LEN {
            errors.add("team_id", "too long");
        }
        errors.into_result()?;
        if !principal.has(Role::Admin) && principal.department.as_deref() != Some(&department) {
            return Err(Status::permission_denied(
                "supervisors manage the teams of their own department",
            ));
        }
        if !team.is_empty() {
            let home = store::team_department(&self.pool, &team)
                .await
                .map_err(|e| grpc::storage(&e))?;
            if let Some(home) = home
                && home != department
            {
                return Err(grpc::failed_precondition(
                    "TEAM_DEPARTMENT",
                    &team,
                    &format!("team {team} belongs to department {home}"),
                ));
            }
        }
        let m = store::assign_team(
            &self.pool,
            &request_id,
            &agent,
            &department,
            &team,
            &principal.subject,
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::AssignAgentToTeamResponse {
            membership: Some(membership_to_pb(&m)),
        }))
    }

    async fn list_team_members(
        &self,
        request: Request<pb::ListTeamMembersRequest>,
    ) -> Result<Response<pb::ListTeamMembersResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Supervisor, Role::Quality, Role::Admin, Role::Service])?;
        let access = access(&principal)?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let department = required_id(&mut errors, "department_id", &request.department_id);
        let team = request.team_id.trim().to_owned();
        let limit = pagination::page_size(request.page_size)?;
        let after: Option<String> = pagination::decode(&request.page_token)?;
        errors.into_result()?;
        if let Access::Department(d) = &access
            && *d != department
        {
            return Err(Status::permission_denied(
                "supervisors read the teams of their own department",
            ));
        }
        let members = store::team_members(
            &self.pool,
            &department,
            (!team.is_empty()).then_some(team.as_str()),
            after.as_deref().unwrap_or(""),
            limit,
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        let next_page_token = match members.last() {
            Some(last) if members.len() as i64 == limit => pagination::encode(&last.agent_id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTeamMembersResponse {
            members: members.iter().map(membership_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn create_scoring_model(
        &self,
        request: Request<pb::CreateScoringModelRequest>,
    ) -> Result<Response<pb::CreateScoringModelResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Quality, Role::Admin])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let request_id = required_id(&mut errors, "request_id", &request.request_id);
        let name = required_id(&mut errors, "name", &request.name);
        let mut indicators = Vec::new();
        for (i, line) in request.indicators.iter().enumerate() {
            let field = format!("indicators[{i}].indicator");
            match pb::Indicator::try_from(line.indicator)
                .ok()
                .and_then(indicator_from_pb)
            {
                Some(indicator) => indicators.push(model::ModelIndicator {
                    indicator,
                    target: line.target,
                    floor: line.floor,
                    weight: line.weight,
                }),
                None => errors.add(field, "a known indicator is required"),
            }
        }
        let thresholds = match request.thresholds {
            Some(t) => Thresholds {
                a: t.a,
                b: t.b,
                c: t.c,
                d: t.d,
            },
            None => {
                errors.add("thresholds", "required");
                model::default_model().thresholds
            }
        };
        let definition = ModelDefinition {
            indicators,
            thresholds,
            minimum_sample: request.minimum_sample,
        };
        if errors.is_empty() {
            for (field, problem) in model::validate(&definition) {
                errors.add(field, problem);
            }
        }
        errors.into_result()?;
        let m = store::create_model(
            &self.pool,
            &request_id,
            &name,
            &definition,
            &principal.subject,
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::CreateScoringModelResponse {
            model: Some(model_to_pb(&m)),
        }))
    }

    async fn get_scoring_model(
        &self,
        request: Request<pb::GetScoringModelRequest>,
    ) -> Result<Response<pb::GetScoringModelResponse>, Status> {
        auth::principal(&request)?.require_any(ALL_ROLES)?;
        let m = self.scoring_model(request.into_inner().version).await?;
        Ok(Response::new(pb::GetScoringModelResponse {
            model: Some(model_to_pb(&m)),
        }))
    }

    async fn list_scoring_models(
        &self,
        request: Request<pb::ListScoringModelsRequest>,
    ) -> Result<Response<pb::ListScoringModelsResponse>, Status> {
        auth::principal(&request)?.require_any(ALL_ROLES)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size)?;
        let before: Option<u32> = pagination::decode(&request.page_token)?;
        let models = store::models(&self.pool, before, limit)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let next_page_token = match models.last() {
            Some(last) if models.len() as i64 == limit && last.version > 1 => {
                pagination::encode(&last.version)
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListScoringModelsResponse {
            models: models.iter().map(model_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn run_evaluation(
        &self,
        request: Request<pb::RunEvaluationRequest>,
    ) -> Result<Response<pb::RunEvaluationResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Quality, Role::Admin])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let request_id = required_id(&mut errors, "request_id", &request.request_id);
        if !(1..=4).contains(&request.quarter) {
            errors.add("quarter", "must be 1 to 4");
        }
        if !(1970..=9999).contains(&request.year) {
            errors.add("year", "must be a year from 1970");
        }
        if request.reason.len() > 1_000 {
            errors.add("reason", "too long");
        }
        errors.into_result()?;
        let Some(quarter) = Quarter::new(request.year, request.quarter) else {
            return Err(Status::invalid_argument("incomplete request"));
        };
        let outcome = evaluation::run_evaluation(
            &self.pool,
            self.org_timezone,
            Utc::now(),
            &EvaluationRequest {
                request_id: Some(&request_id),
                quarter,
                model_version: (request.model_version > 0).then_some(request.model_version),
                trigger: TRIGGER_ON_DEMAND,
                run_by: &principal.subject,
                reason: request.reason.trim(),
            },
        )
        .await
        .map_err(|e| match e {
            EvaluationError::UnknownModel(v) => grpc::not_found("scoring model", &v.to_string()),
            EvaluationError::QuarterNotStarted => grpc::failed_precondition(
                "QUARTER_NOT_STARTED",
                &format!("{}-Q{}", quarter.year, quarter.quarter),
                "the quarter has not started yet",
            ),
            EvaluationError::Database(e) => grpc::storage(&e),
        })?;
        Ok(Response::new(pb::RunEvaluationResponse {
            evaluation: Some(evaluation_to_pb(outcome.record())),
        }))
    }

    async fn list_evaluations(
        &self,
        request: Request<pb::ListEvaluationsRequest>,
    ) -> Result<Response<pb::ListEvaluationsResponse>, Status> {
        auth::principal(&request)?.require_any(ALL_ROLES)?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        if request.quarter > 4 {
            errors.add("quarter", "must be 0 (any) or 1 to 4");
        }
        let limit = match pagination::page_size(request.page_size) {
            Ok(n) => n,
            Err(s) => return Err(s),
        };
        let after: Option<(chrono::DateTime<Utc>, Uuid)> =
            match pagination::decode(&request.page_token) {
                Ok(a) => a,
                Err(_) => {
                    errors.add("page_token", "not a token this service issued");
                    None
                }
            };
        errors.into_result()?;
        let list = store::evaluations(
            &self.pool,
            (request.year != 0).then_some(request.year),
            (request.quarter != 0).then_some(request.quarter),
            after,
            limit,
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        let next_page_token = match list.last() {
            Some(last) if list.len() as i64 == limit => {
                pagination::encode(&(last.published_at, last.id))
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEvaluationsResponse {
            evaluations: list.iter().map(evaluation_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn list_evaluation_results(
        &self,
        request: Request<pb::ListEvaluationResultsRequest>,
    ) -> Result<Response<pb::ListEvaluationResultsResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ALL_ROLES)?;
        let access = access(&principal)?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let id = match grpc::parse_uuid("evaluation_id", &request.evaluation_id) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.add("evaluation_id", "a UUID is required");
                None
            }
        };
        let kind = if request.subject_kind == 0 {
            None
        } else {
            subject_kind(&mut errors, "subject_kind", request.subject_kind)
        };
        let limit = pagination::page_size(request.page_size)?;
        let after: Option<(i16, String)> = match pagination::decode(&request.page_token) {
            Ok(a) => a,
            Err(_) => {
                errors.add("page_token", "not a token this service issued");
                None
            }
        };
        errors.into_result()?;
        let Some(id) = id else {
            return Err(Status::invalid_argument("incomplete request"));
        };
        let mut department =
            Some(request.department_id.trim().to_owned()).filter(|d| !d.is_empty());
        let mut subject = Some(request.subject_id.trim().to_owned()).filter(|s| !s.is_empty());
        let mut kind = kind;
        match &access {
            Access::Everything => {}
            Access::Department(d) => {
                if department.as_ref().is_some_and(|x| x != d) {
                    return Err(Status::permission_denied(
                        "supervisors read the results of their own department",
                    ));
                }
                department = Some(d.clone());
            }
            Access::Own(agent) => {
                if subject.as_ref().is_some_and(|s| s != agent) || kind.is_some_and(|k| k != AGENT)
                {
                    return Err(Status::permission_denied(
                        "agents read only their own result",
                    ));
                }
                subject = Some(agent.clone());
                kind = Some(AGENT);
            }
        }
        if store::evaluation_by_id(&self.pool, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .is_none()
        {
            return Err(grpc::not_found("evaluation", &id.to_string()));
        }
        let rows = store::evaluation_results(
            &self.pool,
            &store::ResultFilter {
                evaluation_id: id,
                kind,
                department_id: department.as_deref(),
                subject_id: subject.as_deref(),
                after,
                limit,
            },
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() as i64 == limit => {
                pagination::encode(&(last.subject_kind, last.subject_id.clone()))
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEvaluationResultsResponse {
            results: rows
                .iter()
                .map(|r| pb::EvaluationResult {
                    evaluation_id: id.to_string(),
                    subject_kind: kind_to_pb(r.subject_kind),
                    subject_id: r.subject_id.clone(),
                    department_id: r.department_id.clone(),
                    cases_opened: r.cases_opened.max(0) as u64,
                    score: Some(score_to_pb(&r.score)),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn rebuild_read_model(
        &self,
        request: Request<pb::RebuildReadModelRequest>,
    ) -> Result<Response<pb::RebuildReadModelResponse>, Status> {
        auth::principal(&request)?.require_any(&[Role::Admin])?;
        let (cases_cleared, cursors_rewound) = store::rebuild_read_model(&self.pool)
            .await
            .map_err(|e| grpc::storage(&e))?;
        self.restart_consumers.notify_one();
        tracing::info!(cases_cleared, "read model cleared; replaying every event");
        Ok(Response::new(pb::RebuildReadModelResponse {
            cases_cleared,
            cursors_rewound,
        }))
    }
}

fn membership_to_pb(m: &store::Membership) -> pb::TeamMembership {
    pb::TeamMembership {
        agent_id: m.agent_id.clone(),
        department_id: m.department_id.clone(),
        team_id: m.team_id.clone(),
        effective_from: Some(to_timestamp(m.effective_from)),
        assigned_by: m.assigned_by.clone(),
    }
}
