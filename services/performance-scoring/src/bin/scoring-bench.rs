//! Benchmark of the pre-aggregated reads: fills a fresh database with a year of daily
//! aggregates for millions of cases, starts performance-scoring on it and times scorecards,
//! leaderboards, a trend and a quarterly evaluation over real gRPC.
//!
//! `DATABASE_URL=postgres://… cargo run --release -p performance-scoring --bin scoring-bench`
//! Options (environment): BENCH_DEPARTMENTS (20), BENCH_AGENTS (100 per department),
//! BENCH_BIG_CASES_PER_DAY (25000 for the largest department), BENCH_ITERATIONS (50),
//! BENCH_KEEP=1 keeps the database.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use complaints_kit::Role;
use complaints_kit::auth::{AuthConfig, BearerToken};
use complaints_kit::config::{self, CommonConfig, MetricsEndpoint};
use complaints_kit::shutdown::Shutdown;
use complaints_proto::scoring::v1 as pb;
use complaints_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use sqlx::{Connection, PgPool};

const SECRET: &str = "scoring-bench-secret-scoring-bench-secret";

fn env_u64(name: &str, default: u64) -> anyhow::Result<u64> {
    Ok(config::parse_or(name, default)?)
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{label:<58} p50 {:>7.2} ms  p95 {:>7.2} ms  max {:>7.2} ms  (n={})",
        ms(pick(0.5)),
        ms(pick(0.95)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
        samples.len()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = config::required(
        "DATABASE_URL",
        "a postgres:// URL of a server to create the bench database on",
    )?;
    let departments = env_u64("BENCH_DEPARTMENTS", 20)?;
    let agents = env_u64("BENCH_AGENTS", 100)?;
    let big = env_u64("BENCH_BIG_CASES_PER_DAY", 25_000)?;
    let iterations = env_u64("BENCH_ITERATIONS", 50)? as usize;

    let name = format!("scoring_bench_{}", chrono::Utc::now().timestamp());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .context("connect")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let url = complaints_kit::db::database_url(&server, &name);
    let result = run(&url, departments, agents, big, iterations).await;
    if std::env::var("BENCH_KEEP").is_err() {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    } else {
        println!("kept database {name}");
    }
    result
}

async fn run(
    url: &str,
    departments: u64,
    agents: u64,
    big: u64,
    iterations: usize,
) -> anyhow::Result<()> {
    let pool = PgPool::connect(url).await?;
    complaints_kit::db::migrate(
        &pool,
        performance_scoring::SCHEMA,
        performance_scoring::MIGRATIONS,
    )
    .await?;

    // One year of days; agent rows first (department d's cases spread over its agents; the
    // first department is the big one), then teams (10 per department), departments and the
    // organisation as sums of them, so every level is consistent.
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO scoring.daily_aggregates (subject_kind, subject_id, department_id, day,
             cases_opened, cases_resolved, cases_ever_resolved, cases_reopened, first_contact_resolved,
             first_response_measured, first_response_on_time, resolution_measured, resolution_on_time,
             handling_samples, handling_seconds, escalations, cases_escalated, surveys_invited,
             surveys_answered, csat_responses, csat_sum, csat_satisfied, nps_responses,
             nps_promoters, nps_detractors, handling_histogram)
         SELECT 1, 'agent-' || d || '-' || a, 'dept-' || d, day,
                c, r, r + ro, ro, (r * 0.7)::bigint, c, (c * 0.95)::bigint, r, (r * 0.9)::bigint,
                r, r * (20000 + (random() * 20000)::bigint), (c * 0.05)::bigint, (c * 0.04)::bigint,
                r, (r * 0.4)::bigint, (r * 0.4)::bigint, (r * 0.4 * 4.3)::bigint, (r * 0.37)::bigint,
                (r * 0.4)::bigint, (r * 0.2)::bigint, (r * 0.08)::bigint,
                ARRAY[0, 0, (r*0.05)::bigint, (r*0.1)::bigint, (r*0.1)::bigint, (r*0.1)::bigint,
                      (r*0.15)::bigint, (r*0.15)::bigint, (r*0.1)::bigint, (r*0.1)::bigint,
                      (r*0.05)::bigint, 0, 0, 0, 0, 0, 0]
         FROM generate_series(1, $1::int) d, generate_series(1, $2::int) a,
              generate_series('2026-01-01'::date, '2026-12-31'::date, '1 day') day,
              LATERAL (SELECT (CASE WHEN d = 1 THEN $3::bigint ELSE $3::bigint / 50 END)
                              / $2::int * (80 + (random() * 40)::int) / 100 AS c) cases,
              LATERAL (SELECT (c * 0.88)::bigint AS r, (c * 0.03)::bigint AS ro) resolved",
    )
    .bind(departments as i32)
    .bind(agents as i32)
    .bind(big as i64)
    .execute(&pool)
    .await?;
    let sums = performance_scoring::domain::kpi::Counters::COLUMNS
        .iter()
        .map(|c| format!("sum({c})::bigint"))
        .collect::<Vec<_>>()
        .join(", ");
    let columns = performance_scoring::domain::kpi::Counters::COLUMNS.join(", ");
    for (kind, subject, department, filter) in [
        (
            "3",
            "'team-' || split_part(subject_id, '-', 2) || '-' || (split_part(subject_id, '-', 3)::int % 10)",
            "department_id",
            "subject_kind = 1",
        ),
        ("2", "department_id", "department_id", "subject_kind = 1"),
        ("4", "''", "''", "subject_kind = 2"),
    ] {
        sqlx::query(&format!(
            "INSERT INTO scoring.daily_aggregates (subject_kind, subject_id, department_id, day, {columns}, handling_histogram)
             SELECT {kind}, {subject}, {department}, day, {sums}, scoring.sum_arrays(handling_histogram)
             FROM scoring.daily_aggregates WHERE {filter}
             GROUP BY 2, 3, day"
        ))
        .execute(&pool)
        .await?;
    }
    sqlx::query(
        "INSERT INTO scoring.daily_categories (subject_kind, subject_id, department_id, day, category, severity, cases)
         SELECT a.subject_kind, a.subject_id, a.department_id, a.day, cat, sev,
                a.cases_opened / 15
         FROM scoring.daily_aggregates a,
              unnest(ARRAY['product_quality','service_attitude','after_sales','delivery','billing']) cat,
              generate_series(1, 3) sev
         WHERE a.subject_kind IN (2, 4)",
    )
    .execute(&pool)
    .await?;
    for table in ["scoring.daily_aggregates", "scoring.daily_categories"] {
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(&pool)
            .await?;
    }
    let (rows, total, big_quarter): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM scoring.daily_aggregates),
                (SELECT sum(cases_opened)::bigint FROM scoring.daily_aggregates WHERE subject_kind = 4),
                (SELECT sum(cases_opened)::bigint FROM scoring.daily_aggregates
                 WHERE subject_kind = 2 AND subject_id = 'dept-1'
                   AND day >= '2026-10-01' AND day < '2027-01-01')",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "filled {rows} daily aggregate rows for {total} cases in {:.1} s; \
         dept-1 has {big_quarter} cases in 2026-Q4 ({departments} departments × {agents} agents)",
        started.elapsed().as_secs_f64()
    );

    // The service itself, over real gRPC. Its consumers have no upstream here; they retry quietly.
    let auth = AuthConfig::development(SECRET);
    let common = CommonConfig {
        database_url: url.to_owned(),
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics: MetricsEndpoint::Disabled,
        db_pool_max: 8,
        event_retention: Duration::from_secs(30 * 86_400),
        event_tuning: Default::default(),
        shutdown_grace: Duration::from_secs(5),
        auth: auth.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let nowhere = "http://127.0.0.1:9".to_owned();
    let config =
        performance_scoring::Config::new(common, nowhere.clone(), nowhere.clone(), nowhere);
    let (trigger, shutdown) = Shutdown::new();
    let service = tokio::spawn(performance_scoring::run(config, listener, shutdown));
    let token = auth.mint("bench", &[Role::Admin], None, Duration::from_secs(3600))?;
    let channel = tonic::transport::Endpoint::from_shared(address)?
        .tcp_nodelay(true)
        .connect_lazy();
    let mut client = ScoringServiceClient::with_interceptor(channel, BearerToken::new(&token)?);
    // Wait for the server.
    let mut ready = false;
    for _ in 0..100 {
        if client
            .get_scoring_model(pb::GetScoringModelRequest { version: 0 })
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(ready, "the service did not start");

    let quarter = || {
        Some(pb::Period {
            kind: pb::PeriodKind::Quarter as i32,
            date: "2026-11-01".into(),
            last_date: String::new(),
        })
    };
    let card = |kind: pb::SubjectKind, subject: &str| pb::GetScorecardRequest {
        subject_kind: kind as i32,
        subject_id: subject.into(),
        period: quarter(),
        ..Default::default()
    };
    // The floor of a unary call here: one tiny query behind the same gRPC server.
    let mut samples = Vec::new();
    for _ in 0..iterations {
        let t = Instant::now();
        client
            .get_scoring_model(pb::GetScoringModelRequest { version: 0 })
            .await?;
        samples.push(t.elapsed());
    }
    summary("GetScoringModel (gRPC round-trip floor)", samples);
    // The same read without gRPC: the SQL and the formulas alone.
    let scoring_model = performance_scoring::store::model(&pool, None)
        .await?
        .context("model")?;
    let period = performance_scoring::domain::period::Period::containing(
        performance_scoring::domain::period::PeriodKind::Quarter,
        chrono::NaiveDate::from_ymd_opt(2026, 11, 1).context("date")?,
    );
    let scope = performance_scoring::store::Scope {
        kind: performance_scoring::domain::facts::DEPARTMENT,
        subject_id: "dept-1",
        department_id: None,
        first: period.first,
        end_exclusive: period.end_exclusive(),
    };
    let mut samples = Vec::new();
    for _ in 0..iterations {
        let t = Instant::now();
        performance_scoring::reports::scorecard(&pool, &scope, &scoring_model).await?;
        samples.push(t.elapsed());
    }
    summary(
        "reports::scorecard dept-1, quarter (in process, no gRPC)",
        samples,
    );
    let mut cases_seen = 0;
    for (label, request) in [
        (
            "GetScorecard department dept-1, quarter",
            card(pb::SubjectKind::Department, "dept-1"),
        ),
        (
            "GetScorecard organisation, quarter",
            card(pb::SubjectKind::Organisation, ""),
        ),
        (
            "GetScorecard agent agent-1-1, quarter",
            card(pb::SubjectKind::Agent, "agent-1-1"),
        ),
        (
            "GetScorecard team team-1-3, quarter",
            card(pb::SubjectKind::Team, "team-1-3"),
        ),
    ] {
        let mut samples = Vec::new();
        for i in 0..iterations + 3 {
            let t = Instant::now();
            let reply = client.get_scorecard(request.clone()).await?.into_inner();
            if i >= 3 {
                samples.push(t.elapsed());
            }
            if label.contains("dept-1") {
                cases_seen = reply.scorecard.map(|c| c.cases_opened).unwrap_or(0);
            }
        }
        summary(label, samples);
    }
    println!("  (the dept-1 quarter scorecard covers {cases_seen} cases)");
    let mut samples = Vec::new();
    for i in 0..iterations + 3 {
        let t = Instant::now();
        let board = client
            .get_leaderboard(pb::GetLeaderboardRequest {
                department_id: "dept-1".into(),
                subject_kind: pb::SubjectKind::Agent as i32,
                period: quarter(),
                page_size: 20,
                ..Default::default()
            })
            .await?
            .into_inner();
        anyhow::ensure!(!board.entries.is_empty(), "leaderboard is empty");
        if i >= 3 {
            samples.push(t.elapsed());
        }
    }
    summary(
        &format!("GetLeaderboard dept-1, {agents} agents, quarter"),
        samples,
    );
    let mut samples = Vec::new();
    for _ in 0..iterations.min(20) {
        let t = Instant::now();
        client
            .get_trend(pb::GetTrendRequest {
                subject_kind: pb::SubjectKind::Organisation as i32,
                period_kind: pb::PeriodKind::Month as i32,
                from_date: "2026-01-01".into(),
                to_date: "2026-12-31".into(),
                baseline: Some(pb::Period {
                    kind: pb::PeriodKind::Quarter as i32,
                    date: "2026-01-01".into(),
                    last_date: String::new(),
                }),
                ..Default::default()
            })
            .await?;
        samples.push(t.elapsed());
    }
    summary("GetTrend organisation, 12 months + baseline", samples);
    let t = Instant::now();
    let evaluation = client
        .run_evaluation(pb::RunEvaluationRequest {
            request_id: "bench-q3".into(),
            year: 2026,
            quarter: 3,
            reason: "benchmark".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .evaluation
        .context("evaluation")?;
    println!(
        "{:<58} {:>7.0} ms  ({} subjects scored and published)",
        "RunEvaluation 2026-Q3, every subject",
        t.elapsed().as_secs_f64() * 1000.0,
        evaluation.subjects
    );
    trigger.trigger();
    service.await??;
    pool.close().await;
    Ok(())
}
