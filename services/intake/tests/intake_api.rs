//! Intake over gRPC against a real Postgres: validation, idempotency, concurrency, masking.

use complaints_kit::Role;
use complaints_kit::testing::{self, RunningService};
use complaints_proto::common::v1::{Channel, CustomerTier};
use complaints_proto::intake::v1::intake_service_client::IntakeServiceClient;
use complaints_proto::intake::v1::{
    Complainant, ComplaintContent, ComplaintStatus, GetComplaintRequest, ListComplaintsRequest,
    RejectionReason, SubmitComplaintRequest, VerifyComplaintRequest,
};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel as GrpcChannel;
use tonic_types::StatusExt;

type Client =
    IntakeServiceClient<InterceptedService<GrpcChannel, complaints_kit::auth::BearerToken>>;

async fn start() -> (RunningService, testing::TestDatabase) {
    start_with(|_| {}).await
}

async fn start_with(
    adjust: impl FnOnce(&mut intake::Config),
) -> (RunningService, testing::TestDatabase) {
    let db = testing::fresh_database().await;
    let (listener, url) = testing::ephemeral_listener().await;
    let mut config = intake::Config::new(testing::common_config(&db.url));
    // No case-management in these tests: its consumer retries quietly against a closed port.
    config.cases_url = "http://127.0.0.1:9".into();
    adjust(&mut config);
    (
        RunningService::spawn(listener, url, |l, s| intake::run(config, l, s)),
        db,
    )
}

fn client(service: &RunningService, role: Role) -> Client {
    let token = testing::token("tester", role, Some("quality"));
    IntakeServiceClient::with_interceptor(
        testing::channel(&service.url),
        complaints_kit::auth::BearerToken::new(&token).unwrap(),
    )
}

