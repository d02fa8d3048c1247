//! What SREs watch: every service serves Prometheus text on its own port, and after a lifecycle
//! the series that describe it have moved.

use complaints_kit::Role;
use complaints_kit::testing::eventually;
use complaints_proto::survey::v1::{
    Answer, ClaimDueInvitationsRequest, SubmitSurveyResponseRequest, answer::Value,
};
use e2e_tests::{TestSuite, WAIT, scrape, series_value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_exports_metrics_that_move_with_a_lifecycle() {
    let t = TestSuite::start().await;
    let case = t.open_case("metrics-1").await;
    t.resolve(case).await;
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
    survey
        .clone()
        .submit_survey_response(SubmitSurveyResponseRequest {
            token: delivery.token,
            answers: vec![Answer {
                question_id: "csat".into(),
                value: Some(Value::Rating(4)),
            }],
        })
        .await
        .expect("answered");

    let url = |name: &str| {
        t.suite
            .urls
            .metrics
            .iter()
            .find(|(n, _)| *n == name)
            .expect("metrics url")
            .1
            .clone()
    };
    let intake = scrape(&url("intake")).await;
    assert_eq!(
        series_value(
            &intake,
            "grpc_server_handled_total",
            &[("grpc_method", "SubmitComplaint"), ("grpc_code", "OK")]
        ),
        Some(1.0),
        "{intake}"
    );
    assert!(
        series_value(
            &intake,
            "grpc_server_handling_seconds_count",
            &[("grpc_method", "SubmitComplaint")]
        ) == Some(1.0)
    );
    assert_eq!(
        series_value(
            &intake,
            "intake_complaints_accepted_total",
            &[
                ("channel", "email"),
                ("category", "product_quality"),
                ("severity", "general")
            ]
        ),
        Some(1.0),
        "{intake}"
    );
    assert_eq!(
        series_value(
            &intake,
            "events_produced_total",
            &[("producer", "intake"), ("event_type", "ComplaintAccepted")]
        ),
        Some(1.0)
    );
    // Where the submission's time went: its wait in the writers' queue, and its batch.
    for series in [
        "intake_submit_batch_size_count",
        "intake_submit_queue_seconds_count",
        "intake_submit_batch_seconds_count",
    ] {
        assert_eq!(series_value(&intake, series, &[]), Some(1.0), "{series}");
    }
    let batch_seconds = series_value(&intake, "intake_submit_batch_seconds_sum", &[]).unwrap();
    assert!(
        batch_seconds > 0.0 && batch_seconds < 10.0,
        "{batch_seconds}"
    );
    assert!(series_value(&intake, "db_pool_max_connections", &[]).is_some());
    assert!(series_value(&intake, "db_pool_connections", &[("state", "idle")]).is_some());
    assert!(series_value(&intake, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0);

    // Consumers applied what the producers wrote, and say how far behind they are.
    for (service, source) in [
        ("case-management", "intake"),
        ("sla-timer", "case-management"),
        ("feedback-survey", "case-management"),
        ("performance-scoring", "case-management"),
        ("performance-scoring", "sla-timer"),
        ("performance-scoring", "feedback-survey"),
    ] {
        let text = url(service);
        let applied = eventually(
            &format!("{service} to apply events of {source}"),
            WAIT,
            || {
                let text = text.clone();
                async move {
                    let body = scrape(&text).await;
                    series_value(
                        &body,
                        "event_consumer_events_applied_total",
                        &[("consumer", service), ("source", source)],
                    )
                    .filter(|v| *v >= 1.0)
                    .map(|_| body)
                }
            },
        )
        .await;
        assert!(
            series_value(
                &applied,
                "event_consumer_lag_seconds",
                &[("consumer", service), ("source", source)]
            )
            .is_some()
        );
    }

    let cases = scrape(&url("case-management")).await;
    assert_eq!(
        series_value(
            &cases,
            "grpc_server_handled_total",
            &[("grpc_method", "TransitionCase"), ("grpc_code", "OK")]
        ),
        Some(2.0)
    );
    assert!(
        series_value(
            &cases,
            "events_produced_total",
            &[
                ("producer", "case-management"),
                ("event_type", "CaseOpened")
            ]
        ) == Some(1.0)
    );
    // The consumers' own streams show up as server-streaming calls.
    assert!(
        series_value(
            &cases,
            "grpc_server_started_total",
            &[("grpc_method", "Subscribe"), ("grpc_type", "server_stream")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    let survey_text = scrape(&url("feedback-survey")).await;
    assert_eq!(
        series_value(
            &survey_text,
            "grpc_server_handled_total",
            &[("grpc_method", "SubmitSurveyResponse"), ("grpc_code", "OK")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series_value(
            &survey_text,
            "survey_responses_total",
            &[("dissatisfied", "false")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series_value(
            &survey_text,
            "survey_csat_responses_total",
            &[("score", "4")]
        ),
        Some(1.0)
    );
    let sla = scrape(&url("sla-timer")).await;
    for series in [
        "sla_open_clocks",
        "sla_breaches_total",
        "sla_warnings_total",
        "sla_cases_at_risk",
        "sla_firing_lag_seconds_count",
    ] {
        assert!(
            series_value(&sla, series, &[]).is_some(),
            "{series} missing from the SLA timer's metrics"
        );
    }
    let scoring = scrape(&url("performance-scoring")).await;
    assert_eq!(
        series_value(
            &scoring,
            "scoring_evaluation_runs_total",
            &[("outcome", "published")]
        ),
        Some(0.0)
    );
    assert!(
        series_value(
            &sla,
            "events_produced_total",
            &[("producer", "sla-timer"), ("event_type", "ClockStarted")]
        )
        .unwrap_or(0.0)
            >= 2.0
    );

    // Errors are counted by code.
    let status = t
        .intake("adapter", Role::Service, None)
        .submit_complaint(complaints_proto::intake::v1::SubmitComplaintRequest::default())
        .await
        .expect_err("empty submission");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let intake = scrape(&url("intake")).await;
    assert_eq!(
        series_value(
            &intake,
            "grpc_server_handled_total",
            &[
                ("grpc_method", "SubmitComplaint"),
                ("grpc_code", "INVALID_ARGUMENT")
            ]
        ),
        Some(1.0)
    );
    t.stop().await;
}
