//! The guarantees of the event machinery, against a real Postgres and a real gRPC stream:
//! no event skipped when transactions commit out of sequence order, a stopped consumer catches up
//! from its cursor, a new consumer replays from zero, per-aggregate order holds, a crash between
//! applying and acknowledging never applies twice, consumers batch when behind, and a consumer
//! behind retention gets a clear error.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use complaints_kit::db::Migration;
use complaints_kit::events::{
    CURSOR_MIGRATION, Consumer, EventHandler, EventLog, OUTBOX_INDEX_MIGRATION, OUTBOX_MIGRATION,
    OUTBOX_POSITION_MIGRATION, OUTBOX_STATISTICS_MIGRATION,
};
use complaints_kit::server::ServiceContext;
use complaints_kit::shutdown::{Shutdown, ShutdownTrigger};
use complaints_kit::testing::{self, eventually};
use complaints_proto::events::v1::event::Payload;
use complaints_proto::events::v1::event_stream_client::EventStreamClient;
use complaints_proto::events::v1::{CaseAcknowledged, Event, Position, SubscribeRequest};
use sqlx::{PgConnection, PgPool};

const PRODUCER: &str = "producer_test";
const CONSUMER: &str = "consumer_test";

const PRODUCER_TABLES: Migration = Migration {
    name: "0001_aggregates",
    sql: "CREATE TABLE producer_test.aggregates (id text PRIMARY KEY, version integer NOT NULL DEFAULT 0);",
};
const CONSUMER_TABLES: Migration = Migration {
    name: "0001_applied",
    sql: "CREATE TABLE consumer_test.applied (
              arrival bigserial,
              source text NOT NULL,
              event_id text NOT NULL,
              aggregate_id text NOT NULL,
              version integer NOT NULL,
              consumer_txid bigint NOT NULL,
              times integer NOT NULL DEFAULT 1,
              -- How the applying transaction planned its statements.
              plans text NOT NULL
                  DEFAULT current_setting('plan_cache_mode') || ', seqscan ' || current_setting('enable_seqscan'),
              PRIMARY KEY (source, event_id)
          );",
};

struct Producer {
    url: String,
    log: EventLog,
    pool: PgPool,
    trigger: ShutdownTrigger,
    context: ServiceContext,
}

async fn start_producer(database_url: &str) -> Producer {
    let (trigger, shutdown) = Shutdown::new();
    let config = testing::common_config(database_url);
    let context = ServiceContext::start(
        "producer",
        &config,
        PRODUCER,
        &[
            OUTBOX_MIGRATION,
            OUTBOX_INDEX_MIGRATION,
            OUTBOX_STATISTICS_MIGRATION,
            OUTBOX_POSITION_MIGRATION,
            PRODUCER_TABLES,
        ],
        shutdown,
    )
    .await
    .expect("producer starts");
    let log = EventLog::new(PRODUCER, "producer");
    let (listener, url) = testing::ephemeral_listener().await;
    let routes = tonic::service::Routes::new(log.service(&context));
    let serving = context.clone();
    tokio::spawn(async move {
        serving
            .serve(listener, routes, &["complaints.events.v1.EventStream"])
            .await
    });
    Producer {
        url,
        log,
        pool: context.pool.clone(),
        trigger,
        context,
    }
}

/// Bumps an aggregate's version (locking its row first) and appends an event carrying it.
async fn write_event(producer: &Producer, aggregate: &str) {
    let mut tx = producer.pool.begin().await.unwrap();
    let (version,): (i32,) = sqlx::query_as(
        "INSERT INTO producer_test.aggregates (id, version) VALUES ($1, 1)
         ON CONFLICT (id) DO UPDATE SET version = aggregates.version + 1 RETURNING version",
    )
    .bind(aggregate)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    append(&producer.log, &mut tx, aggregate, version).await;
    tx.commit().await.unwrap();
    producer.log.committed();
}

async fn append(log: &EventLog, conn: &mut PgConnection, aggregate: &str, version: i32) {
    log.append(
        conn,
        aggregate,
        "",
        Payload::CaseAcknowledged(CaseAcknowledged {
            case_id: aggregate.into(),
            by: version.to_string(),
            acknowledged_at: None,
        }),
    )
    .await
    .unwrap();
}

/// Waits until the producer's first `n` events are released (once every older transaction of
/// the cluster has ended: other tests share it), and returns them.
async fn released(producer: &Producer, n: usize) -> Vec<Event> {
    eventually(
        &format!("{n} event(s) released"),
        Duration::from_secs(20),
        || async move {
            let events = producer.log.read_after(&producer.pool, (0, 0), 100).await;
            Some(events.unwrap()).filter(|events| events.len() == n)
        },
    )
    .await
}

