//! One trace per complaint, across five real processes: a real OTLP/gRPC receiver in this test
//! (the collector's TraceService from the published OpenTelemetry protos) collects the spans each
//! service exports while a complaint goes through its lifecycle, then the trace's shape is checked.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use complaints_kit::Role;
use complaints_kit::auth::BearerToken;
use complaints_kit::testing::{self, eventually};
use complaints_proto::cases::v1::case_service_client::CaseServiceClient;
use complaints_proto::cases::v1::{GetCaseByComplaintRequest, TransitionCaseRequest};
use complaints_proto::common::v1::{CaseStatus, Channel};
use complaints_proto::intake::v1::intake_service_client::IntakeServiceClient;
use complaints_proto::intake::v1::{Complainant, ComplaintContent, SubmitComplaintRequest};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// One exported span, flattened.
#[derive(Clone, Debug)]
struct Collected {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    links: Vec<Vec<u8>>,
    attributes: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Collected>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                                Some(Value::StringValue(s)) => s,
                                Some(Value::IntValue(i)) => i.to_string(),
                                Some(Value::BoolValue(b)) => b.to_string(),
                                Some(Value::DoubleValue(d)) => d.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), value)
                        })
                        .collect();
                    spans.push(Collected {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        links: span.links.into_iter().map(|l| l.span_id).collect(),
                        attributes,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

use complaints_cli::suite::SERVICE_NAMES as SERVICES;
const PHONE: &str = "13912345678";
const EMAIL: &str = "private.person@example.com";
const NAME: &str = "Secret Name";

/// A port free now, below Linux's ephemeral range (32768–60999): a port the kernel hands out
/// for `:0` can be taken by any outgoing connection (these services' own pools) before the
/// child process binds it, and the test then waits for a service that never started.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    loop {
        let port = start + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_is_one_trace_across_all_five_services() {
    // The OTLP receiver.
    let receiver = Receiver::default();
    let (listener, otlp_url) = testing::ephemeral_listener().await;
    let server = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // Five separate processes, each exporting under its own service name.
    let db = testing::fresh_database().await;
    let ports: Vec<u16> = SERVICES.iter().map(|_| free_port()).collect();
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let mut children = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_complaints"))
            .args(["serve", service])
            .env("DATABASE_URL", &db.url)
            .env("GRPC_LISTEN_ADDR", format!("127.0.0.1:{}", ports[i]))
            .env("METRICS_LISTEN_ADDR", "off")
            .env("DB_POOL_MAX_CONNECTIONS", "3")
            .env("JWT_HS256_SECRET", testing::TEST_SECRET)
            .env("INTAKE_URL", url(0))
            .env("CASES_URL", url(1))
            .env("SLA_URL", url(2))
            .env("SURVEY_URL", url(3))
            .env(
                "SURVEY_TOKEN_SECRET",
                "survey-token-secret-for-tests-only-0001",
            )
            .env("SURVEY_DELAY", "0s")
            .env("SCHEDULER_POLL", "50ms")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp_url)
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("RUST_LOG", "info")
            .env(
                complaints_cli::suite::EXIT_WITH_PARENT,
                std::process::id().to_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("service process starts");
        children.push(child);
    }

    let service_token =
        BearerToken::new(&testing::token("web-adapter", Role::Service, None)).unwrap();
    let mut intake =
        IntakeServiceClient::with_interceptor(testing::channel(&url(0)), service_token.clone());
    let complaint = eventually(
        "intake to accept a complaint",
        Duration::from_secs(30),
        || {
            let mut intake = intake.clone();
            async move {
                intake
                    .submit_complaint(SubmitComplaintRequest {
                        request_id: "trace-1".into(),
                        channel: Channel::WebForm as i32,
                        complainant: Some(Complainant {
                            name: NAME.into(),
                            phone: PHONE.into(),
                            email: EMAIL.into(),
                            ..Default::default()
                        }),
                        content: Some(ComplaintContent {
                            description: "The kettle is broken, a quality defect".into(),
                            ..Default::default()
                        }),
                        recorded_by: String::new(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .complaint
            }
        },
    )
    .await;
    let _ = &mut intake;
    let cases = CaseServiceClient::with_interceptor(testing::channel(&url(1)), service_token);
    let case = eventually("the case", Duration::from_secs(20), || {
        let mut cases = cases.clone();
        let complaint_id = complaint.id.clone();
        async move {
            cases
                .get_case_by_complaint(GetCaseByComplaintRequest { complaint_id })
                .await
                .ok()?
                .into_inner()
                .case
        }
    })
    .await;
    // Hours pass without a first response: the breach fires later, still in the complaint's trace.
    eventually("the clocks", Duration::from_secs(20), || {
        let db_url = db.url.clone();
        let case_id = case.id.clone();
        async move {
            let pool = sqlx::PgPool::connect(&db_url).await.ok()?;
            let moved = sqlx::query(
                "UPDATE sla.clocks SET running_since = running_since - interval '30 days',
                     started_at = started_at - interval '30 days', next_fire_at = now()
                 WHERE case_id = $1 AND kind = 1",
            )
            .bind(uuid::Uuid::parse_str(&case_id).ok()?)
            .execute(&pool)
            .await
            .ok()?
            .rows_affected();
            (moved == 1).then_some(())
        }
    })
    .await;
    let case = eventually("the escalation", Duration::from_secs(20), || {
        let mut cases = cases.clone();
        let complaint_id = complaint.id.clone();
        async move {
            // Every overdue level of the ladder fires; wait until the case stops changing.
            let first = cases
                .get_case_by_complaint(GetCaseByComplaintRequest {
                    complaint_id: complaint_id.clone(),
                })
                .await
                .ok()?
                .into_inner()
                .case?;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let case = cases
                .get_case_by_complaint(GetCaseByComplaintRequest { complaint_id })
                .await
                .ok()?
                .into_inner()
                .case?;
            (case.escalation_level >= 1 && case.version == first.version).then_some(case)
        }
    })
    .await;
    let admin = BearerToken::new(&testing::token("supervisor", Role::Admin, None)).unwrap();
    let mut admin_cases = CaseServiceClient::with_interceptor(testing::channel(&url(1)), admin);
    let mut current = case.clone();
    for status in [CaseStatus::Investigating, CaseStatus::Resolved] {
        current = admin_cases
            .transition_case(TransitionCaseRequest {
                case_id: current.id.clone(),
                version: current.version,
                to_status: status as i32,
                note: String::new(),
                customer_visible: false,
            })
            .await
            .expect("transition")
            .into_inner()
            .case
            .unwrap();
    }

    // Wait until spans of all five services arrived for the complaint's trace.
    let spans = eventually(
        "spans of all five services in one trace, each with its parent",
        Duration::from_secs(30),
        || {
            let receiver = receiver.clone();
            let complaint_id = complaint.id.clone();
            async move {
                let spans = receiver.spans.lock().unwrap().clone();
                let root = spans
                    .iter()
                    .find(|s| {
                        s.attributes
                            .iter()
                            .any(|(k, v)| k == "complaint.id" && *v == complaint_id)
                            && s.service == "intake"
                    })?
                    .trace_id
                    .clone();
                let in_trace: Vec<Collected> =
                    spans.into_iter().filter(|s| s.trace_id == root).collect();
                let services: HashSet<&str> = in_trace.iter().map(|s| s.service.as_str()).collect();
                let breach = in_trace
                    .iter()
                    .any(|s| s.service == "sla-timer" && s.name == "fire SLA clock");
                // The escalation call and what it caused are in the same trace.
                let escalated = in_trace
                    .iter()
                    .any(|s| s.service == "sla-timer" && s.name == "process CaseEscalated")
                    && in_trace.iter().any(|s| {
                        s.service == "case-management"
                            && s.name == "complaints.cases.v1.CaseService/Escalate"
                    });
                let invited = in_trace.iter().any(|s| {
                    s.service == "feedback-survey" && s.name == "process CaseStatusChanged"
                });
                // Each service exports on its own schedule: a consumer's span can arrive
                // before the span of the call that wrote its event. Wait for the parents too
                // (asserted below, with the span that lacks one).
                let ids: HashSet<&Vec<u8>> = in_trace.iter().map(|s| &s.span_id).collect();
                let parented = in_trace.iter().all(|s| {
                    s.parent_span_id.is_empty()
                        || ids.contains(&s.parent_span_id)
                        || s.links.iter().any(|l| ids.contains(l))
                });
                let complete =
                    SERVICES.iter().all(|s| services.contains(s)) && breach && escalated && invited;
                (complete && parented).then_some(in_trace)
            }
        },
    )
    .await;

    // Parentage: every span but the root has a parent (or a link) inside the trace.
    let ids: HashSet<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
    let roots: Vec<&Collected> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "one root: {:?}",
        roots.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(roots[0].service, "intake");
    assert_eq!(
        roots[0].name,
        "complaints.intake.v1.IntakeService/SubmitComplaint"
    );
    for span in &spans {
        if !span.parent_span_id.is_empty() {
            assert!(
                ids.contains(&span.parent_span_id) || span.links.iter().any(|l| ids.contains(l)),
                "{} ({}) has a parent outside the trace",
                span.name,
                span.service
            );
        }
    }
    // Conventions: RPC server spans and consumer spans with ids as attributes.
    let by_name: HashMap<&str, &Collected> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let submit = by_name["complaints.intake.v1.IntakeService/SubmitComplaint"];
    assert!(
        submit
            .attributes
            .contains(&("rpc.system".into(), "grpc".into()))
    );
    assert!(
        submit
            .attributes
            .contains(&("rpc.grpc.status_code".into(), "0".into()))
    );
    let opened = spans
        .iter()
        .find(|s| s.service == "case-management" && s.name == "process ComplaintAccepted")
        .expect("case-management processed the acceptance in the trace");
    assert!(
        opened
            .attributes
            .contains(&("complaint.id".into(), complaint.id.clone()))
    );
    assert!(
        spans
            .iter()
            .any(|s| s.service == "sla-timer" && s.name == "process CaseOpened")
    );
    assert!(
        spans
            .iter()
            .any(|s| s.service == "feedback-survey" && s.name == "process CaseStatusChanged")
    );
    assert!(spans.iter().any(|s| {
        s.attributes
            .iter()
            .any(|(k, v)| k == "case.id" && *v == case.id)
    }));

    // No personal data anywhere in what was exported.
    let everything = receiver.spans.lock().unwrap().clone();
    for span in &everything {
        for (key, value) in &span.attributes {
            for secret in [PHONE, EMAIL, NAME, "+8613912345678"] {
                assert!(
                    !value.contains(secret),
                    "{key}={value} on {} leaks personal data",
                    span.name
                );
            }
        }
    }
    for mut child in children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}
