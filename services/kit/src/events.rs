//! Lifecycle events between services: a transactional outbox in the producer's schema, a
//! gRPC server-streaming `Subscribe`, and a consumer whose cursor lives in its own schema and
//! moves in the same transaction as the effects of the events it applied.
//!
//! Ordering without skips: each outbox row records a position at or above the id of the
//! transaction that wrote it. Readers release rows in (position, sequence) order and only below
//! the oldest transaction still running (`pg_snapshot_xmin`), so a row that commits late can
//! never land behind a position a consumer has already passed. Per aggregate, order holds
//! because every write to an aggregate first locks its row, and a row written after another
//! transaction committed is positioned past that transaction's id (see
//! [`OUTBOX_POSITION_MIGRATION`]): the next writer, which waited for the lock, comes after it
//! whenever it took its own id.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use complaints_proto::events::v1::event::Payload;
use complaints_proto::events::v1::event_stream_client::EventStreamClient;
use complaints_proto::events::v1::event_stream_server::{EventStream, EventStreamServer};
use complaints_proto::events::v1::{Event, Position, SubscribeRequest, SubscribeResponse};
use prost::Message;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::auth::{self, AuthInterceptor, BearerToken, Role};
use crate::db::Migration;
use crate::server::ServiceContext;
use crate::shutdown::Shutdown;

/// Outbox table of a producing service.
pub const OUTBOX_MIGRATION: Migration = Migration {
    name: "kit_0001_event_outbox",
    sql: "CREATE TABLE {schema}.event_outbox (
              txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
              seq bigint GENERATED ALWAYS AS IDENTITY,
              event_id uuid NOT NULL UNIQUE,
              aggregate_id text NOT NULL,
              event_type text NOT NULL,
              occurred_at timestamptz NOT NULL DEFAULT now(),
              payload bytea NOT NULL,
              PRIMARY KEY (txid, seq)
          );
          CREATE INDEX event_outbox_occurred_idx ON {schema}.event_outbox (occurred_at);
          -- The newest position removed by retention: a consumer behind it is told, never
          -- silently served a gap.
          CREATE TABLE {schema}.event_retention (
              singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
              txid bigint NOT NULL,
              seq bigint NOT NULL,
              purged_at timestamptz NOT NULL
          );",
};

/// Two of the outbox's three indexes go: nothing looks an event up by its id (consumers follow
/// positions; ids are UUIDv7, made fresh for each event), and retention walks the primary key
/// instead of an `occurred_at` index. Every event written kept both up to date, about 9 of the
/// 60 index entries a complaint adds across the suite. List it right after
/// [`OUTBOX_MIGRATION`].
pub const OUTBOX_INDEX_MIGRATION: Migration = Migration {
    name: "kit_0003_event_outbox_indexes",
    sql: "ALTER TABLE {schema}.event_outbox DROP CONSTRAINT IF EXISTS event_outbox_event_id_key;
          DROP INDEX IF EXISTS {schema}.event_outbox_occurred_idx;",
};

/// No planner statistics for the outbox columns nothing filters, joins or sorts on (readers
/// follow `(txid, seq)`, retention `occurred_at`): each automatic `ANALYZE`, which comes every
/// time the table grows or turns over by a tenth, computed them from every sampled event's
/// payload for nothing (a fifth to two fifths of its CPU on the outbox). List it right after
/// [`OUTBOX_INDEX_MIGRATION`].
pub const OUTBOX_STATISTICS_MIGRATION: Migration = Migration {
    name: "kit_0004_event_outbox_statistics",
    sql: "ALTER TABLE {schema}.event_outbox
              ALTER COLUMN payload SET STATISTICS 0,
              ALTER COLUMN event_id SET STATISTICS 0,
              ALTER COLUMN aggregate_id SET STATISTICS 0;",
};

/// An event's position is no longer its transaction's id alone but the greater of that id
/// and the newest id of a transaction that had ended when the row is written (one below
/// `pg_snapshot_xmax` of a fresh snapshot, which a `VOLATILE` PL/pgSQL function takes for each
/// row even in the middle of a statement). A transaction that took its id, then waited for a
/// lock on an aggregate and wrote the aggregate's next event, used to be ordered before the
/// event of the transaction it waited for (its id was the smaller). Now every event written
/// after another transaction committed is positioned at or past that transaction's events; a
/// tie goes to the sequence, which follows insertion. A position is never below its writer's
/// id, so release below the oldest running transaction stays gap-free; and it is an id that
/// has ended or the writer's own, so an event is released once its writer and the
/// transactions older than its position have ended (with `xmax` itself, an event waited for
/// the next transaction of the cluster to end, seconds on a quiet system). List it right
/// after [`OUTBOX_STATISTICS_MIGRATION`].
pub const OUTBOX_POSITION_MIGRATION: Migration = Migration {
    name: "kit_0005_event_outbox_position",
    sql: "CREATE FUNCTION {schema}.event_position() RETURNS bigint
              LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
          BEGIN
              RETURN greatest(pg_current_xact_id()::text::bigint,
                              pg_snapshot_xmax(pg_current_snapshot())::text::bigint - 1);
          END $$;
          ALTER TABLE {schema}.event_outbox ALTER COLUMN txid SET DEFAULT {schema}.event_position();",
};

/// The outbox's migrations in order, for a schema that only needs the outbox (test harnesses
/// of a producer's consumers). A service lists them all in its own migrations instead, one
/// right after the other ([`check_outbox_migrations`] refuses anything else).
pub const OUTBOX_MIGRATIONS: [Migration; 4] = [
    OUTBOX_MIGRATION,
    OUTBOX_INDEX_MIGRATION,
    OUTBOX_STATISTICS_MIGRATION,
    OUTBOX_POSITION_MIGRATION,
];

/// A list of migrations with the outbox must hold all of [`OUTBOX_MIGRATIONS`], together and
/// in order: a producer that left one out would run with the outbox of an older release (the
/// indexes nothing reads kept up to date by every event, statistics nothing uses gathered by
/// every `ANALYZE`, an aggregate's events out of order when a writer waited for its lock).
/// Checked by `db::migrate`.
pub fn check_outbox_migrations(migrations: &[Migration]) -> Result<(), String> {
    let names: Vec<&str> = migrations.iter().map(|m| m.name).collect();
    let wanted = OUTBOX_MIGRATIONS.map(|m| m.name);
    let Some(first) = names.iter().position(|n| *n == wanted[0]) else {
        return Ok(());
    };
    if names[first..].starts_with(&wanted) {
        Ok(())
    } else {
        Err(format!(
            "{} must be followed by {} (kit's OUTBOX_MIGRATIONS, in that order)",
            wanted[0],
            wanted[1..].join(", ")
        ))
    }
}

/// Where a live feed of an outbox from "now" starts (a position to read after): just below the
/// oldest transaction still running. Every event positioned below it is already visible; one
/// at or above it may still commit. The newest visible event is no start: an event whose
/// writer began earlier and commits later is positioned below it and would be skipped. A few
/// events committed just before the feed started may come first.
pub async fn live_feed_start(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    let (xmin,): (i64,) =
        sqlx::query_as("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?;
    Ok((xmin - 1, i64::MAX))
}

/// Cursor table of a consuming service: one row per stream it follows.
pub const CURSOR_MIGRATION: Migration = Migration {
    name: "kit_0002_event_cursors",
    sql: "CREATE TABLE {schema}.event_cursors (
              source text PRIMARY KEY,
              txid bigint NOT NULL DEFAULT 0,
              seq bigint NOT NULL DEFAULT 0,
              updated_at timestamptz NOT NULL DEFAULT now()
          );",
};