/// Records every application; can simulate a crash after applying one chosen event.
struct Recorder {
    source: String,
    crash_after: Mutex<Option<String>>,
}

impl Recorder {
    async fn record(&self, conn: &mut PgConnection, event: &Event) -> anyhow::Result<()> {
        let Some(Payload::CaseAcknowledged(ack)) = &event.payload else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO consumer_test.applied (source, event_id, aggregate_id, version, consumer_txid)
             VALUES ($1, $2, $3, $4, txid_current())
             ON CONFLICT (source, event_id) DO UPDATE SET times = applied.times + 1",
        )
        .bind(&self.source)
        .bind(&event.event_id)
        .bind(&event.aggregate_id)
        .bind(ack.by.parse::<i32>().unwrap_or(0))
        .execute(&mut *conn)
        .await?;
        let crash = {
            let mut target = self.crash_after.lock().unwrap();
            if target.as_deref() == Some(event.event_id.as_str()) {
                target.take()
            } else {
                None
            }
        };
        if crash.is_some() {
            anyhow::bail!("simulated crash after applying, before acknowledging");
        }
        Ok(())
    }
}

impl EventHandler for Recorder {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(self.record(tx, event))
    }
}

struct RunningConsumer {
    trigger: ShutdownTrigger,
    handle: tokio::task::JoinHandle<()>,
}

async fn start_consumer(
    database_url: &str,
    source: &str,
    url: &str,
    recorder: Arc<Recorder>,
) -> RunningConsumer {
    let config = testing::common_config(database_url);
    start_consumer_with(config, source, url, recorder).await
}

async fn start_consumer_with(
    config: complaints_kit::config::CommonConfig,
    source: &str,
    url: &str,
    recorder: Arc<Recorder>,
) -> RunningConsumer {
    let (trigger, shutdown) = Shutdown::new();
    let context = ServiceContext::start(
        "consumer",
        &config,
        CONSUMER,
        &[CURSOR_MIGRATION, CONSUMER_TABLES],
        shutdown,
    )
    .await
    .expect("consumer context");
    let consumer = Consumer::new(&context, CONSUMER, source, url, recorder).unwrap();
    RunningConsumer {
        trigger,
        handle: tokio::spawn(consumer.run()),
    }
}

impl RunningConsumer {
    async fn stop(self) {
        self.trigger.trigger();
        let _ = self.handle.await;
    }
}

async fn applied(pool: &PgPool, source: &str) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM consumer_test.applied WHERE source = $1")
            .bind(source)
            .fetch_one(pool)
            .await
            .unwrap_or((0,));
    n
}

async fn wait_applied(pool: &PgPool, source: &str, expected: i64) {
    eventually(
        &format!("{expected} events applied from {source}"),
        Duration::from_secs(20),
        || async move { (applied(pool, source).await >= expected).then_some(()) },
    )
    .await;
}

/// After a moment for any late duplicate: `source` applied exactly `expected` events and no
/// event anywhere was applied twice.
async fn assert_applied_once(pool: &PgPool, source: &str, expected: i64) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (max_times,): (i32,) = sqlx::query_as("SELECT max(times) FROM consumer_test.applied")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(max_times, 1, "no event applied twice");
    assert_eq!(applied(pool, source).await, expected);
}

