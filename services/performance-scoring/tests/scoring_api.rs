//! performance-scoring over real gRPC against a real Postgres. Its three upstream streams are
//! real kit event logs (outbox + `EventStream/Subscribe`) carrying events written here with
//! hand-picked times, so every figure can be checked by hand; the end-to-end tests in
//! `tests/scoring_*.rs` feed it from the real services instead.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use complaints_kit::Role;
use complaints_kit::auth::BearerToken;
use complaints_kit::events::{EventLog, OUTBOX_MIGRATIONS};
use complaints_kit::server::ServiceContext;
use complaints_kit::testing::{self, RunningService};
use complaints_kit::time::{to_pb_duration, to_timestamp};
use complaints_proto::common::v1::{CaseStatus, ClockKind, Severity};
use complaints_proto::events::v1::event::Payload;
use complaints_proto::events::v1::*;
use complaints_proto::scoring::v1 as pb;
use complaints_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use performance_scoring::domain::period::{Quarter, local_day};
use performance_scoring::evaluation::{self, Outcome};
use sqlx::PgPool;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Client = ScoringServiceClient<InterceptedService<Channel, BearerToken>>;

const WAIT: Duration = Duration::from_secs(30);

/// A producing service's event log served over gRPC.
struct Producer {
    log: EventLog,
    schema: &'static str,
    source: &'static str,
    url: String,
    running: RunningService,
}

async fn producer(db_url: &str, schema: &'static str, source: &'static str) -> Producer {
    let (listener, url) = testing::ephemeral_listener().await;
    let log = EventLog::new(schema, source);
    let served = log.clone();
    let common = testing::common_config(db_url);
    let running = RunningService::spawn(
        listener,
        url.clone(),
        move |listener, shutdown| async move {
            let context =
                ServiceContext::start(source, &common, schema, &OUTBOX_MIGRATIONS, shutdown)
                    .await?;
            let routes = tonic::service::Routes::new(served.service(&context));
            context
                .serve(listener, routes, &["complaints.events.v1.EventStream"])
                .await
        },
    );
    Producer {
        log,
        schema,
        source,
        url,
        running,
    }
}

struct Harness {
    pool: PgPool,
    cases: Producer,
    sla: Producer,
    survey: Producer,
    scoring: RunningService,
}

impl Harness {
    async fn start() -> Self {
        let db = testing::fresh_database().await;
        let pool = PgPool::connect(&db.url).await.expect("connect");
        let cases = producer(&db.url, "p_cases", "case-management").await;
        let sla = producer(&db.url, "p_sla", "sla-timer").await;
        let survey = producer(&db.url, "p_survey", "feedback-survey").await;
        // The outboxes exist before anything is appended.
        for p in [&cases, &sla, &survey] {
            complaints_kit::db::migrate(&pool, p.schema, &OUTBOX_MIGRATIONS)
                .await
                .expect("outbox");
        }
        let (listener, url) = testing::ephemeral_listener().await;
        let mut config = performance_scoring::Config::new(
            testing::common_config(&db.url),
            cases.url.clone(),
            sla.url.clone(),
            survey.url.clone(),
        );
        config.evaluation_poll = Duration::from_secs(3600);
        let scoring = RunningService::spawn(listener, url, move |listener, shutdown| {
            performance_scoring::run(config, listener, shutdown)
        });
        Self {
            pool,
            cases,
            sla,
            survey,
            scoring,
        }
    }

    fn client(&self, subject: &str, role: Role, department: Option<&str>) -> Client {
        ScoringServiceClient::with_interceptor(
            testing::channel(&self.scoring.url),
            BearerToken::new(&testing::token(subject, role, department)).expect("token"),
        )
    }

    fn quality(&self) -> Client {
        self.client("quality-lead", Role::Quality, None)
    }

    async fn append(&self, producer: &Producer, case_id: &str, payload: Payload) {
        let mut tx = self.pool.begin().await.expect("begin");
        producer
            .log
            .append(&mut tx, case_id, "", payload)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        producer.log.committed();
    }

    /// Waits until scoring applied every event of the three streams.
    async fn caught_up(&self) {
        for p in [&self.cases, &self.sla, &self.survey] {
            let last: Option<(i64, i64)> = sqlx::query_as(&format!(
                "SELECT txid, seq FROM {}.event_outbox ORDER BY txid DESC, seq DESC LIMIT 1",
                p.schema
            ))
            .fetch_optional(&self.pool)
            .await
            .expect("last event");
            let Some(last) = last else { continue };
            let pool = self.pool.clone();
            testing::eventually(&format!("scoring to apply {}", p.source), WAIT, || {
                let pool = pool.clone();
                async move {
                    let cursor: Option<(i64, i64)> = sqlx::query_as(
                        "SELECT txid, seq FROM scoring.event_cursors WHERE source = $1",
                    )
                    .bind(p.source)
                    .fetch_optional(&pool)
                    .await
                    .ok()?;
                    (cursor == Some(last)).then_some(())
                }
            })
            .await;
        }
    }

