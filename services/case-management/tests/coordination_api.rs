//! Case depth over gRPC against a real Postgres, fed by a real intake service: transfer and
//! manual assignment, sub-tasks for other departments, the contact log and the customer's view,
//! the watch stream, the problem ledger, and the effects of intake's repeat-contact and
//! reclassification events and of survey dissatisfaction.

use std::time::Duration;

use complaints_kit::Role;
use complaints_kit::auth::BearerToken;
use complaints_kit::events::EventLog;
use complaints_kit::testing::{self, RunningService, eventually};
use complaints_proto::cases::v1::case_service_client::CaseServiceClient;
use complaints_proto::cases::v1::{
    AssignCaseRequest, Case, ContactKind, CreateAgentRequest, CreateProblemRequest,
    CreateSubTaskRequest, GetAgentRequest, GetCaseByComplaintRequest, GetCaseRequest,
    GetCustomerViewRequest, LinkCaseToProblemRequest, ListProblemsRequest, ListSubTasksRequest,
    ListTimelineRequest, LogContactRequest, Problem, ProblemStatus, StringList, SubTask,
    SubTaskStatus, SuggestProblemsRequest, TransferCaseRequest, TransitionCaseRequest,
    UpdateAgentRequest, UpdateProblemRequest, UpdateSubTaskRequest, WatchCasesRequest,
};
use complaints_proto::common::v1::{CaseStatus, Channel, Priority, Severity};
use complaints_proto::events::v1::event::Payload;
use complaints_proto::events::v1::{ComplaintReclassified, ComplaintRepeatContact, SurveyAnswered};
use complaints_proto::intake::v1::intake_service_client::IntakeServiceClient;
use complaints_proto::intake::v1::{Complainant, ComplaintContent, SubmitComplaintRequest};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel as GrpcChannel;

type Cases = CaseServiceClient<InterceptedService<GrpcChannel, BearerToken>>;

struct Harness {
    intake: RunningService,
    cases: RunningService,
    db: testing::TestDatabase,
}

async fn start(policy: case_management::CasePolicy) -> Harness {
    start_with(policy, false).await
}

/// Starts intake and case-management. With `survey_from_intake` the survey stream is played by
/// intake's own event stream, so a test can put a `SurveyAnswered` event where the case
/// consumer reads it (intake's events are then applied twice, which they must survive).
async fn start_with(policy: case_management::CasePolicy, survey_from_intake: bool) -> Harness {
    let db = testing::fresh_database().await;
    let (intake_listener, intake_url) = testing::ephemeral_listener().await;
    let (cases_listener, cases_url) = testing::ephemeral_listener().await;
    let intake_config = intake::Config::new(testing::common_config(&db.url));
    let intake = RunningService::spawn(intake_listener, intake_url.clone(), |l, s| {
        intake::run(intake_config, l, s)
    });
    let cases_config = case_management::Config {
        common: testing::common_config(&db.url),
        intake_url: intake_url.clone(),
        survey_url: if survey_from_intake {
            intake_url
        } else {
            "http://127.0.0.1:9".into()
        },
        policy,
    };
    let cases = RunningService::spawn(cases_listener, cases_url, |l, s| {
        case_management::run(cases_config, l, s)
    });
    Harness { intake, cases, db }
}

impl Harness {
    fn cases(&self, subject: &str, role: Role, department: Option<&str>) -> Cases {
        let token = testing::token(subject, role, department);
        CaseServiceClient::with_interceptor(
            testing::channel(&self.cases.url),
            BearerToken::new(&token).unwrap(),
        )
    }

    async fn case_for(&self, request_id: &str, description: &str, product: &str) -> Case {
        self.case_from(
            request_id,
            description,
            product,
            &format!("CUST-{request_id}"),
        )
        .await
    }

