//! Benchmark of the SLA scheduler against a real Postgres: a fresh database on the server at
//! `DATABASE_URL` holding `--clocks` open clocks (default one million), of which `--due-rate`
//! per second fall due for `--seconds`, while `--arrivals` new cases per second open their
//! clocks and `--replicas` schedulers fire. Reports firing lag (commit time − due) p50/p99/max,
//! clocks fired per second, a catch-up run over a backlog, and memory. Drops its database.
//!
//! `cargo run --release -p sla-timer --bin sla-bench -- --clocks 1000000 --seconds 60`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration as StdDuration, Instant};

use anyhow::Context;
use chrono::{Duration, Utc};
use complaints_kit::events::EventLog;
use complaints_proto::common::v1::{ClockKind, Complexity, Severity};
use sla_timer::engine::Engine;
use sla_timer::scheduler::FIRE_BATCH;
use sla_timer::store::{self, CaseRow};
use sqlx::{Connection, PgConnection, PgPool};

struct Options {
    clocks: i64,
    seconds: i64,
    due_rate: i64,
    arrivals: i64,
    replicas: usize,
    backlog: i64,
    poll: StdDuration,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        clocks: 1_000_000,
        seconds: 60,
        due_rate: 500,
        arrivals: 50,
        replicas: 2,
        backlog: 50_000,
        poll: StdDuration::from_millis(200),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).context("every option takes a value")?;
        match pair[0].as_str() {
            "--clocks" => o.clocks = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--due-rate" => o.due_rate = value.parse()?,
            "--arrivals" => o.arrivals = value.parse()?,
            "--replicas" => o.replicas = value.parse()?,
            "--backlog" => o.backlog = value.parse()?,
            "--poll-ms" => o.poll = StdDuration::from_millis(value.parse()?),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn memory() -> String {
    match complaints_kit::process::Memory::own() {
        Some(m) => format!(
            "peak RSS {:.1} MiB, RSS {:.1} MiB",
            m.peak_resident_bytes as f64 / 1_048_576.0,
            m.resident_bytes as f64 / 1_048_576.0
        ),
        None => "unknown".into(),
    }
}

/// Inserts `count` open calendar-time clocks (one per case) whose next firing is `first_due`
/// plus `spacing_ms` × i; each fires once (the breach, with escalation level 1 at once).
async fn insert_clocks(
    pool: &PgPool,
    count: i64,
    first_due: chrono::DateTime<Utc>,
    spacing_ms: f64,
) -> anyhow::Result<()> {
    let chunk = 100_000;
    let mut done = 0;
    while done < count {
        let n = chunk.min(count - done);
        sqlx::query(
            "WITH c AS (
                 INSERT INTO sla.cases (case_id, department_id, owner_id, category, severity, priority,
                     complexity, customer_tier, channel, received_at)
                 SELECT gen_random_uuid(), 'dept-' || (i % 20), 'agent-' || (i % 500), 'product_quality',
                     (1 + i % 3)::smallint, 3, 1, 2, 1, now()
                 FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS i
                 RETURNING case_id, department_id, severity, received_at
             ), numbered AS (
                 SELECT c.*, row_number() OVER () - 1 + $1::bigint AS i FROM c
             )
             INSERT INTO sla.clocks (id, case_id, kind, cycle, state, policy_id, policy_reason, calendar_id,
                 business, target_ms, consumed_ms, running_since, started_at, due_at, next_fire_at,
                 department_id, severity, origin_at, policy_version, thresholds_ms, ladder_ms)
             SELECT gen_random_uuid(), case_id, 2, 1, 1, 'bench', 'benchmark clock', 'standard',
                 false, 3600000, 0,
                 $3::timestamptz + (i * $4::float8) * interval '1 millisecond' - interval '1 hour',
                 $3::timestamptz + (i * $4::float8) * interval '1 millisecond' - interval '1 hour',
                 $3::timestamptz + (i * $4::float8) * interval '1 millisecond',
                 $3::timestamptz + (i * $4::float8) * interval '1 millisecond',
                 department_id, severity, received_at, 1, '{}', '{0}'
             FROM numbered",
        )
        .bind(done)
        .bind(n)
        .bind(first_due)
        .bind(spacing_ms)
        .execute(pool)
        .await?;
        done += n;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Runs `replicas` scheduler loops (as the service runs them) until `stop`; returns the lags
/// in seconds and the number of clocks claimed.
async fn schedulers(
    engine: &Engine,
    pool: &PgPool,
    replicas: usize,
    poll: StdDuration,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(Vec<f64>, usize)>> {
    (0..replicas)
        .map(|_| {
            let (engine, pool, stop) = (engine.clone(), pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut lags = Vec::new();
                let mut claimed_total = 0;
                while !stop.load(Ordering::Relaxed) {
                    match engine.fire_due_report(&pool, Utc::now(), FIRE_BATCH).await {
                        Ok(report) => {
                            claimed_total += report.claimed;
                            lags.extend(
                                report
                                    .fired
                                    .iter()
                                    .map(|f| f.lag.num_microseconds().unwrap_or(0) as f64 / 1e6),
                            );
                            if report.claimed as i64 == FIRE_BATCH {
                                continue;
                            }
                        }
                        Err(e) => eprintln!("fire_due failed: {e:#}"),
                    }
                    tokio::time::sleep(poll).await;
                }
                (lags, claimed_total)
            })
        })
        .collect()
}

async fn remaining_due(pool: &PgPool, before: chrono::DateTime<Utc>) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM sla.clocks WHERE next_fire_at IS NOT NULL AND next_fire_at <= $1",
    )
    .bind(before)
    .fetch_one(pool)
    .await?;
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let server =
        std::env::var("DATABASE_URL").context("DATABASE_URL must name a Postgres server")?;
    let name = format!("sla_bench_{}", Utc::now().timestamp());
    let mut admin = PgConnection::connect(&server).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let url = complaints_kit::db::database_url(&server, &name);
    let result = run(&o, &url).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    result
}