pub const DEFAULT_BATCH: u32 = 500;

/// How a consumer's transaction plans, set at its `BEGIN`: generic plans (made at a
/// statement's first run on a connection, then kept), and no sequential scan where an index
/// serves, so that a plan made while a table was nearly empty still reads by key once it is
/// large.
pub const CONSUMER_PLANS: &str =
    "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off;";

/// How event streams trade latency for fewer, larger transactions (`EVENT_SETTLE_BUSY`,
/// `EVENT_APPLY_CHUNK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTuning {
    /// How long a stream that just sent events waits after the next commit before it reads
    /// on, so that commits close together go out as one batch.
    pub settle_busy: Duration,
    /// Most events a consumer applies in one transaction.
    pub apply_chunk: usize,
}

impl EventTuning {
    /// Longest settle accepted: past it a stream would wait longer than it polls.
    pub const MAX_SETTLE: Duration = POLL_FALLBACK;
    /// Largest chunk accepted: a stream's largest batch.
    pub const MAX_CHUNK: usize = MAX_BATCH as usize;
}

impl Default for EventTuning {
    fn default() -> Self {
        Self {
            settle_busy: Duration::from_millis(50),
            apply_chunk: 128,
        }
    }
}
const MAX_BATCH: u32 = 2000;
const POLL_FALLBACK: Duration = Duration::from_millis(200);
/// How long a woken stream that was idle waits for more commits before reading.
const SETTLE_IDLE: Duration = Duration::from_millis(2);
/// How long the commits of a replica gather before one NOTIFY tells the other replicas: a
/// replica's own streams are woken at once, the others up to this much later (at half load
/// every 5 ms was a notification for every 2.6 complaints, each a transaction of its own).
const NOTIFY_COALESCE: Duration = Duration::from_millis(20);
/// How often a replica tells the other replicas of its producer that it is there (a NOTIFY
/// without events). Commits are announced only while another replica was heard within
/// [`PEER_TTL`]: a lone replica sends no NOTIFY per commit (each one was a transaction, and
/// woke every listening backend of the database).
const PRESENCE: Duration = Duration::from_secs(2);
const PEER_TTL: Duration = Duration::from_secs(5);
/// How often an idle stream tells its consumer it is caught up.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Most events the shared tail keeps (a subscription further behind reads on its own).
const TAIL_CAPACITY: usize = 2 * DEFAULT_BATCH as usize;

/// Name of an event's payload, stored beside it for operators.
pub fn payload_name(payload: &Payload) -> &'static str {
    match payload {
        Payload::ComplaintAccepted(_) => "ComplaintAccepted",
        Payload::ComplaintReclassified(_) => "ComplaintReclassified",
        Payload::ComplaintRejected(_) => "ComplaintRejected",
        Payload::ComplaintRepeatContact(_) => "ComplaintRepeatContact",
        Payload::CaseOpened(_) => "CaseOpened",
        Payload::CaseAcknowledged(_) => "CaseAcknowledged",
        Payload::CaseStatusChanged(_) => "CaseStatusChanged",
        Payload::CaseAssigned(_) => "CaseAssigned",
        Payload::CaseEscalated(_) => "CaseEscalated",
        Payload::CaseReclassified(_) => "CaseReclassified",
        Payload::CaseSubTaskChanged(_) => "CaseSubTaskChanged",
        Payload::CaseCustomerContacted(_) => "CaseCustomerContacted",
        Payload::CaseProblemLinked(_) => "CaseProblemLinked",
        Payload::ClockStarted(_) => "ClockStarted",
        Payload::ClockMet(_) => "ClockMet",
        Payload::ClockWarning(_) => "ClockWarning",
        Payload::ClockBreached(_) => "ClockBreached",
        Payload::SurveyInvitationIssued(_) => "SurveyInvitationIssued",
        Payload::SurveyAnswered(_) => "SurveyAnswered",
        Payload::SurveyReturnVisitAttempted(_) => "SurveyReturnVisitAttempted",
    }
}

tokio::task_local! {
    /// Set while a consumer applies a batch; true once the batch wrote an event.
    static BATCH_PRODUCED: std::cell::Cell<bool>;
}

/// An encoded event and the columns stored beside it in the outbox.
#[derive(Clone, Debug)]
pub struct EncodedEvent {
    pub event_id: uuid::Uuid,
    pub aggregate_id: String,
    pub event_type: &'static str,
    pub occurred_at: chrono::DateTime<Utc>,
    /// The whole `Event`, protobuf-encoded.
    pub payload: Vec<u8>,
}

/// Binds the five parameters of [`EventLog::insert_one_sql`], in its order.
pub fn bind_event<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    event: &'q EncodedEvent,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(event.event_id)
        .bind(&event.aggregate_id)
        .bind(event.event_type)
        .bind(event.occurred_at)
        .bind(&event.payload)
}

/// The start of a replica's "I am here" notification (then its name).
const PRESENT: &str = "present:";

/// What a notification on a producer's channel says, to the replica that receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notice<'p> {
    /// This replica's own (its streams were woken at the commit).
    Own,
    /// Another replica (named) is there.
    Present(&'p str),
    /// Another replica (named) committed events.
    Committed(&'p str),
}

impl<'p> Notice<'p> {
    fn of(payload: &'p str, own: &str) -> Self {
        match payload.strip_prefix(PRESENT) {
            Some(replica) if replica == own => Notice::Own,
            Some(replica) => Notice::Present(replica),
            None if payload == own => Notice::Own,
            None => Notice::Committed(payload),
        }
    }
}

/// The other replicas of the producer, by name, with when each was last heard from.
#[derive(Debug, Default)]
struct Peers {
    heard: std::collections::HashMap<String, std::time::Instant>,
}

impl Peers {
    /// Whether another replica was heard within [`PEER_TTL`] of `now`.
    fn present(&self, now: std::time::Instant) -> bool {
        self.heard
            .values()
            .any(|at| now.saturating_duration_since(*at) < PEER_TTL)
    }

    /// Records a notification from `replica`; true when it was not there before (a newcomer,
    /// or one back after a silence, should hear at once that this one is there too). Replicas
    /// silent for longer than [`PEER_TTL`] are forgotten.
    fn heard(&mut self, replica: &str, now: std::time::Instant) -> bool {
        self.heard
            .retain(|_, at| now.saturating_duration_since(*at) < PEER_TTL);
        self.heard.insert(replica.to_owned(), now).is_none()
    }
}

/// The producer side: appends events inside the caller's transaction and serves them.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<EventLogInner>,
}

struct EventLogInner {
    schema: String,
    producer: &'static str,
    /// Wakes the task that tells other replicas (LISTEN/NOTIFY) that events committed.
    notify_peers: tokio::sync::Notify,
    /// This replica's name in its notifications, so that it ignores its own.
    replica: String,
    /// Notifications received from other replicas.
    peer_wakeups: std::sync::atomic::AtomicU64,
    /// When another replica was last heard from.
    peers: std::sync::Mutex<Peers>,
    /// Wakes the notifying task to say this replica is there (a new peer was heard).
    greet_peers: tokio::sync::Notify,
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
    insert_many_sql: String,
    fetch_sql: String,
    committed: watch::Sender<u64>,
    /// The newest events read, shared by every subscription at the head of the log.
    tail: std::sync::Mutex<Tail>,
    /// Held while one subscription reads past the tail for all of them.
    tail_reader: tokio::sync::Mutex<()>,
}

