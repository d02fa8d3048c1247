//! Case-management over gRPC against a real Postgres, fed by a real intake service: access per
//! department, optimistic concurrency, the state machine, idempotent escalation.

use std::time::Duration;

use complaints_kit::Role;
use complaints_kit::auth::BearerToken;
use complaints_kit::testing::{self, RunningService, eventually};
use complaints_proto::cases::v1::case_service_client::CaseServiceClient;
use complaints_proto::cases::v1::{
    AcknowledgeCaseRequest, Case, EscalateRequest, GetCaseByComplaintRequest, GetCaseRequest,
    ListCasesRequest, ListTimelineRequest, TransitionCaseRequest,
};
use complaints_proto::common::v1::{CaseStatus, Channel};
use complaints_proto::intake::v1::intake_service_client::IntakeServiceClient;
use complaints_proto::intake::v1::{
    Complainant, ComplaintContent, RejectionReason, SubmitComplaintRequest, VerifyComplaintRequest,
};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel as GrpcChannel;

type Cases = CaseServiceClient<InterceptedService<GrpcChannel, BearerToken>>;

struct Harness {
    intake: RunningService,
    cases: RunningService,
    _db: testing::TestDatabase,
}

async fn start() -> Harness {
    let db = testing::fresh_database().await;
    let (intake_listener, intake_url) = testing::ephemeral_listener().await;
    let (cases_listener, cases_url) = testing::ephemeral_listener().await;
    let intake_config = intake::Config::new(testing::common_config(&db.url));
    let intake = RunningService::spawn(intake_listener, intake_url.clone(), |l, s| {
        intake::run(intake_config, l, s)
    });
    let cases_config = case_management::Config {
        common: testing::common_config(&db.url),
        intake_url,
        // No survey service in these tests: the consumer keeps retrying quietly.
        survey_url: "http://127.0.0.1:9".into(),
        policy: Default::default(),
    };
    let cases = RunningService::spawn(cases_listener, cases_url, |l, s| {
        case_management::run(cases_config, l, s)
    });
    Harness {
        intake,
        cases,
        _db: db,
    }
}

impl Harness {
    fn cases(&self, subject: &str, role: Role, department: Option<&str>) -> Cases {
        let token = testing::token(subject, role, department);
        CaseServiceClient::with_interceptor(
            testing::channel(&self.cases.url),
            BearerToken::new(&token).unwrap(),
        )
    }

