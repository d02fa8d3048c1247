//! The paths that cross services later in a case's life: a breached SLA clock escalating the
//! case up its department's chain, and a dissatisfied survey answer reopening it.

use complaints_kit::Role;
use complaints_kit::testing::eventually;
use complaints_proto::cases::v1::{GetCaseRequest, ListTimelineRequest};
use complaints_proto::common::v1::{CaseStatus, ClockKind};
use complaints_proto::scoring::v1::SubjectKind;
use complaints_proto::sla::v1::{ClockState, ListCaseClocksRequest};
use complaints_proto::survey::v1::{
    Answer, ClaimDueInvitationsRequest, SubmitSurveyResponseRequest, answer::Value,
};
use e2e_tests::{TestSuite, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breached_clock_escalates_the_case_once_per_level() {
    let t = TestSuite::start().await;
    let case = t.open_case("breach-1").await;
    let sla = t.sla("sre", Role::Quality);
    eventually("clocks to start", WAIT, || {
        let mut sla = sla.clone();
        let case_id = case.id.clone();
        async move {
            (sla.list_case_clocks(ListCaseClocksRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .clocks
                .len()
                == 2)
                .then_some(())
        }
    })
    .await;

    // Thirty days pass without a first response (as if the timer had been down all along).
    let pool = sqlx::PgPool::connect(&t.database.url).await.unwrap();
    sqlx::query(
        "UPDATE sla.clocks SET running_since = running_since - interval '30 days',
             started_at = started_at - interval '30 days', next_fire_at = now()
         WHERE case_id = $1 AND kind = $2",
    )
    .bind(uuid::Uuid::parse_str(&case.id).unwrap())
    .bind(ClockKind::FirstResponse as i16)
    .execute(&pool)
    .await
    .unwrap();

    let cases = t.cases("quality-lead", Role::Quality, None);
    let escalated = eventually("the case to climb the whole chain", WAIT, || {
        let mut cases = cases.clone();
        let case_id = case.id.clone();
        async move {
            let case = cases
                .get_case(GetCaseRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .case?;
            (case.escalation_level == 4).then_some(case)
        }
    })
    .await;
    assert_eq!(escalated.owner_id, "executive");
    let clocks = sla
        .clone()
        .list_case_clocks(ListCaseClocksRequest {
            case_id: case.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .clocks;
    let first_response = clocks
        .iter()
        .find(|c| c.kind == ClockKind::FirstResponse as i32)
        .unwrap();
    assert_eq!(first_response.state, ClockState::Breached as i32);
    assert_eq!(first_response.escalation_level, 4);
    assert!(first_response.percent_used > 100.0);

    // Give the scheduler time to misbehave, then check nothing fired twice.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let timeline = cases
        .clone()
        .list_timeline(ListTimelineRequest {
            case_id: case.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let escalations: Vec<_> = timeline.iter().filter(|e| e.kind == "escalated").collect();
    assert_eq!(escalations.len(), 4, "{escalations:?}");
    assert_eq!(
        escalations
            .iter()
            .map(|e| e.to_value.as_str())
            .collect::<Vec<_>>(),
        [
            "quality-supervisor",
            "quality-manager",
            "service-director",
            "executive"
        ]
    );
    let (undelivered,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM sla.pending_escalations WHERE delivered_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(undelivered, 0);

    // SREs see the breach.
    let metrics_url = t
        .suite
        .urls
        .metrics
        .iter()
        .find(|(n, _)| *n == "sla-timer")
        .unwrap()
        .1
        .clone();
    let sla_metrics = e2e_tests::scrape(&metrics_url).await;
    assert_eq!(
        e2e_tests::series_value(
            &sla_metrics,
            "sla_breaches_total",
            &[
                ("kind", "first_response"),
                ("severity", "general"),
                ("department", "quality")
            ]
        ),
        Some(1.0),
        "{sla_metrics}"
    );
    assert!(
        e2e_tests::series_value(&sla_metrics, "sla_firing_lag_seconds_count", &[]).unwrap_or(0.0)
            >= 1.0
    );

    // The breach counts against the department's first-response on-time rate.
    let scoring = t.scoring("quality-lead", Role::Quality);
    eventually("the breach to reach the scorecard", WAIT, || {
        let mut scoring = scoring.clone();
        async move {
            let card = scoring
                .get_scorecard(e2e_tests::scorecard_around_now(
                    SubjectKind::Department,
                    "quality",
                ))
                .await
                .ok()?
                .into_inner()
                .scorecard?;
            let rate = card.first_response_on_time_rate?;
            (rate.denominator == 1 && rate.numerator == 0).then_some(())
        }
    })
    .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dissatisfied_answer_reopens_the_case_and_restarts_its_resolution_clock() {
    let t = TestSuite::start().await;
    let case = t.open_case("unhappy-1").await;
    let case = t.resolve(case).await;
    assert_eq!(case.status, CaseStatus::Resolved as i32);

    let survey = t.survey("survey-web", Role::Service);
    let delivery = eventually("the invitation", WAIT, || {
        let mut survey = survey.clone();
        async move {
            survey
                .claim_due_invitations(ClaimDueInvitationsRequest { limit: 5 })
                .await
                .ok()?
                .into_inner()
                .deliveries
                .into_iter()
                .next()
        }
    })
    .await;
    let answered = survey
        .clone()
        .submit_survey_response(SubmitSurveyResponseRequest {
            token: delivery.token,
            answers: vec![
                Answer {
                    question_id: "csat".into(),
                    value: Some(Value::Rating(1)),
                },
                Answer {
                    question_id: "solved".into(),
                    value: Some(Value::YesNo(false)),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert!(answered.dissatisfied);

    let cases = t.cases("quality-lead", Role::Quality, None);
    eventually("the case to be reopened", WAIT, || {
        let mut cases = cases.clone();
        let case_id = case.id.clone();
        async move {
            let case = cases
                .get_case(GetCaseRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .case?;
            (case.status == CaseStatus::Reopened as i32).then_some(())
        }
    })
    .await;
    let sla = t.sla("sre", Role::Quality);
    eventually("a second resolution clock to run", WAIT, || {
        let mut sla = sla.clone();
        let case_id = case.id.clone();
        async move {
            let clocks = sla
                .list_case_clocks(ListCaseClocksRequest { case_id })
                .await
                .ok()?
                .into_inner()
                .clocks;
            let resolution: Vec<_> = clocks
                .iter()
                .filter(|c| c.kind == ClockKind::Resolution as i32)
                .collect();
            let follow_up_met = clocks
                .iter()
                .any(|c| c.kind == ClockKind::FollowUp as i32 && c.state == ClockState::Met as i32);
            (resolution.len() == 2
                && resolution
                    .iter()
                    .any(|c| c.state == ClockState::Running as i32)
                && follow_up_met)
                .then_some(())
        }
    })
    .await;
    t.stop().await;
}