impl EventLog {
    pub fn new(schema: &str, producer: &'static str) -> Self {
        let (committed, _) = watch::channel(0);
        Self {
            inner: Arc::new(EventLogInner {
                schema: schema.to_owned(),
                producer,
                notify_peers: tokio::sync::Notify::new(),
                replica: uuid::Uuid::new_v4().simple().to_string(),
                peer_wakeups: std::sync::atomic::AtomicU64::new(0),
                peers: std::sync::Mutex::new(Peers::default()),
                greet_peers: tokio::sync::Notify::new(),
                metrics: std::sync::OnceLock::new(),
                // Sequence numbers follow the order given (ordinality).
                insert_many_sql: format!(
                    "INSERT INTO {schema}.event_outbox (event_id, aggregate_id, event_type, occurred_at, payload)
                     SELECT e.id, e.aggregate, e.kind, e.at, e.payload
                     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::bytea[])
                          WITH ORDINALITY AS e(id, aggregate, kind, at, payload, n)
                     ORDER BY e.n"
                ),
                fetch_sql: format!(
                    "SELECT txid, seq, payload FROM {schema}.event_outbox
                     WHERE (txid, seq) > ($1, $2)
                       AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                     ORDER BY txid, seq
                     LIMIT $3"
                ),
                committed,
                tail: std::sync::Mutex::new(Tail::default()),
                tail_reader: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// An event ready for the outbox, for a caller that inserts it as part of its own
    /// statement (e.g. a data-modifying CTE beside the row it announces); call
    /// [`EventLog::produced`] once it is written.
    pub fn encode(&self, aggregate_id: &str, traceparent: &str, payload: Payload) -> EncodedEvent {
        let event_id = uuid::Uuid::now_v7();
        let occurred_at = Utc::now();
        let event_type = payload_name(&payload);
        // Without an explicit trace, the event continues the trace of the work writing it.
        let traceparent = if traceparent.is_empty() {
            crate::telemetry::current_traceparent()
        } else {
            traceparent.to_owned()
        };
        let event = Event {
            event_id: event_id.to_string(),
            position: None,
            aggregate_id: aggregate_id.to_owned(),
            occurred_at: Some(crate::time::to_timestamp(occurred_at)),
            traceparent,
            producer: self.inner.producer.to_owned(),
            payload: Some(payload),
        };
        EncodedEvent {
            event_id,
            aggregate_id: aggregate_id.to_owned(),
            event_type,
            occurred_at,
            payload: event.encode_to_vec(),
        }
    }

    /// Counts an event written (the `events_produced_total` series).
    pub fn produced(&self, event_type: &'static str) {
        // Inside a consumer's batch: its commit must wake this log's subscribers.
        let _ = BATCH_PRODUCED.try_with(|produced| produced.set(true));
        if let Some(metrics) = self.inner.metrics.get() {
            metrics
                .events_produced
                .with_label_values(&[self.inner.producer, event_type])
                .inc();
        }
    }

    /// Writes an event in the caller's transaction; it becomes visible when that commits.
    /// Call [`EventLog::committed`] after the commit to wake subscribers at once.
    pub async fn append(
        &self,
        conn: &mut PgConnection,
        aggregate_id: &str,
        traceparent: &str,
        payload: Payload,
    ) -> Result<uuid::Uuid, sqlx::Error> {
        let ids = self
            .append_all(
                conn,
                vec![(aggregate_id.to_owned(), traceparent.to_owned(), payload)],
            )
            .await?;
        Ok(ids[0])
    }

    /// Writes several events in the caller's transaction with one statement, in the order
    /// given: (aggregate id, traceparent, payload) each, as [`EventLog::append`] would.
    pub async fn append_all(
        &self,
        conn: &mut PgConnection,
        events: Vec<(String, String, Payload)>,
    ) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let encoded: Vec<EncodedEvent> = events
            .into_iter()
            .map(|(aggregate_id, traceparent, payload)| {
                self.encode(&aggregate_id, &traceparent, payload)
            })
            .collect();
        let ids: Vec<uuid::Uuid> = encoded.iter().map(|e| e.event_id).collect();
        let aggregates: Vec<&str> = encoded.iter().map(|e| e.aggregate_id.as_str()).collect();
        let types: Vec<&str> = encoded.iter().map(|e| e.event_type).collect();
        let times: Vec<chrono::DateTime<Utc>> = encoded.iter().map(|e| e.occurred_at).collect();
        let payloads: Vec<&[u8]> = encoded.iter().map(|e| e.payload.as_slice()).collect();
        sqlx::query(&self.inner.insert_many_sql)
            .bind(&ids)
            .bind(&aggregates)
            .bind(&types)
            .bind(&times)
            .bind(&payloads)
            .execute(conn)
            .await?;
        for event in &encoded {
            self.produced(event.event_type);
        }
        Ok(ids)
    }

    /// An `INSERT … SELECT $first…$first+4 FROM {source}` writing one encoded event into this
    /// log, for a producer that writes a change and its event with one statement (as a CTE
    /// over the change's `RETURNING`: no row there, no event). Bind with [`bind_event`]; call
    /// [`EventLog::produced`] and [`EventLog::committed`] once it committed.
    pub fn insert_one_sql(&self, source: &str, first: usize) -> String {
        let params: Vec<String> = (first..first + 5).map(|n| format!("${n}")).collect();
        format!(
            "INSERT INTO {}.event_outbox (event_id, aggregate_id, event_type, occurred_at, payload)
             SELECT {} FROM {source}",
            self.inner.schema,
            params.join(", ")
        )
    }

    /// Wakes the subscription streams after a commit that wrote events.
    pub fn committed(&self) {
        self.wake_local();
        self.inner.notify_peers.notify_one();
    }

    fn wake_local(&self) {
        self.inner.committed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn channel(&self) -> String {
        format!("complaints_events_{}", self.inner.schema)
    }

    /// Notifications received from other replicas of this producer (each woke its streams).
    pub fn peer_wakeups(&self) -> u64 {
        self.inner
            .peer_wakeups
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether another replica of this producer was heard from lately.
    fn peers_present(&self) -> bool {
        self.inner
            .peers
            .lock()
            .map(|peers| peers.present(std::time::Instant::now()))
            .unwrap_or(true)
    }

    /// Cross-replica wake-up: while other replicas are there, commits on this replica are
    /// announced with one NOTIFY at most every [`NOTIFY_COALESCE`] (outside the writers'
    /// transactions, so commits never queue on the notification lock), and announcements from
    /// other replicas wake this replica's streams; its own are ignored (its streams were woken
    /// at the commit). Each replica says it is there every [`PRESENCE`], and at once when it
    /// hears a new one. Streams still poll every 200 ms as a fallback.
    fn spawn_peer_wakeups(&self, pool: PgPool, shutdown: Shutdown) {
        let log = self.clone();
        let (pool_n, shutdown_n) = (pool.clone(), shutdown.clone());
        tokio::spawn(async move {
            // A wake-up is only a hint (a lost one costs a poll), so its transaction does not
            // wait for the WAL flush: a NOTIFY takes a transaction id, and each one was a
            // durable commit of its own. One simple query, never prepared.
            let notify = |payload: String| {
                format!(
                    "SET LOCAL synchronous_commit = off; SELECT pg_notify('{}', '{payload}')",
                    log.channel()
                )
            };
            let announce = notify(log.inner.replica.clone());
            let present = notify(format!("{PRESENT}{}", log.inner.replica));
            let mut presence = tokio::time::interval(PRESENCE);
            presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut connection = crate::db::HeldConnection::new(pool_n);
            loop {
                let sql = tokio::select! {
                    _ = log.inner.notify_peers.notified() => {
                        if !log.peers_present() {
                            continue;
                        }
                        tokio::time::sleep(NOTIFY_COALESCE).await;
                        &announce
                    }
                    _ = presence.tick() => &present,
                    _ = log.inner.greet_peers.notified() => &present,
                    _ = tokio::time::sleep(Duration::from_secs(1)), if connection.is_held() => {
                        connection.release();
                        continue;
                    }
                    _ = shutdown_n.wait() => return,
                };
                let sent = match connection.get().await {
                    Ok(conn) => sqlx::Executor::execute(conn, sql.as_str()).await.map(drop),
                    Err(error) => Err(error),
                };
                match sent {
                    Ok(()) => connection.finish(),
                    Err(error) => {
                        connection.release();
                        tracing::debug!(%error, "event notification not sent; peers will poll");
                    }
                }
            }
        });
        let log = self.clone();
        tokio::spawn(async move {
            while !shutdown.is_triggered() {
                let listening = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen(&log.channel()).await?;
                    loop {
                        let notification = listener.recv().await?;
                        let notice = Notice::of(notification.payload(), &log.inner.replica);
                        let replica = match notice {
                            Notice::Own => continue,
                            Notice::Present(replica) | Notice::Committed(replica) => replica,
                        };
                        let new_peer = log
                            .inner
                            .peers
                            .lock()
                            .map(|mut peers| peers.heard(replica, std::time::Instant::now()))
                            .unwrap_or(false);
                        if new_peer {
                            log.inner.greet_peers.notify_one();
                        }
                        if matches!(notice, Notice::Committed(_)) {
                            log.inner
                                .peer_wakeups
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            log.wake_local();
                        }
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                tokio::select! {
                    result = listening => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "event listener interrupted; reconnecting");
                        }
                    }
                    _ = shutdown.wait() => return,
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Deletes the oldest events, up to the first one younger than `retention`, and remembers
    /// the newest position deleted. An old event behind a younger one (written by a
    /// transaction that committed late) waits for the next pass: no event is deleted before
    /// its time. Only released events are considered (below the oldest transaction still
    /// writing), so none can commit below the mark afterwards.
    pub async fn purge(&self, pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
        let schema = &self.inner.schema;
        let cutoff = Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(30));
        let mut tx = pool.begin().await?;
        // Both read the primary key: the first from the oldest end, through the events being
        // deleted anyway, to the first young or unreleased one; the second one entry back.
        // (`OFFSET 0` keeps the horizon a value computed once, not an expression per row.)
        let (horizon, young_txid, young_seq): (i64, Option<i64>, Option<i64>) =
            sqlx::query_as(&format!(
                "SELECT h.horizon, b.txid, b.seq
                 FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon OFFSET 0) h
                 LEFT JOIN LATERAL (
                     SELECT txid, seq FROM {schema}.event_outbox
                     WHERE occurred_at >= $1 OR txid >= h.horizon
                     ORDER BY txid, seq LIMIT 1
                 ) b ON true"
            ))
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?;
        let (below_txid, below_seq) = match (young_txid, young_seq) {
            (Some(txid), Some(seq)) if txid < horizon => (txid, seq),
            _ => (horizon, 0),
        };
        let newest: Option<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT txid, seq FROM {schema}.event_outbox WHERE (txid, seq) < ($1, $2)
             ORDER BY txid DESC, seq DESC LIMIT 1"
        ))
        .bind(below_txid)
        .bind(below_seq)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((txid, seq)) = newest else {
            return Ok(0);
        };
        // Delete by position, so no event below the recorded mark can remain and be missed.
        let deleted = sqlx::query(&format!(
            "DELETE FROM {schema}.event_outbox WHERE (txid, seq) <= ($1, $2)"
        ))
        .bind(txid)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(&format!(
            "INSERT INTO {schema}.event_retention (txid, seq, purged_at) VALUES ($1, $2, now())
             ON CONFLICT (singleton) DO UPDATE SET txid = EXCLUDED.txid, seq = EXCLUDED.seq, purged_at = now()"
        ))
        .bind(txid)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// The newest position deleted by retention, if any.
    pub async fn retention_mark(&self, pool: &PgPool) -> Result<Option<(i64, i64)>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT txid, seq FROM {}.event_retention",
            self.inner.schema
        ))
        .fetch_optional(pool)
        .await
    }

    fn spawn_retention(&self, pool: PgPool, retention: Duration, shutdown: Shutdown) {
        let log = self.clone();
        tokio::spawn(async move {
            loop {
                match log.purge(&pool, retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "events past retention deleted"),
                    Err(error) => tracing::warn!(%error, "event retention failed; will retry"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    _ = shutdown.wait() => return,
                }
            }
        });
    }

    /// Up to `limit` events released after `after`, for a subscription.
    ///
    /// Subscriptions at the head of the log (every consumer that keeps up) share their reads:
    /// the first to find nothing new in the tail reads the database for all of them, and the
    /// others take what it read. A subscription behind the tail (catching up, or a new
    /// consumer replaying from zero) reads on its own.
    ///
    /// Also says whether the subscriber is caught up with them: fewer than `limit` events from
    /// the database, or from a tail whose end was read a moment ago (within the poll interval,
    /// as fresh as a polling stream ever is). A tail read long ago may end before what has been
    /// released since, so a subscription served from it reads on.
    pub async fn next_after(
        &self,
        pool: &PgPool,
        after: (i64, i64),
        limit: i64,
    ) -> Result<(Vec<Event>, bool), sqlx::Error> {
        let short = |events: &Vec<Event>| events.len() < limit as usize;
        let served = |after| {
            let tail = self.inner.tail.lock().expect("tail");
            match tail.serve(after, limit as usize) {
                Served::Events(events) => {
                    let caught_up = tail.is_current(std::time::Instant::now()) && short(&events);
                    Served::Events((events, caught_up))
                }
                Served::AtEnd => Served::AtEnd,
                Served::Elsewhere => Served::Elsewhere,
            }
        };
        let alone = |events: Vec<Event>| {
            let caught_up = short(&events);
            (events, caught_up)
        };
        match served(after) {
            Served::Events(batch) => return Ok(batch),
            Served::Elsewhere => return self.read_after(pool, after, limit).await.map(alone),
            Served::AtEnd => {}
        }
        let _reader = self.inner.tail_reader.lock().await;
        // Another subscription may have read while this one waited.
        match served(after) {
            Served::Events(batch) => return Ok(batch),
            Served::Elsewhere => return self.read_after(pool, after, limit).await.map(alone),
            Served::AtEnd => {}
        }
        let events = self.read_after(pool, after, limit).await?;
        // Dated when the read ended: a slow read under load must not make the tail stale at
        // once, or every follower would read on for itself instead of sharing it.
        let ended = std::time::Instant::now();
        let mut tail = self.inner.tail.lock().expect("tail");
        if tail.append(after, &events, TAIL_CAPACITY) {
            tail.end_read = Some(ended);
        }
        drop(tail);
        Ok(alone(events))
    }

    /// Reads up to `limit` events released after `after`.
    pub async fn read_after<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        after: (i64, i64),
        limit: i64,
    ) -> Result<Vec<Event>, sqlx::Error> {
        let rows = sqlx::query(&self.inner.fetch_sql)
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(db)
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let txid: i64 = row.try_get(0)?;
            let seq: i64 = row.try_get(1)?;
            let bytes: Vec<u8> = row.try_get(2)?;
            let mut event =
                Event::decode(bytes.as_slice()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            event.position = Some(Position {
                transaction_id: txid as u64,
                sequence: seq as u64,
            });
            events.push(event);
        }
        Ok(events)
    }

