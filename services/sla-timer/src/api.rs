//! gRPC handlers of `SlaService`.

use chrono::{Duration, Utc};
use complaints_kit::auth::{self, Role};
use complaints_kit::grpc;
use complaints_kit::time::{opt_timestamp, to_pb_duration, to_timestamp};
use complaints_proto::sla::v1 as pb;
use complaints_proto::sla::v1::sla_service_server::SlaService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::store::{self, ClockRow, MET};

pub struct SlaApi {
    pool: PgPool,
    engine: Engine,
}

impl SlaApi {
    pub fn new(pool: PgPool, engine: Engine) -> Self {
        Self { pool, engine }
    }

    fn clock_to_proto(&self, clock: ClockRow, now: chrono::DateTime<Utc>) -> pb::Clock {
        let timing = clock.timing();
        let at = if clock.state == MET {
            clock.met_at.unwrap_or(now)
        } else {
            now
        };
        let used = if clock.is_active() {
            timing.used(&self.engine.calendar, at)
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
            calendar_id: clock.calendar_id,
            policy_id: clock.policy_id,
            started_at: Some(to_timestamp(clock.started_at)),
            due_at: opt_timestamp(clock.due_at),
            met_at: opt_timestamp(clock.met_at),
            breached_at: opt_timestamp(clock.breached_at),
            remaining: Some(to_pb_duration(target - used)),
            percent_used: used.num_milliseconds() as f64 * 100.0
                / target.num_milliseconds().max(1) as f64,
            escalation_level: clock.escalation_level.max(0) as u32,
            met_on_time: clock.met_on_time.unwrap_or(false),
        }
    }
}

#[tonic::async_trait]
impl SlaService for SlaApi {
    async fn list_case_clocks(
        &self,
        request: Request<pb::ListCaseClocksRequest>,
    ) -> Result<Response<pb::ListCaseClocksResponse>, Status> {
        auth::principal(&request)?.require_any(&[
            Role::Agent,
            Role::Supervisor,
            Role::Quality,
            Role::Admin,
            Role::Service,
        ])?;
        let case_id = grpc::parse_uuid("case_id", &request.get_ref().case_id)?;
        let clocks = store::clocks_of_case(&self.pool, case_id)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let now = Utc::now();
        Ok(Response::new(pb::ListCaseClocksResponse {
            clocks: clocks
                .into_iter()
                .map(|c| self.clock_to_proto(c, now))
                .collect(),
        }))
    }
}