async fn run(o: &Options, url: &str) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await?;
    complaints_kit::db::migrate(&pool, sla_timer::SCHEMA, sla_timer::MIGRATIONS).await?;
    let engine = Engine::new(EventLog::new(sla_timer::SCHEMA, sla_timer::SERVICE_NAME));
    engine
        .seed_defaults(&pool, chrono_tz::Asia::Shanghai)
        .await?;

    let due_now = o.due_rate * o.seconds;
    let idle = (o.clocks - due_now).max(0);
    println!(
        "database {url}\nloading {} open clocks ({idle} due in 30–60 days, {due_now} due over {} s at {}/s)...",
        o.clocks, o.seconds, o.due_rate
    );
    let load = Instant::now();
    // Idle clocks spread over the next month, so the due index is as large as in production.
    insert_clocks(
        &pool,
        idle,
        Utc::now() + Duration::days(30),
        30.0 * 86_400_000.0 / idle.max(1) as f64,
    )
    .await?;
    let first_due = Utc::now() + Duration::seconds(10);
    insert_clocks(&pool, due_now, first_due, 1000.0 / o.due_rate.max(1) as f64).await?;
    sqlx::query("ANALYZE sla.clocks").execute(&pool).await?;
    println!("loaded in {:.1} s", load.elapsed().as_secs_f64());

    // New cases arrive throughout, opening their first-response and resolution clocks.
    let stop = Arc::new(AtomicBool::new(false));
    let arrivals = {
        let (engine, pool, stop, rate) = (engine.clone(), pool.clone(), stop.clone(), o.arrivals);
        tokio::spawn(async move {
            let mut opened = 0u64;
            let mut tick =
                tokio::time::interval(StdDuration::from_secs_f64(1.0 / rate.max(1) as f64));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let result: anyhow::Result<()> = async {
                    let mut tx = pool.begin().await?;
                    let case = CaseRow {
                        case_id: uuid::Uuid::now_v7(),
                        department_id: format!("dept-{}", opened % 20),
                        owner_id: "agent".into(),
                        category: "product_quality".into(),
                        severity: Severity::General as i16,
                        priority: 3,
                        complexity: Complexity::Simple as i16,
                        customer_tier: 2,
                        channel: 1,
                        received_at: Utc::now(),
                    };
                    store::upsert_case(&mut tx, &case).await?;
                    for kind in [ClockKind::FirstResponse, ClockKind::Resolution] {
                        engine
                            .start_clock(&mut tx, &case, kind, 1, case.received_at, "")
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }
                .await;
                match result {
                    Ok(()) => opened += 1,
                    Err(e) => eprintln!("opening a case failed: {e:#}"),
                }
            }
            opened
        })
    };

    println!(
        "steady phase: {} scheduler replica(s), {} new cases/s",
        o.replicas, o.arrivals
    );
    let workers = schedulers(&engine, &pool, o.replicas, o.poll, stop.clone()).await;
    let window_end = first_due + Duration::seconds(o.seconds);
    loop {
        tokio::time::sleep(StdDuration::from_millis(500)).await;
        if Utc::now() > window_end && remaining_due(&pool, window_end).await? == 0 {
            break;
        }
        if Utc::now() > window_end + Duration::seconds(120) {
            println!("gave up waiting for the due clocks to drain");
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut lags = Vec::new();
    for worker in workers {
        lags.extend(worker.await?.0);
    }
    let opened = arrivals.await?;
    lags.sort_by(|a, b| a.total_cmp(b));
    let (open,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM sla.clocks WHERE state IN (1, 2, 4)")
            .fetch_one(&pool)
            .await?;
    println!(
        "steady: {} firings (breach + escalation level 1 per clock) over {} s ({:.0}/s); firing lag p50 {:.3} s, p99 {:.3} s, max {:.3} s; {} cases opened meanwhile; {} clocks open",
        lags.len(),
        o.seconds,
        lags.len() as f64 / o.seconds.max(1) as f64,
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN),
        opened,
        open
    );

    // Catch-up: a backlog overdue at once (as after downtime), fired as fast as it goes.
    insert_clocks(&pool, o.backlog, Utc::now() - Duration::minutes(5), 0.0).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers = schedulers(&engine, &pool, o.replicas, o.poll, stop.clone()).await;
    while remaining_due(&pool, Utc::now()).await? > 0 {
        tokio::time::sleep(StdDuration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut claimed = 0;
    for worker in workers {
        claimed += worker.await?.1;
    }
    println!(
        "catch-up: {} overdue clocks fired in {:.1} s ({:.0} clocks/s, {} claimed)",
        o.backlog,
        elapsed,
        o.backlog as f64 / elapsed,
        claimed
    );
    let (size,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
        .fetch_one(&pool)
        .await?;
    println!(
        "memory of the scheduler process: {}; database size {} MB",
        memory(),
        size / 1_048_576
    );
    pool.close().await;
    Ok(())
}