    /// The `EventStream` gRPC service over this log, behind the auth interceptor.
    pub fn service(
        &self,
        context: &ServiceContext,
    ) -> InterceptedService<EventStreamServer<EventStreamService>, AuthInterceptor> {
        if self.inner.metrics.set(context.metrics.clone()).is_ok() {
            // First call for this log: start its background work once.
            self.spawn_peer_wakeups(context.pool.clone(), context.shutdown.clone());
            self.spawn_retention(
                context.pool.clone(),
                context.event_retention,
                context.shutdown.clone(),
            );
        }
        context.authenticated(EventStreamServer::new(EventStreamService {
            log: self.clone(),
            pool: context.pool.clone(),
            shutdown: context.shutdown.clone(),
            settle_busy: context.event_tuning.settle_busy,
        }))
    }
}

/// Serves `Subscribe` for one producer.
pub struct EventStreamService {
    log: EventLog,
    pool: PgPool,
    shutdown: Shutdown,
    settle_busy: Duration,
}

#[tonic::async_trait]
impl EventStream for EventStreamService {
    type SubscribeStream = ReceiverStream<Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        auth::principal(&request)?.require_any(&[Role::Service, Role::Admin])?;
        let request = request.into_inner();
        let mut position = request
            .after
            .map(|p| (p.transaction_id as i64, p.sequence as i64))
            .unwrap_or((0, 0));
        if let Some(mark) = self
            .log
            .retention_mark(&self.pool)
            .await
            .map_err(|e| crate::grpc::storage(&e))?
            && position < mark
        {
            return Err(Status::out_of_range(format!(
                "events up to position ({}, {}) were deleted by retention; a consumer at ({}, {}) \
                 cannot continue without a gap and must be re-seeded",
                mark.0, mark.1, position.0, position.1
            )));
        }
        let limit = match request.max_batch_size {
            0 => DEFAULT_BATCH,
            n => n.min(MAX_BATCH),
        } as i64;
        let (tx, rx) = mpsc::channel(2);
        let log = self.log.clone();
        let pool = self.pool.clone();
        let shutdown = self.shutdown.clone();
        let settle_busy = self.settle_busy;
        let mut wake = log.inner.committed.subscribe();
        tokio::spawn(async move {
            let mut idle_since = tokio::time::Instant::now();
            // Whether the subscriber has yet to hear that it is caught up (a new subscription
            // hears it at once, even from an empty log).
            let mut owed_caught_up = true;
            loop {
                let (events, caught_up) = match log.next_after(&pool, position, limit).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        let _ = tx.send(Err(crate::grpc::storage(&error))).await;
                        return;
                    }
                };
                let busy = !events.is_empty();
                if let Some(last) = events.last().and_then(|e| e.position) {
                    position = (last.transaction_id as i64, last.sequence as i64);
                    let response = SubscribeResponse { events, caught_up };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                    idle_since = tokio::time::Instant::now();
                    owed_caught_up = !caught_up;
                    if !caught_up {
                        continue;
                    }
                } else if owed_caught_up || idle_since.elapsed() >= HEARTBEAT {
                    let heartbeat = SubscribeResponse {
                        events: Vec::new(),
                        caught_up: true,
                    };
                    if tx.send(Ok(heartbeat)).await.is_err() {
                        return;
                    }
                    idle_since = tokio::time::Instant::now();
                    owed_caught_up = false;
                }
                tokio::select! {
                    _ = wake.changed() => {
                        // Let transactions that commit close together settle into one batch:
                        // briefly when the stream was idle (latency), longer while events keep
                        // coming (one read per batch instead of one per commit).
                        tokio::time::sleep(if busy { settle_busy } else { SETTLE_IDLE }).await;
                    }
                    _ = tokio::time::sleep(POLL_FALLBACK) => {}
                    _ = tx.closed() => return,
                    _ = shutdown.wait() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What a consuming service does with each event, inside the transaction that also moves the
/// cursor: effects and cursor commit together, so each event takes effect exactly once.
pub trait EventHandler: Send + Sync + 'static {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

    /// Whether the handler applies `event` through [`EventHandler::apply_set`], together with
    /// the other events of the chunk for which this also holds (its hot event kinds; a run may
    /// mix kinds if the handler says yes to several; see `apply_set` for the order).
    fn in_sets(&self, _event: &Event) -> bool {
        false
    }

    /// Applies a run of events for which [`EventHandler::in_sets`] holds, in order, with
    /// set-based statements: a few round trips per run instead of several per event. Runs
    /// inside a span linked to every event's trace. A chunk's set events go first, ahead of
    /// other aggregates' events that came before them (never of their own aggregate's), so
    /// effects of events of different aggregates must not depend on each other's order.
    fn apply_set<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        run: &'a [Incoming<'a>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(apply_each(self, tx, run))
    }

    /// Runs after a batch that wrote events committed (e.g. to wake this service's own
    /// subscribers); batches that wrote none skip it, so they wake nobody.
    fn after_commit(&self) {}
}

/// A consumer's first wait before it resumes after an interruption.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Its longest wait.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a consumer must have followed its stream for an interruption to count as a new
/// one (first wait again) rather than one more of a series (twice the last wait).
const STEADY_FOR: Duration = Duration::from_secs(30);

/// The wait before resuming after an interruption, given the last wait (none: the first
/// interruption) and how long the stream was followed since: doubling while interruptions
/// come in a row (the producer is down), back to the first wait after a steady spell (a
/// producer restarting once a week is not kept waiting 5 s because of last week's restarts).
fn backoff_after(last: Option<Duration>, followed_for: Duration) -> Duration {
    match last {
        Some(last) if followed_for < STEADY_FOR => (last * 2).min(MAX_BACKOFF),
        _ => FIRST_BACKOFF,
    }
}

/// The order a chunk is applied in: first, as one run, every event the handler takes in sets
/// (`in_sets`) that no event of the same aggregate left behind precedes; then the others, in
/// their order. Each aggregate's events keep their order (the delivery contract); only
/// events of different aggregates change places, so a chunk of openings with a few repeat
/// contacts among them is one set-based run instead of one per gap. Events without an
/// aggregate id count as one aggregate.
fn set_first<'e>(
    events: Vec<Incoming<'e>>,
    in_sets: impl Fn(&Event) -> bool,
) -> (Vec<Incoming<'e>>, Vec<Incoming<'e>>) {
    let mut left_behind: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let (mut sets, mut rest) = (Vec::new(), Vec::new());
    for incoming in events {
        let event: &'e Event = incoming.event;
        let aggregate = event.aggregate_id.as_str();
        if in_sets(event) && !left_behind.contains(aggregate) {
            sets.push(incoming);
        } else {
            left_behind.insert(aggregate);
            rest.push(incoming);
        }
    }
    (sets, rest)
}

