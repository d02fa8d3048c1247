//! gRPC handlers of `SurveyService`.

use chrono::{Duration, Utc};
use complaints_kit::auth::{self, Role};
use complaints_kit::events::EventLog;
use complaints_kit::grpc::{self, FieldErrors};
use complaints_kit::time::{opt_timestamp, to_timestamp};
use complaints_proto::events::v1::{SurveyAnswered, event::Payload};
use complaints_proto::survey::v1 as pb;
use complaints_proto::survey::v1::survey_service_server::SurveyService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::domain::questionnaire::{self, Answers};
use crate::domain::token::{self, TokenKey};
use crate::store::{self, ANSWERED, InvitationRow};

pub struct SurveyApi {
    pool: PgPool,
    events: EventLog,
    token_key: TokenKey,
    token_ttl: Duration,
}

impl SurveyApi {
    pub fn new(pool: PgPool, events: EventLog, token_key: TokenKey, token_ttl: Duration) -> Self {
        Self {
            pool,
            events,
            token_key,
            token_ttl,
        }
    }
}

fn invitation_to_proto(row: InvitationRow) -> pb::Invitation {
    let answers: Answers = row
        .answers
        .and_then(|a| serde_json::from_value(a).ok())
        .unwrap_or_default();
    let expired = row.status != ANSWERED && row.expires_at.is_some_and(|e| e < Utc::now());
    pb::Invitation {
        id: row.id.to_string(),
        case_id: row.case_id.to_string(),
        status: if expired {
            pb::InvitationStatus::Expired as i32
        } else {
            row.status as i32
        },
        scheduled_for: Some(to_timestamp(row.scheduled_for)),
        sent_at: opt_timestamp(row.sent_at),
        expires_at: opt_timestamp(row.expires_at),
        answered_at: opt_timestamp(row.answered_at),
        template_id: row.template_id,
        template_version: row.template_version.max(0) as u32,
        answers: answers.to_proto(),
        dissatisfied: row.dissatisfied,
    }
}

#[tonic::async_trait]
impl SurveyService for SurveyApi {
    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        auth::principal(&request)?.require_any(&[
            Role::Agent,
            Role::Supervisor,
            Role::Quality,
            Role::Admin,
            Role::Service,
        ])?;
        let case_id = grpc::parse_uuid("case_id", &request.get_ref().case_id)?;
        let rows = store::invitations_of_case(&self.pool, case_id)
            .await
            .map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::ListInvitationsResponse {
            invitations: rows.into_iter().map(invitation_to_proto).collect(),
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
        let rows = store::claim_due(&self.pool, now, now + self.token_ttl, limit)
            .await
            .map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::ClaimDueInvitationsResponse {
            deliveries: rows
                .into_iter()
                .map(|row| pb::InvitationDelivery {
                    token: self.token_key.token(row.id),
                    invitation: Some(invitation_to_proto(row)),
                })
                .collect(),
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
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let invitation = store::lock_by_token_hash(&mut tx, &token::hash(&request.token))
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| Status::not_found("unknown survey token"))?;
        let now = Utc::now();
        if invitation.status == ANSWERED {
            return Err(grpc::failed_precondition(
                "TOKEN",
                "survey",
                "this survey was already answered; a token works once",
            ));
        }
        if invitation.expires_at.is_some_and(|e| e < now) {
            return Err(grpc::failed_precondition(
                "TOKEN",
                "survey",
                "this survey link has expired",
            ));
        }
        let template = questionnaire::template(
            &invitation.template_id,
            invitation.template_version.max(0) as u32,
        )
        .ok_or_else(|| Status::internal("the invitation's questionnaire template is missing"))?;
        let answers = questionnaire::validate(&template, &request.answers)
            .map_err(FieldErrors::into_status)?;
        let dissatisfied = answers.dissatisfied();
        let json =
            serde_json::to_value(&answers).map_err(|_| Status::internal("internal error"))?;
        let row = store::record_answers(&mut tx, invitation.id, now, &json, dissatisfied)
            .await
            .map_err(|e| grpc::storage(&e))?;
        self.events
            .append(
                &mut tx,
                &row.case_id.to_string(),
                "",
                Payload::SurveyAnswered(SurveyAnswered {
                    invitation_id: row.id.to_string(),
                    case_id: row.case_id.to_string(),
                    csat: answers.csat,
                    nps: answers.nps,
                    solved: answers.solved,
                    dissatisfied,
                    answered_at: Some(to_timestamp(now)),
                }),
            )
            .await
            .map_err(|e| grpc::storage(&e))?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.events.committed();
        Ok(Response::new(pb::SubmitSurveyResponseResponse {
            invitation: Some(invitation_to_proto(row)),
        }))
    }
}
