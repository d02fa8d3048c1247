//! One complaint through its whole lifecycle, across the five services, over gRPC against a
//! real Postgres: intake → case → SLA clocks → acknowledgement and resolution → survey →
//! scorecard. Each step is checked through the owning service's own query RPCs.

use std::time::Duration;

use complaints_kit::Role;
use complaints_kit::testing::eventually;
use complaints_proto::cases::v1::{
    AcknowledgeCaseRequest, Agent, CreateAgentRequest, GetCaseByComplaintRequest, GetCaseRequest,
    ListTimelineRequest, TransitionCaseRequest,
};
use complaints_proto::common::v1::{CaseStatus, Channel, ClockKind, CustomerTier};
use complaints_proto::intake::v1::{
    Complainant, ComplaintContent, GetComplaintRequest, SubmitComplaintRequest,
};
use complaints_proto::scoring::v1::SubjectKind;
use complaints_proto::sla::v1::{ClockState, ListCaseClocksRequest};
use complaints_proto::survey::v1::{
    Answer, ClaimDueInvitationsRequest, InvitationStatus, ListInvitationsRequest,
    SubmitSurveyResponseRequest, answer::Value,
};
use e2e_tests::TestSuite;

const WAIT: Duration = Duration::from_secs(20);

fn rating(id: &str, r: i32) -> Answer {
    Answer {
        question_id: id.into(),
        value: Some(Value::Rating(r)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_goes_through_its_whole_lifecycle() {
    let t = TestSuite::start().await;

    // An admin staffs the quality department with one agent.
    t.cases("admin", Role::Admin, None)
        .create_agent(CreateAgentRequest {
            request_id: "agent-li".into(),
            agent: Some(Agent {
                id: "agent-li".into(),
                department_id: "quality".into(),
                display_name: "Li Na".into(),
                skills: vec!["product_quality".into()],
                capacity: 10,
                available: true,
                ..Default::default()
            }),
        })
        .await
        .expect("agent created");

    // 1. A channel adapter submits a complaint and gets an id and a reference number.
    let mut intake = t.intake("web-adapter", Role::Service, None);
    let submitted = intake
        .submit_complaint(SubmitComplaintRequest {
            request_id: "web-2026-0001".into(),
            channel: Channel::WebForm as i32,
            complainant: Some(Complainant {
                name: "王小明".into(),
                phone: "138 0013 8000".into(),
                email: "xiaoming@example.com".into(),
                customer_id: "CUST-42".into(),
                tier: CustomerTier::Regular as i32,
            }),
            content: Some(ComplaintContent {
                subject: "电水壶坏了".into(),
                description: "买的电水壶用了两天就坏了，质量太差".into(),
                demand: "退货退款".into(),
                order_ref: "ORD-778899".into(),
                ..Default::default()
            }),
            recorded_by: String::new(),
        })
        .await
        .expect("submitted")
        .into_inner();
    assert!(submitted.created);
    let complaint = submitted.complaint.expect("complaint");
    assert!(
        complaint.reference.starts_with("CMP-"),
        "{}",
        complaint.reference
    );
    assert_eq!(complaint.reference.len(), "CMP-20261123-0000001".len());
    let classification = complaint.classification.clone().expect("classification");
    assert_eq!(classification.category, "product_quality");
    let fetched = intake
        .get_complaint(GetComplaintRequest {
            complaint_id: complaint.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .complaint
        .expect("complaint");
    assert_eq!(
        fetched.complainant.expect("complainant").phone,
        "+8613800138000"
    );

    // 2. Case-management opens a case, routed by category, with an owner.
    let mut cases_service = t.cases("sla-probe", Role::Service, None);
    let case = t.case_of(&complaint.id).await;
    assert_eq!(case.department_id, "quality");
    assert_eq!(case.owner_id, "agent-li");
    assert_eq!(case.status, CaseStatus::Accepted as i32);
    assert_eq!(case.complaint_reference, complaint.reference);

    // 3. The SLA timer starts the first-response (1 business hour) and resolution clocks.
    let sla = t.sla("sre", Role::Quality);
    let clocks = eventually("first-response and resolution clocks", WAIT, || {
        let mut sla = sla.clone();
        let case_id = case.id.clone();
        async move {
            let clocks = sla
                .list_case_clocks(ListCaseClocksRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .clocks;
            (clocks.len() == 2).then_some(clocks)
        }
    })
    .await;
    let first_response = clocks
        .iter()
        .find(|c| c.kind == ClockKind::FirstResponse as i32)
        .expect("first response");
    assert_eq!(first_response.state, ClockState::Running as i32);
    assert_eq!(first_response.target.expect("target").seconds, 3600);
    assert!(first_response.business_time);
    let resolution = clocks
        .iter()
        .find(|c| c.kind == ClockKind::Resolution as i32)
        .expect("resolution");
    assert_eq!(resolution.state, ClockState::Running as i32);
    // Three working days of eight hours for a simple complaint.
    assert_eq!(resolution.target.expect("target").seconds, 3 * 8 * 3600);

    // 4. The owner acknowledges, then moves the case to resolution.
    let mut agent = t.cases("agent-li", Role::Agent, Some("quality"));
    let mut current = agent
        .acknowledge_case(AcknowledgeCaseRequest {
            case_id: case.id.clone(),
            version: case.version,
            note: "您好，已收到".into(),
        })
        .await
        .expect("acknowledged")
        .into_inner()
        .case
        .expect("case");
    assert!(current.acknowledged_at.is_some());
    eventually("the first-response clock to be met", WAIT, || {
        let mut sla = sla.clone();
        let case_id = case.id.clone();
        async move {
            let clocks = sla
                .list_case_clocks(ListCaseClocksRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .clocks;
            clocks
                .iter()
                .any(|c| {
                    c.kind == ClockKind::FirstResponse as i32
                        && c.state == ClockState::Met as i32
                        && c.met_on_time
                })
                .then_some(())
        }
    })
    .await;
    for status in [
        CaseStatus::Investigating,
        CaseStatus::SolutionProposed,
        CaseStatus::Implementing,
        CaseStatus::Resolved,
    ] {
        current = agent
            .transition_case(TransitionCaseRequest {
                case_id: case.id.clone(),
                version: current.version,
                to_status: status as i32,
                note: format!("now {}", status.as_str_name()),
                customer_visible: true,
            })
            .await
            .unwrap_or_else(|e| panic!("transition to {status:?}: {e}"))
            .into_inner()
            .case
            .expect("case");
        assert_eq!(current.status, status as i32);
    }
    assert!(current.resolved_at.is_some());
    let timeline = agent
        .list_timeline(ListTimelineRequest {
            case_id: case.id.clone(),
            ..Default::default()
        })
        .await
        .expect("timeline")
        .into_inner()
        .entries;
    let kinds: Vec<&str> = timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "acknowledged",
            "status_changed",
            "status_changed",
            "status_changed",
            "status_changed"
        ]
    );
    assert!(timeline.iter().all(|e| !e.actor.is_empty()));

    // Resolution meets the resolution clock and starts the 48-hour follow-up clock.
    eventually("resolution met and follow-up running", WAIT, || {
        let mut sla = sla.clone();
        let case_id = case.id.clone();
        async move {
            let clocks = sla
                .list_case_clocks(ListCaseClocksRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .clocks;
            let met = clocks.iter().any(|c| {
                c.kind == ClockKind::Resolution as i32 && c.state == ClockState::Met as i32
            });
            let follow_up = clocks
                .iter()
                .find(|c| c.kind == ClockKind::FollowUp as i32)?;
            (met && follow_up.state == ClockState::Running as i32
                && !follow_up.business_time
                && follow_up.target.expect("target").seconds == 48 * 3600)
                .then_some(())
        }
    })
    .await;

    // 5. The survey service issues a single-use invitation; the customer answers through it.
    let mut survey = t.survey("survey-web", Role::Service);
    let delivery = eventually("a survey invitation to be due", WAIT, || {
        let mut survey = survey.clone();
        async move {
            let deliveries = survey
                .claim_due_invitations(ClaimDueInvitationsRequest { limit: 10 })
                .await
                .ok()?
                .into_inner()
                .deliveries;
            deliveries.into_iter().next()
        }
    })
    .await;
    assert_eq!(
        delivery.invitation.as_ref().expect("invitation").case_id,
        case.id
    );
    let answers = vec![
        rating("csat", 5),
        rating("nps", 10),
        Answer {
            question_id: "solved".into(),
            value: Some(Value::YesNo(true)),
        },
    ];
    let answered = survey
        .submit_survey_response(SubmitSurveyResponseRequest {
            token: delivery.token.clone(),
            answers: answers.clone(),
        })
        .await
        .expect("answered")
        .into_inner()
        .invitation
        .expect("invitation");
    assert_eq!(answered.status, InvitationStatus::Answered as i32);
    assert!(!answered.dissatisfied);
    let replay = survey
        .submit_survey_response(SubmitSurveyResponseRequest {
            token: delivery.token.clone(),
            answers,
        })
        .await
        .expect_err("a token works once");
    assert_eq!(replay.code(), tonic::Code::FailedPrecondition);
    let invitations = survey
        .list_invitations(ListInvitationsRequest {
            case_id: case.id.clone(),
            ..Default::default()
        })
        .await
        .expect("invitations")
        .into_inner()
        .invitations;
    assert_eq!(invitations.len(), 1);
    assert_eq!(invitations[0].answers.len(), 3);
    eventually("the follow-up clock to be met by the answer", WAIT, || {
        let mut sla = sla.clone();
        let case_id = case.id.clone();
        async move {
            let clocks = sla
                .list_case_clocks(ListCaseClocksRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .clocks;
            clocks
                .iter()
                .any(|c| c.kind == ClockKind::FollowUp as i32 && c.state == ClockState::Met as i32)
                .then_some(())
        }
    })
    .await;

    // 6. Performance scoring shows the numbers for the agent and the department.
    let scoring = t.scoring("quality-lead", Role::Quality);
    for (kind, subject) in [
        (SubjectKind::Agent, "agent-li"),
        (SubjectKind::Department, "quality"),
    ] {
        let card = eventually("the scorecard to show the answered survey", WAIT, || {
            let mut scoring = scoring.clone();
            async move {
                let card = scoring
                    .get_scorecard(e2e_tests::scorecard_around_now(kind, subject))
                    .await
                    .ok()?
                    .into_inner()
                    .scorecard?;
                (card.nps_responses == 1 && card.cases_resolved == 1).then_some(card)
            }
        })
        .await;
        assert_eq!(card.cases_opened, 1, "{subject}");
        assert_eq!(card.resolution_rate.expect("rate").value, Some(1.0));
        let on_time = card.first_response_on_time_rate.expect("rate");
        assert_eq!((on_time.numerator, on_time.denominator), (1, 1));
        assert_eq!(card.csat_average, Some(5.0));
        assert_eq!(card.satisfaction_rate.expect("rate").value, Some(1.0));
        assert_eq!(card.nps, Some(100.0));
    }

    // The case as the service sees it at the end.
    let final_case = cases_service
        .get_case_by_complaint(GetCaseByComplaintRequest {
            complaint_id: complaint.id.clone(),
        })
        .await
        .expect("case")
        .into_inner()
        .case
        .expect("case");
    assert_eq!(final_case.status, CaseStatus::Resolved as i32);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_complaint_submitted_concurrently_makes_one_complaint_and_one_case() {
    let t = TestSuite::start().await;
    let intake = t.intake("web-adapter", Role::Service, None);
    let request = SubmitComplaintRequest {
        request_id: "retry-storm-1".into(),
        channel: Channel::App as i32,
        complainant: Some(Complainant {
            name: "Zhao Lei".into(),
            email: "zhao.lei@example.com".into(),
            ..Default::default()
        }),
        content: Some(ComplaintContent {
            description: "快递一直没收到".into(),
            ..Default::default()
        }),
        recorded_by: String::new(),
    };
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let mut intake = intake.clone();
            let request = request.clone();
            tokio::spawn(async move { intake.submit_complaint(request).await })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for attempt in attempts {
        let complaint = attempt
            .await
            .unwrap()
            .expect("every attempt succeeds")
            .into_inner()
            .complaint
            .unwrap();
        ids.insert(complaint.id);
    }
    assert_eq!(ids.len(), 1);
    let complaint_id = ids.into_iter().next().unwrap();
    let cases = t.cases("probe", Role::Service, None);
    eventually("the case", WAIT, || {
        let mut cases = cases.clone();
        let complaint_id = complaint_id.clone();
        async move {
            cases
                .get_case_by_complaint(GetCaseByComplaintRequest { complaint_id })
                .await
                .ok()
        }
    })
    .await;
    // Give consumers time to (wrongly) open more, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = cases
        .clone()
        .list_cases(complaints_proto::cases::v1::ListCasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cases;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].complaint_id, complaint_id);
    t.stop().await;
}

/// A contact about a matter whose case is still open is linked to it; once the case is
/// cancelled (intake learns it from case-management's events), the next contact about the same
/// matter opens a case of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_links_while_the_case_is_open_and_opens_a_new_case_after_it_is_cancelled() {
    let t = TestSuite::start().await;
    let mut intake = t.intake("web-adapter", Role::Service, None);
    let contact = |request_id: &str| SubmitComplaintRequest {
        request_id: request_id.into(),
        channel: Channel::WebForm as i32,
        complainant: Some(Complainant {
            name: "赵敏".into(),
            phone: "13911112222".into(),
            customer_id: "CUST-77".into(),
            ..Default::default()
        }),
        content: Some(ComplaintContent {
            description: "洗衣机漏水，质量有问题".into(),
            order_ref: "ORD-77".into(),
            ..Default::default()
        }),
        recorded_by: String::new(),
    };
    let submit =
        |intake: &mut complaints_proto::intake::v1::intake_service_client::IntakeServiceClient<
            _,
        >,
         id: &str| {
            let request = contact(id);
            let mut intake = intake.clone();
            async move {
                intake
                    .submit_complaint(request)
                    .await
                    .expect("submitted")
                    .into_inner()
                    .complaint
                    .expect("complaint")
            }
        };
    let first = submit(&mut intake, "matter-1").await;
    let case = t.case_of(&first.id).await;
    let again = submit(&mut intake, "matter-2").await;
    assert_eq!(again.linked_to_complaint_id, first.id, "linked while open");

    // Intake records the case it got, then learns that it was cancelled.
    let pool = sqlx::PgPool::connect(&t.database.url).await.unwrap();
    let complaint_id = uuid::Uuid::parse_str(&first.id).unwrap();
    let recorded = eventually("intake to record the case", WAIT, || {
        let pool = pool.clone();
        async move {
            let case: Option<(uuid::Uuid,)> = sqlx::query_as(
                "SELECT case_id FROM intake.complaint_cases WHERE complaint_id = $1",
            )
            .bind(complaint_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
            case.map(|(c,)| c.to_string())
        }
    })
    .await;
    assert_eq!(recorded, case.id, "intake recorded the case that opened");
    // The repeat contact reaches the case (a timeline entry, a new version) before it is
    // cancelled.
    let cases = t.cases("probe", Role::Service, None);
    let case = eventually("the repeat contact to reach the case", WAIT, || {
        let mut cases = cases.clone();
        let case_id = case.id.clone();
        async move {
            let current = cases
                .get_case(GetCaseRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .case?;
            (current.version > case.version).then_some(current)
        }
    })
    .await;
    t.cases("supervisor", Role::Supervisor, Some(&case.department_id))
        .transition_case(TransitionCaseRequest {
            case_id: case.id.clone(),
            version: case.version,
            to_status: CaseStatus::Cancelled as i32,
            note: "opened by mistake".into(),
            customer_visible: false,
        })
        .await
        .expect("cancelled");
    eventually("intake to learn the case was cancelled", WAIT, || {
        let pool = pool.clone();
        async move {
            let (open,): (bool,) =
                sqlx::query_as("SELECT case_open FROM intake.complaints WHERE id = $1")
                    .bind(complaint_id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (!open).then_some(())
        }
    })
    .await;

    let later = submit(&mut intake, "matter-3").await;
    assert!(
        later.linked_to_complaint_id.is_empty(),
        "a cancelled matter is not linked to: {later:?}"
    );
    pool.close().await;
    t.stop().await;
}
