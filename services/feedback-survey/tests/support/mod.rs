//! A survey service under test, fed by a case-event stream it subscribes to over gRPC.
//!
//! The upstream is the kit's own event log (outbox in a `cases` schema of the test database,
//! served by `EventStream/Subscribe`), so each test publishes exactly the case events it needs
//! (channel, customer, department, owner) the way case-management would, and the survey
//! service consumes them through its real consumer. The cross-service path with the real
//! case-management and SLA timer is in the end-to-end test `tests/survey_feedback.rs`.

#![allow(dead_code)]

use std::time::Duration;

use complaints_kit::Role;
use complaints_kit::auth::BearerToken;
use complaints_kit::events::{EventLog, OUTBOX_MIGRATIONS};
use complaints_kit::server::ServiceContext;
use complaints_kit::testing::{self, RunningService, eventually};

/// How many events of a payload kind are in `events`.
pub fn count_of(events: &[Event], kind: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e.payload
                .as_ref()
                .is_some_and(|p| complaints_kit::events::payload_name(p) == kind)
        })
        .count()
}
use complaints_kit::time::to_timestamp;
use complaints_proto::common::v1::{CaseStatus, Channel};
use complaints_proto::events::v1::event_stream_client::EventStreamClient;
use complaints_proto::events::v1::{
    CaseOpened, CaseStatusChanged, Event, SubscribeRequest, event::Payload,
};
use complaints_proto::survey::v1::survey_service_client::SurveyServiceClient;
use complaints_proto::survey::v1::{
    Answer, ClaimDueInvitationsRequest, Invitation, InvitationDelivery, ListInvitationsRequest,
    answer::Value,
};
use sqlx::PgPool;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel as GrpcChannel;
use uuid::Uuid;

pub type Survey = SurveyServiceClient<InterceptedService<GrpcChannel, BearerToken>>;

pub const WAIT: Duration = Duration::from_secs(20);
pub const TOKEN_SECRET: &str = "survey-token-secret-for-tests-only-0001";

pub struct Harness {
    pub survey: RunningService,
    upstream: RunningService,
    upstream_log: EventLog,
    /// The test database (survey schema and the upstream's `cases` outbox).
    pub pool: PgPool,
    pub db: testing::TestDatabase,
}

/// What the test tunes in the survey service.
pub struct Options {
    pub token_ttl: Duration,
    pub policy: feedback_survey::Policy,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(7 * 86_400),
            policy: feedback_survey::Policy::default(),
        }
    }
}

/// A case as the upstream announces it.
#[derive(Clone, Debug)]
pub struct TestCase {
    pub id: String,
    pub channel: Channel,
    pub customer_id: String,
    pub department: String,
    pub owner: String,
    pub category: String,
    /// The complaint's W3C trace context, carried by the upstream's events.
    pub traceparent: String,
}

impl TestCase {
    pub fn new(channel: Channel) -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            channel,
            customer_id: format!("CUST-{}", Uuid::new_v4().simple()),
            department: "quality".into(),
            owner: "agent-li".into(),
            category: "product_quality".into(),
            traceparent: format!(
                "00-{}-{}-01",
                Uuid::new_v4().simple(),
                &Uuid::new_v4().simple().to_string()[..16]
            ),
        }
    }

    pub fn customer(mut self, customer_id: &str) -> Self {
        self.customer_id = customer_id.into();
        self
    }

    pub fn handled_by(mut self, department: &str, owner: &str) -> Self {
        self.department = department.into();
        self.owner = owner.into();
        self
    }

    pub fn category(mut self, category: &str) -> Self {
        self.category = category.into();
        self
    }
}

pub async fn start(options: Options) -> Harness {
    let db = testing::fresh_database().await;
    let pool = PgPool::connect(&db.url).await.expect("connect");
    complaints_kit::db::migrate(&pool, "cases", &OUTBOX_MIGRATIONS)
        .await
        .expect("upstream outbox");
    let upstream_log = EventLog::new("cases", "case-management");
    let (listener, upstream_url) = testing::ephemeral_listener().await;
    let log = upstream_log.clone();
    let common = testing::common_config(&db.url);
    let upstream =
        RunningService::spawn(listener, upstream_url.clone(), |l, shutdown| async move {
            let context = ServiceContext::start(
                "case-management",
                &common,
                "cases",
                &OUTBOX_MIGRATIONS,
                shutdown,
            )
            .await?;
            let routes = tonic::service::Routes::new(log.service(&context));
            context
                .serve(l, routes, &["complaints.events.v1.EventStream"])
                .await
        });
    let config = feedback_survey::Config {
        common: testing::common_config(&db.url),
        cases_url: upstream_url,
        token_secret: TOKEN_SECRET.into(),
        delay: Duration::ZERO,
        token_ttl: options.token_ttl,
        policy: options.policy,
    };
    let (listener, url) = testing::ephemeral_listener().await;
    let survey = RunningService::spawn(listener, url, |l, s| feedback_survey::run(config, l, s));
    Harness {
        survey,
        upstream,
        upstream_log,
        pool,
        db,
    }
}