    async fn stop(self) {
        self.scoring.stop().await.expect("scoring stops");
        for p in [self.cases, self.sla, self.survey] {
            p.running.stop().await.expect("producer stops");
        }
    }
}

// --- Event builders ------------------------------------------------------------------------

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Shanghai
        .with_ymd_and_hms(y, m, d, h, 0, 0)
        .unwrap()
        .with_timezone(&Utc)
}

fn opened(
    case: &str,
    dept: &str,
    owner: &str,
    category: &str,
    severity: Severity,
    when: DateTime<Utc>,
) -> Payload {
    Payload::CaseOpened(CaseOpened {
        case_id: case.into(),
        department_id: dept.into(),
        owner_id: owner.into(),
        category: category.into(),
        severity: severity as i32,
        opened_at: Some(to_timestamp(when)),
        received_at: Some(to_timestamp(when)),
        ..Default::default()
    })
}

fn status(case: &str, to: CaseStatus) -> Payload {
    Payload::CaseStatusChanged(CaseStatusChanged {
        case_id: case.into(),
        to: to as i32,
        ..Default::default()
    })
}

fn met(case: &str, kind: ClockKind, on_time: bool, hours: i64) -> Payload {
    Payload::ClockMet(ClockMet {
        case_id: case.into(),
        kind: kind as i32,
        on_time,
        elapsed: Some(to_pb_duration(chrono::Duration::hours(hours))),
        ..Default::default()
    })
}

fn breached(case: &str, kind: ClockKind) -> Payload {
    Payload::ClockBreached(ClockBreached {
        case_id: case.into(),
        kind: kind as i32,
        ..Default::default()
    })
}

fn invited(case: &str) -> Payload {
    Payload::SurveyInvitationIssued(SurveyInvitationIssued {
        invitation_id: uuid::Uuid::new_v4().to_string(),
        case_id: case.into(),
    })
}

fn answered(case: &str, csat: u32, nps: u32) -> Payload {
    Payload::SurveyAnswered(SurveyAnswered {
        case_id: case.into(),
        csat: Some(csat),
        nps: Some(nps),
        solved: Some(csat >= 4),
        dissatisfied: csat <= 2,
        ..Default::default()
    })
}

fn escalated(case: &str) -> Payload {
    Payload::CaseEscalated(CaseEscalated {
        case_id: case.into(),
        escalation_id: uuid::Uuid::new_v4().to_string(),
        level: 1,
        ..Default::default()
    })
}

fn assigned(case: &str, from_dept: &str, dept: &str, owner: &str) -> Payload {
    Payload::CaseAssigned(CaseAssigned {
        case_id: case.into(),
        department_id: dept.into(),
        owner_id: owner.into(),
        previous_department_id: from_dept.into(),
        ..Default::default()
    })
}

fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Six cases of 10 August 2026 (Q3) whose figures are worked out by hand in the tests.
async fn hand_scenario(h: &Harness) {
    use CaseStatus::*;
    use ClockKind::*;
    let day = at(2026, 8, 10, 10);
    let (c1, c2, c3, c4, c5, c6) = (id(), id(), id(), id(), id(), id());
    // Case 1 (li): the survey stream arrives first; on time throughout, 2 h, CSAT 5, NPS 10.
    h.append(&h.survey, &c1, invited(&c1)).await;
    h.append(&h.survey, &c1, answered(&c1, 5, 10)).await;
    h.append(
        &h.cases,
        &c1,
        opened(
            &c1,
            "quality",
            "agent-li",
            "product_quality",
            Severity::General,
            day,
        ),
    )
    .await;
    h.append(&h.sla, &c1, met(&c1, FirstResponse, true, 0))
        .await;
    h.append(&h.sla, &c1, met(&c1, Resolution, true, 2)).await;
    h.append(&h.cases, &c1, status(&c1, Resolved)).await;
    // Case 2 (li): first response breached then met late; resolved in 10 h, unhappy answer,
    // reopened, resolved again in 3 h more.
    h.append(
        &h.cases,
        &c2,
        opened(
            &c2,
            "quality",
            "agent-li",
            "product_quality",
            Severity::General,
            day,
        ),
    )
    .await;
    h.append(&h.sla, &c2, breached(&c2, FirstResponse)).await;
    h.append(&h.sla, &c2, met(&c2, FirstResponse, false, 2))
        .await;
    h.append(&h.sla, &c2, met(&c2, Resolution, true, 10)).await;
    h.append(&h.cases, &c2, status(&c2, Resolved)).await;
    h.append(&h.survey, &c2, invited(&c2)).await;
    h.append(&h.survey, &c2, answered(&c2, 2, 3)).await;
    h.append(&h.cases, &c2, status(&c2, Reopened)).await;
    h.append(&h.sla, &c2, met(&c2, Resolution, true, 3)).await;
    h.append(&h.cases, &c2, status(&c2, Resolved)).await;
    // Case 3 (li): escalated twice, still open.
    h.append(
        &h.cases,
        &c3,
        opened(
            &c3,
            "quality",
            "agent-li",
            "product_quality",
            Severity::General,
            day,
        ),
    )
    .await;
    h.append(&h.sla, &c3, met(&c3, FirstResponse, true, 0))
        .await;
    h.append(&h.cases, &c3, escalated(&c3)).await;
    h.append(&h.cases, &c3, escalated(&c3)).await;
    // Case 4 (wu): transferred to logistics (agent-zhao), resolved in 1 h.
    h.append(
        &h.cases,
        &c4,
        opened(
            &c4,
            "quality",
            "agent-wu",
            "delivery",
            Severity::General,
            day,
        ),
    )
    .await;
    h.append(
        &h.cases,
        &c4,
        assigned(&c4, "quality", "logistics", "agent-zhao"),
    )
    .await;
    h.append(&h.sla, &c4, met(&c4, Resolution, true, 1)).await;
    h.append(&h.cases, &c4, status(&c4, Resolved)).await;
    // Case 5 (wu): spam, cancelled: counts nowhere.
    h.append(
        &h.cases,
        &c5,
        opened(&c5, "quality", "agent-wu", "other", Severity::General, day),
    )
    .await;
    h.append(&h.cases, &c5, status(&c5, Cancelled)).await;
    // Case 6 (li): billing, major; resolution breached, met late after 30 h; survey unanswered.
    h.append(
        &h.cases,
        &c6,
        opened(&c6, "quality", "agent-li", "billing", Severity::Major, day),
    )
    .await;
    h.append(&h.sla, &c6, breached(&c6, Resolution)).await;
    h.append(&h.sla, &c6, met(&c6, Resolution, false, 30)).await;
    h.append(&h.cases, &c6, status(&c6, Resolved)).await;
    h.append(&h.survey, &c6, invited(&c6)).await;
    h.caught_up().await;
}

fn q3_2026() -> Option<pb::Period> {
    Some(pb::Period {
        kind: pb::PeriodKind::Quarter as i32,
        date: "2026-08-10".into(),
        last_date: String::new(),
    })
}

async fn scorecard(
    client: &mut Client,
    kind: pb::SubjectKind,
    subject: &str,
    period: Option<pb::Period>,
    model_version: u32,
) -> pb::Scorecard {
    client
        .get_scorecard(pb::GetScorecardRequest {
            subject_kind: kind as i32,
            subject_id: subject.into(),
            period,
            model_version,
            ..Default::default()
        })
        .await
        .expect("scorecard")
        .into_inner()
        .scorecard
        .expect("scorecard")
}

