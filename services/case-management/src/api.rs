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
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::access::{self, CaseScope};
use crate::domain::{coordination, customer_view};
use crate::store::{self, AgentRow, CaseRow, DepartmentRow, ProblemRow, SubTaskRow};
use crate::watch::{WatchFilter, Watcher};
use crate::workflow::{self, Change, WorkflowError};

pub struct CaseApi {
    pool: PgPool,
    events: EventLog,
    watcher: Watcher,
}

/// Whether a principal may make a given kind of change to a case it can read.
type ChangeRule = fn(&Principal, &CaseRow) -> bool;

fn may_change(principal: &Principal, case: &CaseRow) -> bool {
    access::can_change(principal, &scope(case))
}

fn may_assign(principal: &Principal, case: &CaseRow) -> bool {
    access::can_assign(principal, &scope(case))
}

/// Quality runs the problem ledger, so it may link cases it can only read.
fn may_link(principal: &Principal, case: &CaseRow) -> bool {
    may_change(principal, case) || principal.has(Role::Quality)
}

impl CaseApi {
    pub fn new(pool: PgPool, events: EventLog, watcher: Watcher) -> Self {
        Self {
            pool,
            events,
            watcher,
        }
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

    /// Locks, checks access and version, applies the change, commits. Acknowledgements and
    /// transitions try [`Self::change_unlocked`] first.
    async fn change(
        &self,
        principal: &Principal,
        case_id: &str,
        version: u64,
        change: Change,
        may: ChangeRule,
    ) -> Result<CaseRow, Status> {
        let id = grpc::parse_uuid("case_id", case_id)?;
        let simple = workflow::is_simple(&change);
        if simple
            && let Some(saved) = self
                .change_unlocked(principal, id, version, &change, may)
                .await?
        {
            return Ok(saved);
        }
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let found = store::lock(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?;
        // The unlocked attempt already linked the trace.
        let case = checked(principal, id, found, version, may, !simple)?;
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
        self.committed();
        Ok(saved)
    }

    /// The fast path of [`Self::change`] for acknowledgements and transitions: read the case,
    /// decide, and write case, timeline and event with one statement that applies only if
    /// the case is still at the version read (two round trips, no transaction to hold open).
    /// `None` when the case moved on meanwhile: the locked path then decides with the case as
    /// it is.
    async fn change_unlocked(
        &self,
        principal: &Principal,
        id: Uuid,
        version: u64,
        change: &Change,
        may: ChangeRule,
    ) -> Result<Option<CaseRow>, Status> {
        // One connection for both statements: the pool pings a connection each time it
        // comes back.
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        let found = store::get(&mut *conn, id)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let case = checked(principal, id, found, version, may, true)?;
        let read_version = case.version;
        let traceparent = case.trace_for("");
        let Some(planned) = workflow::plan_simple(case, change, &principal.subject, Utc::now())
        else {
            return Ok(None);
        };
        let planned = planned?;
        let event = self
            .events
            .encode(&id.to_string(), &traceparent, planned.event);
        let saved = store::save_if_unchanged(
            &mut conn,
            &self.events,
            &planned.case,
            read_version,
            &planned.entry,
            &event,
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        if saved.is_some() {
            self.events.produced(event.event_type);
            self.committed();
        }
        Ok(saved)
    }
}

/// The case a change is about, if the caller may see it and make this change, and names the
/// version it is at; `link` joins the current span to the complaint's trace.
fn checked(
    principal: &Principal,
    id: Uuid,
    found: Option<CaseRow>,
    version: u64,
    may: ChangeRule,
    link: bool,
) -> Result<CaseRow, Status> {
    let case = found
        .filter(|c| access::can_read(principal, &scope(c)))
        .ok_or_else(|| grpc::not_found("case", &id.to_string()))?;
    if !may(principal, &case) {
        return Err(Status::permission_denied(
            "you may read this case but not make this change",
        ));
    }
    if case.version as u64 != version {
        return Err(WorkflowError::Stale {
            expected: version,
            actual: case.version as u64,
        }
        .into());
    }
    if link {
        complaints_kit::telemetry::link_current_to(&case.traceparent);
        complaints_kit::telemetry::record_case(&case.id.to_string());
    }
    Ok(case)
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
        product_ref: case.product_ref,
        order_ref: case.order_ref,
        problem_id: case.problem_id.map(|p| p.to_string()).unwrap_or_default(),
        under_review: case.under_review,
    }
}

fn department_to_proto(d: DepartmentRow) -> pb::Department {
    pb::Department {
        id: d.id,
        name: d.name,
        categories: d.categories,
        escalation_chain: d.escalation_chain,
        version: d.version as u64,
    }
}

fn profile_of(a: &AgentRow) -> pb::AgentProfile {
    pb::AgentProfile {
        agent_id: a.id.clone(),
        languages: a.languages.clone(),
        version: a.version as u64,
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

fn check_department(errors: &mut FieldErrors, department: &pb::Department) {
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
        let next_page_token = pagination::next_page(&mut rows, limit, |r| (r.opened_at, r.id));
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
                may_change,
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
            .change(
                &principal,
                &request.case_id,
                request.version,
                change,
                may_change,
            )
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
        self.committed();
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
        let next_page_token = pagination::next_page(&mut rows, limit, |r| (r.at, r.id));
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
        check_department(&mut errors, &department);
        errors.into_result()?;
        let row = DepartmentRow {
            id: department.id,
            name: department.name.trim().to_owned(),
            categories: department.categories,
            escalation_chain: department.escalation_chain,
            version: 1,
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
            languages: Vec::new(),
            version: 1,
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
            profiles: agents.iter().map(profile_of).collect(),
            agents: agents.into_iter().map(agent_to_proto).collect(),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        auth::principal(&request)?.require_any(ANYONE)?;
        let id = request.get_ref().agent_id.trim().to_owned();
        if id.is_empty() {
            return Err(grpc::invalid_field("agent_id", "required"));
        }
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        let agent = store::agent(&mut conn, &id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("agent", &id))?;
        Ok(Response::new(pb::GetAgentResponse {
            profile: Some(profile_of(&agent)),
            agent: Some(agent_to_proto(agent)),
        }))
    }

    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Admin, Role::Supervisor])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        if request.agent_id.trim().is_empty() {
            errors.add("agent_id", "required");
        }
        if request.version == 0 {
            errors.add("version", "required");
        }
        if request.capacity.is_some_and(|c| c == 0 || c > 1000) {
            errors.add("capacity", "1–1000 open cases");
        }
        let tags = |list: &Option<pb::StringList>| {
            list.as_ref().map(|l| {
                l.values
                    .iter()
                    .map(|v| v.trim().to_owned())
                    .collect::<Vec<_>>()
            })
        };
        let skills = tags(&request.skills);
        let languages = tags(&request.languages);
        if skills
            .as_ref()
            .is_some_and(|s| s.iter().any(|v| v.is_empty() || v.len() > 64))
        {
            errors.add("skills", "entries of 1–64 characters");
        }
        if languages
            .as_ref()
            .is_some_and(|s| s.iter().any(|v| v.is_empty() || v.len() > 35))
        {
            errors.add("languages", "BCP 47 tags such as zh-CN or en");
        }
        errors.into_result()?;
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let id = request.agent_id.trim();
        let mut agent = store::agent(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("agent", id))?;
        let own_department = principal.department.as_deref() == Some(agent.department_id.as_str());
        if !principal.has(Role::Admin) && !own_department {
            return Err(grpc::not_found("agent", id));
        }
        if agent.version as u64 != request.version {
            return Err(grpc::stale_version(
                "agent",
                request.version,
                agent.version as u64,
            ));
        }
        if !request.display_name.trim().is_empty() {
            agent.display_name = request.display_name.trim().to_owned();
        }
        if let Some(skills) = skills {
            agent.skills = skills;
        }
        if let Some(languages) = languages {
            agent.languages = languages;
        }
        if let Some(capacity) = request.capacity {
            agent.capacity = capacity as i32;
        }
        if let Some(available) = request.available {
            agent.available = available;
        }
        if let Some(senior) = request.senior {
            agent.senior = senior;
        }
        if !store::update_agent(&mut tx, &agent, request.version as i64)
            .await
            .map_err(|e| grpc::storage(&e))?
        {
            return Err(grpc::stale_version(
                "agent",
                request.version,
                agent.version as u64 + 1,
            ));
        }
        let saved = store::agent(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("agent", id))?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::UpdateAgentResponse {
            profile: Some(profile_of(&saved)),
            agent: Some(agent_to_proto(saved)),
        }))
    }

    async fn update_department(
        &self,
        request: Request<pb::UpdateDepartmentRequest>,
    ) -> Result<Response<pb::UpdateDepartmentResponse>, Status> {
        auth::principal(&request)?.require_any(&[Role::Admin])?;
        let request = request.into_inner();
        let department = request.department.unwrap_or_default();
        let mut errors = FieldErrors::new();
        check_department(&mut errors, &department);
        if request.version == 0 {
            errors.add("version", "required");
        }
        errors.into_result()?;
        let row = DepartmentRow {
            id: department.id,
            name: department.name.trim().to_owned(),
            categories: department.categories,
            escalation_chain: department.escalation_chain,
            version: request.version as i64,
        };
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        let saved = store::update_department(&mut conn, &row, request.version as i64)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let saved = match saved {
            Some(saved) => saved,
            None => {
                let current = store::department(&mut conn, &row.id)
                    .await
                    .map_err(|e| grpc::storage(&e))?
                    .ok_or_else(|| grpc::not_found("department", &row.id))?;
                return Err(grpc::stale_version(
                    "department",
                    request.version,
                    current.version as u64,
                ));
            }
        };
        Ok(Response::new(pb::UpdateDepartmentResponse {
            department: Some(department_to_proto(saved)),
        }))
    }

    async fn assign_case(
        &self,
        request: Request<pb::AssignCaseRequest>,
    ) -> Result<Response<pb::AssignCaseResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Supervisor, Role::Admin])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        if request.owner_id.trim().is_empty() {
            errors.add("owner_id", "required");
        }
        if request.reason.trim().is_empty() {
            errors.add("reason", "required");
        }
        errors.into_result()?;
        let change = Change::Assign {
            owner: request.owner_id.trim().to_owned(),
            reason: request.reason.trim().to_owned(),
        };
        let case = self
            .change(
                &principal,
                &request.case_id,
                request.version,
                change,
                may_assign,
            )
            .await?;
        Ok(Response::new(pb::AssignCaseResponse {
            case: Some(case_to_proto(case)),
        }))
    }

    async fn transfer_case(
        &self,
        request: Request<pb::TransferCaseRequest>,
    ) -> Result<Response<pb::TransferCaseResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(WORKERS)?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        if request.department_id.trim().is_empty() {
            errors.add("department_id", "required");
        }
        if request.reason.trim().is_empty() {
            errors.add("reason", "required: say why the case moves");
        }
        errors.into_result()?;
        let change = Change::Transfer {
            department_id: request.department_id.trim().to_owned(),
            owner: Some(request.owner_id.trim().to_owned()).filter(|o| !o.is_empty()),
            reason: request.reason.trim().to_owned(),
        };
        let case = self
            .change(
                &principal,
                &request.case_id,
                request.version,
                change,
                may_change,
            )
            .await?;
        Ok(Response::new(pb::TransferCaseResponse {
            case: Some(case_to_proto(case)),
        }))
    }

    async fn create_sub_task(
        &self,
        request: Request<pb::CreateSubTaskRequest>,
    ) -> Result<Response<pb::CreateSubTaskResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Agent, Role::Supervisor, Role::Admin, Role::Service])?;
        let request = request.into_inner();
        let task = request.sub_task.unwrap_or_default();
        let now = Utc::now();
        let mut errors = FieldErrors::new();
        if request.request_id.trim().is_empty() {
            errors.add("request_id", "required");
        }
        let case_id = match grpc::parse_uuid("sub_task.case_id", &task.case_id) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.add("sub_task.case_id", "a case UUID is required");
                None
            }
        };
        if task.department_id.trim().is_empty() {
            errors.add("sub_task.department_id", "required");
        }
        let title = task.title.trim();
        if title.is_empty() || title.chars().count() > 200 {
            errors.add("sub_task.title", "1–200 characters required");
        }
        if task.detail.chars().count() > 5000 {
            errors.add("sub_task.detail", "at most 5000 characters");
        }
        let due_at = task
            .due_at
            .as_ref()
            .and_then(complaints_kit::time::from_timestamp);
        match due_at {
            None => errors.add("sub_task.due_at", "required"),
            Some(due) if due <= now => errors.add("sub_task.due_at", "must lie in the future"),
            Some(_) => {}
        }
        errors.into_result()?;
        let (Some(case_id), Some(due_at)) = (case_id, due_at) else {
            return Err(grpc::invalid_field("sub_task", "required"));
        };
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let case = self
            .locked_case(&mut tx, &principal, case_id, may_change)
            .await?;
        let new = workflow::NewSubTask {
            request_id: request.request_id.trim().to_owned(),
            department_id: task.department_id.trim().to_owned(),
            owner_id: Some(task.owner_id.trim().to_owned()).filter(|o| !o.is_empty()),
            title: title.to_owned(),
            detail: task.detail.trim().to_owned(),
            due_at,
            customer_visible: task.customer_visible,
            purpose: store::PURPOSE_COORDINATION,
        };
        let (saved, _) = workflow::create_sub_task(
            &mut tx,
            &self.events,
            &case,
            new,
            &principal.subject,
            "",
            now,
        )
        .await?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.committed();
        Ok(Response::new(pb::CreateSubTaskResponse {
            sub_task: Some(sub_task_to_proto(saved)),
        }))
    }

    async fn update_sub_task(
        &self,
        request: Request<pb::UpdateSubTaskRequest>,
    ) -> Result<Response<pb::UpdateSubTaskResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Agent, Role::Supervisor, Role::Admin, Role::Service])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        let to = grpc::require_enum::<pb::SubTaskStatus>(&mut errors, "status", request.status);
        if request.result.chars().count() > 5000 {
            errors.add("result", "at most 5000 characters");
        }
        errors.into_result()?;
        let id = grpc::parse_uuid("sub_task_id", &request.sub_task_id)?;
        let Some(to) = to else {
            return Err(grpc::invalid_field("status", "required"));
        };
        let hidden = || grpc::not_found("sub-task", &id.to_string());
        // The case is locked before the sub-task, as every change to a case starts there.
        let known = store::sub_task(&self.pool, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(hidden)?;
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let case = store::lock(&mut tx, known.case_id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(hidden)?;
        let task = store::lock_sub_task(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(hidden)?;
        if !access::can_work_sub_task(
            &principal,
            &scope(&case),
            &task.department_id,
            &task.owner_id,
        ) {
            return Err(hidden());
        }
        if task.version as u64 != request.version {
            return Err(grpc::stale_version(
                "sub-task",
                request.version,
                task.version as u64,
            ));
        }
        let saved = workflow::update_sub_task(
            &mut tx,
            &self.events,
            case,
            task,
            to,
            request.result.trim().to_owned(),
            &principal.subject,
            "",
            Utc::now(),
        )
        .await
        .map_err(|e| match e {
            WorkflowError::Precondition(why) => {
                grpc::failed_precondition("STATUS", "sub-task", &why)
            }
            other => other.into(),
        })?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.committed();
        Ok(Response::new(pb::UpdateSubTaskResponse {
            sub_task: Some(sub_task_to_proto(saved)),
        }))
    }

    async fn list_sub_tasks(
        &self,
        request: Request<pb::ListSubTasksRequest>,
    ) -> Result<Response<pb::ListSubTasksResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ANYONE)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size)?;
        let after = pagination::decode(&request.page_token)?;
        let department = Some(request.department_id.trim().to_owned()).filter(|d| !d.is_empty());
        let case_id = if request.case_id.trim().is_empty() {
            None
        } else {
            Some(grpc::parse_uuid("case_id", &request.case_id)?)
        };
        match (case_id, &department) {
            (None, None) => {
                return Err(grpc::invalid_field(
                    "case_id",
                    "give a case_id or a department_id",
                ));
            }
            (Some(id), _) => {
                self.visible_case(&principal, id).await?;
            }
            (None, Some(department)) => {
                if !principal.sees_everything()
                    && principal.department.as_deref() != Some(department.as_str())
                {
                    return Err(Status::permission_denied(
                        "you may list only your own department's sub-tasks",
                    ));
                }
            }
        }
        let mut rows =
            store::list_sub_tasks(&self.pool, case_id, department.as_deref(), after, limit + 1)
                .await
                .map_err(|e| grpc::storage(&e))?;
        let next_page_token = pagination::next_page(&mut rows, limit, |r| (r.created_at, r.id));
        Ok(Response::new(pb::ListSubTasksResponse {
            sub_tasks: rows.into_iter().map(sub_task_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn log_contact(
        &self,
        request: Request<pb::LogContactRequest>,
    ) -> Result<Response<pb::LogContactResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Agent, Role::Supervisor, Role::Admin, Role::Service])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        if request.request_id.trim().is_empty() || request.request_id.len() > 200 {
            errors.add("request_id", "1–200 characters required");
        }
        let kind = grpc::require_enum::<pb::ContactKind>(&mut errors, "kind", request.kind);
        let channel = grpc::require_enum::<complaints_proto::common::v1::Channel>(
            &mut errors,
            "channel",
            request.channel,
        );
        let note = request.note.trim().to_owned();
        if note.chars().count() > 5000 {
            errors.add("note", "at most 5000 characters");
        }
        if kind == Some(pb::ContactKind::Message) && note.is_empty() {
            errors.add("note", "a message needs its text");
        }
        errors.into_result()?;
        let id = grpc::parse_uuid("case_id", &request.case_id)?;
        let (Some(kind), Some(channel)) = (kind, channel) else {
            return Err(grpc::invalid_field("kind", "required"));
        };
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let case = self
            .locked_case(&mut tx, &principal, id, may_change)
            .await?;
        let (entry, _) = workflow::log_contact(
            &mut tx,
            &self.events,
            &case,
            request.request_id.trim(),
            kind,
            channel,
            note,
            request.customer_visible,
            &principal.subject,
            "",
            Utc::now(),
        )
        .await?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.committed();
        Ok(Response::new(pb::LogContactResponse {
            entry: Some(timeline_to_proto(entry)),
        }))
    }

    async fn get_customer_view(
        &self,
        request: Request<pb::GetCustomerViewRequest>,
    ) -> Result<Response<pb::GetCustomerViewResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ANYONE)?;
        let request = request.into_inner();
        let reference = request.complaint_reference.trim();
        let (case, what) = match (request.case_id.trim().is_empty(), reference.is_empty()) {
            (false, true) => {
                let id = grpc::parse_uuid("case_id", &request.case_id)?;
                (store::get(&self.pool, id).await, id.to_string())
            }
            (true, false) => (
                store::get_by_reference(&self.pool, reference).await,
                reference.to_owned(),
            ),
            _ => {
                return Err(grpc::invalid_field(
                    "case_id",
                    "give exactly one of case_id or complaint_reference",
                ));
            }
        };
        let case = case
            .map_err(|e| grpc::storage(&e))?
            .filter(|c| access::can_read_customer_view(&principal, &scope(c)))
            .ok_or_else(|| grpc::not_found("case", &what))?;
        let entries = store::customer_timeline(&self.pool, case.id)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let tasks = store::list_sub_tasks(&self.pool, Some(case.id), None, None, 200)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        let departments = store::departments(&mut conn)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let name_of = |id: &str| {
            departments
                .iter()
                .find(|d| d.id == id)
                .map(|d| d.name.clone())
                .unwrap_or_else(|| id.to_owned())
        };
        let status = workflow::status_of(&case);
        let mut progress = vec![pb::DepartmentProgress {
            department: name_of(&case.department_id),
            text: customer_view::progress(status, case.under_review),
        }];
        // Only the parts marked for the customer (a sub-task's `customer_visible`).
        progress.extend(tasks.iter().filter(|t| t.customer_visible).map(|t| {
            let status = pb::SubTaskStatus::try_from(t.status as i32)
                .unwrap_or(pb::SubTaskStatus::Unspecified);
            pb::DepartmentProgress {
                department: name_of(&t.department_id),
                text: customer_view::sub_task_text(&name_of(&t.department_id), status),
            }
        }));
        Ok(Response::new(pb::GetCustomerViewResponse {
            complaint_reference: case.complaint_reference.clone(),
            status: status as i32,
            progress: customer_view::progress(status, case.under_review),
            opened_at: Some(to_timestamp(case.opened_at)),
            resolved_at: opt_timestamp(case.resolved_at),
            updates: entries
                .into_iter()
                .map(|e| pb::CustomerUpdate {
                    at: Some(to_timestamp(e.at)),
                    text: customer_view::update_text(&e.kind, &e.to_value, &e.note),
                })
                .collect(),
            departments: progress,
        }))
    }

    type WatchCasesStream = ReceiverStream<Result<pb::WatchCasesResponse, Status>>;

    async fn watch_cases(
        &self,
        request: Request<pb::WatchCasesRequest>,
    ) -> Result<Response<Self::WatchCasesStream>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(ANYONE)?;
        let request = request.into_inner();
        let case_id = if request.case_id.trim().is_empty() {
            None
        } else {
            Some(grpc::parse_uuid("case_id", &request.case_id)?)
        };
        let filter = WatchFilter {
            case_id,
            department_id: Some(request.department_id.trim().to_owned()).filter(|d| !d.is_empty()),
        };
        Ok(Response::new(self.watcher.start(principal, filter).await?))
    }

    async fn create_problem(
        &self,
        request: Request<pb::CreateProblemRequest>,
    ) -> Result<Response<pb::CreateProblemResponse>, Status> {
        let principal = auth::principal(&request)?;
        require_ledger(&principal)?;
        let request = request.into_inner();
        let problem = request.problem.unwrap_or_default();
        let mut errors = FieldErrors::new();
        if request.request_id.trim().is_empty() {
            errors.add("request_id", "required");
        }
        check_problem_text(&mut errors, &problem);
        errors.into_result()?;
        let now = Utc::now();
        let row = ProblemRow {
            id: Uuid::now_v7(),
            title: problem.title.trim().to_owned(),
            category: problem.category.trim().to_owned(),
            product_ref: problem.product_ref.trim().to_owned(),
            root_cause: problem.root_cause.trim().to_owned(),
            corrective_action: problem.corrective_action.trim().to_owned(),
            owner_id: problem.owner_id.trim().to_owned(),
            status: pb::ProblemStatus::Open as i16,
            created_at: now,
            updated_at: now,
            version: 1,
            linked_cases: 0,
            linked_customers: 0,
        };
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        store::insert_problem(
            &mut conn,
            &row,
            &principal.subject,
            request.request_id.trim(),
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        let id = store::problem_id_by_request(&mut conn, request.request_id.trim())
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| Status::internal("problem vanished"))?;
        let saved = store::problem(&mut conn, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| Status::internal("problem vanished"))?;
        Ok(Response::new(pb::CreateProblemResponse {
            problem: Some(problem_to_proto(saved)),
        }))
    }

    async fn get_problem(
        &self,
        request: Request<pb::GetProblemRequest>,
    ) -> Result<Response<pb::GetProblemResponse>, Status> {
        auth::principal(&request)?.require_any(ANYONE)?;
        let id = grpc::parse_uuid("problem_id", &request.get_ref().problem_id)?;
        let mut conn = self.pool.acquire().await.map_err(|e| grpc::storage(&e))?;
        let problem = store::problem(&mut conn, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("problem", &id.to_string()))?;
        Ok(Response::new(pb::GetProblemResponse {
            problem: Some(problem_to_proto(problem)),
        }))
    }

    async fn update_problem(
        &self,
        request: Request<pb::UpdateProblemRequest>,
    ) -> Result<Response<pb::UpdateProblemResponse>, Status> {
        require_ledger(&auth::principal(&request)?)?;
        let request = request.into_inner();
        let problem = request.problem.unwrap_or_default();
        let mut errors = FieldErrors::new();
        check_problem_text(&mut errors, &problem);
        let to =
            grpc::require_enum::<pb::ProblemStatus>(&mut errors, "problem.status", problem.status);
        if request.version == 0 {
            errors.add("version", "required");
        }
        errors.into_result()?;
        let id = grpc::parse_uuid("problem.id", &problem.id)?;
        let Some(to) = to else {
            return Err(grpc::invalid_field("problem.status", "required"));
        };
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let mut row = store::problem(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("problem", &id.to_string()))?;
        if row.version as u64 != request.version {
            return Err(grpc::stale_version(
                "problem",
                request.version,
                row.version as u64,
            ));
        }
        let from = pb::ProblemStatus::try_from(row.status as i32)
            .unwrap_or(pb::ProblemStatus::Unspecified);
        coordination::check_problem_status(
            from,
            to,
            &problem.root_cause,
            &problem.corrective_action,
        )
        .map_err(|why| grpc::failed_precondition("STATUS", "problem", &why))?;
        row.title = problem.title.trim().to_owned();
        row.root_cause = problem.root_cause.trim().to_owned();
        row.corrective_action = problem.corrective_action.trim().to_owned();
        row.owner_id = problem.owner_id.trim().to_owned();
        row.status = to as i16;
        if !store::update_problem(&mut tx, &row, request.version as i64)
            .await
            .map_err(|e| grpc::storage(&e))?
        {
            return Err(grpc::stale_version(
                "problem",
                request.version,
                request.version + 1,
            ));
        }
        let saved = store::problem(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("problem", &id.to_string()))?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::UpdateProblemResponse {
            problem: Some(problem_to_proto(saved)),
        }))
    }

    async fn list_problems(
        &self,
        request: Request<pb::ListProblemsRequest>,
    ) -> Result<Response<pb::ListProblemsResponse>, Status> {
        auth::principal(&request)?.require_any(ANYONE)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size)?;
        let offset: i64 = pagination::decode(&request.page_token)?.unwrap_or(0);
        if offset < 0 {
            return Err(grpc::invalid_field(
                "page_token",
                "not a token this service issued",
            ));
        }
        if request.status != 0 && pb::ProblemStatus::try_from(request.status).is_err() {
            return Err(grpc::invalid_field("status", "unknown value"));
        }
        let status = (request.status != 0).then_some(request.status as i16);
        let mut rows = store::ranked_problems(&self.pool, status, offset, limit + 1)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            pagination::encode(&(offset + limit))
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListProblemsResponse {
            problems: rows.into_iter().map(problem_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn link_case_to_problem(
        &self,
        request: Request<pb::LinkCaseToProblemRequest>,
    ) -> Result<Response<pb::LinkCaseToProblemResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Agent, Role::Supervisor, Role::Quality, Role::Admin])?;
        let request = request.into_inner();
        let problem_id = if request.problem_id.trim().is_empty() {
            None
        } else {
            Some(grpc::parse_uuid("problem_id", &request.problem_id)?)
        };
        let case = self
            .change(
                &principal,
                &request.case_id,
                request.version,
                Change::LinkProblem { problem_id },
                may_link,
            )
            .await?;
        Ok(Response::new(pb::LinkCaseToProblemResponse {
            case: Some(case_to_proto(case)),
        }))
    }

    async fn suggest_problems(
        &self,
        request: Request<pb::SuggestProblemsRequest>,
    ) -> Result<Response<pb::SuggestProblemsResponse>, Status> {
        auth::principal(&request)?.require_any(&[Role::Supervisor, Role::Quality, Role::Admin])?;
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        if request.window_days > 366 {
            errors.add("window_days", "at most 366");
        }
        if request.min_cases == 1 || request.min_cases > 10_000 {
            errors.add("min_cases", "2–10000 (0 means 3)");
        }
        errors.into_result()?;
        let window = if request.window_days == 0 {
            30
        } else {
            request.window_days
        };
        let min_cases = if request.min_cases == 0 {
            3
        } else {
            request.min_cases
        };
        let since = Utc::now() - chrono::Duration::days(window as i64);
        let rows = store::recurring_complaints(&self.pool, since, min_cases as i64)
            .await
            .map_err(|e| grpc::storage(&e))?;
        Ok(Response::new(pb::SuggestProblemsResponse {
            suggestions: rows
                .into_iter()
                .map(|r| pb::ProblemSuggestion {
                    category: r.category,
                    product_ref: r.product_ref,
                    cases: r.cases.max(0) as u32,
                    customers: r.customers.max(0) as u32,
                    first_opened_at: Some(to_timestamp(r.first_opened_at)),
                    last_opened_at: Some(to_timestamp(r.last_opened_at)),
                    case_ids: r.case_ids.iter().map(Uuid::to_string).collect(),
                })
                .collect(),
        }))
    }
}

