//! The SLA timer over real gRPC against a real Postgres: the deadline bugs the established tools
//! shipped (each reproduced here), policy and calendar management, explanations, the alert
//! feed, queries, and replicas that never double-fire. Case events are applied through the
//! service's own event handler, exactly as its consumer applies them; clocks are dated in 2030
//! so the running scheduler leaves them alone unless a test fires them at a chosen instant.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};
use complaints_kit::auth::Role;
use complaints_kit::events::{EventHandler, EventLog, Incoming};
use complaints_kit::testing::{self, RunningService};
use complaints_kit::time::{from_pb_duration, from_timestamp, to_pb_duration, to_timestamp};
use complaints_proto::common::v1::{CaseStatus, ClockKind, Complexity, Priority, Severity};
use complaints_proto::events::v1::{
    CaseAcknowledged, CaseAssigned, CaseCustomerContacted, CaseOpened, CaseReclassified,
    CaseStatusChanged, ClockBreached, ClockWarning, Event, SurveyAnswered, event::Payload,
};
use complaints_proto::sla::v1 as pb;
use complaints_proto::sla::v1::sla_service_client::SlaServiceClient;
use sla_timer::consumer::ClockEvents;
use sla_timer::engine::Engine;
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    pool: PgPool,
    db_url: String,
    servers: Vec<RunningService>,
    handler: ClockEvents,
}