/// An event to apply, with the span of its processing (a child of the trace it carries).
pub struct Incoming<'e> {
    pub event: &'e Event,
    pub span: tracing::Span,
}

/// Applies `events` one by one through [`EventHandler::apply`], each in its span; an error
/// names the event it failed on.
async fn apply_each<H: EventHandler + ?Sized>(
    handler: &H,
    tx: &mut PgConnection,
    events: &[Incoming<'_>],
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tracing::Instrument as _;
    for incoming in events {
        handler
            .apply(tx, incoming.event)
            .instrument(incoming.span.clone())
            .await
            .with_context(|| format!("applying event {}", incoming.event.event_id))?;
    }
    Ok(())
}

/// The span of applying a run of events with set-based statements: a child of the first
/// event's span, linked to the spans of the others, so each complaint's trace reaches the
/// statements that applied it.
fn batch_span(run: &[Incoming<'_>]) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parent = run.first().and_then(|i| i.span.id());
    // A run may mix kinds (see `in_sets`): name them all.
    let mut kinds: Vec<&str> = run
        .iter()
        .map(|i| {
            i.event
                .payload
                .as_ref()
                .map(payload_name)
                .unwrap_or("Unknown")
        })
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    let span = tracing::info_span!(
        parent: parent,
        "event.batch",
        otel.name = %format!("process {} ×{}", kinds.join("+"), run.len()),
        messaging.operation.type = "process",
        messaging.batch.message_count = run.len(),
    );
    for incoming in run.iter().skip(1) {
        let context = incoming.span.context();
        let linked = context.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
    span
}

/// Follows one producer's stream into one handler.
pub struct Consumer<H> {
    /// Shared by consumers whose transactions update the same rows: they then apply one at a
    /// time instead of waiting on each other's row locks inside long transactions.
    serial: Option<Arc<tokio::sync::Mutex<()>>>,
    name: &'static str,
    metrics: Arc<crate::metrics::Metrics>,
    schema: String,
    source: String,
    channel: Channel,
    bearer: BearerToken,
    pool: PgPool,
    handler: Arc<H>,
    shutdown: Shutdown,
    apply_chunk: usize,
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("another replica moved the cursor")]
    CursorMoved,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("handler failed: {0:#}")]
    Handler(anyhow::Error),
}

impl<H: EventHandler> Consumer<H> {
    /// `source` names the producer (e.g. "intake"); `url` is its gRPC address.
    pub fn new(
        context: &ServiceContext,
        schema: &str,
        source: &str,
        url: &str,
        handler: Arc<H>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            serial: None,
            name: context.name,
            metrics: context.metrics.clone(),
            schema: schema.to_owned(),
            source: source.to_owned(),
            channel: context.channel(url)?,
            bearer: context.service_bearer()?,
            pool: context.pool.clone(),
            handler,
            shutdown: context.shutdown.clone(),
            apply_chunk: context.event_tuning.apply_chunk,
        })
    }

    /// Applies this consumer's transactions one at a time with the others sharing `serial`.
    pub fn serialised_with(mut self, serial: Arc<tokio::sync::Mutex<()>>) -> Self {
        self.serial = Some(serial);
        self
    }

    /// Runs until shutdown, reconnecting with back-off on any failure.
    pub async fn run(self) {
        let mut backoff = None;
        while !self.shutdown.is_triggered() {
            let following = tokio::time::Instant::now();
            match self.follow().await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(source = %self.source, error = %error, "event consumer interrupted; resuming from the stored cursor");
                }
            }
            let wait = backoff_after(backoff, following.elapsed());
            backoff = Some(wait);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.wait() => return,
            }
        }
    }

    async fn follow(&self) -> anyhow::Result<()> {
        let mut cursor = self.load_cursor().await?;
        let mut client =
            EventStreamClient::with_interceptor(self.channel.clone(), self.bearer.clone());
        let mut stream = client
            .subscribe(SubscribeRequest {
                after: Some(Position {
                    transaction_id: cursor.0 as u64,
                    sequence: cursor.1 as u64,
                }),
                max_batch_size: DEFAULT_BATCH,
            })
            .await?
            .into_inner();
        // Kept while batches keep coming, given back when the stream goes quiet (an empty
        // batch is a heartbeat: nothing new for seconds) and dropped with any error.
        let mut connection = crate::db::HeldConnection::new(self.pool.clone());
        loop {
            let message = tokio::select! {
                message = stream.message() => message?,
                _ = self.shutdown.wait() => return Ok(()),
            };
            let Some(batch) = message else {
                anyhow::bail!("the producer closed the stream");
            };
            let before = cursor;
            // Short transactions: a consumer's transaction holds back the release of every
            // event committed after it began (positions are released below the oldest running
            // writer), so a long batch would stall every stream in the cluster.
            if batch.events.is_empty() {
                cursor = self
                    .apply_batch(&mut connection, cursor, &batch.events)
                    .await?;
                connection.release();
            }
            for chunk in batch.events.chunks(self.apply_chunk.max(1)) {
                let _turn = match &self.serial {
                    Some(serial) => Some(serial.lock().await),
                    None => None,
                };
                let (applied, produced) = BATCH_PRODUCED
                    .scope(std::cell::Cell::new(false), async {
                        let applied = self.apply_batch(&mut connection, cursor, chunk).await;
                        (applied, BATCH_PRODUCED.with(|p| p.get()))
                    })
                    .await;
                cursor = applied?;
                connection.finish();
                if produced {
                    self.handler.after_commit();
                }
            }
            self.record_progress(&batch, before, cursor);
        }
    }

    /// The span of applying one event: a child of the complaint's trace the event carries.
    fn event_span(&self, event: &Event) -> tracing::Span {
        let event_type = event
            .payload
            .as_ref()
            .map(payload_name)
            .unwrap_or("Unknown");
        let span = tracing::info_span!(
            "event.process",
            otel.name = %format!("process {event_type}"),
            otel.kind = "consumer",
            messaging.system = "complaints",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.source.name = %self.source,
            messaging.consumer.group.name = %self.name,
            messaging.message.id = %event.event_id,
            complaint.id = tracing::field::Empty,
            case.id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        crate::telemetry::continue_trace(&span, &event.traceparent);
        crate::telemetry::record_ids(&span);
        let id_field = if self.source == "intake" {
            "complaint.id"
        } else {
            "case.id"
        };
        span.record(id_field, event.aggregate_id.as_str());
        span
    }

    fn record_progress(&self, batch: &SubscribeResponse, before: (i64, i64), after: (i64, i64)) {
        let labels = [self.name, self.source.as_str()];
        let applied = batch
            .events
            .iter()
            .filter_map(|e| e.position)
            .filter(|p| {
                let p = (p.transaction_id as i64, p.sequence as i64);
                p > before && p <= after
            })
            .count();
        self.metrics
            .consumer_applied
            .with_label_values(&labels)
            .inc_by(applied as u64);
        // How far behind the producer this consumer runs: the age of the newest event it just
        // applied (anything still waiting is at least that old). A batch that was "caught up"
        // when the producer read it may wait behind a slow consumer, so only an empty heartbeat
        // proves there is nothing to apply.
        let lag = match batch.events.last() {
            None => 0.0,
            Some(last) => last
                .occurred_at
                .as_ref()
                .and_then(crate::time::from_timestamp)
                .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0),
        };
        self.metrics
            .consumer_lag_seconds
            .with_label_values(&labels)
            .set(lag);
    }

    async fn load_cursor(&self) -> Result<(i64, i64), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO {}.event_cursors (source) VALUES ($1) ON CONFLICT (source) DO NOTHING",
            self.schema
        ))
        .bind(&self.source)
        .execute(&self.pool)
        .await?;
        sqlx::query_as(&format!(
            "SELECT txid, seq FROM {}.event_cursors WHERE source = $1",
            self.schema
        ))
        .bind(&self.source)
        .fetch_one(&self.pool)
        .await
    }

    async fn apply_batch(
        &self,
        connection: &mut crate::db::HeldConnection,
        cursor: (i64, i64),
        events: &[Event],
    ) -> Result<(i64, i64), BatchError> {
        let mut last = cursor;
        let mut fresh = Vec::with_capacity(events.len());
        for event in events {
            let Some(position) = event.position else {
                continue;
            };
            let position = (position.transaction_id as i64, position.sequence as i64);
            if position <= last {
                continue;
            }
            fresh.push(Incoming {
                event,
                span: self.event_span(event),
            });
            last = position;
        }
        // Compare-and-set, first, in the round trip that begins the transaction: the cursor
        // moves only from where this batch starts. Another replica that applied the same
        // events first has moved it (nothing is applied here); one still applying them holds
        // the row, and this batch waits for it to commit (then finds it moved) or abort.
        // Holding the cursor row first also orders this batch before a rebuild's rewind.
        // The batch's statements run their generic plans, made without sequential scans (see
        // "Plans" in `crate::db`): a handler's statements read and write rows by key, and a
        // plan made once per connection serves every batch, where planning each batch's
        // statements anew cost more than running most of them.
        let sql = format!(
            "BEGIN; {CONSUMER_PLANS} UPDATE {}.event_cursors SET txid = {}, seq = {}, updated_at = now()
             WHERE source = '{}' AND txid = {} AND seq = {} RETURNING 1",
            self.schema,
            last.0,
            last.1,
            self.source.replace('\'', "''"),
            cursor.0,
            cursor.1
        );
        let (mut tx, moved) = crate::db::RawTransaction::begin(connection, &sql).await?;
        if moved.is_empty() {
            tx.rollback().await;
            return Err(BatchError::CursorMoved);
        }
        let handler = &*self.handler;
        let (sets, rest) = set_first(fresh, |event| handler.in_sets(event));
        let runs = std::iter::once(&sets[..])
            .filter(|run| !run.is_empty())
            .chain(rest.chunk_by(|a, b| handler.in_sets(a.event) == handler.in_sets(b.event)));
        for run in runs {
            let applied = if handler.in_sets(run[0].event) {
                use tracing::Instrument as _;
                handler
                    .apply_set(&mut tx, run)
                    .instrument(batch_span(run))
                    .await
            } else {
                apply_each(handler, &mut tx, run).await
            };
            if let Err(error) = applied {
                // Rolled back on its connection, which is kept.
                tx.rollback().await;
                return Err(BatchError::Handler(error));
            }
        }
        tx.commit().await?;
        Ok(last)
    }
}