fn recorder(source: &str) -> Arc<Recorder> {
    Arc::new(Recorder {
        source: source.into(),
        crash_after: Mutex::new(None),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_after_a_later_numbered_one_is_still_delivered() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    // Transaction A writes first (lower sequence number) but commits last.
    let mut a = producer.pool.begin().await.unwrap();
    append(&producer.log, &mut a, "agg-a", 1).await;
    let mut b = producer.pool.begin().await.unwrap();
    append(&producer.log, &mut b, "agg-b", 1).await;
    b.commit().await.unwrap();
    producer.log.committed();
    // B is committed, but releasing it now would let a reader's cursor pass A's position.
    let early = producer
        .log
        .read_after(&producer.pool, (0, 0), 100)
        .await
        .unwrap();
    assert!(
        early.is_empty(),
        "released {} event(s) while an earlier one was in flight",
        early.len()
    );

    let consumer = start_consumer(&db.url, "late", &producer.url, recorder("late")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.commit().await.unwrap();
    producer.log.committed();
    wait_applied(&producer.pool, "late", 2).await;
    let released = producer
        .log
        .read_after(&producer.pool, (0, 0), 100)
        .await
        .unwrap();
    let aggregates: Vec<&str> = released.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(aggregates, ["agg-a", "agg-b"]);
    consumer.stop().await;
    producer.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumer_catches_up_and_a_new_one_replays_from_zero() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    for i in 0..10 {
        write_event(&producer, &format!("agg-{i}")).await;
    }
    let first = start_consumer(&db.url, "main", &producer.url, recorder("main")).await;
    wait_applied(&producer.pool, "main", 10).await;
    first.stop().await;

    for i in 0..15 {
        write_event(&producer, &format!("agg-{i}")).await;
    }
    assert_eq!(
        applied(&producer.pool, "main").await,
        10,
        "stopped consumers apply nothing"
    );
    let again = start_consumer(&db.url, "main", &producer.url, recorder("main")).await;
    wait_applied(&producer.pool, "main", 25).await;
    let fresh = start_consumer(&db.url, "replay", &producer.url, recorder("replay")).await;
    wait_applied(&producer.pool, "replay", 25).await;
    assert_applied_once(&producer.pool, "main", 25).await;
    // Catching up from behind happens in batches, not one transaction per event.
    let (transactions,): (i64,) = sqlx::query_as(
        "SELECT count(DISTINCT consumer_txid) FROM consumer_test.applied WHERE source = 'replay'",
    )
    .fetch_one(&producer.pool)
    .await
    .unwrap();
    assert!(
        transactions < 25,
        "replay used {transactions} transactions for 25 events"
    );
    again.stop().await;
    fresh.stop().await;
    producer.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_aggregate_arrive_in_order_under_concurrent_writers() {
    let db = testing::fresh_database().await;
    let producer = Arc::new(start_producer(&db.url).await);
    let consumer = start_consumer(&db.url, "order", &producer.url, recorder("order")).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let producer = producer.clone();
            tokio::spawn(async move {
                for i in 0..30 {
                    write_event(&producer, &format!("agg-{}", (i + w) % 3)).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    wait_applied(&producer.pool, "order", 120).await;
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT aggregate_id, version FROM consumer_test.applied WHERE source = 'order' ORDER BY arrival")
            .fetch_all(&producer.pool)
            .await
            .unwrap();
    let mut last: std::collections::HashMap<String, i32> = Default::default();
    for (aggregate, version) in rows {
        let previous = last.insert(aggregate.clone(), version).unwrap_or(0);
        assert_eq!(
            version,
            previous + 1,
            "{aggregate}: version {version} arrived after {previous}"
        );
    }
    consumer.stop().await;
    producer.trigger.trigger();
}

/// A writer that took its transaction id first and then waited for an aggregate's lock writes
/// the aggregate's next event: that event is released after the one of the writer it waited
/// for, whether it is written by a later statement or by the very statement that waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_written_after_waiting_for_its_aggregate_comes_after_the_one_it_waited_for() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    for same_statement in [false, true] {
        let aggregate = format!("waited-{same_statement}");
        sqlx::query("INSERT INTO producer_test.aggregates (id) VALUES ($1)")
            .bind(&aggregate)
            .execute(&producer.pool)
            .await
            .unwrap();
        // The late writer takes its id before anyone touches the aggregate.
        let mut late = producer.pool.begin().await.unwrap();
        let (late_pid, _): (i32, String) =
            sqlx::query_as("SELECT pg_backend_pid(), pg_current_xact_id()::text")
                .fetch_one(&mut *late)
                .await
                .unwrap();
        // The early writer, with a later id, locks it and writes version 1.
        let mut early = producer.pool.begin().await.unwrap();
        let (version,): (i32,) = sqlx::query_as(
            "UPDATE producer_test.aggregates SET version = version + 1 WHERE id = $1 RETURNING version",
        )
        .bind(&aggregate)
        .fetch_one(&mut *early)
        .await
        .unwrap();
        append(&producer.log, &mut early, &aggregate, version).await;
        let log = producer.log.clone();
        let waited = aggregate.clone();
        let writing = tokio::spawn(async move {
            if same_statement {
                let event = log.encode(
                    &waited,
                    "",
                    Payload::CaseAcknowledged(CaseAcknowledged {
                        case_id: waited.clone(),
                        by: "2".into(),
                        acknowledged_at: None,
                    }),
                );
                let sql = format!(
                    "WITH saved AS (UPDATE producer_test.aggregates SET version = version + 1
                                    WHERE id = $6 RETURNING version),
                          announced AS ({})
                     SELECT version FROM saved",
                    log.insert_one_sql("saved", 1)
                );
                let (version,): (i32,) =
                    complaints_kit::events::bind_event(sqlx::query_as(&sql), &event)
                        .bind(&waited)
                        .fetch_one(&mut *late)
                        .await
                        .unwrap();
                assert_eq!(version, 2);
            } else {
                let (version,): (i32,) = sqlx::query_as(
                    "UPDATE producer_test.aggregates SET version = version + 1 WHERE id = $1 RETURNING version",
                )
                .bind(&waited)
                .fetch_one(&mut *late)
                .await
                .unwrap();
                append(&log, &mut late, &waited, version).await;
            }
            late.commit().await.unwrap();
        });
        let pool = producer.pool.clone();
        eventually(
            "the late writer waits for the aggregate's lock",
            Duration::from_secs(10),
            || {
                let pool = pool.clone();
                async move {
                    let (waiting,): (bool,) = sqlx::query_as(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)",
                    )
                    .bind(late_pid)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    waiting.then_some(())
                }
            },
        )
        .await;
        early.commit().await.unwrap();
        writing.await.unwrap();
    }
    let events = released(&producer, 4).await;
    let order: Vec<(String, String)> = events
        .iter()
        .map(|event| match &event.payload {
            Some(Payload::CaseAcknowledged(ack)) => (event.aggregate_id.clone(), ack.by.clone()),
            other => panic!("unexpected payload {other:?}"),
        })
        .collect();
    let of = |aggregate: &str| -> Vec<String> {
        order
            .iter()
            .filter(|(a, _)| a == aggregate)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(of("waited-false"), ["1", "2"], "later statement: {order:?}");
    assert_eq!(of("waited-true"), ["1", "2"], "same statement: {order:?}");
    producer.trigger.trigger();
}

/// An event's position is an id that was handed out when it was written (its writer's, or
/// that of the newest transaction that had ended): one past that, it would stay unreleased
/// until some later transaction of the cluster ended, seconds on a quiet system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_positioned_at_an_id_already_handed_out() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    // The writer takes its id; a later transaction takes one and ends; then the event.
    let mut writer = producer.pool.begin().await.unwrap();
    let (own,): (String,) = sqlx::query_as("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *writer)
        .await
        .unwrap();
    write_event(&producer, "ended-first").await;
    append(&producer.log, &mut writer, "written-later", 1).await;
    let (position, next): (i64, i64) = sqlx::query_as(
        "SELECT txid, pg_snapshot_xmax(pg_current_snapshot())::text::bigint
         FROM producer_test.event_outbox WHERE aggregate_id = 'written-later'",
    )
    .fetch_one(&mut *writer)
    .await
    .unwrap();
    assert!(
        position > own.parse::<i64>().unwrap(),
        "past the transaction that ended"
    );
    assert!(
        position < next,
        "{position} was not handed out ({next} is next)"
    );
    writer.commit().await.unwrap();
    producer.trigger.trigger();
}

/// A consumer's batches run their statements' generic plans, made without sequential scans
/// (see `CONSUMER_PLANS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumers_batches_plan_generically_without_sequential_scans() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    let consumer = start_consumer(&db.url, "plans", &producer.url, recorder("plans")).await;
    for i in 0..3 {
        write_event(&producer, &format!("plans-{i}")).await;
    }
    wait_applied(&producer.pool, "plans", 3).await;
    let plans: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT plans FROM consumer_test.applied WHERE source = 'plans'",
    )
    .fetch_all(&producer.pool)
    .await
    .unwrap();
    assert_eq!(plans, ["force_generic_plan, seqscan off"]);
    consumer.stop().await;
    producer.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_applying_and_acknowledging_does_not_apply_twice() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    for i in 0..12 {
        write_event(&producer, &format!("agg-{i}")).await;
    }
    let events = released(&producer, 12).await;
    let victim = events[6].event_id.clone();
    let crashing = Arc::new(Recorder {
        source: "crash".into(),
        crash_after: Mutex::new(Some(victim)),
    });
    let consumer = start_consumer(&db.url, "crash", &producer.url, crashing.clone()).await;
    wait_applied(&producer.pool, "crash", 12).await;
    assert!(
        crashing.crash_after.lock().unwrap().is_none(),
        "the crash happened"
    );
    // A process killed mid-stream and restarted does not apply twice either.
    consumer.handle.abort();
    for i in 0..5 {
        write_event(&producer, &format!("agg-{i}")).await;
    }
    let restarted = start_consumer(&db.url, "crash", &producer.url, recorder("crash")).await;
    wait_applied(&producer.pool, "crash", 17).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (total, max_times): (i64, i32) = sqlx::query_as(
        "SELECT count(*), max(times) FROM consumer_test.applied WHERE source = 'crash'",
    )
    .fetch_one(&producer.pool)
    .await
    .unwrap();
    assert_eq!((total, max_times), (17, 1));
    restarted.stop().await;
    producer.trigger.trigger();
}

/// Makes the outbox's events (those `filter` picks, an SQL condition) 40 days old, through
/// `executor` (the pool, or a transaction still writing some of them).
async fn age_events<'e>(executor: impl sqlx::PgExecutor<'e>, filter: &str) {
    sqlx::query(&format!(
        "UPDATE producer_test.event_outbox SET occurred_at = now() - interval '40 days' WHERE {filter}"
    ))
    .execute(executor)
    .await
    .unwrap();
}

/// Purges until `expected` events are deleted in all, never more: a transaction of another
/// test on the same server holds retention back for a moment, as it holds back release.
async fn purged(producer: &Producer, retention: Duration, expected: u64) {
    // Long: the horizon is the whole cluster's, and the tests running beside this one (each
    // creating a database, some holding transactions open on purpose) held it past 20 s once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut deleted = 0;
    loop {
        deleted += producer.log.purge(&producer.pool, retention).await.unwrap();
        assert!(
            deleted <= expected,
            "{deleted} deleted, {expected} expected"
        );
        if deleted == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {deleted} of {expected} deleted after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_behind_retention_gets_out_of_range_not_a_gap() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    for i in 0..5 {
        write_event(&producer, &format!("agg-{i}")).await;
    }
    age_events(&producer.pool, "true").await;
    write_event(&producer, "agg-recent").await;
    purged(&producer, Duration::from_secs(30 * 86_400), 5).await;

    let token = testing::token("consumer", complaints_kit::Role::Service, None);
    let mut client = EventStreamClient::new(testing::channel(&producer.url));
    let status = client
        .subscribe(testing::authed(
            SubscribeRequest {
                after: None,
                max_batch_size: 0,
            },
            &token,
        ))
        .await
        .expect_err("behind retention");
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert!(
        status.message().contains("retention"),
        "{}",
        status.message()
    );
    // A consumer already past the deleted range continues normally.
    let mark = producer
        .log
        .retention_mark(&producer.pool)
        .await
        .unwrap()
        .unwrap();
    let mut stream = client
        .subscribe(testing::authed(
            SubscribeRequest {
                after: Some(Position {
                    transaction_id: mark.0 as u64,
                    sequence: mark.1 as u64,
                }),
                max_batch_size: 0,
            },
            &token,
        ))
        .await
        .expect("subscribed")
        .into_inner();
    let batch = stream.message().await.unwrap().unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].aggregate_id, "agg-recent");
    drop(producer.context);
    producer.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_oldest_events_only_up_to_the_first_young_one() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    for aggregate in ["old-1", "old-2", "young", "late-old"] {
        write_event(&producer, aggregate).await;
    }
    // "late-old" sits behind a young event, as an event of a transaction that began long
    // before it committed would.
    age_events(&producer.pool, "aggregate_id <> 'young'").await;
    let retention = Duration::from_secs(30 * 86_400);
    purged(&producer, retention, 2).await;
    let left: Vec<(String,)> =
        sqlx::query_as("SELECT aggregate_id FROM producer_test.event_outbox ORDER BY txid, seq")
            .fetch_all(&producer.pool)
            .await
            .unwrap();
    assert_eq!(left, [("young".to_owned(),), ("late-old".to_owned(),)]);
    let (mark_txid, mark_seq): (i64, i64) =
        sqlx::query_as("SELECT txid, seq FROM producer_test.event_retention")
            .fetch_one(&producer.pool)
            .await
            .unwrap();
    let (young_txid, young_seq): (i64, i64) = sqlx::query_as(
        "SELECT txid, seq FROM producer_test.event_outbox WHERE aggregate_id = 'young'",
    )
    .fetch_one(&producer.pool)
    .await
    .unwrap();
    assert!((mark_txid, mark_seq) < (young_txid, young_seq));
    // Once the young one is old too, everything goes, and nothing is deleted twice.
    age_events(&producer.pool, "true").await;
    purged(&producer, retention, 2).await;
    purged(&producer, retention, 0).await;
    // The outbox keeps one index, its primary key.
    let (indexes,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'producer_test' AND tablename = 'event_outbox'",
    )
    .fetch_one(&producer.pool)
    .await
    .unwrap();
    assert_eq!(indexes, 1);
    // Its planner statistics leave out what nothing filters or sorts on (payloads above all).
    write_event(&producer, "sampled").await;
    assert_eq!(
        testing::analyzed_columns(&producer.pool, "producer_test", "event_outbox").await,
        ["event_type", "occurred_at", "seq", "txid"]
    );
    producer.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_marks_past_an_event_still_being_written() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    // A transaction writes an old event and stays open while later ones commit.
    let mut writing = producer.pool.begin().await.unwrap();
    append(&producer.log, &mut writing, "in-flight", 1).await;
    age_events(&mut *writing, "true").await;
    write_event(&producer, "committed-1").await;
    write_event(&producer, "committed-2").await;
    age_events(&producer.pool, "true").await;
    let retention = Duration::from_secs(30 * 86_400);
    // The open transaction's event will sit below both: a mark past them would let a consumer
    // already beyond it miss that event.
    purged(&producer, retention, 0).await;
    assert_eq!(
        producer.log.retention_mark(&producer.pool).await.unwrap(),
        None
    );
    writing.commit().await.unwrap();
    purged(&producer, retention, 3).await;
    producer.trigger.trigger();
}