    /// Submits a complaint through intake and waits for its case.
    async fn case_from(
        &self,
        request_id: &str,
        description: &str,
        product: &str,
        customer: &str,
    ) -> Case {
        let token = testing::token("adapter", Role::Service, None);
        let mut intake = IntakeServiceClient::with_interceptor(
            testing::channel(&self.intake.url),
            BearerToken::new(&token).unwrap(),
        );
        let complaint = intake
            .submit_complaint(SubmitComplaintRequest {
                request_id: request_id.into(),
                channel: Channel::WebForm as i32,
                complainant: Some(Complainant {
                    name: "Zhang".into(),
                    email: format!("{request_id}@example.com"),
                    customer_id: customer.into(),
                    ..Default::default()
                }),
                content: Some(ComplaintContent {
                    description: description.into(),
                    product_ref: product.into(),
                    ..Default::default()
                }),
                recorded_by: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .complaint
            .unwrap();
        let service = self.cases("probe", Role::Service, None);
        eventually("the case to open", Duration::from_secs(20), || {
            let mut service = service.clone();
            let complaint_id = complaint.id.clone();
            async move {
                service
                    .get_case_by_complaint(GetCaseByComplaintRequest { complaint_id })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().case)
            }
        })
        .await
    }

    async fn current(&self, case_id: &str) -> Case {
        self.cases("probe", Role::Service, None)
            .get_case(GetCaseRequest {
                case_id: case_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .case
            .unwrap()
    }

    /// Plays an event of another service: written to intake's outbox, where the case
    /// consumers read it through intake's real event stream.
    async fn emit_as_upstream(&self, aggregate: &str, payload: Payload) {
        let pool = complaints_kit::db::connect(&self.db.url, "test-upstream", 1)
            .await
            .unwrap();
        let log = EventLog::new("intake", "intake");
        let mut tx = pool.begin().await.unwrap();
        log.append(&mut tx, aggregate, "", payload).await.unwrap();
        tx.commit().await.unwrap();
        pool.close().await;
    }

    async fn stop(self) {
        self.cases.stop().await.unwrap();
        self.intake.stop().await.unwrap();
    }
}

/// The fields an INVALID_ARGUMENT names (its message lists "field: why" pairs, the same
/// violations its BadRequest detail carries).
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .message()
        .split("; ")
        .filter_map(|part| part.split_once(": ").map(|(field, _)| field.to_owned()))
        .collect()
}

async fn timeline_kinds(cases: &mut Cases, case_id: &str) -> Vec<(String, String)> {
    cases
        .list_timeline(ListTimelineRequest {
            case_id: case_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| (e.kind, e.note))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transferred_case_has_one_owner_in_its_new_department_and_leaves_the_old_one() {
    let h = start(Default::default()).await;
    let case = h.case_for("tr-1", "商品质量问题，坏了", "").await;
    assert_eq!(case.department_id, "quality");
    let mut quality_agent = h.cases("agent-q", Role::Agent, Some("quality"));

    let missing = quality_agent
        .transfer_case(TransferCaseRequest {
            case_id: case.id.clone(),
            version: case.version,
            department_id: "logistics".into(),
            ..Default::default()
        })
        .await
        .expect_err("a transfer needs a reason");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&missing), vec!["reason"]);

    let moved = quality_agent
        .transfer_case(TransferCaseRequest {
            case_id: case.id.clone(),
            version: case.version,
            department_id: "logistics".into(),
            owner_id: String::new(),
            reason: "the parcel was crushed in transit".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap();
    assert_eq!(moved.department_id, "logistics");
    assert_eq!(
        moved.owner_id, "logistics-supervisor",
        "no agents: the supervisor owns it"
    );
    assert_eq!(moved.version, case.version + 1);

    let hidden = quality_agent
        .get_case(GetCaseRequest {
            case_id: case.id.clone(),
        })
        .await
        .expect_err("no longer quality's case");
    assert_eq!(hidden.code(), Code::NotFound);

    // The logistics supervisor hands it to one of their agents; a stranger cannot own it.
    let mut admin = h.cases("admin", Role::Admin, None);
    admin
        .create_agent(CreateAgentRequest {
            request_id: "agent-l".into(),
            agent: Some(complaints_proto::cases::v1::Agent {
                id: "agent-l".into(),
                department_id: "logistics".into(),
                display_name: "Liu".into(),
                capacity: 5,
                available: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut supervisor = h.cases("sup-l", Role::Supervisor, Some("logistics"));
    let stranger = supervisor
        .assign_case(AssignCaseRequest {
            case_id: case.id.clone(),
            version: moved.version,
            owner_id: "agent-x".into(),
            reason: "rebalancing".into(),
        })
        .await
        .expect_err("not of this department");
    assert_eq!(violated_fields(&stranger), vec!["owner_id"]);
    let assigned = supervisor
        .assign_case(AssignCaseRequest {
            case_id: case.id.clone(),
            version: moved.version,
            owner_id: "agent-l".into(),
            reason: "rebalancing".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap();
    assert_eq!(assigned.owner_id, "agent-l");
    let mut logistics_agent = h.cases("agent-l", Role::Agent, Some("logistics"));
    let denied = logistics_agent
        .assign_case(AssignCaseRequest {
            case_id: case.id.clone(),
            version: assigned.version,
            owner_id: "agent-l".into(),
            reason: "mine".into(),
        })
        .await
        .expect_err("agents do not assign");
    assert_eq!(denied.code(), Code::PermissionDenied);

    let kinds = timeline_kinds(&mut supervisor, &case.id).await;
    assert!(
        kinds
            .iter()
            .any(|(k, n)| k == "transferred" && n.contains("crushed"))
    );
    assert!(
        kinds
            .iter()
            .any(|(k, n)| k == "assigned" && n == "rebalancing")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_department_works_its_sub_task_and_the_front_desk_sees_the_progress() {
    let h = start(Default::default()).await;
    let case = h.case_for("st-1", "质量问题，坏了", "").await;
    let mut owner = h.cases("agent-q", Role::Agent, Some("quality"));
    let due = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 86_400,
        nanos: 0,
    };
    let request = CreateSubTaskRequest {
        request_id: "st-1-logistics".into(),
        sub_task: Some(SubTask {
            case_id: case.id.clone(),
            department_id: "logistics".into(),
            title: "Trace the parcel".into(),
            due_at: Some(due),
            customer_visible: true,
            ..Default::default()
        }),
    };
    // An internal check the customer is not told about.
    owner
        .create_sub_task(CreateSubTaskRequest {
            request_id: "st-1-billing".into(),
            sub_task: Some(SubTask {
                case_id: case.id.clone(),
                department_id: "billing".into(),
                title: "Check the refund ledger".into(),
                due_at: Some(due),
                customer_visible: false,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let task = owner
        .create_sub_task(request.clone())
        .await
        .unwrap()
        .into_inner()
        .sub_task
        .unwrap();
    assert_eq!(task.status, SubTaskStatus::Open as i32);
    assert_eq!(task.owner_id, "logistics-supervisor");
    let again = owner
        .create_sub_task(request)
        .await
        .unwrap()
        .into_inner()
        .sub_task
        .unwrap();
    assert_eq!(
        again.id, task.id,
        "the same request id creates one sub-task"
    );

    let bad = owner
        .create_sub_task(CreateSubTaskRequest {
            request_id: "st-1-bad".into(),
            sub_task: Some(SubTask {
                case_id: case.id.clone(),
                department_id: "logistics".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("title and due time are required");
    let fields = violated_fields(&bad);
    assert!(fields.contains(&"sub_task.title".to_owned()), "{fields:?}");
    assert!(fields.contains(&"sub_task.due_at".to_owned()), "{fields:?}");

    // Logistics finds the work in its own list and finishes it without reading the case.
    let mut logistics = h.cases("agent-l", Role::Agent, Some("logistics"));
    let listed = logistics
        .list_sub_tasks(ListSubTasksRequest {
            department_id: "logistics".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sub_tasks;
    assert_eq!(listed.len(), 1);
    let mut billing = h.cases("agent-b", Role::Agent, Some("billing"));
    let outsider = billing
        .update_sub_task(UpdateSubTaskRequest {
            sub_task_id: task.id.clone(),
            version: task.version,
            status: SubTaskStatus::Done as i32,
            result: String::new(),
        })
        .await
        .expect_err("not billing's work");
    assert_eq!(outsider.code(), Code::NotFound);
    let done = logistics
        .update_sub_task(UpdateSubTaskRequest {
            sub_task_id: task.id.clone(),
            version: task.version,
            status: SubTaskStatus::Done as i32,
            result: "found at the depot".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sub_task
        .unwrap();
    assert!(done.completed_at.is_some());
    let reopen = logistics
        .update_sub_task(UpdateSubTaskRequest {
            sub_task_id: task.id.clone(),
            version: done.version,
            status: SubTaskStatus::InProgress as i32,
            result: String::new(),
        })
        .await
        .expect_err("done is final");
    assert_eq!(reopen.code(), Code::FailedPrecondition);
    let stale = logistics
        .update_sub_task(UpdateSubTaskRequest {
            sub_task_id: task.id.clone(),
            version: task.version,
            status: SubTaskStatus::Cancelled as i32,
            result: String::new(),
        })
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted);

    // The front desk (customer care) reads the customer's view: every department's part.
    let mut desk = h.cases("desk-1", Role::Agent, Some("customer-care"));
    let view = desk
        .get_customer_view(GetCustomerViewRequest {
            complaint_reference: case.complaint_reference.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        view.departments
            .iter()
            .any(|d| d.department == "Delivery and logistics" && d.text.contains("finished")),
        "{:?}",
        view.departments
    );
    assert!(
        view.departments.iter().all(|d| d.department != "Billing"),
        "a sub-task not marked for the customer stays internal: {:?}",
        view.departments
    );
    assert_eq!(
        desk.get_case(GetCaseRequest {
            case_id: case.id.clone()
        })
        .await
        .expect_err("the desk sees only the customer's view")
        .code(),
        Code::NotFound
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_view_shows_only_customer_visible_entries_in_plain_words() {
    let h = start(Default::default()).await;
    let case = h.case_for("cv-1", "质量问题，坏了", "").await;
    let mut owner = h.cases("agent-q", Role::Agent, Some("quality"));
    owner
        .log_contact(LogContactRequest {
            request_id: "cv-1-call-1".into(),
            case_id: case.id.clone(),
            kind: ContactKind::Attempt as i32,
            channel: Channel::Phone as i32,
            note: "no answer; customer sounded angry last time".into(),
            customer_visible: false,
        })
        .await
        .unwrap();
    let message = LogContactRequest {
        request_id: "cv-1-msg-1".into(),
        case_id: case.id.clone(),
        kind: ContactKind::Message as i32,
        channel: Channel::Email as i32,
        note: "我们已安排换货 / a replacement is on its way".into(),
        customer_visible: true,
    };
    owner.log_contact(message.clone()).await.unwrap();
    owner.log_contact(message).await.unwrap();
    let no_text = owner
        .log_contact(LogContactRequest {
            request_id: "cv-1-msg-2".into(),
            case_id: case.id.clone(),
            kind: ContactKind::Message as i32,
            channel: Channel::Unspecified as i32,
            ..Default::default()
        })
        .await
        .expect_err("a message needs text and a channel");
    let fields = violated_fields(&no_text);
    assert!(fields.contains(&"note".to_owned()) && fields.contains(&"channel".to_owned()));
    owner
        .transition_case(TransitionCaseRequest {
            case_id: case.id.clone(),
            version: case.version,
            to_status: CaseStatus::Investigating as i32,
            note: String::new(),
            customer_visible: true,
        })
        .await
        .unwrap();

    let view = owner
        .get_customer_view(GetCustomerViewRequest {
            case_id: case.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.status, CaseStatus::Investigating as i32);
    assert!(view.progress.contains("looking into"), "{}", view.progress);
    let texts: Vec<&str> = view.updates.iter().map(|u| u.text.as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("replacement")), "{texts:?}");
    assert_eq!(
        texts.iter().filter(|t| t.contains("replacement")).count(),
        1,
        "one message per request id"
    );
    assert!(!texts.iter().any(|t| t.contains("angry")), "{texts:?}");
    assert!(
        !texts.iter().any(|t| t.contains("CASE_STATUS")),
        "{texts:?}"
    );

    let mut billing = h.cases("agent-b", Role::Agent, Some("billing"));
    let hidden = billing
        .get_customer_view(GetCustomerViewRequest {
            complaint_reference: case.complaint_reference.clone(),
            ..Default::default()
        })
        .await
        .expect_err("not billing's case");
    assert_eq!(hidden.code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_stream_pushes_only_the_callers_departments_changes() {
    let h = start(Default::default()).await;
    let quality_case = h.case_for("w-1", "质量问题，坏了", "").await;
    let billing_case = h.case_for("w-2", "账单多收了钱，发票也开错了", "").await;
    assert_eq!(billing_case.department_id, "billing");
    let mut watcher = h.cases("agent-q", Role::Agent, Some("quality"));
    let mut stream = watcher
        .watch_cases(WatchCasesRequest::default())
        .await
        .unwrap()
        .into_inner();

    let mut billing = h.cases("agent-b", Role::Agent, Some("billing"));
    billing
        .transition_case(TransitionCaseRequest {
            case_id: billing_case.id.clone(),
            version: billing_case.version,
            to_status: CaseStatus::Investigating as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut quality = h.cases("agent-q", Role::Agent, Some("quality"));
    quality
        .transition_case(TransitionCaseRequest {
            case_id: quality_case.id.clone(),
            version: quality_case.version,
            to_status: CaseStatus::Investigating as i32,
            ..Default::default()
        })
        .await
        .unwrap();

    let change = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let change = stream.message().await.unwrap().expect("stream open");
            let case = change.case.clone().unwrap();
            assert_ne!(
                case.id, billing_case.id,
                "billing's change leaked to quality"
            );
            if change.change == "CaseStatusChanged" {
                return change;
            }
        }
    })
    .await
    .expect("the quality change arrives");
    let case = change.case.unwrap();
    assert_eq!(case.id, quality_case.id);
    assert_eq!(case.status, CaseStatus::Investigating as i32);
    drop(stream);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurring_complaints_become_a_ranked_problem_with_cause_and_action() {
    let h = start(Default::default()).await;
    let mut kettle = Vec::new();
    for i in 0..3 {
        kettle.push(
            h.case_from(
                &format!("p-k{i}"),
                "电水壶坏了，质量问题",
                "KETTLE-9",
                &format!("C{i}"),
            )
            .await,
        );
    }
    let toaster = h
        .case_for("p-t0", "烤面包机坏了，质量问题", "TOASTER-1")
        .await;
    assert_eq!(kettle[0].product_ref, "KETTLE-9");

    let mut quality = h.cases("qa", Role::Quality, None);
    let suggestions = quality
        .suggest_problems(SuggestProblemsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .suggestions;
    assert_eq!(suggestions.len(), 1, "{suggestions:?}");
    assert_eq!(suggestions[0].product_ref, "KETTLE-9");
    assert_eq!(suggestions[0].cases, 3);
    assert_eq!(suggestions[0].customers, 3);

    let create = |request_id: &str, title: &str, product: &str| CreateProblemRequest {
        request_id: request_id.into(),
        problem: Some(Problem {
            title: title.into(),
            category: "product_quality".into(),
            product_ref: product.into(),
            owner_id: "quality-manager".into(),
            ..Default::default()
        }),
    };
    let kettle_problem = quality
        .create_problem(create("prob-1", "Kettles fail after two days", "KETTLE-9"))
        .await
        .unwrap()
        .into_inner()
        .problem
        .unwrap();
    let same = quality
        .create_problem(create("prob-1", "Kettles fail after two days", "KETTLE-9"))
        .await
        .unwrap()
        .into_inner()
        .problem
        .unwrap();
    assert_eq!(same.id, kettle_problem.id);
    let toaster_problem = quality
        .create_problem(create("prob-2", "Toaster", "TOASTER-1"))
        .await
        .unwrap()
        .into_inner()
        .problem
        .unwrap();
    for case in kettle.iter().take(2) {
        quality
            .link_case_to_problem(LinkCaseToProblemRequest {
                case_id: case.id.clone(),
                version: case.version,
                problem_id: kettle_problem.id.clone(),
            })
            .await
            .unwrap();
    }
    quality
        .link_case_to_problem(LinkCaseToProblemRequest {
            case_id: toaster.id.clone(),
            version: toaster.version,
            problem_id: toaster_problem.id.clone(),
        })
        .await
        .unwrap();
    let stale = quality
        .link_case_to_problem(LinkCaseToProblemRequest {
            case_id: kettle[0].id.clone(),
            version: kettle[0].version,
            problem_id: toaster_problem.id.clone(),
        })
        .await
        .expect_err("stale version");
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(
        h.current(&kettle[0].id).await.problem_id,
        kettle_problem.id,
        "the stale link changed nothing"
    );

    let ranked = quality
        .list_problems(ListProblemsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .problems;
    assert_eq!(ranked[0].id, kettle_problem.id);
    assert_eq!(ranked[0].linked_cases, 2);
    assert_eq!(ranked[0].linked_customers, 2);
    assert_eq!(ranked[1].linked_cases, 1);
    let remaining = quality
        .suggest_problems(SuggestProblemsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .suggestions;
    assert!(remaining.is_empty(), "linked cases are no longer suggested");

    let mut update = Problem {
        status: ProblemStatus::Fixed as i32,
        root_cause: "a weak thermostat batch".into(),
        ..kettle_problem.clone()
    };
    let early = quality
        .update_problem(UpdateProblemRequest {
            problem: Some(update.clone()),
            version: kettle_problem.version,
        })
        .await
        .expect_err("open cannot jump to fixed");
    assert_eq!(early.code(), Code::FailedPrecondition);
    update.status = ProblemStatus::ActionInProgress as i32;
    update.corrective_action = "replace the supplier; recall batch 7".into();
    let updated = quality
        .update_problem(UpdateProblemRequest {
            problem: Some(update.clone()),
            version: kettle_problem.version,
        })
        .await
        .unwrap()
        .into_inner()
        .problem
        .unwrap();
    assert_eq!(updated.status, ProblemStatus::ActionInProgress as i32);
    let again = quality
        .update_problem(UpdateProblemRequest {
            problem: Some(update),
            version: kettle_problem.version,
        })
        .await
        .expect_err("stale");
    assert_eq!(again.code(), Code::Aborted);

    let mut agent = h.cases("agent-q", Role::Agent, Some("quality"));
    assert_eq!(
        agent
            .create_problem(create("prob-3", "x", ""))
            .await
            .expect_err("agents do not run the ledger")
            .code(),
        Code::PermissionDenied
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_prefers_the_agent_with_the_skill_and_languages_are_managed() {
    let h = start(Default::default()).await;
    let mut admin = h.cases("admin", Role::Admin, None);
    for (id, skills) in [
        ("agent-idle", vec![]),
        ("agent-skilled", vec!["product_quality"]),
    ] {
        admin
            .create_agent(CreateAgentRequest {
                request_id: id.into(),
                agent: Some(complaints_proto::cases::v1::Agent {
                    id: id.into(),
                    department_id: "quality".into(),
                    display_name: id.into(),
                    skills: skills.into_iter().map(Into::into).collect(),
                    capacity: 10,
                    available: true,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    // "agent-idle" sorts first and is as idle: only the skill decides.
    let case = h.case_for("r-1", "质量问题，坏了", "").await;
    assert_eq!(case.owner_id, "agent-skilled");

    let got = admin
        .get_agent(GetAgentRequest {
            agent_id: "agent-idle".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let profile = got.profile.unwrap();
    let updated = admin
        .update_agent(UpdateAgentRequest {
            agent_id: "agent-idle".into(),
            version: profile.version,
            languages: Some(StringList {
                values: vec!["zh-CN".into(), "en".into()],
            }),
            capacity: Some(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.profile.unwrap().languages, vec!["zh-CN", "en"]);
    assert_eq!(updated.agent.unwrap().capacity, 3);
    let stale = admin
        .update_agent(UpdateAgentRequest {
            agent_id: "agent-idle".into(),
            version: profile.version,
            available: Some(false),
            ..Default::default()
        })
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted);
    let mut other_supervisor = h.cases("sup-b", Role::Supervisor, Some("billing"));
    assert_eq!(
        other_supervisor
            .update_agent(UpdateAgentRequest {
                agent_id: "agent-idle".into(),
                version: profile.version + 1,
                available: Some(false),
                ..Default::default()
            })
            .await
            .expect_err("not their agent")
            .code(),
        Code::NotFound
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_contacts_and_intake_reclassification_update_the_case() {
    let h = start(Default::default()).await;
    let case = h.case_for("rc-1", "质量问题，坏了", "").await;
    let before = Priority::try_from(case.priority).unwrap();
    assert_ne!(before, Priority::P1);

    h.emit_as_upstream(
        &case.complaint_id,
        Payload::ComplaintRepeatContact(ComplaintRepeatContact {
            complaint_id: case.complaint_id.clone(),
            repeat_complaint_id: uuid::Uuid::new_v4().to_string(),
            repeat_reference: "CMP-REPEAT-1".into(),
            channel: Channel::Phone as i32,
            raised_priority: Priority::P1 as i32,
            contacted_at: None,
        }),
    )
    .await;
    let raised = eventually("the priority to rise", Duration::from_secs(20), || {
        let h = &h;
        let id = case.id.clone();
        async move {
            let now = h.current(&id).await;
            (now.priority == Priority::P1 as i32).then_some(now)
        }
    })
    .await;
    assert_eq!(raised.version, case.version + 1);

    h.emit_as_upstream(
        &case.complaint_id,
        Payload::ComplaintReclassified(ComplaintReclassified {
            complaint_id: case.complaint_id.clone(),
            category: "after_sales".into(),
            severity: Severity::Major as i32,
            priority: 0,
            complexity: 0,
            reason: "agent override: a repair request".into(),
        }),
    )
    .await;
    let reclassified = eventually("the reclassification", Duration::from_secs(20), || {
        let h = &h;
        let id = case.id.clone();
        async move {
            let now = h.current(&id).await;
            (now.category == "after_sales").then_some(now)
        }
    })
    .await;
    assert_eq!(reclassified.severity, Severity::Major as i32);
    assert_eq!(
        reclassified.priority,
        Priority::P1 as i32,
        "unspecified keeps it"
    );

    let mut service = h.cases("probe", Role::Service, None);
    let entries = service
        .list_timeline(ListTimelineRequest {
            case_id: case.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let repeat = entries
        .iter()
        .find(|e| e.kind == "repeat_contact")
        .expect("repeat contact on the timeline");
    assert!(repeat.note.contains("customer contacted again"));
    assert!(!repeat.customer_visible);
    let reasons: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == "reclassified")
        .map(|e| e.note.as_str())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[1].contains("agent override"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_review_policy_dissatisfaction_opens_a_supervisor_review_instead_of_reopening() {
    let policy = case_management::CasePolicy {
        dissatisfaction: case_management::DissatisfactionAction::Review,
        ..Default::default()
    };
    let h = start_with(policy, true).await;
    let case = h.case_for("dr-1", "质量问题，坏了", "").await;
    let mut supervisor = h.cases("quality-supervisor", Role::Supervisor, Some("quality"));
    let mut current = case.clone();
    for to in [CaseStatus::Investigating, CaseStatus::Resolved] {
        current = supervisor
            .transition_case(TransitionCaseRequest {
                case_id: case.id.clone(),
                version: current.version,
                to_status: to as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .case
            .unwrap();
    }
    let answer = Payload::SurveyAnswered(SurveyAnswered {
        invitation_id: "inv-1".into(),
        case_id: case.id.clone(),
        csat: Some(1),
        dissatisfied: true,
        ..Default::default()
    });
    h.emit_as_upstream(&case.id, answer.clone()).await;
    let flagged = eventually("the review to open", Duration::from_secs(20), || {
        let h = &h;
        let id = case.id.clone();
        async move {
            let now = h.current(&id).await;
            now.under_review.then_some(now)
        }
    })
    .await;
    assert_eq!(flagged.status, CaseStatus::Resolved as i32, "not reopened");
    // The same answer delivered again opens no second review.
    h.emit_as_upstream(&case.id, answer).await;

    let tasks = eventually("the review sub-task", Duration::from_secs(20), || {
        let mut supervisor = supervisor.clone();
        let case_id = case.id.clone();
        async move {
            let tasks = supervisor
                .list_sub_tasks(ListSubTasksRequest {
                    case_id,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .sub_tasks;
            (!tasks.is_empty()).then_some(tasks)
        }
    })
    .await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].owner_id, "quality-supervisor");
    supervisor
        .update_sub_task(UpdateSubTaskRequest {
            sub_task_id: tasks[0].id.clone(),
            version: tasks[0].version,
            status: SubTaskStatus::Done as i32,
            result: "handling was right; explained again".into(),
        })
        .await
        .unwrap();
    assert!(!h.current(&case.id).await.under_review);
    h.stop().await;
}