fn position_of(event: &Event) -> (i64, i64) {
    event
        .position
        .map(|p| (p.transaction_id as i64, p.sequence as i64))
        .unwrap_or((0, 0))
}

/// The newest events read from the outbox, in order. Invariant: `events` holds every released
/// event with a position in `(from, to]` and nothing else, which holds because reads return
/// every released event after a position, in order, up to their limit (see the module
/// comment), and the tail only grows by reads that start at its end.
#[derive(Default)]
struct Tail {
    /// `None` until the first read.
    range: Option<((i64, i64), (i64, i64))>,
    events: std::collections::VecDeque<Event>,
    /// When the read that reached the tail's end ended.
    end_read: Option<std::time::Instant>,
}

#[derive(Debug, PartialEq)]
enum Served<E = Vec<Event>> {
    /// Events after the position, from the tail.
    Events(E),
    /// The position is the tail's end, past it, or there is no tail yet: read on for everyone
    /// (a read from past the end starts the tail again there).
    AtEnd,
    /// The position is before the tail: read on its own.
    Elsewhere,
}

impl Tail {
    fn serve(&self, after: (i64, i64), limit: usize) -> Served {
        let Some((from, to)) = self.range else {
            return Served::AtEnd;
        };
        if after >= to {
            // Past the end: the subscriptions that kept this tail going have left (moved to
            // another replica, say), and one further on would otherwise read alone for good.
            return Served::AtEnd;
        }
        if after < from {
            return Served::Elsewhere;
        }
        let first = self.events.partition_point(|e| position_of(e) <= after);
        Served::Events(
            self.events
                .iter()
                .skip(first)
                .take(limit)
                .cloned()
                .collect(),
        )
    }

