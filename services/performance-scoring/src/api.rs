//! gRPC handlers of `ScoringService`.

use complaints_kit::auth::{self, Role};
use complaints_kit::grpc::{self, FieldErrors};
use complaints_kit::time::{from_timestamp, to_timestamp};
use complaints_proto::scoring::v1 as pb;
use complaints_proto::scoring::v1::scoring_service_server::ScoringService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::domain::kpi::{self, Rate};
use crate::store;

pub struct ScoringApi {
    pool: PgPool,
}

impl ScoringApi {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn ratio(rate: Rate) -> Option<pb::Ratio> {
    Some(pb::Ratio {
        numerator: rate.numerator,
        denominator: rate.denominator,
        value: rate.value,
    })
}

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    async fn get_scorecard(
        &self,
        request: Request<pb::GetScorecardRequest>,
    ) -> Result<Response<pb::GetScorecardResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[
            Role::Supervisor,
            Role::Quality,
            Role::Admin,
            Role::Agent,
            Role::Service,
        ])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let kind = grpc::require_enum::<pb::SubjectKind>(
            &mut errors,
            "subject_kind",
            request.subject_kind,
        );
        if request.subject_id.trim().is_empty() {
            errors.add("subject_id", "required");
        }
        let start = request.period_start.as_ref().and_then(from_timestamp);
        let end = request.period_end.as_ref().and_then(from_timestamp);
        if start.is_none() {
            errors.add("period_start", "a valid timestamp is required");
        }
        if end.is_none() {
            errors.add("period_end", "a valid timestamp is required");
        }
        if let (Some(s), Some(e)) = (start, end)
            && e <= s
        {
            errors.add("period_end", "must be after period_start");
        }
        errors.into_result()?;
        let (Some(kind), Some(start), Some(end)) = (kind, start, end) else {
            return Err(Status::invalid_argument("incomplete request"));
        };
        let subject = request.subject_id.trim().to_owned();
        // Agents see only their own scorecard; supervisors their department's people.
        if principal.has(Role::Agent)
            && !principal.has_any(&[Role::Supervisor, Role::Quality, Role::Admin, Role::Service])
        {
            let own = kind == pb::SubjectKind::Agent && subject == principal.subject;
            if !own {
                return Err(Status::permission_denied(
                    "agents may read only their own scorecard",
                ));
            }
        }
        let by_department = kind == pb::SubjectKind::Department;
        let counts = store::counts(&self.pool, by_department, &subject, start, end)
            .await
            .map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::GetScorecardResponse {
            scorecard: Some(pb::Scorecard {
                subject_kind: kind as i32,
                subject_id: subject,
                period_start: Some(to_timestamp(start)),
                period_end: Some(to_timestamp(end)),
                cases_opened: counts.cases_opened,
                cases_resolved: counts.cases_resolved,
                resolution_rate: ratio(kpi::rate(counts.cases_resolved, counts.cases_opened)),
                first_response_on_time_rate: ratio(kpi::rate(
                    counts.first_response_on_time,
                    counts.first_response_measured,
                )),
                csat_average: kpi::csat_average(counts.csat_sum, counts.csat_responses),
                csat_responses: counts.csat_responses,
                satisfaction_rate: ratio(kpi::rate(counts.csat_satisfied, counts.csat_responses)),
                nps: kpi::nps(
                    counts.nps_promoters,
                    counts.nps_detractors,
                    counts.nps_responses,
                ),
                nps_responses: counts.nps_responses,
            }),
        }))
    }
}
