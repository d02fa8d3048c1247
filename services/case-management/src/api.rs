//! gRPC handlers of `CaseService`: decode, authorise, call the workflow, encode.

use chrono::Utc;
use complaints_kit::auth::{self, Principal, Role};
use complaints_kit::events::EventLog;
use complaints_kit::grpc::{self, FieldErrors};
use complaints_kit::pagination;
use complaints_kit::time::{opt_timestamp, to_timestamp};
use complaints_proto::cases::v1 as pb;
use complaints_proto::cases::v1::case_service_server::CaseService;
use complaints_proto::common::v1::CaseStatus;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::access::{self, CaseScope};
use crate::store::{self, AgentRow, CaseRow, DepartmentRow};
use crate::workflow::{self, Change, WorkflowError};

pub struct CaseApi {
    pool: PgPool,
    events: EventLog,
}

impl CaseApi {
    pub fn new(pool: PgPool, events: EventLog) -> Self {
        Self { pool, events }
    }

    /// Loads a case the principal may read; an invisible case is reported as not found.
    async fn visible_case(&self, principal: &Principal, id: Uuid) -> Result<CaseRow, Status> {
        let case = store::get(&self.pool, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .filter(|c| access::can_read(principal, &scope(c)))
            .ok_or_else(|| grpc::not_found("case", &id.to_string()))?;
        Ok(case)
    }

    /// Locks, checks access and version, applies the change, commits.
    async fn change(
        &self,
        principal: &Principal,
        case_id: &str,
        version: u64,
        change: Change,
    ) -> Result<CaseRow, Status> {
        let id = grpc::parse_uuid("case_id", case_id)?;
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let case = store::lock(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .filter(|c| access::can_read(principal, &scope(c)))
            .ok_or_else(|| grpc::not_found("case", &id.to_string()))?;
        if !access::can_change(principal, &scope(&case)) {
            return Err(Status::permission_denied(
                "you may read this case but not change it",
            ));
        }
        if case.version as u64 != version {
            return Err(WorkflowError::Stale {
                expected: version,
                actual: case.version as u64,
            }
            .into());
        }
        let saved = workflow::apply_change(
            &mut tx,
            &self.events,
            case,
            change,
            &principal.subject,
            "",
            Utc::now(),
        )
        .await?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.events.committed();
        Ok(saved)
    }
}

fn scope(case: &CaseRow) -> CaseScope<'_> {
    CaseScope {
        department_id: &case.department_id,
        owner_id: &case.owner_id,
    }
}

const WORKERS: &[Role] = &[Role::Agent, Role::Supervisor, Role::Admin];
const ANYONE: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::Quality,
    Role::Admin,
    Role::Service,
];

pub fn case_to_proto(case: CaseRow) -> pb::Case {
    pb::Case {
        id: case.id.to_string(),
        complaint_id: case.complaint_id.to_string(),
        complaint_reference: case.complaint_reference,
        status: case.status as i32,
        department_id: case.department_id,
        owner_id: case.owner_id,
        category: case.category,
        severity: case.severity as i32,
        priority: case.priority as i32,
        complexity: case.complexity as i32,
        channel: case.channel as i32,
        customer_tier: case.customer_tier as i32,
        escalation_level: case.escalation_level.max(0) as u32,
        received_at: Some(to_timestamp(case.received_at)),
        opened_at: Some(to_timestamp(case.opened_at)),
        acknowledged_at: opt_timestamp(case.acknowledged_at),
        resolved_at: opt_timestamp(case.resolved_at),
        closed_at: opt_timestamp(case.closed_at),
        version: case.version as u64,
        customer_id: case.customer_id,
    }
}

fn department_to_proto(d: DepartmentRow) -> pb::Department {
    pb::Department {
        id: d.id,
        name: d.name,
        categories: d.categories,
        escalation_chain: d.escalation_chain,
    }
}