    /// Whether the tail's end was read within the poll interval before `now`.
    fn is_current(&self, now: std::time::Instant) -> bool {
        self.end_read
            .is_some_and(|ended| now.duration_since(ended) < POLL_FALLBACK)
    }

    /// Records what a read after `after` returned: extends the tail when the read started at
    /// its end, starts it again when the read started past it, and is ignored otherwise
    /// (returns whether it took the read).
    fn append(&mut self, after: (i64, i64), events: &[Event], capacity: usize) -> bool {
        let (from, to) = match self.range {
            Some((from, to)) if to == after => (from, to),
            Some((_, to)) if after < to => return false,
            _ => {
                self.events.clear();
                (after, after)
            }
        };
        let to = events.last().map(position_of).unwrap_or(to);
        self.events.extend(events.iter().cloned());
        let mut from = from;
        while self.events.len() > capacity {
            if let Some(dropped) = self.events.pop_front() {
                from = position_of(&dropped);
            }
        }
        self.range = Some((from, to));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_tells_its_own_notifications_from_its_peers_presence_and_commits() {
        assert_eq!(Notice::of("abc", "abc"), Notice::Own);
        assert_eq!(Notice::of("present:abc", "abc"), Notice::Own);
        assert_eq!(Notice::of("present:xyz", "abc"), Notice::Present("xyz"));
        assert_eq!(Notice::of("xyz", "abc"), Notice::Committed("xyz"));
    }

    #[test]
    fn peers_are_there_for_a_while_after_they_were_heard_and_a_newcomer_is_greeted_once() {
        let start = std::time::Instant::now();
        let mut peers = Peers::default();
        assert!(!peers.present(start), "nobody heard yet");
        assert!(peers.heard("a", start), "the first peer heard is new");
        assert!(peers.present(start + PEER_TTL / 2));
        assert!(
            !peers.heard("a", start + PEER_TTL / 2),
            "heard again: not new"
        );
        // A replica that replaced another (a restart) is new while the old one's time runs.
        assert!(peers.heard("b", start + PEER_TTL / 2), "another name: new");
        let later = start + PEER_TTL / 2 + PEER_TTL;
        assert!(!peers.present(later), "gone quiet for the whole TTL");
        assert!(peers.heard("a", later), "heard after a silence: new again");
    }

    #[test]
    fn a_list_with_the_outbox_holds_every_outbox_migration_together_and_in_order() {
        let own = Migration {
            name: "0001_own",
            sql: "",
        };
        for good in [
            vec![
                OUTBOX_MIGRATION,
                OUTBOX_INDEX_MIGRATION,
                OUTBOX_STATISTICS_MIGRATION,
                OUTBOX_POSITION_MIGRATION,
                CURSOR_MIGRATION,
                own,
            ],
            vec![CURSOR_MIGRATION, own],
            OUTBOX_MIGRATIONS.to_vec(),
        ] {
            assert_eq!(check_outbox_migrations(&good), Ok(()));
        }
        for bad in [
            vec![OUTBOX_MIGRATION, CURSOR_MIGRATION, own],
            vec![OUTBOX_MIGRATION, own, OUTBOX_INDEX_MIGRATION],
            vec![OUTBOX_INDEX_MIGRATION, OUTBOX_MIGRATION],
            // The list of an earlier release, without the statistics.
            vec![
                OUTBOX_MIGRATION,
                OUTBOX_INDEX_MIGRATION,
                CURSOR_MIGRATION,
                own,
            ],
            // The list of the release before, without the positions.
            vec![
                OUTBOX_MIGRATION,
                OUTBOX_INDEX_MIGRATION,
                OUTBOX_STATISTICS_MIGRATION,
                CURSOR_MIGRATION,
                own,
            ],
        ] {
            let problem = check_outbox_migrations(&bad).unwrap_err();
            assert!(
                problem.contains(
                    "kit_0003_event_outbox_indexes, kit_0004_event_outbox_statistics, \
                     kit_0005_event_outbox_position"
                ),
                "{problem}"
            );
        }
    }

    fn event(txid: i64, seq: i64) -> Event {
        Event {
            event_id: format!("{txid}-{seq}"),
            position: Some(Position {
                transaction_id: txid as u64,
                sequence: seq as u64,
            }),
            ..Default::default()
        }
    }

    fn ids(served: Served) -> Vec<String> {
        match served {
            Served::Events(events) => events.into_iter().map(|e| e.event_id).collect(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn a_consumer_waits_longer_for_each_interruption_in_a_row_and_briefly_after_a_steady_spell() {
        let quick = Duration::from_millis(50);
        let mut wait = None;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let next = backoff_after(wait, quick);
            waits.push(next.as_millis());
            wait = Some(next);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff_after(Some(MAX_BACKOFF), STEADY_FOR), FIRST_BACKOFF);
        assert_eq!(
            backoff_after(Some(MAX_BACKOFF), STEADY_FOR - quick),
            MAX_BACKOFF,
            "still a series"
        );
    }

    #[test]
    fn a_tail_is_current_only_within_the_poll_interval_of_its_last_read_at_the_end() {
        let mut tail = Tail::default();
        let start = std::time::Instant::now();
        assert!(!tail.is_current(start), "never read");
        assert!(tail.append((0, 0), &[event(1, 1)], 100));
        tail.end_read = Some(start);
        assert!(tail.is_current(start + POLL_FALLBACK / 2));
        assert!(!tail.is_current(start + POLL_FALLBACK));
        // Reads that do not reach its end (a subscription catching up) do not renew it.
        assert!(!tail.append((0, 0), &[event(1, 1)], 100));
        assert!(tail.append((1, 1), &[], 100));
    }

    #[test]
    fn an_empty_tail_asks_for_a_read_and_starts_where_it_began() {
        let mut tail = Tail::default();
        assert_eq!(tail.serve((5, 1), 10), Served::AtEnd);
        tail.append((5, 1), &[event(5, 2), event(7, 3)], 100);
        // The subscription that read, and one that was where it started, both continue.
        assert_eq!(tail.serve((7, 3), 10), Served::AtEnd);
        assert_eq!(ids(tail.serve((5, 1), 10)), ["5-2", "7-3"]);
        assert_eq!(ids(tail.serve((5, 2), 10)), ["7-3"]);
        // Before the start: not the tail's to answer.
        assert_eq!(tail.serve((4, 9), 10), Served::Elsewhere);
    }

    #[test]
    fn reads_from_the_end_extend_the_tail_and_other_reads_are_ignored() {
        let mut tail = Tail::default();
        tail.append((0, 0), &[event(3, 1)], 100);
        // A read that found nothing leaves the end where it was.
        tail.append((3, 1), &[], 100);
        assert_eq!(tail.serve((3, 1), 10), Served::AtEnd);
        // A read by a subscription catching up elsewhere does not touch the tail.
        tail.append((1, 0), &[event(2, 1), event(3, 1)], 100);
        assert_eq!(ids(tail.serve((0, 0), 10)), ["3-1"]);
        tail.append((3, 1), &[event(4, 2), event(4, 3), event(6, 4)], 100);
        assert_eq!(ids(tail.serve((0, 0), 10)), ["3-1", "4-2", "4-3", "6-4"]);
        assert_eq!(ids(tail.serve((0, 0), 2)), ["3-1", "4-2"], "limit");
        // A position between events (a cursor from before a gap) gets what follows it.
        assert_eq!(ids(tail.serve((4, 9), 10)), ["6-4"]);
    }

    #[test]
    fn a_read_from_past_the_end_starts_the_tail_again_there() {
        let mut tail = Tail::default();
        tail.append((0, 0), &[event(1, 1), event(2, 2)], 100);
        // Whoever kept the tail going left; a subscription further on reads for everyone.
        assert_eq!(tail.serve((5, 7), 10), Served::AtEnd);
        tail.append((5, 7), &[event(6, 8), event(6, 9)], 100);
        assert_eq!(ids(tail.serve((5, 7), 10)), ["6-8", "6-9"]);
        assert_eq!(ids(tail.serve((6, 8), 10)), ["6-9"]);
        assert_eq!(tail.serve((6, 9), 10), Served::AtEnd);
        // The old events are gone with the old range: what lies between (2, 2) and (5, 7)
        // was never read here, so a subscription there reads on its own.
        assert_eq!(tail.serve((2, 2), 10), Served::Elsewhere);
        assert_eq!(tail.serve((0, 0), 10), Served::Elsewhere);
    }

    #[test]
    fn a_full_tail_forgets_its_oldest_events_and_their_range() {
        let mut tail = Tail::default();
        tail.append((0, 0), &[event(1, 1), event(1, 2), event(2, 3)], 2);
        assert_eq!(tail.serve((0, 0), 10), Served::Elsewhere);
        assert_eq!(ids(tail.serve((1, 1), 10)), ["1-2", "2-3"]);
        tail.append((2, 3), &[event(3, 4)], 2);
        assert_eq!(tail.serve((1, 1), 10), Served::Elsewhere);
        assert_eq!(ids(tail.serve((1, 2), 10)), ["2-3", "3-4"]);
    }

    fn of(aggregate: &str, kind: &str) -> Event {
        Event {
            event_id: format!("{aggregate}:{kind}"),
            aggregate_id: aggregate.into(),
            ..Default::default()
        }
    }

    fn order(events: &[Event]) -> (Vec<String>, Vec<String>) {
        let incoming = events
            .iter()
            .map(|event| Incoming {
                event,
                span: tracing::Span::none(),
            })
            .collect();
        let (sets, rest) = set_first(incoming, |e| e.event_id.ends_with(":set"));
        let ids = |v: Vec<Incoming>| v.iter().map(|i| i.event.event_id.clone()).collect();
        (ids(sets), ids(rest))
    }

    #[test]
    fn set_events_go_first_past_other_aggregates_never_past_their_own() {
        let events = [
            of("a", "set"),
            of("b", "single"),
            of("c", "set"),
            of("b", "set"),
            of("d", "set"),
            of("a", "single"),
            of("a", "set"),
            of("e", "set"),
        ];
        let (sets, rest) = order(&events);
        // c, d and e pass b's single; b's set stays behind it, a's last set behind a's single.
        assert_eq!(sets, ["a:set", "c:set", "d:set", "e:set"]);
        assert_eq!(rest, ["b:single", "b:set", "a:single", "a:set"]);
        // Per aggregate, the order of the input.
        for aggregate in ["a", "b", "c", "d", "e"] {
            let mine = |v: &[String]| -> Vec<String> {
                v.iter()
                    .filter(|id| id.starts_with(aggregate))
                    .cloned()
                    .collect()
            };
            let applied: Vec<String> = [sets.clone(), rest.clone()].concat();
            let given: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
            assert_eq!(mine(&applied), mine(&given), "aggregate {aggregate}");
        }
    }

    #[test]
    fn a_chunk_without_set_events_keeps_its_order() {
        let events = [of("a", "single"), of("b", "single"), of("a", "single")];
        let (sets, rest) = order(&events);
        assert!(sets.is_empty());
        assert_eq!(rest, ["a:single", "b:single", "a:single"]);
    }
}
