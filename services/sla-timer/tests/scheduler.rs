//! The scheduler against a real Postgres: overdue clocks fire at once and exactly once, even
//! with two schedulers claiming the same due clocks side by side.

use chrono::{Duration, Utc};
use complaints_kit::events::EventLog;
use complaints_kit::testing;
use complaints_proto::common::v1::{ClockKind, Complexity, Severity};
use sla_timer::engine::Engine;
use sla_timer::store::{self, CaseRow};
use sqlx::PgPool;

async fn setup() -> (PgPool, Engine) {
    let db = testing::fresh_database().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    complaints_kit::db::migrate(&pool, sla_timer::SCHEMA, sla_timer::MIGRATIONS)
        .await
        .unwrap();
    let engine = Engine::new(EventLog::new(sla_timer::SCHEMA, sla_timer::SERVICE_NAME));
    engine
        .seed_defaults(&pool, chrono_tz::Asia::Shanghai)
        .await
        .unwrap();
    (pool, engine)
}

/// Cases whose first-response clocks started `age` ago.
async fn overdue_clocks(pool: &PgPool, engine: &Engine, count: usize, age: Duration) {
    let mut tx = pool.begin().await.unwrap();
    for _ in 0..count {
        let case = CaseRow {
            case_id: uuid::Uuid::now_v7(),
            department_id: "quality".into(),
            owner_id: "agent".into(),
            category: "product_quality".into(),
            severity: Severity::General as i16,
            priority: 3,
            complexity: Complexity::Simple as i16,
            customer_tier: 2,
            channel: 1,
            received_at: Utc::now() - age,
        };
        store::upsert_case(&mut tx, &case).await.unwrap();
        engine
            .start_clock(
                &mut tx,
                &case,
                ClockKind::FirstResponse,
                1,
                case.received_at,
                "",
            )
            .await
            .unwrap()
            .expect("clock started");
    }
    tx.commit().await.unwrap();
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_never_fire_the_same_clock_twice() {
    let (pool, engine) = setup().await;
    let clocks = 120;
    overdue_clocks(&pool, &engine, clocks, Duration::days(30)).await;

    let run = |engine: Engine, pool: PgPool| async move {
        let mut fired = 0;
        loop {
            let (claimed, lags) = engine.fire_due(&pool, Utc::now(), 7).await.unwrap();
            fired += lags.len();
            if claimed == 0 {
                return fired;
            }
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(run(engine.clone(), pool.clone())),
        tokio::spawn(run(engine.clone(), pool.clone()))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a > 0 && b > 0, "both schedulers took part ({a}, {b})");

    // Per clock: two warnings (75 %, 90 %), one breach, escalation levels 1 to 4 — once each.
    let n = clocks as i64;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM sla.event_outbox WHERE event_type = 'ClockWarning'"
        )
        .await,
        2 * n
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM sla.event_outbox WHERE event_type = 'ClockBreached'"
        )
        .await,
        n
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sla.pending_escalations").await,
        4 * n
    );
    // Firings: two warnings, the breach, escalation levels 1 to 4 (level 1 at the breach).
    assert_eq!((a + b) as i64, 7 * n, "every firing counted once");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM sla.clocks WHERE state = 4 AND escalation_level = 4"
        )
        .await,
        n
    );
    // Nothing is left to fire.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM sla.clocks WHERE next_fire_at IS NOT NULL"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn clocks_not_yet_due_do_not_fire() {
    let (pool, engine) = setup().await;
    overdue_clocks(&pool, &engine, 3, Duration::zero()).await;
    // Received now: the first-response hour has not passed, whatever the time of day.
    let (claimed, lags) = engine.fire_due(&pool, Utc::now(), 100).await.unwrap();
    assert_eq!((claimed, lags.len()), (0, 0));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM sla.clocks WHERE state = 1 AND next_fire_at IS NOT NULL"
        )
        .await,
        3
    );
}
