//! gRPC handlers of `SurveyService`: decode, authorise, call the domain and the store, encode.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use complaints_kit::auth::{self, Principal, Role};
use complaints_kit::events::EventLog;
use complaints_kit::grpc::{self, FieldErrors};
use complaints_kit::pagination;
use complaints_kit::telemetry;
use complaints_kit::time::{from_timestamp, opt_timestamp, to_timestamp};
use complaints_proto::events::v1::{SurveyAnswered, SurveyReturnVisitAttempted, event::Payload};
use complaints_proto::survey::v1 as pb;
use complaints_proto::survey::v1::survey_service_server::SurveyService;
use sqlx::{PgConnection, PgPool};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Policy;
use crate::domain::delivery::{CallOutcome, Delivery};
use crate::domain::figures::{Counts, Rate};
use crate::domain::invitation::{self, Refusal};
use crate::domain::questionnaire::{self, Answers, Template};
use crate::domain::token::{self, TokenKey};
use crate::store::{self, AnswerSource, AttemptRow, FiguresGroup, InvitationRow, TemplateRow};

const MAX_NOTE_CHARS: usize = 2000;
const MAX_FIGURES_PERIOD_DAYS: i64 = 400;

pub struct SurveyApi {
    pool: PgPool,
    events: EventLog,
    token_key: TokenKey,
    token_ttl: Duration,
    reminder_after: Option<Duration>,
    policy: Policy,
    metrics: Option<AnswerMetrics>,
}

/// survey_responses_total{dissatisfied} and survey_csat_responses_total{score}.
#[derive(Clone)]
struct AnswerMetrics {
    responses: prometheus::IntCounterVec,
    csat: prometheus::IntCounterVec,
}

impl SurveyApi {
    /// Counts answers in the service's registry.
    pub fn with_metrics(mut self, registry: &complaints_kit::metrics::Metrics) -> Self {
        let responses = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "survey_responses_total",
                "Survey answers recorded, by link or return visit.",
            ),
            &["dissatisfied"],
        )
        .expect("metric");
        let csat = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "survey_csat_responses_total",
                "CSAT answers by score (1-5).",
            ),
            &["score"],
        )
        .expect("metric");
        registry.register(&responses);
        registry.register(&csat);
        self.metrics = Some(AnswerMetrics { responses, csat });
        self
    }
}

impl SurveyApi {
    pub fn new(
        pool: PgPool,
        events: EventLog,
        token_key: TokenKey,
        token_ttl: Duration,
        policy: Policy,
    ) -> anyhow::Result<Self> {
        let reminder_after = policy.reminder_after.map(Duration::from_std).transpose()?;
        Ok(Self {
            pool,
            events,
            token_key,
            token_ttl,
            reminder_after,
            policy,
            metrics: None,
        })
    }
}

const ALL_ROLES: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::Quality,
    Role::Admin,
    Role::Service,
];

/// Agents and supervisors see the invitations of their department or of cases they own.
fn may_see(principal: &Principal, row: &InvitationRow) -> bool {
    principal.sees_everything()
        || principal.department.as_deref() == Some(row.department_id.as_str())
        || principal.subject == row.owner_id
}

/// The trace an answer continues: the complaint's, kept from the resolution event (a survey
/// answer days later stays in the complaint's one trace), else the request's own.
fn trace_of(row: &InvitationRow) -> String {
    telemetry::record_case(&row.case_id.to_string());
    if row.traceparent.is_empty() {
        telemetry::current_traceparent()
    } else {
        row.traceparent.clone()
    }
}

fn refusal(refusal: Refusal) -> Status {
    grpc::failed_precondition(refusal.kind(), "invitation", refusal.describe())
}

fn storage(error: sqlx::Error) -> Status {
    grpc::storage(&error)
}