    /// Submits a complaint and waits for its case.
    async fn case_for(&self, request_id: &str, description: &str) -> Case {
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
                    email: "z@example.com".into(),
                    ..Default::default()
                }),
                content: Some(ComplaintContent {
                    description: description.into(),
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

    async fn stop(self) {
        self.cases.stop().await.unwrap();
        self.intake.stop().await.unwrap();
    }
}

fn transition(case: &Case, to: CaseStatus) -> TransitionCaseRequest {
    TransitionCaseRequest {
        case_id: case.id.clone(),
        version: case.version,
        to_status: to as i32,
        note: String::new(),
        customer_visible: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_of_other_department_cannot_see_or_change_case() {
    let h = start().await;
    let case = h.case_for("acl-1", "商品质量问题，坏了").await;
    assert_eq!(case.department_id, "quality");

    let mut outsider = h.cases("agent-b", Role::Agent, Some("billing"));
    let read = outsider
        .get_case(GetCaseRequest {
            case_id: case.id.clone(),
        })
        .await
        .expect_err("hidden");
    assert_eq!(
        read.code(),
        Code::NotFound,
        "must not learn that the case exists"
    );
    let change = outsider
        .transition_case(transition(&case, CaseStatus::Investigating))
        .await
        .expect_err("hidden");
    assert_eq!(change.code(), Code::NotFound);
    let timeline = outsider
        .list_timeline(ListTimelineRequest {
            case_id: case.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("hidden");
    assert_eq!(timeline.code(), Code::NotFound);
    let listed = outsider
        .list_cases(ListCasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cases;
    assert!(listed.is_empty());

    let mut insider = h.cases("agent-a", Role::Agent, Some("quality"));
    assert!(
        insider
            .get_case(GetCaseRequest {
                case_id: case.id.clone()
            })
            .await
            .is_ok()
    );
    assert_eq!(
        insider
            .list_cases(ListCasesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .cases
            .len(),
        1
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_updates_never_both_win() {
    let h = start().await;
    let case = h.case_for("race-1", "质量问题").await;
    let agent = h.cases("agent-a", Role::Agent, Some("quality"));
    let attempts: Vec<_> = [
        CaseStatus::Investigating,
        CaseStatus::WaitingOnCustomer,
        CaseStatus::Cancelled,
    ]
    .into_iter()
    .map(|to| {
        let mut agent = agent.clone();
        let request = transition(&case, to);
        tokio::spawn(async move { agent.transition_case(request).await })
    })
    .collect();
    let mut wins = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => wins += 1,
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert_eq!(wins, 1);
    let now = agent
        .clone()
        .get_case(GetCaseRequest {
            case_id: case.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap();
    assert_eq!(now.version, case.version + 1);
    // The winner's timeline entry and event were written with it, the losers' never.
    let pool = sqlx::PgPool::connect(&h._db.url).await.unwrap();
    let count = |sql: &'static str| {
        let (pool, id) = (pool.clone(), case.id.clone());
        async move {
            let (n,): (i64,) = sqlx::query_as(sql)
                .bind(uuid::Uuid::parse_str(&id).unwrap())
                .fetch_one(&pool)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM cases.timeline WHERE case_id = $1 AND kind = 'status_changed'")
            .await,
        1
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM cases.event_outbox
             WHERE aggregate_id = $1::text AND event_type = 'CaseStatusChanged'"
        )
        .await,
        1
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_keeps_planner_statistics_only_for_what_queries_filter_on() {
    let h = start().await;
    h.case_for("stats-1", "质量问题").await;
    let pool = sqlx::PgPool::connect(&h._db.url).await.unwrap();
    assert_eq!(
        testing::analyzed_columns(&pool, "cases", "timeline").await,
        [
            "at",
            "case_id",
            "customer_visible",
            "id",
            "kind",
            "request_id"
        ]
    );
    h.stop().await;
}

/// No foreign key checks it (migration 0005): every timeline entry's case must be there, and
/// there must be entries to check, of openings and of later changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_timeline_entry_has_its_case_without_a_foreign_key_checking_each() {
    let h = start().await;
    let case = h.case_for("orphans-1", "质量问题").await;
    h.case_for("orphans-2", "服务态度").await;
    let mut agent = h.cases("agent-a", Role::Agent, Some("quality"));
    agent
        .transition_case(transition(&case, CaseStatus::Investigating))
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&h._db.url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
            n
        }
    };
    assert!(count("SELECT count(*) FROM cases.timeline").await >= 3);
    assert_eq!(
        count(
            "SELECT count(*) FROM cases.timeline t
             WHERE NOT EXISTS (SELECT 1 FROM cases.cases c WHERE c.id = t.case_id)"
        )
        .await,
        0,
        "timeline entries without their case"
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_constraint
             WHERE conrelid = 'cases.timeline'::regclass AND contype = 'f'"
        )
        .await,
        0,
        "a foreign key still checks every timeline entry"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_illegal_transition_names_the_allowed_ones() {
    let h = start().await;
    let case = h.case_for("sm-1", "质量问题").await;
    let mut agent = h.cases("agent-a", Role::Agent, Some("quality"));
    let status = agent
        .transition_case(transition(&case, CaseStatus::Closed))
        .await
        .expect_err("illegal");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("CASE_STATUS_INVESTIGATING"),
        "{}",
        status.message()
    );
    let missing = agent
        .transition_case(transition(&case, CaseStatus::Unspecified))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_escalation_never_applies_twice() {
    let h = start().await;
    let case = h.case_for("esc-1", "质量问题").await;
    let mut sla = h.cases("sla-timer", Role::Service, None);
    let request = EscalateRequest {
        case_id: case.id.clone(),
        escalation_id: "sla:clock-1:1".into(),
        reason: "first response breached".into(),
    };
    let first = sla.escalate(request.clone()).await.unwrap().into_inner();
    assert!(first.escalated);
    let escalated = first.case.unwrap();
    assert_eq!(escalated.escalation_level, 1);
    assert_eq!(escalated.owner_id, "quality-supervisor");
    let again = sla.escalate(request).await.unwrap().into_inner();
    assert!(!again.escalated);
    assert_eq!(again.case.unwrap().escalation_level, 1);
    let next = sla
        .escalate(EscalateRequest {
            case_id: case.id.clone(),
            escalation_id: "sla:clock-1:2".into(),
            reason: "still breached".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.case.unwrap().owner_id, "quality-manager");
    let mut agent = h.cases("agent-a", Role::Agent, Some("quality"));
    let denied = agent
        .escalate(EscalateRequest {
            case_id: case.id,
            escalation_id: "x".into(),
            reason: "y".into(),
        })
        .await
        .expect_err("agents do not escalate");
    assert_eq!(denied.code(), Code::PermissionDenied);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_rejected_at_verification_cancels_its_case() {
    let h = start().await;
    let case = h.case_for("spam-1", "buy cheap watches").await;
    let token = testing::token("agent-a", Role::Agent, Some("customer-care"));
    let mut intake = IntakeServiceClient::with_interceptor(
        testing::channel(&h.intake.url),
        BearerToken::new(&token).unwrap(),
    );
    intake
        .verify_complaint(VerifyComplaintRequest {
            complaint_id: case.complaint_id.clone(),
            version: 1,
            valid: false,
            rejection_reason: RejectionReason::Spam as i32,
            note: "advertising".into(),
        })
        .await
        .unwrap();
    let service = h.cases("probe", Role::Service, None);
    eventually("the case to be cancelled", Duration::from_secs(20), || {
        let mut service = service.clone();
        let case_id = case.id.clone();
        async move {
            let case = service
                .get_case(GetCaseRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .case?;
            (case.status == CaseStatus::Cancelled as i32).then_some(())
        }
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_case_moves_on_while_it_is_written_is_refused_as_stale() {
    let h = start().await;
    let case = h.case_for("moved-1", "质量问题").await;
    let pool = sqlx::PgPool::connect(&h._db.url).await.unwrap();
    let id = uuid::Uuid::parse_str(&case.id).unwrap();
    // Another writer holds the case's row and moves its version on.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("UPDATE cases.cases SET version = version + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *other)
        .await
        .unwrap();
    let mut agent = h.cases("agent-a", Role::Agent, Some("quality"));
    let request = AcknowledgeCaseRequest {
        case_id: case.id.clone(),
        version: case.version,
        note: "收到".into(),
    };
    let call = tokio::spawn(async move { agent.acknowledge_case(request).await });
    // The call read the case at the version it names, decided, and now waits for the row.
    eventually(
        "the acknowledgement waiting for the row",
        Duration::from_secs(20),
        || {
            let pool = pool.clone();
            async move {
                let (waiting,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE wait_event_type = 'Lock' AND query LIKE 'WITH saved AS%'",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                (waiting > 0).then_some(())
            }
        },
    )
    .await;
    other.commit().await.unwrap();
    let status = call.await.unwrap().expect_err("the case moved on");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    // Nothing of the refused change was written.
    let (acknowledged, entries, events): (Option<chrono::DateTime<chrono::Utc>>, i64, i64) =
        sqlx::query_as(
            "SELECT (SELECT acknowledged_at FROM cases.cases WHERE id = $1),
                    (SELECT count(*) FROM cases.timeline WHERE case_id = $1 AND kind = 'acknowledged'),
                    (SELECT count(*) FROM cases.event_outbox
                     WHERE aggregate_id = $1::text AND event_type = 'CaseAcknowledged')",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((acknowledged, entries, events), (None, 0, 0));
    h.stop().await;
}
