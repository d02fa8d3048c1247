//! The survey across services: a phone complaint's return visit (回访) recorded by an agent. A
//! call that does not reach the customer leaves the SLA follow-up clock running; a reached,
//! dissatisfied call meets it and reopens the case (不满意处理); a satisfied link answer meets it
//! and leaves the case resolved; the figures count both.

use std::time::Duration;

use complaints_kit::Role;
use complaints_kit::testing::eventually;
use complaints_kit::time::to_timestamp;
use complaints_proto::cases::v1::{Case, GetCaseRequest};
use complaints_proto::common::v1::{CaseStatus, Channel, ClockKind};
use complaints_proto::intake::v1::{Complainant, ComplaintContent, SubmitComplaintRequest};
use complaints_proto::sla::v1::{Clock, ClockState, ListCaseClocksRequest};
use complaints_proto::survey::v1::{
    Answer, CallOutcome, ClaimDueInvitationsRequest, Delivery, FiguresGrouping,
    GetSurveyFiguresRequest, Invitation, ListInvitationsRequest, RecordReturnVisitRequest,
    SubmitSurveyResponseRequest, answer::Value,
};
use e2e_tests::{TestSuite, WAIT};

fn rating(id: &str, value: i32) -> Answer {
    Answer {
        question_id: id.into(),
        value: Some(Value::Rating(value)),
    }
}

async fn phone_case(t: &TestSuite, request_id: &str) -> Case {
    let complaint = t
        .intake("ivr", Role::Service, None)
        .submit_complaint(SubmitComplaintRequest {
            request_id: request_id.into(),
            channel: Channel::Phone as i32,
            complainant: Some(Complainant {
                name: "李华".into(),
                phone: "13800138000".into(),
                ..Default::default()
            }),
            content: Some(ComplaintContent {
                description: "买的电水壶用了两天就坏了".into(),
                ..Default::default()
            }),
            recorded_by: "hotline-agent-7".into(),
        })
        .await
        .expect("submitted")
        .into_inner()
        .complaint
        .expect("complaint");
    t.case_of(&complaint.id).await
}

