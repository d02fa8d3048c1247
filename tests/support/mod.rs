//! Support for end-to-end tests: the whole suite on ephemeral ports against a fresh database,
//! and gRPC clients carrying tokens of a chosen role.

use std::time::Duration;

use complaints_cli::suite::{Suite, SuiteOptions};
use complaints_kit::Role;
use complaints_kit::auth::BearerToken;
use complaints_kit::testing;
use complaints_proto::cases::v1::case_service_client::CaseServiceClient;
use complaints_proto::intake::v1::intake_service_client::IntakeServiceClient;
use complaints_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use complaints_proto::sla::v1::sla_service_client::SlaServiceClient;
use complaints_proto::survey::v1::survey_service_client::SurveyServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Authed = InterceptedService<Channel, BearerToken>;

/// A running suite with its own database.
pub struct TestSuite {
    pub suite: Suite,
    pub database: testing::TestDatabase,
}

impl TestSuite {
    /// Starts all five services; survey invitations are due at resolution.
    pub async fn start() -> Self {
        let database = testing::fresh_database().await;
        let suite = Suite::start(SuiteOptions {
            database_url: database.url.clone(),
            auth: testing::auth(),
            base_port: None,
            bind_host: "127.0.0.1".into(),
            survey_delay: Duration::ZERO,
            survey_token_secret: "survey-token-secret-for-tests-only-0001".into(),
            pool_size: 4,
            scheduler_poll: Duration::from_millis(50),
        })
        .await
        .expect("suite starts");
        Self { suite, database }
    }

    fn bearer(subject: &str, role: Role, department: Option<&str>) -> BearerToken {
        BearerToken::new(&testing::token(subject, role, department)).expect("token")
    }

    pub fn intake(
        &self,
        subject: &str,
        role: Role,
        department: Option<&str>,
    ) -> IntakeServiceClient<Authed> {
        IntakeServiceClient::with_interceptor(
            testing::channel(&self.suite.urls.intake),
            Self::bearer(subject, role, department),
        )
    }

    pub fn cases(
        &self,
        subject: &str,
        role: Role,
        department: Option<&str>,
    ) -> CaseServiceClient<Authed> {
        CaseServiceClient::with_interceptor(
            testing::channel(&self.suite.urls.cases),
            Self::bearer(subject, role, department),
        )
    }

    pub fn sla(&self, subject: &str, role: Role) -> SlaServiceClient<Authed> {
        SlaServiceClient::with_interceptor(
            testing::channel(&self.suite.urls.sla),
            Self::bearer(subject, role, None),
        )
    }

    pub fn survey(&self, subject: &str, role: Role) -> SurveyServiceClient<Authed> {
        SurveyServiceClient::with_interceptor(
            testing::channel(&self.suite.urls.survey),
            Self::bearer(subject, role, None),
        )
    }

    pub fn scoring(&self, subject: &str, role: Role) -> ScoringServiceClient<Authed> {
        ScoringServiceClient::with_interceptor(
            testing::channel(&self.suite.urls.scoring),
            Self::bearer(subject, role, None),
        )
    }

    pub fn all_urls(&self) -> [&str; 5] {
        let u = &self.suite.urls;
        [&u.intake, &u.cases, &u.sla, &u.survey, &u.scoring]
    }

    pub async fn stop(self) {
        self.suite.stop().await.expect("suite stops cleanly");
    }
}

use complaints_proto::cases::v1::{Case, GetCaseByComplaintRequest, TransitionCaseRequest};
use complaints_proto::common::v1::{CaseStatus, Channel as ComplaintChannel};
use complaints_proto::intake::v1::{Complainant, ComplaintContent, SubmitComplaintRequest};

pub const WAIT: Duration = Duration::from_secs(20);

impl TestSuite {
    /// Submits a product-quality complaint and waits for its case.
    pub async fn open_case(&self, request_id: &str) -> Case {
        let complaint = self
            .intake("adapter", Role::Service, None)
            .submit_complaint(SubmitComplaintRequest {
                request_id: request_id.into(),
                channel: ComplaintChannel::Email as i32,
                complainant: Some(Complainant {
                    name: "Chen Jing".into(),
                    email: "chen.jing@example.com".into(),
                    ..Default::default()
                }),
                content: Some(ComplaintContent {
                    description: "The blender is broken after a week, a quality defect".into(),
                    ..Default::default()
                }),
                recorded_by: String::new(),
            })
            .await
            .expect("submitted")
            .into_inner()
            .complaint
            .expect("complaint");
        self.case_of(&complaint.id).await
    }

    /// Waits for the case of a complaint to open.
    pub async fn case_of(&self, complaint_id: &str) -> Case {
        let cases = self.cases("probe", Role::Service, None);
        testing::eventually("the case to open", WAIT, || {
            let mut cases = cases.clone();
            let complaint_id = complaint_id.to_owned();
            async move {
                cases
                    .get_case_by_complaint(GetCaseByComplaintRequest { complaint_id })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().case)
            }
        })
        .await
    }

    /// Moves a case through investigation to resolution as its department's supervisor.
    pub async fn resolve(&self, mut case: Case) -> Case {
        let mut supervisor = self.cases("supervisor", Role::Supervisor, Some(&case.department_id));
        for status in [CaseStatus::Investigating, CaseStatus::Resolved] {
            case = supervisor
                .transition_case(TransitionCaseRequest {
                    case_id: case.id.clone(),
                    version: case.version,
                    to_status: status as i32,
                    note: String::new(),
                    customer_visible: false,
                })
                .await
                .expect("transition")
                .into_inner()
                .case
                .expect("case");
        }
        case
    }
}

/// `GET` of a metrics URL (`http://host:port/metrics`), returning the body.
pub async fn scrape(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("connect to metrics");
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the first series whose line starts with `name{` and contains every label pair.
pub fn series_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A scorecard request for the cases opened from yesterday to tomorrow (the test's cases).
pub fn scorecard_around_now(
    kind: complaints_proto::scoring::v1::SubjectKind,
    subject: &str,
) -> complaints_proto::scoring::v1::GetScorecardRequest {
    let now = chrono::Utc::now();
    complaints_proto::scoring::v1::GetScorecardRequest {
        subject_kind: kind as i32,
        subject_id: subject.into(),
        period_start: Some(complaints_kit::time::to_timestamp(
            now - chrono::Duration::days(1),
        )),
        period_end: Some(complaints_kit::time::to_timestamp(
            now + chrono::Duration::days(1),
        )),
        ..Default::default()
    }
}
