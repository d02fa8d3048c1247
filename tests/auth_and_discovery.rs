//! Every RPC but health and reflection needs a valid token: none, a forged one or an expired
//! one gets UNAUTHENTICATED. Health and reflection answer without one, on every service.

use complaints_kit::Role;
use complaints_kit::testing;
use complaints_proto::cases::v1::ListDepartmentsRequest;
use complaints_proto::cases::v1::case_service_client::CaseServiceClient;
use complaints_proto::intake::v1::ListComplaintsRequest;
use complaints_proto::intake::v1::intake_service_client::IntakeServiceClient;
use complaints_proto::scoring::v1::GetScorecardRequest;
use complaints_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use complaints_proto::sla::v1::ListCaseClocksRequest;
use complaints_proto::sla::v1::sla_service_client::SlaServiceClient;
use complaints_proto::survey::v1::ListInvitationsRequest;
use complaints_proto::survey::v1::survey_service_client::SurveyServiceClient;
use e2e_tests::TestSuite;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

/// Calls one RPC of each service with the given token (or none) and returns the codes.
async fn codes(t: &TestSuite, token: Option<&str>) -> Vec<Code> {
    fn req<T>(m: T, token: Option<&str>) -> tonic::Request<T> {
        match token {
            Some(token) => testing::authed(m, token),
            None => tonic::Request::new(m),
        }
    }
    let u = &t.suite.urls;
    let code = |r: Result<tonic::Status, ()>| r.map(|s| s.code()).unwrap_or(Code::Ok);
    vec![
        code(
            IntakeServiceClient::new(testing::channel(&u.intake))
                .list_complaints(req(ListComplaintsRequest::default(), token))
                .await
                .err()
                .ok_or(()),
        ),
        code(
            CaseServiceClient::new(testing::channel(&u.cases))
                .list_departments(req(ListDepartmentsRequest {}, token))
                .await
                .err()
                .ok_or(()),
        ),
        code(
            SlaServiceClient::new(testing::channel(&u.sla))
                .list_case_clocks(req(
                    ListCaseClocksRequest {
                        case_id: uuid::Uuid::nil().to_string(),
                    },
                    token,
                ))
                .await
                .err()
                .ok_or(()),
        ),
        code(
            SurveyServiceClient::new(testing::channel(&u.survey))
                .list_invitations(req(
                    ListInvitationsRequest {
                        case_id: uuid::Uuid::nil().to_string(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .err()
                .ok_or(()),
        ),
        code(
            ScoringServiceClient::new(testing::channel(&u.scoring))
                .get_scorecard(req(GetScorecardRequest::default(), token))
                .await
                .err()
                .ok_or(()),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let t = TestSuite::start().await;
    let all_unauthenticated = vec![Code::Unauthenticated; 5];
    assert_eq!(codes(&t, None).await, all_unauthenticated, "no token");
    let forged = testing::forged_token("mallory", Role::Admin);
    assert_eq!(
        codes(&t, Some(&forged)).await,
        all_unauthenticated,
        "bad signature"
    );
    let expired = testing::expired_token("alice", Role::Admin);
    assert_eq!(
        codes(&t, Some(&expired)).await,
        all_unauthenticated,
        "expired"
    );
    assert_eq!(
        codes(&t, Some("not-a-jwt")).await,
        all_unauthenticated,
        "garbage"
    );
    // With a valid token the same calls get past authentication.
    let valid = testing::token("alice", Role::Admin, None);
    let with_valid = codes(&t, Some(&valid)).await;
    assert!(
        with_valid.iter().all(|c| *c != Code::Unauthenticated),
        "{with_valid:?}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_work_without_a_token() {
    let t = TestSuite::start().await;
    let expected = [
        "complaints.intake.v1.IntakeService",
        "complaints.cases.v1.CaseService",
        "complaints.sla.v1.SlaService",
        "complaints.survey.v1.SurveyService",
        "complaints.scoring.v1.ScoringService",
    ];
    for (url, service) in t.all_urls().into_iter().zip(expected) {
        let mut health = HealthClient::new(testing::channel(url));
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service}: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");

        let mut reflection = ServerReflectionClient::new(testing::channel(url));
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = reflection
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("reflection")
            .into_inner();
        let response = stream
            .message()
            .await
            .expect("reflection answer")
            .expect("one message");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == service), "{names:?}");
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    }
    t.stop().await;
}
