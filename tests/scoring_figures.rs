//! Performance scoring fed by the real services: cases opened through intake and resolved in
//! case-management reach the scorecard with their SLA clocks; the read model rebuilt from zero
//! by replaying those services' events gives the same figures; an on-demand evaluation of the
//! current quarter is published as provisional.

use std::time::Duration;

use chrono::Utc;
use complaints_kit::Role;
use complaints_kit::testing::eventually;
use complaints_proto::scoring::v1 as pb;
use e2e_tests::TestSuite;

const WAIT: Duration = Duration::from_secs(30);

/// Today in the organisation's default time zone (Asia/Shanghai, UTC+8 all year).
fn shanghai_today() -> chrono::NaiveDate {
    (Utc::now() + chrono::Duration::hours(8)).date_naive()
}

fn this_quarter() -> Option<pb::Period> {
    let today = shanghai_today();
    Some(pb::Period {
        kind: pb::PeriodKind::Quarter as i32,
        date: today.to_string(),
        last_date: String::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_events_reach_the_scorecard_and_a_rebuild_gives_the_same_figures() {
    let t = TestSuite::start().await;
    let first = t.open_case("scoring-e2e-1").await;
    let _second = t.open_case("scoring-e2e-2").await;
    let department = first.department_id.clone();
    t.resolve(first).await;

    let scoring = t.scoring("quality-lead", Role::Quality);
    let card_of = |department: String| {
        let scoring = scoring.clone();
        async move {
            let mut scoring = scoring.clone();
            scoring
                .get_scorecard(pb::GetScorecardRequest {
                    subject_kind: pb::SubjectKind::Department as i32,
                    subject_id: department,
                    period: this_quarter(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .scorecard
        }
    };
    let before = eventually(
        "both cases, the resolution and its survey to be scored",
        WAIT,
        || {
            let card = card_of(department.clone());
            async move {
                let card = card.await?;
                let handled = card.handling_time_samples == 1;
                // The resolution's survey invitation comes from a third service, on its own
                // stream: figures taken before it arrived would never match the replay's.
                let invited = card
                    .survey_response_rate
                    .is_some_and(|r| r.denominator == 1);
                (card.cases_opened == 2 && card.cases_resolved == 1 && handled && invited)
                    .then_some(card)
            }
        },
    )
    .await;
    let rate = before.resolution_rate.expect("rate");
    assert_eq!((rate.numerator, rate.denominator), (1, 2));
    let on_time = before.resolution_on_time_rate.expect("rate");
    assert_eq!((on_time.numerator, on_time.denominator), (1, 1));
    assert_eq!(
        before.score.as_ref().expect("score").grade,
        pb::Grade::Unspecified as i32,
        "two cases are below the minimum sample"
    );

    let rebuilt = t
        .scoring("ops", Role::Admin)
        .rebuild_read_model(pb::RebuildReadModelRequest {})
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(rebuilt.cases_cleared, 2);
    let after = eventually("the replay to restore the figures", WAIT, || {
        let card = card_of(department.clone());
        let expected = before.clone();
        async move { card.await.filter(|c| *c == expected) }
    })
    .await;
    assert_eq!(after, before);

    let today = shanghai_today();
    let quarter = chrono::Datelike::month0(&today) / 3 + 1;
    let evaluation = t
        .scoring("quality-lead", Role::Quality)
        .run_evaluation(pb::RunEvaluationRequest {
            request_id: "e2e-provisional".into(),
            year: chrono::Datelike::year(&today),
            quarter,
            model_version: 0,
            reason: "mid-quarter check".into(),
        })
        .await
        .expect("evaluation")
        .into_inner()
        .evaluation
        .expect("evaluation");
    assert!(
        !evaluation.quarter_complete,
        "run before the quarter ended: provisional"
    );
    assert!(
        evaluation.subjects >= 3,
        "organisation, department and agent(s)"
    );
    t.stop().await;
}