/// Writes events on `from` until `to` has heard of them from `from`'s notifications.
async fn until_heard(from: &Producer, to: &Producer, more_than: u64) {
    eventually(
        "a notification from the other replica",
        Duration::from_secs(20),
        || async move {
            if to.log.peer_wakeups() > more_than {
                return Some(());
            }
            write_event(from, "heard").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_producer_wake_each_other_and_ignore_their_own_notifications() {
    let db = testing::fresh_database().await;
    let one = start_producer(&db.url).await;
    let two = start_producer(&db.url).await;
    // Both listen once each has heard the other.
    until_heard(&one, &two, 0).await;
    until_heard(&two, &one, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (heard_by_one, heard_by_two) = (one.log.peer_wakeups(), two.log.peer_wakeups());

    // One commits and announces it; once two heard that, the announcement is in the
    // notification queue ahead of anything two sends next.
    write_event(&one, "a").await;
    eventually("two hears one", Duration::from_secs(20), || async {
        (two.log.peer_wakeups() > heard_by_two).then_some(())
    })
    .await;
    write_event(&two, "b").await;
    eventually("one hears two", Duration::from_secs(20), || async {
        (one.log.peer_wakeups() > heard_by_one).then_some(())
    })
    .await;
    // Once both announcements had time to arrive: one's listener got its own first and did not
    // count it as a wake-up (each replica's streams are woken at its own commits).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(one.log.peer_wakeups(), heard_by_one + 1);
    assert_eq!(two.log.peer_wakeups(), heard_by_two + 1);
    one.trigger.trigger();
    two.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_replica_announces_no_commits_until_another_replica_is_there() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    let channel = format!("complaints_events_{PRODUCER}");
    listener.listen(&channel).await.unwrap();
    // What the channel carries while `write` runs and for a while after.
    async fn heard(
        listener: &mut sqlx::postgres::PgListener,
        write: impl std::future::Future<Output = ()>,
    ) -> Vec<String> {
        write.await;
        let mut payloads = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_millis(2500);
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, listener.recv()).await {
            payloads.push(n.payload().to_owned());
        }
        payloads
    }
    let lone = heard(&mut listener, async {
        for n in 0..5 {
            write_event(&producer, &format!("lone-{n}")).await;
        }
    })
    .await;
    assert!(!lone.is_empty(), "it says it is there");
    assert!(
        lone.iter().all(|p| p.starts_with("present:")),
        "nothing but presence: {lone:?}"
    );
    // Another replica says it is there: from then on the producer announces its commits.
    sqlx::query("SELECT pg_notify($1, 'present:another')")
        .bind(&channel)
        .execute(&producer.pool)
        .await
        .unwrap();
    let with_a_peer = heard(&mut listener, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        write_event(&producer, "seen").await;
    })
    .await;
    let own = lone[0].trim_start_matches("present:");
    assert!(
        with_a_peer.iter().any(|p| p == own),
        "a commit announced: {with_a_peer:?}"
    );
    producer.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_moves_its_cursor_before_it_applies_anything() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    let consumer = start_consumer(&db.url, "first", &producer.url, recorder("first")).await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    write_event(&producer, "a").await;
    wait_applied(&pool, "first", 1).await;
    // The stream's "caught up" (an empty batch, which moves the cursor alone) goes by first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Writes to the cursor wait, as behind another replica's batch holding the row (a table
    // lock takes no transaction id, so the producer still releases the next event).
    let mut other = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE consumer_test.event_cursors IN EXCLUSIVE MODE")
        .execute(&mut *other)
        .await
        .unwrap();
    write_event(&producer, "b").await;
    let waiting: i32 = eventually(
        "the consumer to wait for the cursor row",
        Duration::from_secs(20),
        || {
            let pool = pool.clone();
            async move {
                // Only this test's database: other tests run beside it on the same server.
                sqlx::query_scalar(
                    "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE NOT l.granted AND a.datname = current_database() LIMIT 1",
                )
                .fetch_optional(&pool)
                .await
                .unwrap()
            }
        },
    )
    .await;
    // It waits before writing anything: no lock on the table its handler writes.
    let (held,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_locks
         WHERE pid = $1 AND relation = 'consumer_test.applied'::regclass",
    )
    .bind(waiting)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(held, 0, "the handler ran before the cursor moved");
    // The lock goes without the cursor having moved: this batch goes on.
    other.rollback().await.unwrap();
    wait_applied(&pool, "first", 2).await;
    assert_applied_once(&pool, "first", 2).await;
    consumer.stop().await;
    producer.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_a_consumer_apply_each_event_exactly_once() {
    let db = testing::fresh_database().await;
    let producer = Arc::new(start_producer(&db.url).await);
    // Both replicas follow the same stream with the same cursor row, as two pods would.
    let first = start_consumer(&db.url, "ha", &producer.url, recorder("ha")).await;
    let second = start_consumer(&db.url, "ha", &producer.url, recorder("ha")).await;
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let producer = producer.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    write_event(&producer, &format!("ha-{w}-{i}")).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    wait_applied(&producer.pool, "ha", 60).await;
    // Let a replica that lost a race finish rolling back before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (events, applications): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(times), 0)::bigint FROM consumer_test.applied WHERE source = 'ha'",
    )
    .fetch_one(&producer.pool)
    .await
    .unwrap();
    assert_eq!((events, applications), (60, 60), "each event applied once");
    first.stop().await;
    second.stop().await;
    producer.trigger.trigger();
}

/// Applies events of versions other than 3 and 6 in sets, the rest one by one, recording each
/// run; writes an event of its own for version 3 only, and counts `after_commit` calls.
struct Sets {
    runs: Mutex<Vec<(bool, Vec<i32>)>>,
    log: EventLog,
    after_commits: std::sync::atomic::AtomicUsize,
}

fn version_of(event: &Event) -> i32 {
    match &event.payload {
        Some(Payload::CaseAcknowledged(ack)) => ack.by.parse().unwrap_or(0),
        _ => 0,
    }
}

impl EventHandler for Sets {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let version = version_of(event);
            self.runs.lock().unwrap().push((false, vec![version]));
            if version == 3 {
                append(&self.log, tx, "echo", version).await;
            }
            Ok(())
        })
    }

    fn in_sets(&self, event: &Event) -> bool {
        !matches!(version_of(event), 3 | 6)
    }

    fn apply_set<'a>(
        &'a self,
        _tx: &'a mut PgConnection,
        run: &'a [complaints_kit::events::Incoming<'a>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        let versions = run.iter().map(|i| version_of(i.event)).collect();
        self.runs.lock().unwrap().push((true, versions));
        Box::pin(async { Ok(()) })
    }

    fn after_commit(&self) {
        self.after_commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_hot_kinds_go_to_apply_set_in_order_and_only_batches_that_wrote_events_wake() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    for _ in 0..6 {
        write_event(&producer, "s").await;
    }
    // Another aggregate's set event, last in the stream.
    write_event(&producer, "t").await;
    released(&producer, 7).await;
    let (trigger, shutdown) = Shutdown::new();
    let config = testing::common_config(&db.url);
    let context = ServiceContext::start(
        "consumer",
        &config,
        CONSUMER,
        &[
            OUTBOX_MIGRATION,
            OUTBOX_INDEX_MIGRATION,
            OUTBOX_STATISTICS_MIGRATION,
            OUTBOX_POSITION_MIGRATION,
            CURSOR_MIGRATION,
        ],
        shutdown,
    )
    .await
    .expect("consumer context");
    let handler = Arc::new(Sets {
        runs: Mutex::new(Vec::new()),
        log: EventLog::new(CONSUMER, "consumer"),
        after_commits: Default::default(),
    });
    let consumer =
        Consumer::new(&context, CONSUMER, "sets", &producer.url, handler.clone()).unwrap();
    let handle = tokio::spawn(consumer.run());
    let applied = |n: usize| {
        let handler = handler.clone();
        async move {
            eventually(
                &format!("{n} events applied"),
                Duration::from_secs(20),
                || {
                    let handler = handler.clone();
                    async move {
                        let runs = handler.runs.lock().unwrap();
                        (runs.iter().map(|(_, v)| v.len()).sum::<usize>() >= n).then_some(())
                    }
                },
            )
            .await
        }
    };
    applied(7).await;
    assert_eq!(
        *handler.runs.lock().unwrap(),
        vec![
            (true, vec![1, 2, 1]),
            (false, vec![3]),
            (true, vec![4, 5]),
            (false, vec![6]),
        ],
        "one aggregate's runs split wherever the handler's answer changes, in stream order; \
         the other aggregate's set event joins the chunk's first run"
    );
    // The handler records its runs before the batch commits; `after_commit` follows the commit.
    eventually(
        "the wake-up of the batch that wrote an event (for version 3)",
        Duration::from_secs(20),
        || {
            let handler = handler.clone();
            async move {
                (handler
                    .after_commits
                    .load(std::sync::atomic::Ordering::SeqCst)
                    >= 1)
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        handler
            .after_commits
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the batch that wrote an event woke subscribers"
    );
    // Batches that write nothing wake nobody.
    write_event(&producer, "s").await;
    write_event(&producer, "s").await;
    applied(9).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        handler
            .after_commits
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    trigger.trigger();
    let _ = handle.await;
    producer.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_kept_connection_dies_resumes_and_applies_each_event_once() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    let consumer = start_consumer(&db.url, "main", &producer.url, recorder("main")).await;
    for i in 0..5 {
        write_event(&producer, &format!("agg-{i}")).await;
    }
    wait_applied(&producer.pool, "main", 5).await;
    // The consumer keeps its connection between batches; kill it (and its pool's others), as
    // a database restart or a network cut would.
    let (killed,): (i64,) = sqlx::query_as(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'consumer'",
    )
    .fetch_one(&producer.pool)
    .await
    .unwrap();
    assert!(killed >= 1, "the consumer held a connection");
    for i in 0..5 {
        write_event(&producer, &format!("agg-{i}")).await;
    }
    wait_applied(&producer.pool, "main", 10).await;
    assert_applied_once(&producer.pool, "main", 10).await;
    consumer.stop().await;
    producer.trigger.trigger();
}

/// What a one-off reader sees from zero up to the first response that says it is caught up
/// (in batches of at most `max_batch_size`, 0 for the server's default).
async fn read_until_caught_up(producer: &Producer, max_batch_size: u32) -> Vec<String> {
    let token = testing::token("reader", complaints_kit::Role::Service, None);
    let mut client = EventStreamClient::new(testing::channel(&producer.url));
    let request = SubscribeRequest {
        after: None,
        max_batch_size,
    };
    let mut stream = client
        .subscribe(testing::authed(request, &token))
        .await
        .expect("subscribed")
        .into_inner();
    let mut seen = Vec::new();
    loop {
        // Within a second, not the five of an idle stream's heartbeat.
        let batch = tokio::time::timeout(Duration::from_secs(1), stream.message())
            .await
            .expect("an answer at once")
            .unwrap()
            .expect("open stream");
        seen.extend(batch.events.into_iter().map(|e| e.aggregate_id));
        if batch.caught_up {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_is_told_it_is_caught_up_only_with_everything_released() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    // An empty log: caught up at once.
    assert!(read_until_caught_up(&producer, 0).await.is_empty());
    write_event(&producer, "agg-1").await;
    released(&producer, 1).await;
    assert_eq!(read_until_caught_up(&producer, 0).await, ["agg-1"]);
    // That reader has gone: nobody follows the log while the second event is written, so what
    // the log last read for its subscribers ends before it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    write_event(&producer, "agg-2").await;
    released(&producer, 2).await;
    assert_eq!(read_until_caught_up(&producer, 0).await, ["agg-1", "agg-2"]);
    // Full batches do not say caught up; the empty read after the last one does, at once.
    assert_eq!(read_until_caught_up(&producer, 1).await, ["agg-1", "agg-2"]);
    drop(producer.context);
    producer.trigger.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_applies_at_most_its_configured_chunk_per_transaction() {
    let db = testing::fresh_database().await;
    let producer = start_producer(&db.url).await;
    for i in 0..10 {
        write_event(&producer, &format!("agg-{i}")).await;
    }
    // All released before the consumer starts, so that its first read takes them all.
    released(&producer, 10).await;
    let mut config = testing::common_config(&db.url);
    config.event_tuning.apply_chunk = 3;
    let consumer = start_consumer_with(config, "chunked", &producer.url, recorder("chunked")).await;
    wait_applied(&producer.pool, "chunked", 10).await;
    assert_applied_once(&producer.pool, "chunked", 10).await;
    // The ten events came in one batch and were applied three to a transaction (the last one
    // alone).
    let sizes: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM consumer_test.applied WHERE source = 'chunked'
         GROUP BY consumer_txid ORDER BY min(arrival)",
    )
    .fetch_all(&producer.pool)
    .await
    .unwrap();
    assert_eq!(sizes, [3, 3, 3, 1]);
    consumer.stop().await;
    producer.trigger.trigger();
}