fn complaint(request_id: &str) -> SubmitComplaintRequest {
    SubmitComplaintRequest {
        request_id: request_id.into(),
        channel: Channel::Email as i32,
        complainant: Some(Complainant {
            name: "Li Lei".into(),
            phone: "+86 139 1234 5678".into(),
            email: "li.lei@Example.com".into(),
            customer_id: "CUST-1".into(),
            tier: CustomerTier::Vip as i32,
        }),
        content: Some(ComplaintContent {
            subject: "Late delivery".into(),
            description: "The courier was late and the parcel has not arrived".into(),
            order_ref: "ORD-1".into(),
            ..Default::default()
        }),
        recorded_by: String::new(),
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_every_wrong_field() {
    let (service, _db) = start().await;
    let mut intake = client(&service, Role::Service);
    let mut request = complaint("bad-1");
    request.channel = 42;
    request.complainant.as_mut().unwrap().email = "nobody@".into();
    request.complainant.as_mut().unwrap().phone = "12".into();
    request.content.as_mut().unwrap().description = "   ".into();
    let status = intake.submit_complaint(request).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_error_details();
    let fields: Vec<String> = details
        .bad_request()
        .expect("BadRequest detail")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    for field in [
        "channel",
        "complainant.email",
        "complainant.phone",
        "content.description",
    ] {
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not in {fields:?}"
        );
    }
    // Nothing was stored.
    let list = intake
        .list_complaints(ListComplaintsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.complaints.is_empty());
    service.stop().await.unwrap();
}

#[tokio::test]
async fn same_request_id_returns_the_same_complaint_and_other_content_is_refused() {
    let (service, _db) = start().await;
    let mut intake = client(&service, Role::Service);
    let first = intake
        .submit_complaint(complaint("idem-1"))
        .await
        .unwrap()
        .into_inner();
    let again = intake
        .submit_complaint(complaint("idem-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(first.complaint.unwrap().id, again.complaint.unwrap().id);

    let mut other = complaint("idem-1");
    other.content.as_mut().unwrap().description = "Something else entirely".into();
    let status = intake
        .submit_complaint(other)
        .await
        .expect_err("reuse refused");
    assert_eq!(status.code(), Code::AlreadyExists);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_submissions_create_exactly_one_complaint_and_one_event() {
    let (service, db) = start().await;
    let intake = client(&service, Role::Service);
    // With an order the customer's submissions queue on the customer lock; without one nothing
    // serialises them and the request id's unique key alone must keep the second insert (and
    // its event) out.
    let with_order = complaint("race-1");
    let mut without_order = complaint("race-2");
    without_order.content.as_mut().unwrap().order_ref.clear();
    for request in [with_order, without_order] {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let mut intake = intake.clone();
                let request = request.clone();
                tokio::spawn(async move { intake.submit_complaint(request).await })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        let mut created = 0;
        for task in tasks {
            let response = task
                .await
                .unwrap()
                .expect("every submission succeeds")
                .into_inner();
            created += response.created as usize;
            ids.insert(response.complaint.unwrap().id);
        }
        assert_eq!(ids.len(), 1, "{}", request.request_id);
        assert_eq!(created, 1, "{}", request.request_id);
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (events,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM intake.event_outbox WHERE event_type = 'ComplaintAccepted'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(events, 2, "one acceptance per request");
    service.stop().await.unwrap();
}

#[tokio::test]
async fn complaints_keep_planner_statistics_only_for_what_queries_filter_on() {
    let (service, db) = start().await;
    let mut intake = client(&service, Role::Service);
    for request_id in ["stats-1", "stats-2"] {
        intake
            .submit_complaint(complaint(request_id))
            .await
            .unwrap();
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    assert_eq!(
        testing::analyzed_columns(&pool, "intake", "complaints").await,
        [
            "case_id",
            "case_open",
            "category",
            "channel",
            "customer_id",
            "email",
            "id",
            "linked_to",
            "phone",
            "received_at",
            "reference",
            "request_id",
            "severity",
            "status",
        ]
    );
    service.stop().await.unwrap();
}

#[tokio::test]
async fn personal_data_is_masked_for_quality_and_shown_to_agents() {
    let (service, _db) = start().await;
    let created = client(&service, Role::Service)
        .submit_complaint(complaint("pii-1"))
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    let as_agent = client(&service, Role::Agent)
        .get_complaint(GetComplaintRequest {
            complaint_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap()
        .complainant
        .unwrap();
    assert_eq!(as_agent.phone, "+8613912345678");
    assert_eq!(as_agent.email, "li.lei@example.com");
    let as_quality = client(&service, Role::Quality)
        .get_complaint(GetComplaintRequest {
            complaint_id: created.id,
        })
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap()
        .complainant
        .unwrap();
    assert!(
        !as_quality.phone.contains("12345678"),
        "{}",
        as_quality.phone
    );
    assert!(!as_quality.email.contains("li.lei"), "{}", as_quality.email);
    assert!(!as_quality.name.contains("Lei"), "{}", as_quality.name);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn lists_paginate_newest_first_and_filter_by_customer() {
    let (service, _db) = start().await;
    let mut intake = client(&service, Role::Service);
    for i in 0..5 {
        let mut request = complaint(&format!("page-{i}"));
        request.complainant.as_mut().unwrap().customer_id = if i % 2 == 0 {
            "EVEN".into()
        } else {
            "ODD".into()
        };
        intake.submit_complaint(request).await.unwrap();
    }
    let first = intake
        .list_complaints(ListComplaintsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.complaints.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let mut seen: Vec<String> = first
        .complaints
        .iter()
        .map(|c| c.reference.clone())
        .collect();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = intake
            .list_complaints(ListComplaintsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.complaints.iter().map(|c| c.reference.clone()));
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    let even = intake
        .list_complaints(ListComplaintsRequest {
            customer_id: "EVEN".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(even.complaints.len(), 3);
    let bad = intake
        .list_complaints(ListComplaintsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), Code::InvalidArgument);
    service.stop().await.unwrap();
}

#[tokio::test]
async fn rejection_keeps_the_complaint_and_needs_the_current_version() {
    let (service, _db) = start().await;
    let created = client(&service, Role::Service)
        .submit_complaint(complaint("reject-1"))
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    let mut agent = client(&service, Role::Agent);
    let stale = agent
        .verify_complaint(VerifyComplaintRequest {
            complaint_id: created.id.clone(),
            version: created.version + 1,
            valid: false,
            rejection_reason: RejectionReason::Spam as i32,
            note: "advertising".into(),
        })
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted);
    let rejected = agent
        .verify_complaint(VerifyComplaintRequest {
            complaint_id: created.id.clone(),
            version: created.version,
            valid: false,
            rejection_reason: RejectionReason::Spam as i32,
            note: "advertising".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(rejected.status, ComplaintStatus::Rejected as i32);
    assert_eq!(rejected.status_note, "advertising");
    let kept = agent
        .get_complaint(GetComplaintRequest {
            complaint_id: created.id,
        })
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(kept.status, ComplaintStatus::Rejected as i32);
    service.stop().await.unwrap();
}

/// Two submissions 500 ms apart: one transaction with a gather window longer than that, two
/// without one (told apart by the rows' `xmin`, the transaction that wrote them). The
/// connections are warmed up first, so the first call reaches the writer at once.
#[tokio::test]
async fn a_small_batch_waits_out_the_gather_window_for_company() {
    for (gather, transactions) in [
        (std::time::Duration::from_millis(1500), 1),
        (std::time::Duration::ZERO, 2),
    ] {
        let (service, db) = start_with(|config| config.submit_batch_gather = gather).await;
        let mut first = client(&service, Role::Service);
        let mut second = client(&service, Role::Service);
        let warm = |n: usize| {
            let mut warm = complaint(&format!("warm-{n}"));
            warm.complainant.as_mut().unwrap().customer_id = format!("CUST-W{n}");
            warm
        };
        let (w0, w1) = tokio::join!(
            first.submit_complaint(warm(0)),
            second.submit_complaint(warm(1))
        );
        w0.expect("warm-up stored");
        w1.expect("warm-up stored");
        let mut one = complaint("gather-1");
        one.complainant.as_mut().unwrap().customer_id = "CUST-G1".into();
        let mut two = complaint("gather-2");
        two.complainant.as_mut().unwrap().customer_id = "CUST-G2".into();
        two.complainant.as_mut().unwrap().phone = "+86 139 8765 4321".into();
        two.complainant.as_mut().unwrap().email = "han.meimei@example.com".into();
        let a = tokio::spawn(async move { first.submit_complaint(one).await });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let b = tokio::spawn(async move { second.submit_complaint(two).await });
        a.await.unwrap().expect("first stored");
        b.await.unwrap().expect("second stored");
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let (stored, writers): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT xmin::text) FROM intake.complaints
             WHERE request_id LIKE 'gather-%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((stored, writers), (2, transactions), "gather {gather:?}");
        pool.close().await;
    }
}