fn invitation_to_proto(row: InvitationRow, attempts: Vec<AttemptRow>) -> pb::Invitation {
    let answers: Answers = row
        .answers
        .and_then(|a| serde_json::from_value(a).ok())
        .unwrap_or_default();
    pb::Invitation {
        id: row.id.to_string(),
        case_id: row.case_id.to_string(),
        status: invitation::visible_status(row.status, row.expires_at, Utc::now()) as i32,
        scheduled_for: Some(to_timestamp(row.scheduled_for)),
        sent_at: opt_timestamp(row.sent_at),
        expires_at: opt_timestamp(row.expires_at),
        answered_at: opt_timestamp(row.answered_at),
        template_id: row.template_id,
        template_version: row.template_version.max(0) as u32,
        answers: answers.to_proto(),
        dissatisfied: row.dissatisfied,
        delivery: Delivery::parse(&row.delivery).to_proto() as i32,
        department_id: row.department_id,
        owner_id: row.owner_id,
        category: row.category,
        reminder_sent_at: opt_timestamp(row.reminder_sent_at),
        version: row.version.max(0) as u64,
        return_visit_attempts: attempts
            .into_iter()
            .map(|a| pb::ReturnVisitAttempt {
                outcome: CallOutcome::parse(&a.outcome)
                    .map(|o| o.to_proto() as i32)
                    .unwrap_or_default(),
                agent_id: a.agent_id,
                note: a.note,
                attempted_at: Some(to_timestamp(a.attempted_at)),
            })
            .collect(),
        opted_out_at: opt_timestamp(row.opted_out_at),
        cycle: row.cycle.max(0) as u32,
    }
}

fn template_to_proto(row: &TemplateRow, template: &Template) -> pb::Template {
    pb::Template {
        template_id: template.id.clone(),
        version: template.version,
        questions: template.questions.iter().map(|q| q.to_proto()).collect(),
        created_at: Some(to_timestamp(row.created_at)),
        created_by: row.created_by.clone(),
    }
}

fn template_of_row(row: &TemplateRow) -> Result<Template, Status> {
    row.to_domain().map_err(|e| {
        tracing::error!(error = %e, template = %row.template_id, "stored template unreadable");
        Status::internal("internal error")
    })
}

fn rate(rate: Rate) -> pb::Ratio {
    pb::Ratio {
        numerator: rate.numerator,
        denominator: rate.denominator,
        value: rate.value(),
    }
}

fn figures_to_proto(group: String, counts: &Counts, target: f64) -> pb::SurveyFigures {
    pb::SurveyFigures {
        group,
        invitations_issued: counts.issued,
        invitations_sent: counts.sent,
        opted_out: counts.opted_out,
        responses: counts.responses,
        response_rate: Some(rate(counts.response_rate())),
        csat_average: counts.csat_average(),
        csat_responses: counts.csat_responses,
        csat_sum: counts.csat_sum,
        satisfaction_rate: Some(rate(counts.satisfaction_rate())),
        nps: counts.nps(),
        nps_responses: counts.nps_responses,
        promoters: counts.promoters,
        passives: counts.passives,
        detractors: counts.detractors,
        solved_rate: Some(rate(counts.solved_rate())),
        dissatisfied: counts.dissatisfied,
        return_visit_responses: counts.return_visit_responses,
        satisfaction_target_met: counts.meets_satisfaction_target(target),
    }
}

