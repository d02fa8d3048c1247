//! The pool's connection checks and `HeldConnection`, against real Postgres.

use std::time::Duration;

use complaints_kit::db::{self, CHECK_IDLE_AFTER, HeldConnection};
use complaints_kit::testing::fresh_database;
use sqlx::{Connection, PgConnection};

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("backend pid")
}

async fn terminate(url: &str, pid: i32) {
    let mut admin = PgConnection::connect(url).await.expect("admin connection");
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .expect("terminate backend");
    assert!(ended, "backend {pid} was not terminated");
}

#[tokio::test]
async fn a_connection_idle_past_the_check_is_tested_and_replaced_when_dead() {
    let database = fresh_database().await;
    let pool = db::connect(&database.url, "pool-test", 1).await.unwrap();
    let first = {
        let mut conn = pool.acquire().await.unwrap();
        backend_pid(&mut conn).await
    };
    terminate(&database.url, first).await;
    tokio::time::sleep(CHECK_IDLE_AFTER + Duration::from_millis(200)).await;
    // Without the check the pool would hand out the dead connection and this would fail.
    let mut conn = pool.acquire().await.unwrap();
    let second = backend_pid(&mut conn).await;
    assert_ne!(first, second, "a fresh connection replaced the dead one");
}

/// A plan with a disabled sequential scan (a consumer's batch, intake's submit transaction)
/// costs past JIT's thresholds: compiled, it took 30–100 ms to read six rows.
#[tokio::test]
async fn pooled_connections_never_compile_plans_with_jit() {
    let database = fresh_database().await;
    let pool = db::connect(&database.url, "pool-test", 1).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for statement in [
        "CREATE TEMPORARY TABLE six ON COMMIT DROP AS SELECT generate_series(1, 6) AS n",
        "SET LOCAL enable_seqscan = off",
    ] {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    let plan: Vec<String> =
        sqlx::query_scalar("EXPLAIN (ANALYZE, FORMAT TEXT) SELECT count(*) FROM six")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert!(
        !plan.iter().any(|line| line.contains("JIT")),
        "{}",
        plan.join("\n")
    );
}

#[tokio::test]
async fn a_held_connection_is_kept_between_uses_and_given_back_on_release() {
    let database = fresh_database().await;
    let pool = db::connect(&database.url, "pool-test", 2).await.unwrap();
    let mut held = HeldConnection::new(pool.clone());
    assert!(!held.is_held());
    let first = backend_pid(held.get().await.unwrap()).await;
    {
        let mut tx = Connection::begin(held.get().await.unwrap()).await.unwrap();
        assert_eq!(backend_pid(&mut tx).await, first, "same connection");
        tx.commit().await.unwrap();
    }
    assert_eq!(backend_pid(held.get().await.unwrap()).await, first);
    assert_eq!(pool.size() as usize - pool.num_idle(), 1, "held, not idle");

    held.release();
    assert!(!held.is_held());
    // Given back: with the pool limited to two, two more can be taken at once.
    tokio::time::timeout(Duration::from_secs(5), async {
        let a = pool.acquire().await.unwrap();
        let b = pool.acquire().await.unwrap();
        drop((a, b));
    })
    .await
    .expect("the released connection went back to the pool");

    // A held connection that died fails its next use; after `release` the worker gets a
    // working one.
    let pid = backend_pid(held.get().await.unwrap()).await;
    terminate(&database.url, pid).await;
    assert!(
        sqlx::query("SELECT 1")
            .execute(held.get().await.unwrap())
            .await
            .is_err()
    );
    held.release();
    let replaced = backend_pid(held.get().await.unwrap()).await;
    assert_ne!(replaced, pid);
}

#[tokio::test]
async fn a_held_connection_is_kept_only_while_the_pool_has_another_to_spare() {
    let database = fresh_database().await;
    let pool = db::connect(&database.url, "pool-test", 2).await.unwrap();
    let mut held = HeldConnection::new(pool.clone());
    held.get().await.unwrap();
    held.finish();
    assert!(held.is_held(), "room for a second connection: kept");

    // Someone else takes the last connection: the next use ends by giving this one back.
    let other = pool.acquire().await.unwrap();
    held.get().await.unwrap();
    held.finish();
    assert!(!held.is_held(), "nothing to spare: given back");
    let waiting = tokio::time::timeout(Duration::from_secs(5), pool.acquire())
        .await
        .expect("a caller waiting for a connection gets the one given back")
        .unwrap();
    drop((other, waiting));
}

#[tokio::test(flavor = "current_thread")]
async fn no_statement_text_is_logged_even_when_slow() {
    // Intake's submit transaction writes customers' identifiers into a statement's text; sqlx
    // would log every statement at `debug`, and one slower than a second at `warn`, in full.
    let captured = complaints_kit::telemetry::CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let database = fresh_database().await;
    let pool = db::connect(&database.url, "log-test", 1).await.unwrap();
    sqlx::raw_sql("SELECT pg_sleep(1.1), 'phone:+8613800138000'")
        .execute(&pool)
        .await
        .unwrap();
    let _: String = sqlx::query_scalar("SELECT $1::text || 'phone:+8613800138000'")
        .bind("x")
        .fetch_one(&pool)
        .await
        .unwrap();
    let logged = captured.text();
    assert!(!logged.contains("13800138000"), "{logged}");
}