async fn invitation_of(t: &TestSuite, case_id: &str) -> Invitation {
    let survey = t.survey("quality-lead", Role::Quality);
    eventually("the survey invitation", WAIT, || {
        let mut survey = survey.clone();
        let case_id = case_id.to_owned();
        async move {
            survey
                .list_invitations(ListInvitationsRequest {
                    case_id,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .invitations
                .pop()
        }
    })
    .await
}

async fn follow_up_clock(t: &TestSuite, case_id: &str) -> Option<Clock> {
    t.sla("sre", Role::Quality)
        .list_case_clocks(ListCaseClocksRequest {
            case_id: case_id.into(),
        })
        .await
        .ok()?
        .into_inner()
        .clocks
        .into_iter()
        .find(|c| c.kind == ClockKind::FollowUp as i32)
}

/// Waits until the SLA timer has applied every survey event committed so far.
async fn sla_caught_up_with_survey(t: &TestSuite) {
    let pool = sqlx::PgPool::connect(&t.database.url).await.unwrap();
    let (txid, seq): (i64, i64) = sqlx::query_as(
        "SELECT txid, seq FROM survey.event_outbox ORDER BY txid DESC, seq DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    eventually("the SLA timer to consume the survey's events", WAIT, || {
        let pool = pool.clone();
        async move {
            let cursor: Option<(i64, i64)> = sqlx::query_as(
                "SELECT txid, seq FROM sla.event_cursors WHERE source = 'feedback-survey'",
            )
            .fetch_optional(&pool)
            .await
            .ok()?;
            cursor.filter(|c| *c >= (txid, seq)).map(|_| ())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_return_visit_meets_the_follow_up_clock_only_when_it_reaches_the_customer() {
    let t = TestSuite::start().await;
    let case = phone_case(&t, "phone-visit-1").await;
    let department = case.department_id.clone();
    let case = t.resolve(case).await;
    let invitation = invitation_of(&t, &case.id).await;
    assert_eq!(invitation.delivery, Delivery::ReturnVisit as i32);
    let running = eventually("the follow-up clock to start", WAIT, || {
        let t = &t;
        let case_id = case.id.clone();
        async move { follow_up_clock(t, &case_id).await }
    })
    .await;
    assert_eq!(running.state, ClockState::Running as i32);

    // The agent calls; nobody answers.
    let mut agent = t.survey("agent-on-duty", Role::Supervisor);
    // A supervisor token without the case's department sees nothing.
    let err = agent
        .record_return_visit(RecordReturnVisitRequest {
            request_id: "call-0".into(),
            invitation_id: invitation.id.clone(),
            version: invitation.version,
            outcome: CallOutcome::NoAnswer as i32,
            answers: vec![],
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    agent = e2e_survey_for_department(&t, &department);
    let after_call = agent
        .record_return_visit(RecordReturnVisitRequest {
            request_id: "call-1".into(),
            invitation_id: invitation.id.clone(),
            version: invitation.version,
            outcome: CallOutcome::NoAnswer as i32,
            answers: vec![],
            note: "no answer at 10:00".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    sla_caught_up_with_survey(&t).await;
    let clock = follow_up_clock(&t, &case.id).await.unwrap();
    assert_eq!(
        clock.state,
        ClockState::Running as i32,
        "an unanswered call does not meet the follow-up target"
    );
    let cases = t.cases("quality-lead", Role::Quality, None);
    let still = cases
        .clone()
        .get_case(GetCaseRequest {
            case_id: case.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap();
    assert_eq!(still.status, CaseStatus::Resolved as i32);

    // The second call reaches a dissatisfied customer.
    let answered = agent
        .record_return_visit(RecordReturnVisitRequest {
            request_id: "call-2".into(),
            invitation_id: invitation.id.clone(),
            version: after_call.version,
            outcome: CallOutcome::Reached as i32,
            answers: vec![rating("csat", 1), rating("nps", 2)],
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert!(answered.dissatisfied);
    eventually(
        "the case to reopen and the follow-up clock to be met",
        WAIT,
        || {
            let mut cases = cases.clone();
            let t = &t;
            let case_id = case.id.clone();
            async move {
                let case = cases
                    .get_case(GetCaseRequest {
                        case_id: case_id.clone(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .case?;
                let clock = follow_up_clock(t, &case_id).await?;
                (case.status == CaseStatus::Reopened as i32
                    && clock.state == ClockState::Met as i32)
                    .then_some(())
            }
        },
    )
    .await;
    t.stop().await;
}

fn e2e_survey_for_department(
    t: &TestSuite,
    department: &str,
) -> complaints_proto::survey::v1::survey_service_client::SurveyServiceClient<e2e_tests::Authed> {
    complaints_proto::survey::v1::survey_service_client::SurveyServiceClient::with_interceptor(
        complaints_kit::testing::channel(&t.suite.urls.survey),
        complaints_kit::auth::BearerToken::new(&complaints_kit::testing::token(
            "agent-on-duty",
            Role::Agent,
            Some(department),
        ))
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_satisfied_answer_meets_the_follow_up_clock_and_counts_in_the_figures() {
    let t = TestSuite::start().await;
    let period_start = chrono::Utc::now() - chrono::Duration::hours(1);
    let case = t.open_case("happy-1").await;
    let department = case.department_id.clone();
    let case = t.resolve(case).await;
    let survey = t.survey("mail-adapter", Role::Service);
    let delivery = eventually("the invitation to be claimable", WAIT, || {
        let mut survey = survey.clone();
        async move {
            survey
                .claim_due_invitations(ClaimDueInvitationsRequest { limit: 5 })
                .await
                .ok()?
                .into_inner()
                .deliveries
                .pop()
        }
    })
    .await;
    survey
        .clone()
        .submit_survey_response(SubmitSurveyResponseRequest {
            token: delivery.token,
            answers: vec![rating("csat", 5), rating("nps", 10)],
        })
        .await
        .unwrap();
    eventually("the follow-up clock to be met", WAIT, || {
        let t = &t;
        let case_id = case.id.clone();
        async move {
            (follow_up_clock(t, &case_id).await?.state == ClockState::Met as i32).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = t
        .cases("quality-lead", Role::Quality, None)
        .get_case(GetCaseRequest {
            case_id: case.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap();
    assert_eq!(
        still.status,
        CaseStatus::Resolved as i32,
        "a satisfied customer does not reopen"
    );

    let figures = t
        .survey("quality-lead", Role::Quality)
        .get_survey_figures(GetSurveyFiguresRequest {
            period_start: Some(to_timestamp(period_start)),
            period_end: Some(to_timestamp(
                chrono::Utc::now() + chrono::Duration::hours(1),
            )),
            group_by: FiguresGrouping::Department as i32,
            department_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let group = figures
        .groups
        .iter()
        .find(|g| g.group == department)
        .expect("the case's department has figures");
    assert_eq!(
        (group.invitations_sent, group.responses, group.promoters),
        (1, 1, 1)
    );
    assert_eq!(group.nps, Some(100.0));
    assert_eq!(group.satisfaction_target_met, Some(true));
    t.stop().await;
}