impl SurveyApi {
    /// Encodes invitations with their return-visit calls.
    async fn encode(&self, rows: Vec<InvitationRow>) -> Result<Vec<pb::Invitation>, Status> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut attempts: HashMap<Uuid, Vec<AttemptRow>> = HashMap::new();
        for attempt in store::attempts_of(&self.pool, &ids)
            .await
            .map_err(storage)?
        {
            attempts
                .entry(attempt.invitation_id)
                .or_default()
                .push(attempt);
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let of_row = attempts.remove(&row.id).unwrap_or_default();
                invitation_to_proto(row, of_row)
            })
            .collect())
    }

    async fn encode_one(&self, row: InvitationRow) -> Result<pb::Invitation, Status> {
        let mut encoded = self.encode(vec![row]).await?;
        encoded
            .pop()
            .ok_or_else(|| Status::internal("internal error"))
    }

    /// The pinned template version of an invitation.
    async fn pinned_template(
        &self,
        conn: &mut PgConnection,
        row: &InvitationRow,
    ) -> Result<(TemplateRow, Template), Status> {
        let template_row =
            store::template(conn, &row.template_id, row.template_version.max(0) as u32)
                .await
                .map_err(storage)?
                .ok_or_else(|| {
                    Status::internal("the invitation's questionnaire template is missing")
                })?;
        let template = template_of_row(&template_row)?;
        Ok((template_row, template))
    }

    /// Records validated answers (by link or by return visit) and emits `SurveyAnswered`, in
    /// the caller's transaction. Every answer the service takes passes through here: the place
    /// to count responses (survey_responses_total{dissatisfied}, survey_csat_responses_total{score}).
    async fn record_answers(
        &self,
        tx: &mut PgConnection,
        invitation: &InvitationRow,
        answers: &Answers,
        source: AnswerSource<'_>,
        now: DateTime<Utc>,
    ) -> Result<InvitationRow, Status> {
        let dissatisfied = self.policy.dissatisfaction.is_dissatisfied(answers);
        if let Some(metrics) = &self.metrics {
            metrics
                .responses
                .with_label_values(&[if dissatisfied { "true" } else { "false" }])
                .inc();
            if let Some(score) = answers.csat {
                metrics.csat.with_label_values(&[&score.to_string()]).inc();
            }
        }
        let json = serde_json::to_value(answers).map_err(|_| Status::internal("internal error"))?;
        let via_return_visit = source.via == Delivery::ReturnVisit.as_str();
        let recorded_by = source.by.unwrap_or_default().to_owned();
        let row = store::record_answers(tx, invitation.id, now, &json, dissatisfied, source)
            .await
            .map_err(storage)?;
        self.events
            .append(
                tx,
                &row.case_id.to_string(),
                &trace_of(&row),
                Payload::SurveyAnswered(SurveyAnswered {
                    invitation_id: row.id.to_string(),
                    case_id: row.case_id.to_string(),
                    csat: answers.csat,
                    nps: answers.nps,
                    solved: answers.solved,
                    dissatisfied,
                    answered_at: Some(to_timestamp(now)),
                    via_return_visit,
                    recorded_by,
                }),
            )
            .await
            .map_err(storage)?;
        Ok(row)
    }

    /// Loads a visible invitation for an agent's change, checking its version.
    async fn lock_for_change(
        tx: &mut PgConnection,
        principal: &Principal,
        id: Uuid,
        expected_version: u64,
    ) -> Result<InvitationRow, Status> {
        let row = store::lock_invitation(tx, id)
            .await
            .map_err(storage)?
            .filter(|row| may_see(principal, row))
            .ok_or_else(|| grpc::not_found("invitation", &id.to_string()))?;
        let actual = row.version.max(0) as u64;
        if expected_version != actual {
            return Err(grpc::stale_version("invitation", expected_version, actual));
        }
        Ok(row)
    }
}