fn value(r: &Option<pb::Ratio>) -> (u64, u64) {
    let r = r.as_ref().expect("ratio");
    (r.numerator, r.denominator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_indicator_of_an_agent_matches_the_hand_computed_figures() {
    let h = Harness::start().await;
    hand_scenario(&h).await;
    let mut q = h.quality();
    let card = scorecard(&mut q, pb::SubjectKind::Agent, "agent-li", q3_2026(), 0).await;
    let period = card.period.clone().expect("period");
    assert_eq!(
        (period.date.as_str(), period.last_date.as_str()),
        ("2026-07-01", "2026-09-30")
    );
    assert_eq!(card.cases_opened, 4);
    assert_eq!(card.cases_resolved, 3);
    assert_eq!(value(&card.resolution_rate), (3, 4));
    assert_eq!(value(&card.first_contact_resolution_rate), (2, 4));
    assert_eq!(value(&card.first_response_on_time_rate), (2, 3));
    assert_eq!(value(&card.resolution_on_time_rate), (2, 3));
    // (2 h + 13 h + 30 h) / 3 = 15 h; p90 is the 30 h case, in the bucket up to 32 h.
    assert_eq!(card.handling_time_average.expect("avg").seconds, 15 * 3600);
    assert_eq!(card.handling_time_p90.expect("p90").seconds, 32 * 3600);
    assert_eq!(card.handling_time_samples, 3);
    assert_eq!(value(&card.reopen_rate), (1, 3));
    assert_eq!(card.escalations, 2);
    assert_eq!(value(&card.escalation_rate), (1, 4));
    assert_eq!(value(&card.survey_response_rate), (2, 3));
    assert_eq!(card.csat_average, Some(3.5));
    assert_eq!(value(&card.satisfaction_rate), (1, 2));
    assert_eq!((card.nps, card.nps_responses), (Some(0.0), 2));
    let categories: Vec<(&str, u64)> = card
        .categories
        .iter()
        .map(|c| (c.category.as_str(), c.cases))
        .collect();
    assert_eq!(categories, vec![("billing", 1), ("product_quality", 3)]);
    let severities: Vec<(&str, u64)> = card
        .severities
        .iter()
        .map(|s| (s.severity.as_str(), s.cases))
        .collect();
    assert_eq!(
        severities,
        vec![("SEVERITY_GENERAL", 3), ("SEVERITY_MAJOR", 1)]
    );
    // Four cases are below the default model's minimum sample of ten: explained, not graded.
    let score = card.score.expect("score");
    assert_eq!(score.grade, pb::Grade::Unspecified as i32);
    assert!(
        score.not_graded_reason.contains("minimum sample of 10"),
        "{}",
        score.not_graded_reason
    );
    assert_eq!(score.indicators.len(), 8);

    // The transfer moved case 4 to logistics; the cancelled case counts nowhere.
    let quality = scorecard(&mut q, pb::SubjectKind::Department, "quality", q3_2026(), 0).await;
    assert_eq!(quality.cases_opened, 4);
    let logistics = scorecard(
        &mut q,
        pb::SubjectKind::Department,
        "logistics",
        q3_2026(),
        0,
    )
    .await;
    assert_eq!(logistics.cases_opened, 1);
    assert_eq!(value(&logistics.first_contact_resolution_rate), (0, 1));
    let wu = scorecard(&mut q, pb::SubjectKind::Agent, "agent-wu", q3_2026(), 0).await;
    assert_eq!(wu.cases_opened, 0);
    assert_eq!(wu.resolution_rate.expect("rate").value, None);
    let org = scorecard(&mut q, pb::SubjectKind::Organisation, "", q3_2026(), 0).await;
    assert_eq!((org.cases_opened, org.cases_resolved), (5, 4));
    // Weeks and months roll up from the same days; another month is empty.
    let month = pb::Period {
        kind: pb::PeriodKind::Month as i32,
        date: "2026-08-31".into(),
        last_date: String::new(),
    };
    assert_eq!(
        scorecard(&mut q, pb::SubjectKind::Agent, "agent-li", Some(month), 0)
            .await
            .cases_opened,
        4
    );
    let week = pb::Period {
        kind: pb::PeriodKind::Week as i32,
        date: "2026-08-16".into(),
        last_date: String::new(),
    };
    assert_eq!(
        scorecard(&mut q, pb::SubjectKind::Agent, "agent-li", Some(week), 0)
            .await
            .cases_opened,
        4
    );
    let july = pb::Period {
        kind: pb::PeriodKind::Month as i32,
        date: "2026-07-01".into(),
        last_date: String::new(),
    };
    assert_eq!(
        scorecard(&mut q, pb::SubjectKind::Agent, "agent-li", Some(july), 0)
            .await
            .cases_opened,
        0
    );

    // A model with a minimum sample of one grades the same figures, explaining each part:
    // resolution 0.75 → 50 × 3/4 = 37.5; survey response 2/3 → 66.7 × 1/4 = 16.7; 54.2 → D.
    let model = q
        .create_scoring_model(pb::CreateScoringModelRequest {
            request_id: "model-small".into(),
            name: "small teams".into(),
            indicators: vec![
                pb::ModelIndicator {
                    indicator: pb::Indicator::ResolutionRate as i32,
                    target: 1.0,
                    floor: 0.5,
                    weight: 3.0,
                },
                pb::ModelIndicator {
                    indicator: pb::Indicator::SurveyResponseRate as i32,
                    target: 1.0,
                    floor: 0.0,
                    weight: 1.0,
                },
            ],
            thresholds: Some(pb::GradeThresholds {
                a: 90.0,
                b: 80.0,
                c: 60.0,
                d: 50.0,
            }),
            minimum_sample: 1,
        })
        .await
        .expect("model")
        .into_inner()
        .model
        .expect("model");
    assert_eq!(model.version, 2);
    let card = scorecard(&mut q, pb::SubjectKind::Agent, "agent-li", q3_2026(), 0).await;
    let score = card.score.expect("score");
    assert_eq!(score.model_version, 2, "the newest model is the active one");
    assert!((score.total.unwrap() - (37.5 + 200.0 / 3.0 / 4.0)).abs() < 1e-9);
    assert_eq!(
        (score.grade, score.grade_label.as_str()),
        (pb::Grade::D as i32, "待改进")
    );
    assert!((score.indicators[0].contribution.unwrap() - 37.5).abs() < 1e-9);
    assert_eq!(score.indicators[0].normalised, Some(50.0));
    assert_eq!(score.indicators[0].value, Some(0.75));
    // Leaderboard of the quality department under model 2: li is its only agent.
    let board = q
        .get_leaderboard(pb::GetLeaderboardRequest {
            department_id: "quality".into(),
            subject_kind: pb::SubjectKind::Agent as i32,
            period: q3_2026(),
            ..Default::default()
        })
        .await
        .expect("leaderboard")
        .into_inner();
    let entries: Vec<(u32, &str, u64)> = board
        .entries
        .iter()
        .map(|e| (e.rank, e.subject_id.as_str(), e.cases_opened))
        .collect();
    assert_eq!(entries, vec![(1, "agent-li", 4)]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_from_zero_gives_exactly_the_same_figures() {
    let h = Harness::start().await;
    hand_scenario(&h).await;
    // Plus a few hundred pseudo-random cases across departments, agents and quarters.
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let departments = ["quality", "logistics", "billing"];
    for _ in 0..150 {
        let case = id();
        let dept = departments[next(3) as usize];
        let agent = format!("agent-{}", next(6));
        let when = at(
            2026,
            7 + next(3) as u32,
            1 + next(28) as u32,
            9 + next(8) as u32,
        );
        let category = ["product_quality", "delivery", "billing"][next(3) as usize];
        h.append(
            &h.cases,
            &case,
            opened(&case, dept, &agent, category, Severity::General, when),
        )
        .await;
        h.append(
            &h.sla,
            &case,
            met(&case, ClockKind::FirstResponse, next(10) < 8, 0),
        )
        .await;
        if next(5) == 0 {
            h.append(&h.cases, &case, escalated(&case)).await;
        }
        if next(6) == 0 {
            let to = departments[next(3) as usize];
            h.append(
                &h.cases,
                &case,
                assigned(&case, dept, to, &format!("agent-{}", next(6))),
            )
            .await;
        }
        if next(4) != 0 {
            h.append(
                &h.sla,
                &case,
                met(
                    &case,
                    ClockKind::Resolution,
                    next(10) < 8,
                    1 + next(60) as i64,
                ),
            )
            .await;
            h.append(&h.cases, &case, status(&case, CaseStatus::Resolved))
                .await;
            h.append(&h.survey, &case, invited(&case)).await;
            if next(3) != 0 {
                let csat = 1 + next(5) as u32;
                h.append(&h.survey, &case, answered(&case, csat, next(11) as u32))
                    .await;
                if csat <= 2 {
                    h.append(&h.cases, &case, status(&case, CaseStatus::Reopened))
                        .await;
                }
            }
        }
    }
    h.caught_up().await;

    let mut q = h.quality();
    let mut subjects = vec![(pb::SubjectKind::Organisation, String::new())];
    for d in departments {
        subjects.push((pb::SubjectKind::Department, d.to_owned()));
    }
    for a in 0..6 {
        subjects.push((pb::SubjectKind::Agent, format!("agent-{a}")));
    }
    let periods = [
        ("2026-08-10", pb::PeriodKind::Quarter),
        ("2026-07-15", pb::PeriodKind::Month),
        ("2026-09-09", pb::PeriodKind::Week),
    ];
    let snapshot = |mut q: Client, subjects: Vec<(pb::SubjectKind, String)>| async move {
        let mut cards = Vec::new();
        for (kind, subject) in &subjects {
            for (date, kind_of_period) in periods {
                let period = pb::Period {
                    kind: kind_of_period as i32,
                    date: date.into(),
                    last_date: String::new(),
                };
                cards.push(scorecard(&mut q, *kind, subject, Some(period), 0).await);
            }
        }
        for d in departments {
            let board = q
                .get_leaderboard(pb::GetLeaderboardRequest {
                    department_id: d.into(),
                    subject_kind: pb::SubjectKind::Agent as i32,
                    period: q3_2026(),
                    ..Default::default()
                })
                .await
                .expect("leaderboard")
                .into_inner();
            cards.push(pb::Scorecard {
                subject_id: format!("{:?}", board.entries),
                ..Default::default()
            });
        }
        cards
    };
    let before = snapshot(q.clone(), subjects.clone()).await;
    assert!(
        before[0].cases_opened > 150,
        "the organisation saw every case"
    );

    let denied = h
        .client("sup", Role::Supervisor, Some("quality"))
        .rebuild_read_model(pb::RebuildReadModelRequest {})
        .await
        .expect_err("only admins rebuild");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let rebuilt = h
        .client("ops", Role::Admin, None)
        .rebuild_read_model(pb::RebuildReadModelRequest {})
        .await
        .expect("rebuild")
        .into_inner();
    assert!(rebuilt.cases_cleared >= 156);
    assert_eq!(rebuilt.cursors_rewound, 3);
    h.caught_up().await;
    let after = snapshot(q.clone(), subjects).await;
    assert_eq!(before, after);
    // The aggregates equal a recomputation from the facts (nothing counted twice on replay).
    let (facts,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM scoring.case_facts WHERE NOT cancelled AND opened_at IS NOT NULL",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    let (aggregated,): (i64,) = sqlx::query_as(
        "SELECT sum(cases_opened)::bigint FROM scoring.daily_aggregates WHERE subject_kind = 4",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(facts, aggregated);
    let _ = q
        .get_scoring_model(pb::GetScoringModelRequest { version: 0 })
        .await
        .expect("model");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quarterly_evaluation_runs_once_at_quarter_end_and_corrections_are_new_revisions() {
    let h = Harness::start().await;
    hand_scenario(&h).await;
    let pool = h.pool.clone();
    let now = Utc::now();
    let quarter = Quarter::containing(local_day(now, Shanghai)).previous();
    assert_eq!(
        (quarter.year, quarter.quarter),
        (2026, 3),
        "the scenario lies in the last quarter"
    );

    // The scheduler's step, an hour's grace after the quarter ended: publishes once.
    let grace = chrono::Duration::hours(1);
    let first = evaluation::run_due_evaluation(&pool, Shanghai, now, grace)
        .await
        .expect("runs");
    let Outcome::Published(first) = first else {
        panic!("published the first time")
    };
    assert_eq!(
        (first.revision, first.trigger, first.quarter_complete),
        (1, evaluation::TRIGGER_SCHEDULED, true)
    );
    assert_eq!(first.model_version, 1);
    let again = evaluation::run_due_evaluation(&pool, Shanghai, now, grace)
        .await
        .expect("runs");
    assert_eq!(again, Outcome::AlreadyPublished(first.clone()));

    // Results are published and explained; the default model's minimum sample leaves li's
    // four cases ungraded.
    let mut q = h.quality();
    let results = q
        .list_evaluation_results(pb::ListEvaluationResultsRequest {
            evaluation_id: first.id.to_string(),
            subject_kind: pb::SubjectKind::Agent as i32,
            ..Default::default()
        })
        .await
        .expect("results")
        .into_inner()
        .results;
    let li = results
        .iter()
        .find(|r| r.subject_id == "agent-li")
        .expect("li");
    assert_eq!((li.cases_opened, li.department_id.as_str()), (4, "quality"));
    let score = li.score.as_ref().expect("score");
    assert_eq!(score.grade, pb::Grade::Unspecified as i32);
    assert_eq!(score.indicators.len(), 8);

    // Published results never change.
    let edit = sqlx::query("UPDATE scoring.evaluation_results SET total = 100")
        .execute(&pool)
        .await;
    assert!(edit.is_err(), "results are immutable");
    assert!(
        sqlx::query("DELETE FROM scoring.evaluations")
            .execute(&pool)
            .await
            .is_err()
    );

    // A correction on demand is the next revision and points at the one it supersedes;
    // retrying the same request returns the same evaluation.
    let run = |request_id: &'static str| {
        let mut q = q.clone();
        async move {
            q.run_evaluation(pb::RunEvaluationRequest {
                request_id: request_id.into(),
                year: 2026,
                quarter: 3,
                model_version: 0,
                reason: "late survey answers".into(),
            })
            .await
            .expect("evaluation")
            .into_inner()
            .evaluation
            .expect("evaluation")
        }
    };
    let second = run("correction-1").await;
    assert_eq!(second.revision, 2);
    assert_eq!(second.supersedes_id, first.id.to_string());
    assert_eq!(second.trigger, pb::EvaluationTrigger::OnDemand as i32);
    assert_eq!(run("correction-1").await, second);
    let listed = q
        .list_evaluations(pb::ListEvaluationsRequest {
            year: 2026,
            quarter: 3,
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.evaluations[0].id, second.id, "newest first");
    assert!(!listed.next_page_token.is_empty());

    // An agent reads only their own result; a quarter that has not started cannot run.
    let mine = h
        .client("agent-li", Role::Agent, Some("quality"))
        .list_evaluation_results(pb::ListEvaluationResultsRequest {
            evaluation_id: second.id.clone(),
            ..Default::default()
        })
        .await
        .expect("own results")
        .into_inner()
        .results;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].subject_id, "agent-li");
    let future = q
        .run_evaluation(pb::RunEvaluationRequest {
            request_id: "future".into(),
            year: 2099,
            quarter: 1,
            ..Default::default()
        })
        .await
        .expect_err("future quarter");
    assert_eq!(future.code(), tonic::Code::FailedPrecondition);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_order_volumes_and_the_trend_against_the_seed_targets() {
    let h = Harness::start().await;
    let mut sup = h.client("sup-quality", Role::Supervisor, Some("quality"));
    let membership = sup
        .assign_agent_to_team(pb::AssignAgentToTeamRequest {
            request_id: "team-1".into(),
            agent_id: "agent-li".into(),
            department_id: "quality".into(),
            team_id: "quality-a".into(),
        })
        .await
        .expect("assigned")
        .into_inner()
        .membership
        .expect("membership");
    let members = sup
        .list_team_members(pb::ListTeamMembersRequest {
            department_id: "quality".into(),
            ..Default::default()
        })
        .await
        .expect("members")
        .into_inner()
        .members;
    assert_eq!(members, vec![membership.clone()]);
    let other = sup
        .assign_agent_to_team(pb::AssignAgentToTeamRequest {
            request_id: "team-2".into(),
            agent_id: "agent-x".into(),
            department_id: "billing".into(),
            team_id: "billing-a".into(),
        })
        .await
        .expect_err("another department's teams");
    assert_eq!(other.code(), tonic::Code::PermissionDenied);

    // Two cases opened today after li joined the team, one yesterday... in a baseline month.
    let now = Utc::now() + chrono::Duration::seconds(1);
    let today = local_day(now, Shanghai);
    for _ in 0..2 {
        let case = id();
        h.append(
            &h.cases,
            &case,
            opened(
                &case,
                "quality",
                "agent-li",
                "billing",
                Severity::General,
                now,
            ),
        )
        .await;
        h.append(&h.survey, &case, answered(&case, 5, 10)).await;
    }
    let baseline_day = at(2026, 1, 15, 10);
    for csat_nps in [(2, 0), (5, 9), (4, 8)] {
        let case = id();
        h.append(
            &h.cases,
            &case,
            opened(
                &case,
                "quality",
                "agent-li",
                "billing",
                Severity::General,
                baseline_day,
            ),
        )
        .await;
        h.append(&h.survey, &case, answered(&case, csat_nps.0, csat_nps.1))
            .await;
    }
    h.caught_up().await;
    let mut q = h.quality();
    let today_period = pb::Period {
        kind: pb::PeriodKind::Day as i32,
        date: today.to_string(),
        last_date: String::new(),
    };
    let team = scorecard(
        &mut q,
        pb::SubjectKind::Team,
        "quality-a",
        Some(today_period.clone()),
        0,
    )
    .await;
    assert_eq!(
        team.cases_opened, 2,
        "cases opened after joining count for the team"
    );
    let jan = pb::Period {
        kind: pb::PeriodKind::Month as i32,
        date: "2026-01-01".into(),
        last_date: String::new(),
    };
    let team_jan = scorecard(
        &mut q,
        pb::SubjectKind::Team,
        "quality-a",
        Some(jan.clone()),
        0,
    )
    .await;
    assert_eq!(
        team_jan.cases_opened, 0,
        "earlier cases keep the team li had then (none)"
    );

    // Orders: January 2026 had 3 complaints on 6,000 orders (5 per 10,000); today 2 on
    // 10,000 (2 per 10,000): down 60 %, meeting the −40 % target.
    let mut service = h.client("orders-feed", Role::Service, None);
    let mut days: Vec<pb::DailyOrders> = (1..=31)
        .map(|d| pb::DailyOrders {
            date: format!("2026-01-{d:02}"),
            orders: if d == 15 { 6_000 } else { 0 },
        })
        .collect();
    days.push(pb::DailyOrders {
        date: today.to_string(),
        orders: 10_000,
    });
    let recorded = service
        .record_order_volumes(pb::RecordOrderVolumesRequest {
            request_id: "orders-1".into(),
            days: days.clone(),
        })
        .await
        .expect("orders")
        .into_inner();
    assert_eq!(recorded.days_recorded, 32);
    let org_today = scorecard(
        &mut q,
        pb::SubjectKind::Organisation,
        "",
        Some(today_period),
        0,
    )
    .await;
    let rate = org_today.complaint_rate.expect("complaint rate");
    assert_eq!(
        (rate.complaints, rate.orders, rate.per_10k_orders),
        (2, 10_000, Some(2.0))
    );

    let trend = q
        .get_trend(pb::GetTrendRequest {
            subject_kind: pb::SubjectKind::Organisation as i32,
            subject_id: String::new(),
            period_kind: pb::PeriodKind::Day as i32,
            from_date: today.to_string(),
            to_date: today.to_string(),
            baseline: Some(jan),
        })
        .await
        .expect("trend")
        .into_inner();
    let targets = trend.targets.expect("targets");
    assert_eq!(
        (
            targets.satisfaction_rate,
            targets.complaint_rate_change,
            targets.nps_change
        ),
        (0.92, -0.4, 35.0)
    );
    let base = trend.baseline.expect("baseline");
    // Baseline: CSAT 2, 5, 4 → 2 of 3 satisfied; NPS: one promoter, one detractor → 0.
    assert_eq!(value(&base.satisfaction_rate), (2, 3));
    assert_eq!(base.nps, Some(0.0));
    assert_eq!(base.complaint_rate.expect("rate").per_10k_orders, Some(5.0));
    let point = &trend.points[0];
    assert!((point.complaint_rate_change.unwrap() + 0.6).abs() < 1e-9);
    assert_eq!(point.complaint_rate_target_met, Some(true));
    assert_eq!(point.nps_change, Some(100.0));
    assert_eq!(point.nps_target_met, Some(true));
    assert_eq!(point.satisfaction_target_met, Some(true));
    h.stop().await;
}

fn violations(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_their_fields_and_access_follows_roles() {
    let h = Harness::start().await;
    let mut q = h.quality();
    let bad = q
        .get_scorecard(pb::GetScorecardRequest {
            subject_kind: 0,
            subject_id: "x".into(),
            period: Some(pb::Period {
                kind: 0,
                date: "2026-13-01".into(),
                last_date: String::new(),
            }),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        violations(&bad),
        vec!["subject_kind", "period.kind", "period.date"]
    );
    let bad = q
        .get_scorecard(pb::GetScorecardRequest {
            subject_kind: pb::SubjectKind::Agent as i32,
            subject_id: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(
        violations(&bad),
        vec!["subject_id", "period_start", "period_end"]
    );
    let bad = q
        .create_scoring_model(pb::CreateScoringModelRequest {
            request_id: "m".into(),
            name: "broken".into(),
            indicators: vec![pb::ModelIndicator {
                indicator: pb::Indicator::Nps as i32,
                target: 35.0,
                floor: 35.0,
                weight: -1.0,
            }],
            thresholds: Some(pb::GradeThresholds {
                a: 50.0,
                b: 60.0,
                c: 40.0,
                d: 30.0,
            }),
            minimum_sample: 0,
        })
        .await
        .expect_err("invalid model");
    assert_eq!(
        violations(&bad),
        vec![
            "indicators[0].weight",
            "indicators[0].floor",
            "thresholds",
            "minimum_sample"
        ]
    );
    let bad = h
        .client("feed", Role::Service, None)
        .record_order_volumes(pb::RecordOrderVolumesRequest {
            request_id: String::new(),
            days: vec![pb::DailyOrders {
                date: "yesterday".into(),
                orders: 1,
            }],
        })
        .await
        .expect_err("invalid orders");
    assert_eq!(violations(&bad), vec!["request_id", "days[0].date"]);
    let bad = q
        .run_evaluation(pb::RunEvaluationRequest {
            request_id: "e".into(),
            year: 2026,
            quarter: 5,
            ..Default::default()
        })
        .await
        .expect_err("invalid quarter");
    assert_eq!(violations(&bad), vec!["quarter"]);
    let bad = q
        .get_leaderboard(pb::GetLeaderboardRequest {
            department_id: "quality".into(),
            subject_kind: pb::SubjectKind::Department as i32,
            period: q3_2026(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect_err("invalid leaderboard");
    assert_eq!(violations(&bad), vec!["subject_kind", "page_size"]);

    // Access: an agent reads only their own card; a supervisor only their department's.
    let mut agent = h.client("agent-li", Role::Agent, Some("quality"));
    let own = agent
        .get_scorecard(pb::GetScorecardRequest {
            subject_kind: pb::SubjectKind::Agent as i32,
            subject_id: "agent-li".into(),
            period: q3_2026(),
            ..Default::default()
        })
        .await;
    assert!(own.is_ok());
    let other = agent
        .get_scorecard(pb::GetScorecardRequest {
            subject_kind: pb::SubjectKind::Agent as i32,
            subject_id: "agent-wu".into(),
            period: q3_2026(),
            ..Default::default()
        })
        .await
        .expect_err("not theirs");
    assert_eq!(other.code(), tonic::Code::PermissionDenied);
    let mut sup = h.client("sup", Role::Supervisor, Some("quality"));
    let foreign = sup
        .get_leaderboard(pb::GetLeaderboardRequest {
            department_id: "billing".into(),
            subject_kind: pb::SubjectKind::Agent as i32,
            period: q3_2026(),
            ..Default::default()
        })
        .await
        .expect_err("other department");
    assert_eq!(foreign.code(), tonic::Code::PermissionDenied);
    let model = agent
        .create_scoring_model(pb::CreateScoringModelRequest::default())
        .await
        .expect_err("agents do not define models");
    assert_eq!(model.code(), tonic::Code::PermissionDenied);
    let anonymous = ScoringServiceClient::new(testing::channel(&h.scoring.url))
        .get_scoring_model(pb::GetScoringModelRequest { version: 0 })
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let missing = q
        .get_scoring_model(pb::GetScoringModelRequest { version: 99 })
        .await
        .expect_err("no such model");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    h.stop().await;
}