async fn start_server(db_url: &str) -> RunningService {
    let config = sla_timer::Config {
        common: testing::common_config(db_url),
        cases_url: "http://127.0.0.1:9".into(),
        survey_url: "http://127.0.0.1:9".into(),
        org_timezone: chrono_tz::Asia::Shanghai,
        scheduler_poll: StdDuration::from_millis(50),
    };
    let (listener, url) = testing::ephemeral_listener().await;
    let server = RunningService::spawn(listener, url, move |l, s| sla_timer::run(config, l, s));
    let client = SlaServiceClient::new(testing::channel(&server.url));
    testing::eventually("the server to answer", StdDuration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            client
                .list_policies(admin_req(pb::ListPoliciesRequest::default()))
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    server
}

impl Harness {
    async fn start() -> Self {
        let db = testing::fresh_database().await;
        let server = start_server(&db.url).await;
        let pool = PgPool::connect(&db.url).await.unwrap();
        Self {
            pool,
            db_url: db.url,
            servers: vec![server],
            handler: ClockEvents { engine: engine() },
        }
    }

    fn client(&self) -> SlaServiceClient<Channel> {
        SlaServiceClient::new(testing::channel(&self.servers[0].url))
    }

    /// The live alert feed of after-sales' supervisor, from now.
    async fn live_alerts(&self) -> tonic::Streaming<pb::WatchClockAlertsResponse> {
        self.client()
            .watch_clock_alerts(testing::authed(
                pb::WatchClockAlertsRequest::default(),
                &token(Role::Supervisor, Some("after-sales")),
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Applies a case event the way the consumer does: in a transaction with its effects.
    async fn apply(&self, case_id: &str, payload: Payload) {
        let event = Event {
            event_id: uuid::Uuid::now_v7().to_string(),
            aggregate_id: case_id.to_owned(),
            payload: Some(payload),
            ..Event::default()
        };
        let mut tx = self.pool.begin().await.unwrap();
        self.handler.apply(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// Applies events as one run of the consumer's set-based path, in one transaction.
    async fn apply_run(&self, events: Vec<Event>) {
        assert!(events.iter().all(|e| self.handler.in_sets(e)));
        let run: Vec<Incoming<'_>> = events
            .iter()
            .map(|event| Incoming {
                event,
                span: tracing::Span::none(),
            })
            .collect();
        let mut tx = self.pool.begin().await.unwrap();
        self.handler.apply_set(&mut tx, &run).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn open_case(&self, received_at: DateTime<Utc>, category: &str) -> String {
        self.open_case_graded(received_at, category, Severity::General, Complexity::Simple)
            .await
    }

    async fn open_case_graded(
        &self,
        received_at: DateTime<Utc>,
        category: &str,
        severity: Severity,
        complexity: Complexity,
    ) -> String {
        let case_id = uuid::Uuid::now_v7().to_string();
        self.apply(
            &case_id,
            Payload::CaseOpened(CaseOpened {
                case_id: case_id.clone(),
                department_id: "after-sales".into(),
                owner_id: "agent-wang".into(),
                category: category.into(),
                severity: severity as i32,
                priority: Priority::P3 as i32,
                complexity: complexity as i32,
                channel: 1,
                customer_tier: 2,
                received_at: Some(to_timestamp(received_at)),
                opened_at: Some(to_timestamp(received_at)),
                ..CaseOpened::default()
            }),
        )
        .await;
        case_id
    }

    async fn status(&self, case_id: &str, from: CaseStatus, to: CaseStatus, at: DateTime<Utc>) {
        self.apply(
            case_id,
            Payload::CaseStatusChanged(CaseStatusChanged {
                case_id: case_id.into(),
                from: from as i32,
                to: to as i32,
                changed_at: Some(to_timestamp(at)),
                ..CaseStatusChanged::default()
            }),
        )
        .await;
    }

    async fn reclassify(&self, case_id: &str, change: CaseReclassified) {
        let change = CaseReclassified {
            case_id: case_id.into(),
            ..change
        };
        self.apply(case_id, Payload::CaseReclassified(change)).await;
    }

    /// The case waits on the customer from `from` until `until`, then is investigated.
    async fn wait_on_customer(&self, case_id: &str, from: DateTime<Utc>, until: DateTime<Utc>) {
        use CaseStatus::{Accepted, Investigating, WaitingOnCustomer};
        self.status(case_id, Accepted, WaitingOnCustomer, from)
            .await;
        self.status(case_id, WaitingOnCustomer, Investigating, until)
            .await;
    }

    async fn clocks(&self, case_id: &str) -> Vec<pb::Clock> {
        self.client()
            .list_case_clocks(admin_req(pb::ListCaseClocksRequest {
                case_id: case_id.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .clocks
    }

    async fn clock(&self, case_id: &str, kind: ClockKind) -> pb::Clock {
        self.clocks(case_id)
            .await
            .into_iter()
            .rfind(|c| c.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} clock"))
    }

    async fn explain(&self, case_id: &str, kind: ClockKind) -> pb::ExplainClockResponse {
        let clock = self.clock(case_id, kind).await;
        self.client()
            .explain_clock(admin_req(pb::ExplainClockRequest { clock_id: clock.id }))
            .await
            .unwrap()
            .into_inner()
    }

    async fn count(&self, sql: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&self.pool).await.unwrap();
        n
    }

    /// No foreign key checks it (migration 0006): every clock's case row must be there, and
    /// there must be clocks to check.
    async fn assert_every_clock_has_its_case(&self) {
        assert!(self.count("SELECT count(*) FROM sla.clocks").await > 0);
        let orphans = self
            .count(
                "SELECT count(*) FROM sla.clocks c
                 WHERE NOT EXISTS (SELECT 1 FROM sla.cases s WHERE s.case_id = c.case_id)",
            )
            .await;
        assert_eq!(orphans, 0, "clocks without their case row");
    }
}

fn engine() -> Engine {
    Engine::new(EventLog::new(sla_timer::SCHEMA, sla_timer::SERVICE_NAME))
}

fn token(role: Role, department: Option<&str>) -> String {
    testing::token("tester", role, department)
}

/// An event of a case, as the consumer receives it.
fn case_event(case_id: &str, payload: Payload) -> Event {
    Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        aggregate_id: case_id.to_owned(),
        payload: Some(payload),
        ..Event::default()
    }
}

/// A general, simple case of `category` opened in after-sales, received at `received`.
fn opened_at(case_id: &str, category: &str, received: DateTime<Utc>) -> Payload {
    Payload::CaseOpened(CaseOpened {
        case_id: case_id.into(),
        department_id: "after-sales".into(),
        owner_id: "agent-wang".into(),
        category: category.into(),
        severity: Severity::General as i32,
        priority: Priority::P3 as i32,
        complexity: Complexity::Simple as i32,
        channel: 1,
        customer_tier: 2,
        received_at: Some(to_timestamp(received)),
        opened_at: Some(to_timestamp(received)),
        ..CaseOpened::default()
    })
}

fn acknowledged_at(case_id: &str, at: DateTime<Utc>) -> Payload {
    Payload::CaseAcknowledged(CaseAcknowledged {
        case_id: case_id.into(),
        by: "agent-wang".into(),
        acknowledged_at: Some(to_timestamp(at)),
    })
}

/// The explanation has a note that says `text`.
fn assert_noted(explained: &pb::ExplainClockResponse, text: &str) {
    assert!(
        explained.notes.iter().any(|n| n.contains(text)),
        "no note says {text:?}: {:?}",
        explained.notes
    );
}

/// A reclassification that changes only the severity.
fn to_severity(severity: Severity, why: &str) -> CaseReclassified {
    CaseReclassified {
        severity: severity as i32,
        reason: why.into(),
        ..CaseReclassified::default()
    }
}

/// A reclassification that changes only the complexity.
fn to_complexity(complexity: Complexity, why: &str) -> CaseReclassified {
    CaseReclassified {
        complexity: complexity as i32,
        reason: why.into(),
        ..CaseReclassified::default()
    }
}

fn admin_req<T>(message: T) -> tonic::Request<T> {
    testing::authed(message, &token(Role::Admin, None))
}

/// Shanghai local time in late November 2030 (Friday the 22nd, Monday the 25th).
fn sh(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    chrono_tz::Asia::Shanghai
        .with_ymd_and_hms(2030, 11, day, hour, minute, 0)
        .unwrap()
        .with_timezone(&Utc)
}

fn at(ts: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    from_timestamp(ts.as_ref().expect("timestamp")).expect("valid timestamp")
}

fn field_violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

fn hours(h: i64) -> Option<prost_types::Duration> {
    Some(to_pb_duration(Duration::hours(h)))
}

fn business(h: i64) -> Option<pb::Target> {
    Some(pb::Target {
        measure: Some(pb::target::Measure::BusinessTime(to_pb_duration(
            Duration::hours(h),
        ))),
    })
}

fn minutes_business(m: i64) -> Option<pb::Target> {
    Some(pb::Target {
        measure: Some(pb::target::Measure::BusinessTime(to_pb_duration(
            Duration::minutes(m),
        ))),
    })
}

fn working_days(n: u32) -> Option<pb::Target> {
    Some(pb::Target {
        measure: Some(pb::target::Measure::WorkingDays(n)),
    })
}

/// A policy for one category on a calendar.
fn policy_for_category(id: &str, category: &str, calendar_id: &str) -> pb::Policy {
    pb::Policy {
        id: id.into(),
        name: format!("{category} complaints"),
        calendar_id: calendar_id.into(),
        // More specific than the shipped general-simple policy (severity and complexity).
        criteria: Some(pb::PolicyCriteria {
            severity: Severity::General as i32,
            complexity: Complexity::Simple as i32,
            category: category.into(),
            ..Default::default()
        }),
        first_response: business(1),
        customer_update: None,
        resolution: working_days(1),
        follow_up: Some(pb::Target {
            measure: Some(pb::target::Measure::CalendarTime(to_pb_duration(
                Duration::hours(48),
            ))),
        }),
        warnings: vec![pb::WarningThreshold {
            threshold: Some(pb::warning_threshold::Threshold::PercentUsed(75)),
        }],
        escalation_ladder: vec![pb::EscalationStep {
            level: 1,
            after_breach: hours(0),
        }],
        ..Default::default()
    }
}

/// Delivery cases: first response within a business hour, then an update every 30 business
/// minutes.
async fn create_update_policy(h: &Harness) {
    let mut policy = policy_for_category("chatty", "delivery", "standard");
    policy.first_response = business(1);
    policy.customer_update = minutes_business(30);
    create_policy(&mut h.client(), policy).await;
}

async fn create_policy(client: &mut SlaServiceClient<Channel>, policy: pb::Policy) -> pb::Policy {
    client
        .create_policy(admin_req(pb::CreatePolicyRequest {
            request_id: format!("create-{}", policy.id),
            policy: Some(policy),
        }))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap()
}

fn weekdays(ranges: &[(&str, &str)]) -> Vec<pb::WeekdayHours> {
    (1..=5)
        .map(|weekday| pb::WeekdayHours {
            weekday,
            ranges: ranges
                .iter()
                .map(|(s, e)| pb::WorkingRange {
                    start: (*s).into(),
                    end: (*e).into(),
                })
                .collect(),
        })
        .collect()
}

#[tokio::test]
async fn a_complaint_received_on_friday_night_counts_from_the_next_working_minute() {
    let h = Harness::start().await;
    let case = h.open_case(sh(22, 22, 0), "product_quality").await;
    let explained = h.explain(&case, ClockKind::FirstResponse).await;
    let clock = explained.clock.as_ref().unwrap();
    // Received Friday 22:00; the business clock starts Monday 09:00, so 1h later is Monday 10:00.
    assert_eq!(at(&explained.origin_at), sh(22, 22, 0));
    assert_eq!(at(&clock.started_at), sh(25, 9, 0));
    assert_eq!(at(&clock.due_at), sh(25, 10, 0));
    assert_eq!(explained.segments.len(), 1);
    assert_eq!(at(&explained.segments[0].start), sh(25, 9, 0));
    assert_eq!(explained.time_zone, "Asia/Shanghai");
    assert_noted(&explained, "outside working time");
    assert!(clock.business_time);
    assert_eq!(clock.calendar_id, "cn-mainland");
}

#[tokio::test]
async fn clocks_keep_planner_statistics_only_for_what_queries_filter_on() {
    let h = Harness::start().await;
    h.open_case(sh(22, 22, 0), "product_quality").await;
    assert_eq!(
        testing::analyzed_columns(&h.pool, "sla", "clocks").await,
        [
            "breached_at",
            "calendar_id",
            "case_id",
            "cycle",
            "department_id",
            "due_at",
            "id",
            "kind",
            "met_at",
            "met_on_time",
            "next_fire_at",
            "severity",
            "started_at",
            "state",
            "warned_ms",
        ]
    );
}

#[tokio::test]
async fn a_pause_over_a_weekend_subtracts_only_the_business_time_paused() {
    let h = Harness::start().await;
    // General simple complaint: resolution in 3 working days (24 business hours).
    let case = h.open_case(sh(22, 9, 0), "product_quality").await;
    // Waiting all weekend and all Monday; work resumes Tuesday 09:00.
    h.wait_on_customer(&case, sh(22, 17, 0), sh(26, 9, 0)).await;
    let explained = h.explain(&case, ClockKind::Resolution).await;
    // Friday 09:00–17:00 used 7h (lunch excluded); 17h left from Tuesday 09:00 → Thursday 10:00.
    assert_eq!(at(&explained.clock.as_ref().unwrap().due_at), sh(28, 10, 0));
    assert_eq!(explained.pauses.len(), 1);
    let excluded = from_pb_duration(explained.pauses[0].excluded.as_ref().unwrap());
    // Friday 17:00–18:00 and Monday's 8 hours: 9 business hours, not the 88 calendar hours.
    assert_eq!(excluded, Duration::hours(9));
    let counted: Duration = explained
        .segments
        .iter()
        .map(|s| at(&s.end) - at(&s.start))
        .sum();
    assert_eq!(counted, Duration::hours(24));
    assert!(
        explained
            .segments
            .iter()
            .all(|s| at(&s.start) < sh(23, 0, 0) || at(&s.start) >= sh(26, 9, 0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_one_hour_before_the_deadline_fires_one_business_hour_before_it() {
    let h = Harness::start().await;
    let mut client = h.client();
    let mut policy = policy_for_category("billing-8h", "billing", "standard");
    policy.first_response = business(8);
    policy.resolution = working_days(2);
    policy.warnings = vec![pb::WarningThreshold {
        threshold: Some(pb::warning_threshold::Threshold::BeforeDeadline(
            to_pb_duration(Duration::hours(1)),
        )),
    }];
    create_policy(&mut client, policy).await;
    // Monday 11:00 + 8 business hours (lunch 12–13, evening off) = Tuesday 11:00.
    let case = h.open_case(sh(25, 11, 0), "billing").await;
    let explained = h.explain(&case, ClockKind::FirstResponse).await;
    assert_eq!(at(&explained.clock.as_ref().unwrap().due_at), sh(26, 11, 0));
    assert_eq!(explained.warnings.len(), 1);
    assert_eq!(at(&explained.warnings[0].at), sh(26, 10, 0));

    let mut alerts = h.live_alerts().await;
    let engine = engine();
    // Not at midnight, not at 09:59 ...
    for early in [sh(26, 0, 0), sh(26, 9, 59)] {
        let (_, lags) = engine.fire_due(&h.pool, early, 100).await.unwrap();
        assert!(lags.is_empty(), "nothing is due at {early}");
    }
    // ... but at 10:00, one business hour before the deadline.
    let (_, lags) = engine.fire_due(&h.pool, sh(26, 10, 0), 100).await.unwrap();
    assert_eq!(lags.len(), 1);
    let batch = tokio::time::timeout(StdDuration::from_secs(20), alerts.message())
        .await
        .expect("an alert in time")
        .unwrap()
        .unwrap();
    assert_eq!(batch.alerts.len(), 1);
    let alert = &batch.alerts[0];
    assert_eq!(alert.kind, pb::AlertKind::Warning as i32);
    assert_eq!(alert.case_id, case);
    assert_eq!(alert.percent_used, 87);
    assert_eq!(alert.department_id, "after-sales");
    // A second pass at the same instant fires nothing more.
    let (_, lags) = engine.fire_due(&h.pool, sh(26, 10, 30), 100).await.unwrap();
    assert!(lags.is_empty());
}

/// A live alert feed misses no alert committed after it started, also one whose writer began
/// before a later event committed (and so is positioned below it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_alert_feed_gets_an_alert_committed_after_it_started_below_a_newer_event() {
    let h = Harness::start().await;
    let case = h.open_case(sh(25, 11, 0), "billing").await;
    let log = EventLog::new(sla_timer::SCHEMA, sla_timer::SERVICE_NAME);
    // The writer of a warning takes its id and writes it, and stays open ...
    let mut slow = h.pool.begin().await.unwrap();
    log.append(
        &mut slow,
        &case,
        "",
        Payload::ClockWarning(ClockWarning {
            clock_id: "slow".into(),
            case_id: case.clone(),
            kind: ClockKind::Resolution as i32,
            percent_used: 80,
            due_at: None,
        }),
    )
    .await
    .unwrap();
    // ... while a later alert commits.
    let mut fast = h.pool.begin().await.unwrap();
    log.append(
        &mut fast,
        &case,
        "",
        Payload::ClockBreached(ClockBreached {
            clock_id: "fast".into(),
            case_id: case.clone(),
            kind: ClockKind::FirstResponse as i32,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    fast.commit().await.unwrap();
    let mut alerts = h.live_alerts().await;
    slow.commit().await.unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|id: &String| id == "slow") {
        let batch = tokio::time::timeout(StdDuration::from_secs(20), alerts.message())
            .await
            .unwrap_or_else(|_| {
                panic!("the warning committed after the feed started; seen {seen:?}")
            })
            .unwrap()
            .unwrap();
        seen.extend(batch.alerts.into_iter().map(|a| a.clock_id));
    }
}

#[tokio::test]
async fn the_update_target_never_overrides_the_first_response_target() {
    let h = Harness::start().await;
    create_update_policy(&h).await;
    let case = h.open_case(sh(25, 9, 0), "delivery").await;
    // Before the first response there is no update clock: nothing is due at 09:30.
    let kinds: Vec<i32> = h.clocks(&case).await.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ClockKind::FirstResponse as i32,
            ClockKind::Resolution as i32
        ]
    );
    assert_eq!(
        at(&h.clock(&case, ClockKind::FirstResponse).await.due_at),
        sh(25, 10, 0)
    );
    let (_, lags) = engine()
        .fire_due(&h.pool, sh(25, 9, 50), 100)
        .await
        .unwrap();
    assert!(
        lags.len() <= 1,
        "at most the first-response warning at 75 %"
    );
    assert_eq!(
        h.count("SELECT count(*) FROM sla.event_outbox WHERE event_type = 'ClockBreached'")
            .await,
        0
    );
    // The first response at 09:40 starts the 30-minute update period.
    h.apply(
        &case,
        Payload::CaseAcknowledged(CaseAcknowledged {
            case_id: case.clone(),
            by: "agent-wang".into(),
            acknowledged_at: Some(to_timestamp(sh(25, 9, 40))),
        }),
    )
    .await;
    let first = h.clock(&case, ClockKind::FirstResponse).await;
    assert_eq!(first.state, pb::ClockState::Met as i32);
    assert!(first.met_on_time);
    let update = h.clock(&case, ClockKind::CustomerUpdate).await;
    assert_eq!(update.state, pb::ClockState::Running as i32);
    assert_eq!(at(&update.due_at), sh(25, 10, 10));
    assert_eq!(update.cycle, 1);
    // A contact that reached the customer meets that period and starts the next one.
    h.apply(
        &case,
        Payload::CaseCustomerContacted(CaseCustomerContacted {
            case_id: case.clone(),
            kind: "CONTACT_KIND_CALL".into(),
            reached: true,
            by: "agent-wang".into(),
            contacted_at: Some(to_timestamp(sh(25, 9, 55))),
            ..Default::default()
        }),
    )
    .await;
    let updates: Vec<pb::Clock> = h
        .clocks(&case)
        .await
        .into_iter()
        .filter(|c| c.kind == ClockKind::CustomerUpdate as i32)
        .collect();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert_eq!(updates[0].state, pb::ClockState::Met as i32);
    assert_eq!(updates[1].cycle, 2);
    assert_eq!(updates[1].state, pb::ClockState::Running as i32);
    assert_eq!(at(&updates[1].due_at), sh(25, 10, 25));
    // Waiting on the customer pauses it; resolution meets it.
    h.status(
        &case,
        CaseStatus::Accepted,
        CaseStatus::Resolved,
        sh(25, 10, 0),
    )
    .await;
    let update = h.clock(&case, ClockKind::CustomerUpdate).await;
    assert_eq!(update.state, pb::ClockState::Met as i32);
    // Both running clocks met at the resolution, by one update.
    let resolution = h.clock(&case, ClockKind::Resolution).await;
    assert_eq!(resolution.state, pb::ClockState::Met as i32);
    for clock in [&update, &resolution] {
        assert_eq!(at(&clock.met_at), sh(25, 10, 0), "{clock:?}");
    }
}

#[tokio::test]
async fn a_survey_answer_that_comes_before_the_resolution_still_meets_that_follow_up_only() {
    let h = Harness::start().await;
    let case = h.open_case(sh(25, 9, 0), "product_quality").await;
    let answer = |at: DateTime<Utc>| {
        Payload::SurveyAnswered(SurveyAnswered {
            case_id: case.clone(),
            csat: Some(5),
            answered_at: Some(to_timestamp(at)),
            ..Default::default()
        })
    };
    // The answer travels on the survey's stream, the resolution that starts the follow-up
    // clock on case management's: here the answer is applied first.
    h.apply(&case, answer(sh(25, 11, 30))).await;
    h.status(
        &case,
        CaseStatus::Accepted,
        CaseStatus::Resolved,
        sh(25, 11, 0),
    )
    .await;
    let follow_up = h.clock(&case, ClockKind::FollowUp).await;
    assert_eq!(follow_up.state, pb::ClockState::Met as i32, "{follow_up:?}");
    assert_eq!(at(&follow_up.met_at), sh(25, 11, 30));
    // Reopened and resolved again: that earlier answer does not meet the next follow-up.
    h.status(
        &case,
        CaseStatus::Resolved,
        CaseStatus::Reopened,
        sh(26, 10, 0),
    )
    .await;
    h.status(
        &case,
        CaseStatus::Reopened,
        CaseStatus::Resolved,
        sh(26, 15, 0),
    )
    .await;
    let next = h.clock(&case, ClockKind::FollowUp).await;
    assert_eq!(next.cycle, 2, "{next:?}");
    assert_eq!(next.state, pb::ClockState::Running as i32, "{next:?}");
    // Its own answer, arriving after it started, meets it as before.
    h.apply(&case, answer(sh(26, 16, 0))).await;
    let next = h.clock(&case, ClockKind::FollowUp).await;
    assert_eq!(next.state, pb::ClockState::Met as i32, "{next:?}");
    assert_eq!(at(&next.met_at), sh(26, 16, 0)); // Clocks of both cycles and of every kind started so far, each with its case row.
    h.assert_every_clock_has_its_case().await;
}

#[tokio::test]
async fn changing_a_calendar_replans_open_clocks_and_the_explanation_shows_the_new_plan() {
    let h = Harness::start().await;
    let mut client = h.client();
    let calendar = client
        .create_calendar(admin_req(pb::CreateCalendarRequest {
            request_id: "ops-calendar".into(),
            calendar: Some(pb::Calendar {
                id: "ops".into(),
                name: "Operations".into(),
                time_zone: "Asia/Shanghai".into(),
                weekly_hours: weekdays(&[("09:00", "17:00")]),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .calendar
        .unwrap();
    assert_eq!(calendar.version, 1);
    create_policy(&mut client, policy_for_category("app-ops", "app", "ops")).await;
    // Friday 16:00 + 1 working day (8h) = Monday 16:00.
    let case = h.open_case(sh(22, 16, 0), "app").await;
    let before = h.explain(&case, ClockKind::Resolution).await;
    assert_eq!(at(&before.clock.as_ref().unwrap().due_at), sh(25, 16, 0));

    // Monday becomes a holiday.
    let mut changed = calendar.clone();
    changed.holidays = vec![pb::CalendarDay {
        date: "2030-11-25".into(),
        name: "company day off".into(),
    }];
    let updated = client
        .update_calendar(admin_req(pb::UpdateCalendarRequest {
            calendar: Some(changed.clone()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.calendar.as_ref().unwrap().version, 2);
    assert_eq!(updated.replanned_clocks, 2, "first response and resolution");
    let after = h.explain(&case, ClockKind::Resolution).await;
    assert_eq!(at(&after.clock.as_ref().unwrap().due_at), sh(26, 16, 0));
    assert_eq!(after.calendar_version, 2);
    assert!(
        after
            .segments
            .iter()
            .all(|s| at(&s.start) < sh(25, 0, 0) || at(&s.start) >= sh(26, 0, 0))
    );
    assert!(
        after.notes.iter().any(|n| n.contains("re-planned")),
        "{:?}",
        after.notes
    );

    // A change based on version 1 is stale now.
    let stale = client
        .update_calendar(admin_req(pb::UpdateCalendarRequest {
            calendar: Some(changed),
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    // Tuesday too, from an iCalendar file.
    let ics = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20301126\r\nSUMMARY:Stocktaking\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let imported = client
        .import_calendar_ics(admin_req(pb::ImportCalendarIcsRequest {
            calendar_id: "ops".into(),
            version: 2,
            ics: ics.into(),
            source: "ops.ics".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(imported.holidays_added, 1);
    assert_eq!(imported.replanned_clocks, 2);
    let after_import = h.explain(&case, ClockKind::Resolution).await;
    assert_eq!(
        at(&after_import.clock.as_ref().unwrap().due_at),
        sh(27, 16, 0)
    );
}

#[tokio::test]
async fn every_calendar_names_its_time_zone_and_bad_calendars_name_their_fields() {
    let h = Harness::start().await;
    let mut client = h.client();
    let bad = client
        .create_calendar(admin_req(pb::CreateCalendarRequest {
            request_id: "bad".into(),
            calendar: Some(pb::Calendar {
                id: "Bad Id".into(),
                name: "x".into(),
                time_zone: String::new(),
                weekly_hours: weekdays(&[("18:00", "09:00")]),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields = field_violations(&bad);
    assert!(fields.contains(&"calendar.id".to_owned()), "{fields:?}");
    assert!(
        fields.contains(&"calendar.time_zone".to_owned()),
        "{fields:?}"
    );
    let bad_hours = client
        .create_calendar(admin_req(pb::CreateCalendarRequest {
            request_id: "bad-hours".into(),
            calendar: Some(pb::Calendar {
                id: "berlin".into(),
                name: "Berlin office".into(),
                time_zone: "Europe/Berlin".into(),
                weekly_hours: weekdays(&[("18:00", "09:00")]),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert!(
        field_violations(&bad_hours)
            .iter()
            .any(|f| f.starts_with("calendar.weekly_hours[MONDAY]")),
        "{:?}",
        field_violations(&bad_hours)
    );
    // Same wall-clock hours in two zones: the deadlines differ by the zones' offset.
    for (id, zone) in [("berlin", "Europe/Berlin"), ("shanghai", "Asia/Shanghai")] {
        client
            .create_calendar(admin_req(pb::CreateCalendarRequest {
                request_id: id.into(),
                calendar: Some(pb::Calendar {
                    id: id.into(),
                    name: id.into(),
                    time_zone: zone.into(),
                    weekly_hours: weekdays(&[("09:00", "17:00")]),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap();
        create_policy(&mut client, policy_for_category(&format!("p-{id}"), id, id)).await;
    }
    // Saturday 03:00 in Shanghai is Friday 20:00 in Berlin: outside working hours in both.
    let received = sh(23, 3, 0);
    let in_berlin = h.open_case(received, "berlin").await;
    let in_shanghai = h.open_case(received, "shanghai").await;
    let due_berlin = at(&h.clock(&in_berlin, ClockKind::FirstResponse).await.due_at);
    let due_shanghai = at(&h.clock(&in_shanghai, ClockKind::FirstResponse).await.due_at);
    // Monday 10:00 CET is 09:00 UTC; Monday 10:00 CST is 02:00 UTC.
    assert_eq!(
        due_berlin,
        Utc.with_ymd_and_hms(2030, 11, 25, 9, 0, 0).unwrap()
    );
    assert_eq!(
        due_shanghai,
        Utc.with_ymd_and_hms(2030, 11, 25, 2, 0, 0).unwrap()
    );
}

#[tokio::test]
async fn policies_are_versioned_idempotent_validated_and_explained() {
    let h = Harness::start().await;
    let mut client = h.client();
    let policy = policy_for_category("vip-billing", "billing", "standard");
    let first = create_policy(&mut client, policy.clone()).await;
    let again = create_policy(&mut client, policy.clone()).await;
    assert_eq!((first.version, again.version), (1, 1));
    let taken = client
        .create_policy(admin_req(pb::CreatePolicyRequest {
            request_id: "another-request".into(),
            policy: Some(policy.clone()),
        }))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);

    let mut change = first.clone();
    change.first_response = minutes_business(20);
    let updated = client
        .update_policy(admin_req(pb::UpdatePolicyRequest {
            policy: Some(change.clone()),
        }))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(updated.version, 2);
    let stale = client
        .update_policy(admin_req(pb::UpdatePolicyRequest {
            policy: Some(change),
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    let mut bad = policy_for_category("Bad", "x", "no-such-calendar");
    bad.resolution = None;
    bad.warnings = vec![pb::WarningThreshold {
        threshold: Some(pb::warning_threshold::Threshold::PercentUsed(140)),
    }];
    bad.escalation_ladder = vec![pb::EscalationStep {
        level: 2,
        after_breach: hours(1),
    }];
    let status = client
        .create_policy(admin_req(pb::CreatePolicyRequest {
            request_id: "bad".into(),
            policy: Some(bad),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = field_violations(&status);
    assert!(
        fields.contains(&"policy.resolution".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"policy.escalation_ladder[0].level".to_owned()),
        "{fields:?}"
    );

    let denied = client
        .create_policy(testing::authed(
            pb::CreatePolicyRequest {
                request_id: "agent".into(),
                policy: Some(policy_for_category("agent-made", "x", "standard")),
            },
            &token(Role::Agent, Some("after-sales")),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let matched = client
        .match_policy(admin_req(pb::MatchPolicyRequest {
            severity: Severity::General as i32,
            complexity: Complexity::Simple as i32,
            category: "billing".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    // Three criteria (severity, complexity, category) beat two (severity, complexity).
    assert_eq!(matched.policy.unwrap().id, "vip-billing");
    assert_eq!(
        matched.candidate_policy_ids,
        vec!["vip-billing", "general-simple", "default"]
    );
    assert!(
        matched.reason.contains("category = billing"),
        "{}",
        matched.reason
    );
    let other = client
        .match_policy(admin_req(pb::MatchPolicyRequest {
            severity: Severity::General as i32,
            complexity: Complexity::Simple as i32,
            category: "delivery".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.policy.unwrap().id, "general-simple");

    let page = client
        .list_policies(admin_req(pb::ListPoliciesRequest {
            page_size: 4,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.policies.len(), 4);
    let rest = client
        .list_policies(admin_req(pb::ListPoliciesRequest {
            page_size: 4,
            page_token: page.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.policies.len(), 3, "six defaults and one of ours");
    assert!(rest.next_page_token.is_empty());
}

#[tokio::test]
async fn reclassification_replans_the_open_clocks_of_the_case() {
    let h = Harness::start().await;
    let case = h.open_case(sh(25, 9, 0), "product_quality").await;
    let before = h.clock(&case, ClockKind::Resolution).await;
    assert_eq!(before.policy_id, "general-simple");
    // 3 working days of 8 hours from Monday 09:00: Wednesday 18:00.
    assert_eq!(at(&before.due_at), sh(27, 18, 0));
    h.reclassify(
        &case,
        to_complexity(Complexity::Complex, "needs the supplier"),
    )
    .await;
    let explained = h.explain(&case, ClockKind::Resolution).await;
    let after = explained.clock.as_ref().unwrap();
    assert_eq!(after.policy_id, "general-complex");
    // 7 working days from Monday 09:00 end on the following Tuesday 18:00.
    assert_eq!(
        at(&after.due_at),
        chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(2030, 12, 3, 18, 0, 0)
            .unwrap()
            .with_timezone(&Utc)
    );
    assert_noted(&explained, "reclassification (needs the supplier)");
    // Raised to a crisis: calendar time from receipt, 24 hours.
    h.reclassify(&case, to_severity(Severity::Crisis, "on the news"))
        .await;
    let crisis = h.clock(&case, ClockKind::Resolution).await;
    assert_eq!(crisis.policy_id, "crisis");
    assert!(!crisis.business_time);
    assert_eq!(at(&crisis.due_at), sh(26, 9, 0));
    // Back to general: the complexity given earlier is kept (a reclassification changes only
    // what it gives).
    h.reclassify(&case, to_severity(Severity::General, "calmer"))
        .await;
    let calmer = h.clock(&case, ClockKind::Resolution).await;
    assert_eq!(calmer.policy_id, "general-complex");
    assert!(calmer.business_time);
}

#[tokio::test]
async fn an_assignment_moves_the_case_and_its_open_clocks_to_the_new_department() {
    let h = Harness::start().await;
    let case = h.open_case(sh(25, 9, 0), "product_quality").await;
    let assigned = |case_id: &str| {
        Payload::CaseAssigned(CaseAssigned {
            case_id: case_id.into(),
            department_id: "logistics".into(),
            owner_id: "agent-li".into(),
            previous_department_id: "after-sales".into(),
            previous_owner_id: "agent-wang".into(),
            reason: "wrong queue".into(),
        })
    };
    h.apply(&case, assigned(&case)).await;
    for clock in h.clocks(&case).await {
        assert_eq!(clock.department_id, "logistics", "{clock:?}");
    }
    let (department, owner): (String, String) =
        sqlx::query_as("SELECT department_id, owner_id FROM sla.cases WHERE case_id = $1")
            .bind(uuid::Uuid::parse_str(&case).unwrap())
            .fetch_one(&h.pool)
            .await
            .unwrap();
    assert_eq!(
        (department.as_str(), owner.as_str()),
        ("logistics", "agent-li")
    );
    // A later re-plan takes the department from the case row, so it stays.
    h.reclassify(
        &case,
        CaseReclassified {
            complexity: Complexity::Complex as i32,
            ..CaseReclassified::default()
        },
    )
    .await;
    let resolution = h.clock(&case, ClockKind::Resolution).await;
    assert_eq!(resolution.policy_id, "general-complex");
    assert_eq!(resolution.department_id, "logistics");
    // A case this service never saw opened: nothing to move, and no error.
    let unknown = uuid::Uuid::now_v7().to_string();
    h.apply(&unknown, assigned(&unknown)).await;
    assert_eq!(
        h.count("SELECT count(*) FROM sla.cases WHERE department_id = 'logistics'")
            .await,
        1
    );
}

#[tokio::test]
async fn reclassification_recounts_each_clock_with_its_own_pauses() {
    let h = Harness::start().await;
    // Two cases received on Friday 09:00; only `paused` waits on the customer, from Friday
    // 17:00 to Tuesday 09:00 (its resolution clock pauses, its first-response clock runs on).
    let paused = h.open_case(sh(22, 9, 0), "product_quality").await;
    let steady = h.open_case(sh(22, 9, 0), "product_quality").await;
    h.wait_on_customer(&paused, sh(22, 17, 0), sh(26, 9, 0))
        .await;
    for case in [&paused, &steady] {
        h.reclassify(
            case,
            to_complexity(Complexity::Complex, "needs the supplier"),
        )
        .await;
    }
    let shanghai = |day: u32, hour: u32| {
        chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(2030, 12, day, hour, 0, 0)
            .unwrap()
            .with_timezone(&Utc)
    };
    // 7 working days (56 h). Unpaused: Friday's 8 h, the next week's 40 h, Monday 2nd's
    // 8 h → Monday 18:00. Paused: Friday's 7 h, then 49 h from Tuesday 26th 09:00 →
    // Wednesday 4th 10:00.
    let resolution = h.clock(&steady, ClockKind::Resolution).await;
    assert_eq!(resolution.policy_id, "general-complex");
    assert_eq!(at(&resolution.due_at), shanghai(2, 18));
    let resolution = h.clock(&paused, ClockKind::Resolution).await;
    assert_eq!(resolution.policy_id, "general-complex");
    assert_eq!(at(&resolution.due_at), shanghai(4, 10));
    // The first-response clocks never paused: both re-planned alike.
    let first = h.clock(&paused, ClockKind::FirstResponse).await;
    let other = h.clock(&steady, ClockKind::FirstResponse).await;
    assert_eq!(first.policy_id, "general-complex");
    assert_eq!(at(&first.due_at), at(&other.due_at));
    assert_eq!(first.state, other.state);
}

#[tokio::test]
async fn cases_at_risk_come_least_time_left_first_and_compliance_counts_the_period() {
    let h = Harness::start().await;
    let late = h.open_case(sh(25, 9, 0), "product_quality").await;
    let later = h.open_case(sh(25, 9, 10), "product_quality").await;
    let fine = h.open_case(sh(25, 11, 0), "product_quality").await;
    // At 10:00 the first two first-response clocks are past 75 % or breached; the third is not.
    let engine = engine();
    engine.fire_due(&h.pool, sh(25, 10, 0), 100).await.unwrap();
    let mut client = h.client();
    let at_risk = client
        .list_cases_at_risk(testing::authed(
            pb::ListCasesAtRiskRequest::default(),
            &token(Role::Supervisor, Some("after-sales")),
        ))
        .await
        .unwrap()
        .into_inner()
        .clocks;
    let cases: Vec<&str> = at_risk.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(cases, vec![late.as_str(), later.as_str()]);
    assert!(!cases.contains(&fine.as_str()));
    let other = client
        .list_cases_at_risk(testing::authed(
            pb::ListCasesAtRiskRequest {
                department_id: "logistics".into(),
                ..Default::default()
            },
            &token(Role::Supervisor, Some("after-sales")),
        ))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let none = client
        .list_cases_at_risk(admin_req(pb::ListCasesAtRiskRequest {
            severity: Severity::Crisis as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .clocks;
    assert!(none.is_empty());

    // `late` answered at 10:30 (after its 10:00 deadline), `fine` at 11:15 (on time).
    for (case, when) in [(&late, sh(25, 10, 30)), (&fine, sh(25, 11, 15))] {
        h.apply(
            case,
            Payload::CaseAcknowledged(CaseAcknowledged {
                case_id: case.to_string(),
                by: "agent-wang".into(),
                acknowledged_at: Some(to_timestamp(when)),
            }),
        )
        .await;
    }
    engine.fire_due(&h.pool, sh(25, 10, 45), 100).await.unwrap();
    let figures = client
        .get_compliance(admin_req(pb::GetComplianceRequest {
            period_start: Some(to_timestamp(sh(25, 0, 0))),
            period_end: Some(to_timestamp(sh(26, 0, 0))),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .figures;
    let first = figures
        .iter()
        .find(|f| f.kind == ClockKind::FirstResponse as i32)
        .unwrap();
    assert_eq!(
        (first.met_on_time, first.met_late, first.breached_open),
        (1, 1, 1)
    );
    assert!((first.on_time_rate - 1.0 / 3.0).abs() < 1e-9);
    let bad = client
        .get_compliance(admin_req(pb::GetComplianceRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(
        field_violations(&bad),
        vec!["period_start".to_owned(), "period_end".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_clock_overdue_after_downtime_exactly_once() {
    let mut h = Harness::start().await;
    // Downtime: the service is stopped while clocks fall due.
    h.servers.pop().unwrap().stop().await.unwrap();
    let n: i64 = 40;
    let month_ago = Utc::now() - Duration::days(30);
    for _ in 0..n {
        h.open_case(month_ago, "product_quality").await;
    }
    // Two replicas come back at once.
    let a = start_server(&h.db_url).await;
    let b = start_server(&h.db_url).await;
    h.servers.extend([a, b]);
    testing::eventually("every overdue clock to fire", StdDuration::from_secs(60), || {
        let pool = h.pool.clone();
        async move {
            let (left,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM sla.clocks WHERE next_fire_at IS NOT NULL AND next_fire_at <= now()",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (left == 0).then_some(())
        }
    })
    .await;
    // First response and resolution per case: each breached once, warned once per threshold,
    // and each escalation level queued once.
    assert_eq!(
        h.count("SELECT count(*) FROM sla.event_outbox WHERE event_type = 'ClockBreached'")
            .await,
        2 * n
    );
    assert_eq!(
        h.count("SELECT count(*) FROM sla.event_outbox WHERE event_type = 'ClockWarning'")
            .await,
        4 * n
    );
    assert_eq!(
        h.count("SELECT count(*) FROM sla.pending_escalations")
            .await,
        8 * n
    );
    assert_eq!(
        h.count("SELECT count(DISTINCT escalation_id) FROM sla.pending_escalations")
            .await,
        8 * n
    );
    for server in h.servers.drain(..) {
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_run_of_openings_and_acknowledgements_applies_as_one_at_a_time_would() {
    let h = Harness::start().await;
    create_update_policy(&h).await;
    let event = case_event;
    let opened = |case_id: &str| opened_at(case_id, "delivery", sh(25, 9, 0));
    let acknowledged = |case_id: &str, minute: u32| acknowledged_at(case_id, sh(25, 9, minute));
    let apply_run = |events: Vec<Event>| h.apply_run(events);
    let (a, b) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    // One run: each case opens and is acknowledged, the two interleaved (the openings are
    // taken first, which keeps each case's own order).
    let investigating = |case_id: &str| {
        Payload::CaseStatusChanged(CaseStatusChanged {
            case_id: case_id.into(),
            from: CaseStatus::Accepted as i32,
            to: CaseStatus::Investigating as i32,
            changed_at: Some(to_timestamp(sh(25, 9, 41))),
            ..CaseStatusChanged::default()
        })
    };
    apply_run(vec![
        event(&a, opened(&a)),
        event(&a, acknowledged(&a, 40)),
        // Moves no clock: part of the run, so as not to split it.
        event(&a, investigating(&a)),
        event(&b, opened(&b)),
        event(&b, acknowledged(&b, 45)),
    ])
    .await;
    // Another: two calls that reached the customer of one case, taken in order.
    let reached = |case_id: &str, minute: u32, reached: bool| {
        Payload::CaseCustomerContacted(CaseCustomerContacted {
            case_id: case_id.into(),
            kind: "CONTACT_KIND_CALL".into(),
            reached,
            by: "agent-wang".into(),
            contacted_at: Some(to_timestamp(sh(25, 9, minute))),
            ..Default::default()
        })
    };
    assert!(!h.handler.in_sets(&event(&a, reached(&a, 50, false))));
    apply_run(vec![
        event(&a, reached(&a, 50, true)),
        event(&a, reached(&a, 55, true)),
    ])
    .await;
    let of_kind = |clocks: &[pb::Clock], kind: ClockKind| -> Vec<(u32, i32, DateTime<Utc>)> {
        clocks
            .iter()
            .filter(|c| c.kind == kind as i32)
            .map(|c| (c.cycle, c.state, at(&c.due_at)))
            .collect()
    };
    let (met, running) = (pb::ClockState::Met as i32, pb::ClockState::Running as i32);
    let clocks_a = h.clocks(&a).await;
    let first_a = h.clock(&a, ClockKind::FirstResponse).await;
    assert_eq!(first_a.state, met);
    assert!(first_a.met_on_time);
    assert_eq!(at(&first_a.met_at), sh(25, 9, 40));
    assert_eq!(
        of_kind(&clocks_a, ClockKind::CustomerUpdate),
        vec![
            (1, met, sh(25, 10, 10)),
            (2, met, sh(25, 10, 20)),
            (3, running, sh(25, 10, 25)),
        ]
    );
    let clocks_b = h.clocks(&b).await;
    assert_eq!(h.clock(&b, ClockKind::FirstResponse).await.state, met);
    assert_eq!(
        of_kind(&clocks_b, ClockKind::CustomerUpdate),
        vec![(1, running, sh(25, 10, 15))]
    );
    assert_eq!(
        of_kind(&clocks_b, ClockKind::Resolution)[0].1,
        running,
        "the resolution clock keeps running"
    );
    // One event per clock met: a's first response and two update periods, b's first response.
    assert_eq!(
        h.count("SELECT count(*) FROM sla.event_outbox WHERE event_type = 'ClockMet'")
            .await,
        4
    );
    h.assert_every_clock_has_its_case().await;
}

#[tokio::test]
async fn a_run_with_reclassifications_applies_as_one_at_a_time_would() {
    let h = Harness::start().await;
    create_update_policy(&h).await;
    let reclassified = |case_id: &str, change: CaseReclassified| {
        Payload::CaseReclassified(CaseReclassified {
            case_id: case_id.into(),
            ..change
        })
    };
    let complex = to_complexity(Complexity::Complex, "needs the supplier");
    let crisis = to_severity(Severity::Crisis, "on the news");
    // The same story for three cases: `a` is reclassified, then acknowledged (its first
    // response is met under the new policy); `b` is acknowledged, then reclassified twice
    // (the met first response keeps its policy; the second change builds on the first);
    // `c` only opens. A reclassification of a case never opened is left alone.
    let story = |[a, b, c]: &[String; 3], never: &str| {
        vec![
            case_event(a, opened_at(a, "delivery", sh(25, 9, 0))),
            case_event(b, opened_at(b, "delivery", sh(25, 9, 5))),
            case_event(a, reclassified(a, complex.clone())),
            case_event(b, acknowledged_at(b, sh(25, 9, 30))),
            case_event(never, reclassified(never, crisis.clone())),
            case_event(a, acknowledged_at(a, sh(25, 9, 40))),
            case_event(b, reclassified(b, complex.clone())),
            case_event(c, opened_at(c, "delivery", sh(25, 9, 10))),
            case_event(b, reclassified(b, crisis.clone())),
        ]
    };
    let ids = || [(); 3].map(|_| uuid::Uuid::now_v7().to_string());
    let (in_a_run, one_by_one) = (ids(), ids());
    h.apply_run(story(&in_a_run, &uuid::Uuid::now_v7().to_string()))
        .await;
    for event in story(&one_by_one, &uuid::Uuid::now_v7().to_string()) {
        let payload = event.payload.clone().unwrap();
        h.apply(&event.aggregate_id, payload).await;
    }
    let summary = |clocks: Vec<pb::Clock>| -> Vec<String> {
        clocks
            .into_iter()
            .map(|c| {
                format!(
                    "{:?} #{} state {} {} v{} due {:?} target {:?} business {} on time {}",
                    ClockKind::try_from(c.kind).unwrap(),
                    c.cycle,
                    c.state,
                    c.policy_id,
                    c.policy_version,
                    c.due_at.map(|t| t.seconds),
                    c.target.map(|t| t.seconds),
                    c.business_time,
                    c.met_on_time,
                )
            })
            .collect()
    };
    let facts = |case_id: &str| {
        let pool = h.pool.clone();
        let case_id = uuid::Uuid::parse_str(case_id).unwrap();
        async move {
            let row: (i16, i16, i16, String) = sqlx::query_as(
                "SELECT severity, priority, complexity, category FROM sla.cases WHERE case_id = $1",
            )
            .bind(case_id)
            .fetch_one(&pool)
            .await
            .unwrap();
            row
        }
    };
    for (run, single) in in_a_run.iter().zip(&one_by_one) {
        let (in_run, alone) = (
            summary(h.clocks(run).await),
            summary(h.clocks(single).await),
        );
        assert!(!in_run.is_empty());
        assert_eq!(in_run, alone);
        assert_eq!(facts(run).await, facts(single).await);
    }
    // What the story means, so that both paths cannot agree on something wrong.
    let [a, b, c] = &in_a_run;
    let first_a = h.clock(a, ClockKind::FirstResponse).await;
    assert_eq!(first_a.policy_id, "general-complex");
    assert_eq!(first_a.state, pb::ClockState::Met as i32);
    assert_eq!(
        h.clock(b, ClockKind::FirstResponse).await.policy_id,
        "chatty",
        "met before the reclassifications: keeps its policy"
    );
    assert_eq!(h.clock(b, ClockKind::Resolution).await.policy_id, "crisis");
    let (severity, _, complexity, _) = facts(b).await;
    assert_eq!(
        (severity, complexity),
        (Severity::Crisis as i16, Complexity::Complex as i16),
        "the second change keeps the first"
    );
    assert_eq!(h.clock(c, ClockKind::Resolution).await.policy_id, "chatty");
    assert_eq!(h.count("SELECT count(*) FROM sla.cases").await, 6);
}

#[tokio::test]
async fn a_reclassified_clock_says_when_it_started_counting_in_its_new_measure() {
    let h = Harness::start().await;
    // Received on Saturday: business time starts counting on Monday 09:00.
    let case = h.open_case(sh(23, 10, 0), "product_quality").await;
    let started = |clock: pb::Clock| at(&clock.started_at);
    assert_eq!(
        started(h.clock(&case, ClockKind::Resolution).await),
        sh(25, 9, 0)
    );
    // A crisis counts calendar time from receipt.
    h.reclassify(&case, to_severity(Severity::Crisis, "on the news"))
        .await;
    let crisis = h.clock(&case, ClockKind::Resolution).await;
    assert!(!crisis.business_time);
    assert_eq!(started(crisis), sh(23, 10, 0));
    // Back to business time, back to Monday 09:00.
    h.reclassify(&case, to_severity(Severity::General, "calmer"))
        .await;
    let explained = h.explain(&case, ClockKind::Resolution).await;
    assert_eq!(started(explained.clock.clone().unwrap()), sh(25, 9, 0));
    assert_noted(&explained, "outside working time");
}