impl CaseApi {
    /// Locks a case the principal may read and may change by `may`; an unreadable case is
    /// reported as not found.
    async fn locked_case(
        &self,
        tx: &mut sqlx::PgConnection,
        principal: &Principal,
        id: Uuid,
        may: ChangeRule,
    ) -> Result<CaseRow, Status> {
        let case = store::lock(tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .filter(|c| access::can_read(principal, &scope(c)))
            .ok_or_else(|| grpc::not_found("case", &id.to_string()))?;
        if !may(principal, &case) {
            return Err(Status::permission_denied(
                "you may read this case but not make this change",
            ));
        }
        Ok(case)
    }

    fn committed(&self) {
        self.events.committed();
        self.watcher.signal.notify();
    }
}

fn require_ledger(principal: &Principal) -> Result<(), Status> {
    if access::can_manage_problems(principal) {
        Ok(())
    } else {
        Err(Status::permission_denied(
            "the problem ledger is run by quality, supervisors and admins",
        ))
    }
}

fn check_problem_text(errors: &mut FieldErrors, problem: &pb::Problem) {
    let title = problem.title.trim();
    if title.is_empty() || title.chars().count() > 200 {
        errors.add("problem.title", "1–200 characters required");
    }
    if problem.owner_id.trim().is_empty() {
        errors.add("problem.owner_id", "required: every problem has an owner");
    }
    for (field, text) in [
        ("problem.root_cause", &problem.root_cause),
        ("problem.corrective_action", &problem.corrective_action),
    ] {
        if text.chars().count() > 5000 {
            errors.add(field, "at most 5000 characters");
        }
    }
}

fn timeline_to_proto(r: store::TimelineRow) -> pb::TimelineEntry {
    pb::TimelineEntry {
        id: r.id.to_string(),
        case_id: r.case_id.to_string(),
        at: Some(to_timestamp(r.at)),
        actor: r.actor,
        kind: r.kind,
        from_value: r.from_value,
        to_value: r.to_value,
        note: r.note,
        customer_visible: r.customer_visible,
    }
}

fn sub_task_to_proto(t: SubTaskRow) -> pb::SubTask {
    pb::SubTask {
        id: t.id.to_string(),
        case_id: t.case_id.to_string(),
        department_id: t.department_id,
        owner_id: t.owner_id,
        title: t.title,
        detail: t.detail,
        due_at: Some(to_timestamp(t.due_at)),
        status: t.status as i32,
        result: t.result,
        created_by: t.created_by,
        created_at: Some(to_timestamp(t.created_at)),
        completed_at: opt_timestamp(t.completed_at),
        version: t.version as u64,
        customer_visible: t.customer_visible,
    }
}

fn problem_to_proto(p: ProblemRow) -> pb::Problem {
    pb::Problem {
        id: p.id.to_string(),
        title: p.title,
        category: p.category,
        product_ref: p.product_ref,
        root_cause: p.root_cause,
        corrective_action: p.corrective_action,
        owner_id: p.owner_id,
        status: p.status as i32,
        linked_cases: p.linked_cases.max(0) as u32,
        linked_customers: p.linked_customers.max(0) as u32,
        created_at: Some(to_timestamp(p.created_at)),
        updated_at: Some(to_timestamp(p.updated_at)),
        version: p.version as u64,
    }
}