fn agent_to_proto(a: AgentRow) -> pb::Agent {
    pb::Agent {
        id: a.id,
        department_id: a.department_id,
        display_name: a.display_name,
        skills: a.skills,
        capacity: a.capacity.max(0) as u32,
        available: a.available,
        senior: a.senior,
        open_cases: a.open_cases.max(0) as u32,
    }
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[tonic::async_trait]
impl CaseService for CaseApi {
    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::GetCaseResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ANYONE)?;
        let id = grpc::parse_uuid("case_id", &request.get_ref().case_id)?;
        let case = self.visible_case(&principal, id).await?;
        Ok(Response::new(pb::GetCaseResponse {
            case: Some(case_to_proto(case)),
        }))
    }

    async fn get_case_by_complaint(
        &self,
        request: Request<pb::GetCaseByComplaintRequest>,
    ) -> Result<Response<pb::GetCaseByComplaintResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ANYONE)?;
        let id = grpc::parse_uuid("complaint_id", &request.get_ref().complaint_id)?;
        let case = store::get_by_complaint(&self.pool, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .filter(|c| access::can_read(&principal, &scope(c)))
            .ok_or_else(|| grpc::not_found("case for complaint", &id.to_string()))?;
        Ok(Response::new(pb::GetCaseByComplaintResponse {
            case: Some(case_to_proto(case)),
        }))
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ANYONE)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size)?;
        if request.status != 0 && CaseStatus::try_from(request.status).is_err() {
            return Err(grpc::invalid_field("status", "unknown value"));
        }
        let after = pagination::decode(&request.page_token)?;
        let visible_to = (!principal.sees_everything())
            .then(|| (principal.department.clone(), principal.subject.clone()));
        let filter = store::ListFilter {
            department_id: Some(request.department_id).filter(|d| !d.is_empty()),
            owner_id: Some(request.owner_id).filter(|o| !o.is_empty()),
            status: (request.status != 0).then_some(request.status as i16),
            visible_to,
            after,
            limit: limit + 1,
        };
        let mut rows = store::list(&self.pool, &filter)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| pagination::encode(&(r.opened_at, r.id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListCasesResponse {
            cases: rows.into_iter().map(case_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn acknowledge_case(
        &self,
        request: Request<pb::AcknowledgeCaseRequest>,
    ) -> Result<Response<pb::AcknowledgeCaseResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(WORKERS)?;
        let request = request.into_inner();
        let note = request.note.trim().to_owned();
        let case = self
            .change(
                &principal,
                &request.case_id,
                request.version,
                Change::Acknowledge { note },
            )
            .await?;
        Ok(Response::new(pb::AcknowledgeCaseResponse {
            case: Some(case_to_proto(case)),
        }))
    }

    async fn transition_case(
        &self,
        request: Request<pb::TransitionCaseRequest>,
    ) -> Result<Response<pb::TransitionCaseResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(WORKERS)?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let to = grpc::require_enum::<CaseStatus>(&mut errors, "to_status", request.to_status);
        if request.note.chars().count() > 5000 {
            errors.add("note", "at most 5000 characters");
        }
        errors.into_result()?;
        let Some(to) = to else {
            return Err(grpc::invalid_field("to_status", "required"));
        };
        let change = Change::Transition {
            to,
            note: request.note.trim().to_owned(),
            customer_visible: request.customer_visible,
        };
        let case = self
            .change(&principal, &request.case_id, request.version, change)
            .await?;
        Ok(Response::new(pb::TransitionCaseResponse {
            case: Some(case_to_proto(case)),
        }))
    }

    async fn escalate(
        &self,
        request: Request<pb::EscalateRequest>,
    ) -> Result<Response<pb::EscalateResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Service, Role::Supervisor, Role::Admin])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let escalation_id = request.escalation_id.trim();
        if escalation_id.is_empty() || escalation_id.len() > 200 {
            errors.add("escalation_id", "1–200 characters required");
        }
        if request.reason.trim().is_empty() {
            errors.add("reason", "required");
        }
        errors.into_result()?;
        let id = grpc::parse_uuid("case_id", &request.case_id)?;
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let case = store::lock(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .filter(|c| access::can_change(&principal, &scope(c)))
            .ok_or_else(|| grpc::not_found("case", &id.to_string()))?;
        let escalation = workflow::EscalationRequest {
            escalation_id,
            reason: request.reason.trim(),
            actor: &principal.subject,
            traceparent: "",
        };
        let (case, escalated) =
            workflow::escalate(&mut tx, &self.events, case, &escalation, Utc::now()).await?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.events.committed();
        Ok(Response::new(pb::EscalateResponse {
            case: Some(case_to_proto(case)),
            escalated,
        }))
    }

    async fn list_timeline(
        &self,
        request: Request<pb::ListTimelineRequest>,
    ) -> Result<Response<pb::ListTimelineResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ANYONE)?;
        let request = request.into_inner();
        let id = grpc::parse_uuid("case_id", &request.case_id)?;
        self.visible_case(&principal, id).await?;
        let limit = pagination::page_size(request.page_size)?;
        let after = pagination::decode(&request.page_token)?;
        let mut rows = store::timeline(&self.pool, id, after, limit + 1)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| pagination::encode(&(r.at, r.id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTimelineResponse {
            entries: rows
                .into_iter()
                .map(|r| pb::TimelineEntry {
                    id: r.id.to_string(),
                    case_id: r.case_id.to_string(),
                    at: Some(to_timestamp(r.at)),
                    actor: r.actor,
                    kind: r.kind,
                    from_value: r.from_value,
                    to_value: r.to_value,
                    note: r.note,
                    customer_visible: r.customer_visible,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn create_department(
        &self,
        request: Request<pb::CreateDepartmentRequest>,
    ) -> Result<Response<pb::CreateDepartmentResponse>, Status> {
        auth::principal(&request)?.require_any(&[Role::Admin])?;
        let request = request.into_inner();
        let department = request.department.unwrap_or_default();
        let mut errors = FieldErrors::new();
        if request.request_id.trim().is_empty() {
            errors.add("request_id", "required");
        }
        if !is_slug(&department.id) {
            errors.add("department.id", "1–64 lower-case letters, digits, - or _");
        }
        if department.name.trim().is_empty() {
            errors.add("department.name", "required");
        }
        if department.escalation_chain.is_empty()
            || department
                .escalation_chain
                .iter()
                .any(|p| p.trim().is_empty())
        {
            errors.add(
                "department.escalation_chain",
                "at least a supervisor, no empty entries",
            );
        }
        errors.into_result()?;
        let row = DepartmentRow {
            id: department.id,
            name: department.name.trim().to_owned(),
            categories: department.categories,
            escalation_chain: department.escalation_chain,
        };
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        let created = store::insert_department(&mut conn, request.request_id.trim(), &row)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let department = match created {
            Some(d) => d,
            None => store::department_by_request(&mut conn, request.request_id.trim())
                .await
                .map_err(|e| grpc::storage(&e))?
                .filter(|d| d.id == row.id)
                .ok_or_else(|| {
                    Status::already_exists(format!("department {} already exists", row.id))
                })?,
        };
        Ok(Response::new(pb::CreateDepartmentResponse {
            department: Some(department_to_proto(department)),
        }))
    }

    async fn list_departments(
        &self,
        request: Request<pb::ListDepartmentsRequest>,
    ) -> Result<Response<pb::ListDepartmentsResponse>, Status> {
        auth::principal(&request)?.require_any(ANYONE)?;
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        let departments = store::departments(&mut conn)
            .await
            .map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::ListDepartmentsResponse {
            departments: departments.into_iter().map(department_to_proto).collect(),
        }))
    }

    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        auth::principal(&request)?.require_any(&[Role::Admin, Role::Supervisor])?;
        let request = request.into_inner();
        let agent = request.agent.unwrap_or_default();
        let request_id = request.request_id.trim().to_owned();
        let mut errors = FieldErrors::new();
        if request_id.is_empty() {
            errors.add("request_id", "required");
        }
        if agent.id.trim().is_empty() || agent.id.len() > 128 {
            errors.add("agent.id", "1–128 characters required");
        }
        if agent.display_name.trim().is_empty() {
            errors.add("agent.display_name", "required");
        }
        if agent.capacity == 0 || agent.capacity > 1000 {
            errors.add("agent.capacity", "1–1000 open cases");
        }
        errors.into_result()?;
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        if store::department(&mut conn, &agent.department_id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .is_none()
        {
            return Err(grpc::invalid_field(
                "agent.department_id",
                "no such department",
            ));
        }
        let row = AgentRow {
            id: agent.id.trim().to_owned(),
            department_id: agent.department_id,
            display_name: agent.display_name.trim().to_owned(),
            skills: agent.skills,
            capacity: agent.capacity as i32,
            available: agent.available,
            senior: agent.senior,
            open_cases: 0,
        };
        store::insert_agent(&mut conn, &request_id, &row)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let (stored, stored_request) =
            store::agent_by_id_or_request(&mut conn, &row.id, &request_id)
                .await
                .map_err(|e| grpc::storage(&e))?
                .ok_or_else(|| Status::internal("agent vanished"))?;
        if stored.id != row.id || stored_request.as_deref() != Some(request_id.as_str()) {
            return Err(Status::already_exists(format!(
                "agent {} exists, or request_id {} was used for another agent",
                row.id, request_id
            )));
        }
        Ok(Response::new(pb::CreateAgentResponse {
            agent: Some(agent_to_proto(stored)),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        auth::principal(&request)?.require_any(ANYONE)?;
        let department = Some(request.get_ref().department_id.clone()).filter(|d| !d.is_empty());
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        let agents = store::agents(&mut conn, department.as_deref())
            .await
            .map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.into_iter().map(agent_to_proto).collect(),
        }))
    }
}