fn parse_period(
    start: &Option<prost_types::Timestamp>,
    end: &Option<prost_types::Timestamp>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Status> {
    let mut errors = FieldErrors::new();
    let mut read = |field: &str, ts: &Option<prost_types::Timestamp>| match ts {
        None => {
            errors.add(field, "required");
            None
        }
        Some(ts) => {
            let at = from_timestamp(ts);
            if at.is_none() {
                errors.add(field, "not a valid timestamp");
            }
            at
        }
    };
    let start = read("period_start", start);
    let end = read("period_end", end);
    if let (Some(s), Some(e)) = (start, end) {
        if e <= s {
            errors.add("period_end", "must be after period_start");
        } else if e - s > Duration::days(MAX_FIGURES_PERIOD_DAYS) {
            errors.add(
                "period_end",
                format!("a period spans at most {MAX_FIGURES_PERIOD_DAYS} days"),
            );
        }
    }
    errors.into_result()?;
    match (start, end) {
        (Some(s), Some(e)) => Ok((s, e)),
        _ => Err(Status::internal("internal error")),
    }
}

#[tonic::async_trait]
impl SurveyService for SurveyApi {
    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ALL_ROLES)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size)?;
        let after = pagination::decode(&request.page_token)?;
        let mut errors = FieldErrors::new();
        let case_id = match request.case_id.trim() {
            "" => None,
            id => Uuid::parse_str(id)
                .map_err(|_| errors.add("case_id", "must be a UUID"))
                .ok(),
        };
        let delivery = match pb::Delivery::try_from(request.delivery) {
            Ok(pb::Delivery::Unspecified) => None,
            Ok(pb::Delivery::Link) => Some(Delivery::Link.as_str()),
            Ok(pb::Delivery::ReturnVisit) => Some(Delivery::ReturnVisit.as_str()),
            Err(_) => {
                errors.add("delivery", "unknown value");
                None
            }
        };
        let status = match pb::InvitationStatus::try_from(request.status) {
            Ok(pb::InvitationStatus::Unspecified) => None,
            Ok(pb::InvitationStatus::Expired) => {
                errors.add(
                    "status",
                    "expiry is shown, not stored; filter on SENT instead",
                );
                None
            }
            Ok(s) => Some(s as i16),
            Err(_) => {
                errors.add("status", "unknown value");
                None
            }
        };
        errors.into_result()?;
        let visible_to = (!principal.sees_everything())
            .then(|| (principal.department.clone(), principal.subject.clone()));
        let filter = store::InvitationFilter {
            case_id,
            delivery,
            status,
            department_id: Some(request.department_id).filter(|d| !d.trim().is_empty()),
            due_at: request.due_only.then(Utc::now),
            visible_to,
            after,
            limit: limit + 1,
        };
        let mut rows = store::list_invitations(&self.pool, &filter)
            .await
            .map_err(storage)?;
        let next_page_token = pagination::next_page(&mut rows, limit, |r| (r.scheduled_for, r.id));
        Ok(Response::new(pb::ListInvitationsResponse {
            invitations: self.encode(rows).await?,
            next_page_token,
        }))
    }

    async fn get_invitation(
        &self,
        request: Request<pb::GetInvitationRequest>,
    ) -> Result<Response<pb::GetInvitationResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ALL_ROLES)?;
        let id = grpc::parse_uuid("invitation_id", &request.get_ref().invitation_id)?;
        let row = store::invitation(&self.pool, id)
            .await
            .map_err(storage)?
            .filter(|row| may_see(&principal, row))
            .ok_or_else(|| grpc::not_found("invitation", &id.to_string()))?;
        Ok(Response::new(pb::GetInvitationResponse {
            invitation: Some(self.encode_one(row).await?),
        }))
    }

    async fn claim_due_invitations(
        &self,
        request: Request<pb::ClaimDueInvitationsRequest>,
    ) -> Result<Response<pb::ClaimDueInvitationsResponse>, Status> {
        auth::principal(&request)?.require_any(&[Role::Service])?;
        let limit = match request.get_ref().limit {
            0 => 100,
            n if n > 500 => return Err(grpc::invalid_field("limit", "at most 500")),
            n => n,
        } as i64;
        let now = Utc::now();
        let first = store::claim_first_sends(&self.pool, now, now + self.token_ttl, limit)
            .await
            .map_err(storage)?;
        let reminders = match self.reminder_after {
            Some(after) if (first.len() as i64) < limit => {
                store::claim_reminders(&self.pool, now, now - after, limit - first.len() as i64)
                    .await
                    .map_err(storage)?
            }
            _ => Vec::new(),
        };
        let kinds: Vec<pb::DeliveryKind> =
            std::iter::repeat_n(pb::DeliveryKind::First, first.len())
                .chain(std::iter::repeat_n(
                    pb::DeliveryKind::Reminder,
                    reminders.len(),
                ))
                .collect();
        let rows: Vec<InvitationRow> = first.into_iter().chain(reminders).collect();
        let tokens: Vec<String> = rows.iter().map(|r| self.token_key.token(r.id)).collect();
        let invitations = self.encode(rows).await?;
        Ok(Response::new(pb::ClaimDueInvitationsResponse {
            deliveries: invitations
                .into_iter()
                .zip(tokens)
                .zip(kinds)
                .map(|((invitation, token), kind)| pb::InvitationDelivery {
                    invitation: Some(invitation),
                    token,
                    kind: kind as i32,
                })
                .collect(),
        }))
    }

    async fn get_survey_by_token(
        &self,
        request: Request<pb::GetSurveyByTokenRequest>,
    ) -> Result<Response<pb::GetSurveyByTokenResponse>, Status> {
        auth::principal(&request)?.require_any(&[Role::Service, Role::Agent, Role::Supervisor])?;
        let token = request.into_inner().token;
        if token.trim().is_empty() {
            return Err(grpc::invalid_field("token", "required"));
        }
        if self.token_key.verify(&token).is_none() {
            return Err(Status::not_found("unknown survey token"));
        }
        let row = store::by_token_hash(&self.pool, &token::hash(&token))
            .await
            .map_err(storage)?
            .ok_or_else(|| Status::not_found("unknown survey token"))?;
        invitation::accepts_token_answer(row.status, row.expires_at, Utc::now())
            .map_err(refusal)?;
        let mut conn = self.pool.acquire().await.map_err(storage)?;
        let (template_row, template) = self.pinned_template(&mut conn, &row).await?;
        drop(conn);
        Ok(Response::new(pb::GetSurveyByTokenResponse {
            template: Some(template_to_proto(&template_row, &template)),
            invitation: Some(self.encode_one(row).await?),
        }))
    }

    async fn submit_survey_response(
        &self,
        request: Request<pb::SubmitSurveyResponseRequest>,
    ) -> Result<Response<pb::SubmitSurveyResponseResponse>, Status> {
        auth::principal(&request)?.require_any(&[Role::Service, Role::Agent, Role::Supervisor])?;
        let request = request.into_inner();
        if request.token.trim().is_empty() {
            return Err(grpc::invalid_field("token", "required"));
        }
        if self.token_key.verify(&request.token).is_none() {
            return Err(Status::not_found("unknown survey token"));
        }
        let mut tx = self.pool.begin().await.map_err(storage)?;
        let invitation = store::lock_by_token_hash(&mut tx, &token::hash(&request.token))
            .await
            .map_err(storage)?
            .ok_or_else(|| Status::not_found("unknown survey token"))?;
        let now = Utc::now();
        invitation::accepts_token_answer(invitation.status, invitation.expires_at, now)
            .map_err(refusal)?;
        let (_, template) = self.pinned_template(&mut tx, &invitation).await?;
        let answers = questionnaire::validate(&template, &request.answers)
            .map_err(FieldErrors::into_status)?;
        let source = AnswerSource {
            via: Delivery::Link.as_str(),
            by: None,
        };
        let row = self
            .record_answers(&mut tx, &invitation, &answers, source, now)
            .await?;
        tx.commit().await.map_err(storage)?;
        self.events.committed();
        Ok(Response::new(pb::SubmitSurveyResponseResponse {
            invitation: Some(self.encode_one(row).await?),
        }))
    }

    async fn opt_out(
        &self,
        request: Request<pb::OptOutRequest>,
    ) -> Result<Response<pb::OptOutResponse>, Status> {
        let principal = auth::principal(&request)?;
        let request = request.into_inner();
        let reason: String = request.reason.trim().chars().take(MAX_NOTE_CHARS).collect();
        let now = Utc::now();
        let mut tx = self.pool.begin().await.map_err(storage)?;
        let (customer_id, invitation_id, source) = match request.target {
            Some(pb::opt_out_request::Target::Token(token)) => {
                principal.require_any(&[Role::Service, Role::Agent, Role::Supervisor])?;
                if token.trim().is_empty() {
                    return Err(grpc::invalid_field("token", "required"));
                }
                if self.token_key.verify(&token).is_none() {
                    return Err(Status::not_found("unknown survey token"));
                }
                let row = store::lock_by_token_hash(&mut tx, &token::hash(&token))
                    .await
                    .map_err(storage)?
                    .ok_or_else(|| Status::not_found("unknown survey token"))?;
                let customer = Some(row.customer_id).filter(|c| !c.is_empty());
                (customer, Some(row.id), "unsubscribe link")
            }
            Some(pb::opt_out_request::Target::CustomerId(customer_id)) => {
                principal.require_any(&[
                    Role::Agent,
                    Role::Supervisor,
                    Role::Admin,
                    Role::Service,
                ])?;
                let customer_id = customer_id.trim().to_owned();
                if customer_id.is_empty() || customer_id.chars().count() > 128 {
                    return Err(grpc::invalid_field(
                        "customer_id",
                        "required, at most 128 characters",
                    ));
                }
                (Some(customer_id), None, "agent")
            }
            None => return Err(grpc::invalid_field("target", "a token or a customer_id")),
        };
        if let Some(customer_id) = &customer_id {
            store::record_opt_out(&mut tx, customer_id, now, source, &reason)
                .await
                .map_err(storage)?;
        }
        let withdrawn =
            store::withdraw_pending(&mut tx, customer_id.as_deref(), invitation_id, now)
                .await
                .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok(Response::new(pb::OptOutResponse {
            invitations_withdrawn: withdrawn as u32,
            customer_opted_out: customer_id.is_some(),
        }))
    }

    async fn record_return_visit(
        &self,
        request: Request<pb::RecordReturnVisitRequest>,
    ) -> Result<Response<pb::RecordReturnVisitResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Agent, Role::Supervisor, Role::Quality, Role::Admin])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let id = Uuid::parse_str(request.invitation_id.trim())
            .map_err(|_| errors.add("invitation_id", "must be a UUID"))
            .ok();
        let request_id = request.request_id.trim();
        if request_id.is_empty() || request_id.len() > 128 {
            errors.add("request_id", "required, at most 128 characters");
        }
        let outcome =
            grpc::require_enum::<pb::CallOutcome>(&mut errors, "outcome", request.outcome)
                .and_then(CallOutcome::from_proto);
        if outcome.is_some_and(|o| o != CallOutcome::Reached) && !request.answers.is_empty() {
            errors.add(
                "answers",
                "only a call that reached the customer has answers",
            );
        }
        let note = request.note.trim();
        if note.chars().count() > MAX_NOTE_CHARS {
            errors.add("note", format!("at most {MAX_NOTE_CHARS} characters"));
        }
        errors.into_result()?;
        let (Some(id), Some(outcome)) = (id, outcome) else {
            return Err(Status::internal("internal error"));
        };
        let now = Utc::now();
        let mut tx = self.pool.begin().await.map_err(storage)?;
        let existing = store::lock_invitation(&mut tx, id)
            .await
            .map_err(storage)?
            .filter(|row| may_see(&principal, row))
            .ok_or_else(|| grpc::not_found("invitation", &id.to_string()))?;
        // A retried call with the same request id gets the invitation as it is now.
        if store::attempt_exists(&mut tx, id, request_id)
            .await
            .map_err(storage)?
        {
            drop(tx);
            return Ok(Response::new(pb::RecordReturnVisitResponse {
                invitation: Some(self.encode_one(existing).await?),
            }));
        }
        let invitation = Self::lock_for_change(&mut tx, &principal, id, request.version).await?;
        invitation::accepts_return_visit(invitation.status, Delivery::parse(&invitation.delivery))
            .map_err(refusal)?;
        let answers = if outcome == CallOutcome::Reached {
            let (_, template) = self.pinned_template(&mut tx, &invitation).await?;
            Some(
                questionnaire::validate(&template, &request.answers)
                    .map_err(FieldErrors::into_status)?,
            )
        } else {
            None
        };
        store::insert_attempt(
            &mut tx,
            &store::NewAttempt {
                invitation_id: id,
                request_id,
                outcome: outcome.as_str(),
                agent_id: &principal.subject,
                note,
                attempted_at: now,
            },
        )
        .await
        .map_err(storage)?;
        let row = match answers {
            Some(answers) => {
                let source = AnswerSource {
                    via: Delivery::ReturnVisit.as_str(),
                    by: Some(&principal.subject),
                };
                self.record_answers(&mut tx, &invitation, &answers, source, now)
                    .await?
            }
            None => {
                let status = if outcome == CallOutcome::Refused {
                    store::DECLINED
                } else {
                    store::SENT
                };
                let row = store::record_unanswered_call(&mut tx, id, status, now)
                    .await
                    .map_err(storage)?;
                let attempt = store::count_attempts(&mut tx, id).await.map_err(storage)?;
                // Not an answer: the follow-up clock keeps running.
                self.events
                    .append(
                        &mut tx,
                        &row.case_id.to_string(),
                        &trace_of(&row),
                        Payload::SurveyReturnVisitAttempted(SurveyReturnVisitAttempted {
                            invitation_id: row.id.to_string(),
                            case_id: row.case_id.to_string(),
                            outcome: outcome.as_str().into(),
                            attempt: attempt.max(0) as u32,
                            agent_id: principal.subject.clone(),
                            attempted_at: Some(to_timestamp(now)),
                        }),
                    )
                    .await
                    .map_err(storage)?;
                row
            }
        };
        tx.commit().await.map_err(storage)?;
        self.events.committed();
        Ok(Response::new(pb::RecordReturnVisitResponse {
            invitation: Some(self.encode_one(row).await?),
        }))
    }

    async fn request_return_visit(
        &self,
        request: Request<pb::RequestReturnVisitRequest>,
    ) -> Result<Response<pb::RequestReturnVisitResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ALL_ROLES)?;
        let request = request.into_inner();
        let id = grpc::parse_uuid("invitation_id", &request.invitation_id)?;
        let mut tx = self.pool.begin().await.map_err(storage)?;
        let invitation = Self::lock_for_change(&mut tx, &principal, id, request.version).await?;
        invitation::accepts_switch_to_return_visit(invitation.status).map_err(refusal)?;
        let row = if Delivery::parse(&invitation.delivery) == Delivery::ReturnVisit {
            invitation
        } else {
            store::switch_to_return_visit(&mut tx, id)
                .await
                .map_err(storage)?
        };
        tx.commit().await.map_err(storage)?;
        Ok(Response::new(pb::RequestReturnVisitResponse {
            invitation: Some(self.encode_one(row).await?),
        }))
    }

    async fn create_template_version(
        &self,
        request: Request<pb::CreateTemplateVersionRequest>,
    ) -> Result<Response<pb::CreateTemplateVersionResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Quality, Role::Admin])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let request_id = request.request_id.trim();
        if request_id.is_empty() || request_id.len() > 128 {
            errors.add("request_id", "required, at most 128 characters");
        }
        let template_id = request.template_id.trim();
        if !questionnaire::valid_identifier(template_id) {
            errors.add("template_id", "lower snake case, 1–40 characters");
        }
        let questions = questionnaire::collect_questions(&request.questions, &mut errors);
        errors.into_result()?;
        let mut tx = self.pool.begin().await.map_err(storage)?;
        if let Some(row) = store::template_by_request_id(&mut tx, request_id)
            .await
            .map_err(storage)?
        {
            let template = template_of_row(&row)?;
            return Ok(Response::new(pb::CreateTemplateVersionResponse {
                template: Some(template_to_proto(&row, &template)),
            }));
        }
        store::lock_template_id(&mut tx, template_id)
            .await
            .map_err(storage)?;
        let latest = store::latest_template(&mut tx, template_id)
            .await
            .map_err(storage)?
            .map(|t| t.version.max(0) as u32)
            .unwrap_or(0);
        if request.expected_latest_version != latest {
            return Err(grpc::stale_version(
                &format!("template {template_id}"),
                request.expected_latest_version as u64,
                latest as u64,
            ));
        }
        let template = Template {
            id: template_id.to_owned(),
            version: latest + 1,
            questions,
        };
        let row = match store::insert_template(&mut tx, &template, &principal.subject, request_id)
            .await
        {
            Ok(row) => row,
            Err(e) if grpc::is_unique_violation(&e) => {
                // The same request id raced us on another template: answer with what it made.
                drop(tx);
                let mut conn = self.pool.acquire().await.map_err(storage)?;
                let row = store::template_by_request_id(&mut conn, request_id)
                    .await
                    .map_err(storage)?
                    .ok_or_else(|| Status::aborted("concurrent template change; retry"))?;
                let template = template_of_row(&row)?;
                return Ok(Response::new(pb::CreateTemplateVersionResponse {
                    template: Some(template_to_proto(&row, &template)),
                }));
            }
            Err(e) => return Err(storage(e)),
        };
        tx.commit().await.map_err(storage)?;
        Ok(Response::new(pb::CreateTemplateVersionResponse {
            template: Some(template_to_proto(&row, &template)),
        }))
    }

    async fn get_template(
        &self,
        request: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::GetTemplateResponse>, Status> {
        auth::principal(&request)?.require_any(ALL_ROLES)?;
        let request = request.into_inner();
        let template_id = request.template_id.trim();
        if template_id.is_empty() {
            return Err(grpc::invalid_field("template_id", "required"));
        }
        let mut conn = self.pool.acquire().await.map_err(storage)?;
        let row = if request.version == 0 {
            store::latest_template(&mut conn, template_id).await
        } else {
            store::template(&mut conn, template_id, request.version).await
        }
        .map_err(storage)?
        .ok_or_else(|| grpc::not_found("template", template_id))?;
        let template = template_of_row(&row)?;
        Ok(Response::new(pb::GetTemplateResponse {
            template: Some(template_to_proto(&row, &template)),
        }))
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        auth::principal(&request)?.require_any(ALL_ROLES)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size)?;
        let after = pagination::decode(&request.page_token)?;
        let template_id = Some(request.template_id.trim()).filter(|t| !t.is_empty());
        let mut rows = store::list_templates(&self.pool, template_id, after, limit + 1)
            .await
            .map_err(storage)?;
        let next_page_token =
            pagination::next_page(&mut rows, limit, |r| (r.template_id.clone(), r.version));
        let mut templates = Vec::with_capacity(rows.len());
        for row in &rows {
            templates.push(template_to_proto(row, &template_of_row(row)?));
        }
        Ok(Response::new(pb::ListTemplatesResponse {
            templates,
            next_page_token,
        }))
    }

    async fn get_survey_figures(
        &self,
        request: Request<pb::GetSurveyFiguresRequest>,
    ) -> Result<Response<pb::GetSurveyFiguresResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Supervisor, Role::Quality, Role::Admin, Role::Service])?;
        let request = request.into_inner();
        let (start, end) = parse_period(&request.period_start, &request.period_end)?;
        let group = match pb::FiguresGrouping::try_from(request.group_by) {
            Ok(pb::FiguresGrouping::Unspecified) => FiguresGroup::Total,
            Ok(pb::FiguresGrouping::Department) => FiguresGroup::Department,
            Ok(pb::FiguresGrouping::Agent) => FiguresGroup::Agent,
            Ok(pb::FiguresGrouping::Category) => FiguresGroup::Category,
            Err(_) => return Err(grpc::invalid_field("group_by", "unknown value")),
        };
        let mut department =
            Some(request.department_id.trim().to_owned()).filter(|d| !d.is_empty());
        if !principal.sees_everything() {
            let own = principal
                .department
                .clone()
                .ok_or_else(|| Status::permission_denied("a supervisor needs a department"))?;
            if department.as_ref().is_some_and(|d| *d != own) {
                return Err(Status::permission_denied(
                    "supervisors see the figures of their own department",
                ));
            }
            department = Some(own);
        }
        let rows = store::figure_counts(&self.pool, start, end, group, department.as_deref())
            .await
            .map_err(storage)?;
        let target = self.policy.satisfaction_target;
        let mut total = Counts::default();
        for (_, counts) in &rows {
            total.add(counts);
        }
        let groups = match group {
            FiguresGroup::Total => Vec::new(),
            _ => rows
                .into_iter()
                .map(|(key, counts)| figures_to_proto(key, &counts, target))
                .collect(),
        };
        Ok(Response::new(pb::GetSurveyFiguresResponse {
            groups,
            total: Some(figures_to_proto(String::new(), &total, target)),
            targets: Some(pb::SurveyTargets {
                satisfaction_rate: target,
                nps_increase: self.policy.nps_increase_target,
            }),
        }))
    }
}