pub fn rating(id: &str, value: i32) -> Answer {
    Answer {
        question_id: id.into(),
        value: Some(Value::Rating(value)),
    }
}

pub fn yes_no(id: &str, value: bool) -> Answer {
    Answer {
        question_id: id.into(),
        value: Some(Value::YesNo(value)),
    }
}

pub fn text(id: &str, value: &str) -> Answer {
    Answer {
        question_id: id.into(),
        value: Some(Value::Text(value.into())),
    }
}

impl Harness {
    pub fn client(&self, subject: &str, role: Role, department: Option<&str>) -> Survey {
        SurveyServiceClient::with_interceptor(
            testing::channel(&self.survey.url),
            BearerToken::new(&testing::token(subject, role, department)).unwrap(),
        )
    }

    pub fn adapter(&self) -> Survey {
        self.client("mail-adapter", Role::Service, None)
    }

    async fn publish(&self, aggregate: &str, traceparent: &str, payload: Payload) {
        let mut tx = self.pool.begin().await.unwrap();
        self.upstream_log
            .append(&mut tx, aggregate, traceparent, payload)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        self.upstream_log.committed();
    }

    /// Announces the case and its resolution, and waits for the survey service's invitation.
    pub async fn resolve(&self, case: &TestCase) -> Invitation {
        self.publish(
            &case.id,
            &case.traceparent,
            Payload::CaseOpened(CaseOpened {
                case_id: case.id.clone(),
                complaint_id: Uuid::now_v7().to_string(),
                department_id: case.department.clone(),
                owner_id: case.owner.clone(),
                category: case.category.clone(),
                channel: case.channel as i32,
                customer_id: case.customer_id.clone(),
                opened_at: Some(to_timestamp(chrono::Utc::now())),
                ..Default::default()
            }),
        )
        .await;
        self.publish(
            &case.id,
            &case.traceparent,
            Payload::CaseStatusChanged(CaseStatusChanged {
                case_id: case.id.clone(),
                from: CaseStatus::Implementing as i32,
                to: CaseStatus::Resolved as i32,
                by: case.owner.clone(),
                changed_at: Some(to_timestamp(chrono::Utc::now())),
                department_id: case.department.clone(),
                owner_id: case.owner.clone(),
                reason: String::new(),
            }),
        )
        .await;
        let survey = self.client("quality-lead", Role::Quality, None);
        eventually("the invitation of the resolved case", WAIT, || {
            let mut survey = survey.clone();
            let case_id = case.id.clone();
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

    /// What a delivery adapter claims now.
    pub async fn claim(&self) -> Vec<InvitationDelivery> {
        self.adapter()
            .claim_due_invitations(ClaimDueInvitationsRequest { limit: 50 })
            .await
            .expect("claim")
            .into_inner()
            .deliveries
    }

    /// Resolves a link case and claims its first send.
    pub async fn delivered(&self, case: &TestCase) -> InvitationDelivery {
        let invitation = self.resolve(case).await;
        self.claim()
            .await
            .into_iter()
            .find(|d| d.invitation.as_ref().map(|i| &i.id) == Some(&invitation.id))
            .expect("the invitation is handed to the delivery adapter")
    }

    /// The survey service's events once `ready` holds for them (events are released a moment
    /// after their commit, once no older transaction is still running).
    pub async fn survey_events_when(&self, ready: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let events = self.survey_events().await;
            if ready(&events) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the expected survey events never came: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The survey events released so far.
    pub async fn survey_events(&self) -> Vec<Event> {
        let mut client = EventStreamClient::with_interceptor(
            testing::channel(&self.survey.url),
            BearerToken::new(&testing::token("probe", Role::Service, None)).unwrap(),
        );
        let mut stream = client
            .subscribe(SubscribeRequest::default())
            .await
            .expect("subscribe")
            .into_inner();
        let mut events = Vec::new();
        loop {
            let batch = tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("a batch in time")
                .expect("stream")
                .expect("open stream");
            events.extend(batch.events);
            if batch.caught_up {
                return events;
            }
        }
    }

    pub async fn stop(self) {
        self.survey.stop().await.expect("survey stops");
        self.upstream.stop().await.expect("upstream stops");
    }
}

/// The field names of a status's BadRequest violations.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}
