//! Storing submissions: concurrent `SubmitComplaint` calls are written together, one
//! transaction per batch (group commit).
//!
//! A handler validates and classifies its complaint, then hands it to the writers and waits.
//! A writer takes whatever is queued once the batch in flight is done (at most
//! [`MAX_BATCH`]; a batch stuck past [`STANDBY_AFTER`] holds nothing back) and, while it has
//! fewer than four, what arrives within the gather window (`SUBMIT_BATCH_GATHER`, 1 ms), so a
//! lone call waits at most that long, and under load one transaction serves many calls, in
//! three round trips: the customers' locks, the `BEGIN` and the repeat-contact lookup (which
//! locks the complaints it finds) together; one insert of every complaint and its event; the
//! commit. Repeat contacts add one statement, for all of the batch's. Decisions are the ones
//! the calls would get one at a time in arrival order ([`repeat::decide_batch`]). A batch that fails is retried one complaint per transaction,
//! so one bad complaint never fails the others and every caller gets its own answer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use complaints_kit::db::HeldConnection;
use complaints_kit::events::{EncodedEvent, EventLog};
use complaints_kit::grpc;
use complaints_kit::time::to_timestamp;
use complaints_proto::common::v1::Priority;
use complaints_proto::events::v1::{ComplaintAccepted, event::Payload};
use complaints_proto::intake::v1 as pb;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tonic::Status;
use uuid::Uuid;

use crate::api::repeat_event;
use crate::domain::classify::{self, Classification};
use crate::domain::record::NewComplaint;
use crate::domain::repeat::{self, BatchContact, Candidate, ContactKey, RepeatRules, Root};
use crate::store::{self, ComplaintRow};

/// Most submissions written in one transaction.
pub const MAX_BATCH: usize = 64;
/// Writers: one writes, the other collects the next batch while it does and writes it when
/// the first is done, or at once if the first has been at its batch for [`STANDBY_AFTER`].
const WRITERS: usize = 2;
/// How long a batch in flight holds the next one back. Under load a batch takes a few
/// milliseconds, and whatever queues meanwhile goes into the next: one transaction at a time,
/// each larger (6.9 complaints a batch against 3.8 in the bench's closed loop). Side by side,
/// a single writer (which this is while no batch is stuck) against two taking batches at once
/// gave 1,614–1,696 against 1,512–1,573 accepted/s and 1.07–1.09 against 1.20–1.23 ms of CPU
/// a complaint; letting the next batch start once the one in flight reached its commit cost
/// that CPU again (1.21–1.29 ms) for no more throughput. A batch that waits longer (a
/// customer's lock held elsewhere, up to the lock timeout) no longer holds the others back.
const STANDBY_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a writer that has fewer than [`GATHER_ENOUGH`] submissions waits for more before it
/// writes (`SUBMIT_BATCH_GATHER`): at moderate load batches held 1.8 submissions, and each
/// transaction's begin, lock and commit were paid by those alone.
pub const DEFAULT_BATCH_GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// Buckets of the writers' stage timings (seconds): fine where a submission's budget is spent.
const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.1, 0.25,
    1.0,
];

/// How long a writer with nothing to write keeps its connection before it gives it back.
const KEEP_IDLE_CONNECTION: std::time::Duration = std::time::Duration::from_secs(1);

/// A batch this large goes without gathering.
const GATHER_ENOUGH: usize = 4;
/// Default for `SUBMIT_LOCK_TIMEOUT`: how long a batch waits for a lock (a customer's, or a
/// stored complaint's row) before it gives up, so that one customer whose lock is held
/// elsewhere (another replica's stuck transaction) cannot stall every submission of this
/// replica for good: the batch is retried one by one and only that customer's calls get
/// `ABORTED`. Its batch-mates still wait the timeout, plus [`RETRY_LOCK_TIMEOUT`] for each of
/// that customer's calls ahead of them in the retry.
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The lock wait of each one-by-one retry after a batch failed: enough for another batch to
/// commit (a few milliseconds), short enough that a customer whose lock stays held costs its
/// batch-mates little beyond the batch's own timeout.
const RETRY_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);
/// How many reference numbers a replica takes from the sequence at once (beyond what a batch
/// needs). A restart skips what was left: references have gaps, never duplicates.
const REFERENCE_BLOCK: usize = 20;

/// A validated, classified submission, ready to be stored.
pub struct Prepared {
    pub complaint: NewComplaint,
    pub fingerprint: String,
    pub classification: Classification,
    /// At the database's precision (the event carries it too).
    pub received_at: DateTime<Utc>,
    /// `YYYYMMDD` in the organisation's time zone, for the reference.
    pub day: String,
    /// The caller's trace: the events of this complaint continue it.
    pub traceparent: String,
}

/// What storing a submission did.
pub enum Outcome {
    /// Stored now; a repeat contact names the reference of the complaint it is linked to.
    Created {
        row: ComplaintRow,
        linked_reference: String,
    },
    /// Its request id was taken: the complaint stored under it before.
    Existing(ComplaintRow),
}

struct Job {
    prepared: Prepared,
    reply: oneshot::Sender<Result<Outcome, Status>>,
    queued: tokio::time::Instant,
}

/// The queue in front of the writers; dropping it stops them once the queue is empty.
pub struct Submitter {
    queue: mpsc::Sender<Job>,
}

struct Writer {
    pool: PgPool,
    events: EventLog,
    rules: RepeatRules,
    reference_numbers: std::sync::Mutex<VecDeque<i64>>,
    batch_size: prometheus::Histogram,
    /// Enqueued → its batch begins (gathering and waiting for the batch in flight).
    waited: prometheus::Histogram,
    /// A batch's transaction, first statement to commit (or to its error).
    written: prometheus::Histogram,
    lock_timeout: std::time::Duration,
    gather: std::time::Duration,
    in_flight: InFlight,
}

/// When the batch being written started, while one is (shared by the writers).
struct InFlight {
    slot: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
    /// How long a batch in flight holds the next one back ([`STANDBY_AFTER`]).
    standby: std::time::Duration,
}

impl InFlight {
    fn new(standby: std::time::Duration) -> Self {
        Self {
            slot: tokio::sync::watch::Sender::new(None),
            standby,
        }
    }

    /// Marks a batch as in flight from now; returns its start, to [`finish`](Self::finish) it.
    fn start(&self) -> tokio::time::Instant {
        let started = tokio::time::Instant::now();
        self.slot.send_replace(Some(started));
        started
    }

    /// Clears the mark only if it still holds this batch's start: a writer that stopped
    /// waiting on a stuck batch took it over, and the stuck one finishing must not make the
    /// next writer skip the wait for the batch really in flight.
    fn finish(&self, started: tokio::time::Instant) {
        self.slot.send_if_modified(|slot| {
            let own = *slot == Some(started);
            if own {
                *slot = None;
            }
            own
        });
    }

    /// Returns once no batch is in flight, or the one in flight started `standby` ago.
    async fn wait(&self) {
        let mut state = self.slot.subscribe();
        loop {
            let Some(started) = *state.borrow_and_update() else {
                return;
            };
            let deadline = started + self.standby;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// Adds to `jobs` what arrives within `window` from now, until it holds `enough`.
async fn gather<T>(
    receiver: &mut mpsc::Receiver<T>,
    jobs: &mut Vec<T>,
    window: std::time::Duration,
    enough: usize,
) {
    let deadline = tokio::time::Instant::now() + window;
    while jobs.len() < enough {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(job)) => jobs.push(job),
            _ => return,
        }
    }
}

/// Waits for the next submissions (at most [`MAX_BATCH`]; 0: the queue closed). A writer
/// holding a connection keeps it for `keep` while nothing comes, then gives it back (`release`)
/// and waits on: at moderate load the queue runs dry between most batches, and giving the
/// connection back each time cost a return to the pool and an acquire a batch (8–13 % more
/// system calls of intake's at 624 submissions a second).
async fn receive<T>(
    receiver: &mut mpsc::Receiver<T>,
    jobs: &mut Vec<T>,
    holding: bool,
    keep: std::time::Duration,
    release: impl FnOnce(),
) -> usize {
    if holding && receiver.is_empty() {
        // `recv_many` is cancel safe: a timeout loses nothing.
        if let Ok(received) = tokio::time::timeout(keep, receiver.recv_many(jobs, MAX_BATCH)).await
        {
            return received;
        }
        release();
    }
    receiver.recv_many(jobs, MAX_BATCH).await
}

impl Submitter {
    pub fn start(
        pool: PgPool,
        events: EventLog,
        rules: RepeatRules,
        lock_timeout: std::time::Duration,
        gather: std::time::Duration,
        metrics: &complaints_kit::metrics::Metrics,
    ) -> Self {
        let batch_size = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "intake_submit_batch_size",
                "Submissions stored per transaction (concurrent calls are written together).",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .expect("metric");
        metrics.register(&batch_size);
        let seconds = |name: &str, help: &str| {
            let histogram = prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(name, help).buckets(STAGE_BUCKETS.to_vec()),
            )
            .expect("metric");
            metrics.register(&histogram);
            histogram
        };
        let waited = seconds(
            "intake_submit_queue_seconds",
            "Time from a submission joining the writers' queue to its batch beginning (the \
             gather window and the wait for the batch in flight).",
        );
        let written = seconds(
            "intake_submit_batch_seconds",
            "Time a batch's transaction took, from its first statement to its commit or error \
             (the one-by-one retries after a failed batch are not counted).",
        );
        let writer = Arc::new(Writer {
            pool,
            events,
            rules,
            reference_numbers: Default::default(),
            batch_size,
            waited,
            written,
            lock_timeout,
            gather,
            in_flight: InFlight::new(STANDBY_AFTER),
        });
        let (queue, receiver) = mpsc::channel(4 * MAX_BATCH);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WRITERS {
            tokio::spawn(writer.clone().run(receiver.clone()));
        }
        Self { queue }
    }

    /// Stores a submission (with whatever else is waiting) and returns what became of it.
    pub async fn submit(&self, prepared: Prepared) -> Result<Outcome, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job {
                prepared,
                reply,
                queued: tokio::time::Instant::now(),
            })
            .await
            .map_err(|_| Status::unavailable("intake is shutting down"))?;
        answer
            .await
            .map_err(|_| Status::internal("the submission writer stopped"))?
    }
}

impl Writer {
    async fn run(self: Arc<Self>, receiver: Arc<Mutex<mpsc::Receiver<Job>>>) {
        // The writer keeps its connection while submissions keep coming and gives it back
        // once the queue stayed empty for KEEP_IDLE_CONNECTION (see `receive`, and
        // `HeldConnection` for when the pool is short).
        let mut connection = HeldConnection::new(self.pool.clone());
        loop {
            let mut jobs = Vec::with_capacity(MAX_BATCH);
            let started = {
                let mut receiver = receiver.lock().await;
                let holding = connection.is_held();
                let received = receive(
                    &mut receiver,
                    &mut jobs,
                    holding,
                    KEEP_IDLE_CONNECTION,
                    || connection.release(),
                )
                .await;
                if received == 0 {
                    return;
                }
                gather(&mut receiver, &mut jobs, self.gather, GATHER_ENOUGH).await;
                // Hold on to the queue while the other writer's batch is in flight (not
                // past STANDBY_AFTER): what arrives meanwhile joins this batch.
                self.in_flight.wait().await;
                while jobs.len() < MAX_BATCH {
                    let Ok(job) = receiver.try_recv() else { break };
                    jobs.push(job);
                }
                let started = self.in_flight.start();
                for job in &jobs {
                    self.waited
                        .observe(started.duration_since(job.queued).as_secs_f64());
                }
                started
            };
            // A panic must not take a writer away for good: its callers get an error (their
            // replies are dropped) and the writer goes on with the next batch.
            use futures_util::FutureExt as _;
            if std::panic::AssertUnwindSafe(self.write(&mut connection, jobs))
                .catch_unwind()
                .await
                .is_err()
            {
                connection.release();
                tracing::error!("submission writer panicked; its batch was answered with errors");
            }
            self.in_flight.finish(started);
        }
    }

    async fn write(&self, connection: &mut HeldConnection, jobs: Vec<Job>) {
        self.batch_size.observe(jobs.len() as f64);
        let batch: Vec<&Prepared> = jobs.iter().map(|j| &j.prepared).collect();
        let began = std::time::Instant::now();
        let stored = self.store(connection, &batch, self.lock_timeout).await;
        self.written.observe(began.elapsed().as_secs_f64());
        match &stored {
            Ok(_) => connection.finish(),
            Err(_) => connection.release(),
        }
        match stored {
            Ok(outcomes) => {
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
            }
            // The database is out of reach: one by one would only make every caller wait for
            // its own timeout.
            Err(error) if error.code() == tonic::Code::Unavailable => {
                for job in jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
            Err(error) if jobs.len() > 1 => {
                tracing::warn!(error = %error.message(), size = jobs.len(), "submission batch failed; storing its complaints one by one");
                for job in jobs {
                    // A lock wait that ran out would otherwise be paid again, in full, by
                    // each call of the locked customer, and by everyone queued behind them.
                    let wait = self.lock_timeout.min(RETRY_LOCK_TIMEOUT);
                    let outcome = match self.store(connection, &[&job.prepared], wait).await {
                        Ok(mut one) => {
                            connection.finish();
                            one.remove(0)
                        }
                        Err(error) => {
                            connection.release();
                            Err(error)
                        }
                    };
                    let _ = job.reply.send(outcome);
                }
            }
            Err(error) => {
                if let Some(job) = jobs.into_iter().next() {
                    let _ = job.reply.send(Err(error));
                }
            }
        }
    }

    /// Stores a batch in one transaction; one outcome per submission, in order. An error means
    /// nothing was stored; once the transaction committed, each submission has its own answer.
    async fn store(
        &self,
        connection: &mut HeldConnection,
        batch: &[&Prepared],
        lock_timeout: std::time::Duration,
    ) -> Result<Vec<Result<Outcome, Status>>, Status> {
        let storage = |e: sqlx::Error| storage_or_busy(&e, lock_timeout);
        // A request id given twice in one batch is stored once; the second is its replay.
        let mut first_with_id: HashMap<&str, usize> = HashMap::new();
        let replay_of: Vec<Option<usize>> = batch
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let first = *first_with_id
                    .entry(p.complaint.request_id.as_str())
                    .or_insert(i);
                (first != i).then_some(first)
            })
            .collect();
        let unique: Vec<&Prepared> = batch
            .iter()
            .zip(&replay_of)
            .filter(|(_, r)| r.is_none())
            .map(|(p, _)| *p)
            .collect();

        // Each customer's contacts are taken one at a time, so two first contacts about the
        // same matter cannot both open a case.
        let identifiers: Vec<String> = unique
            .iter()
            .flat_map(|p| customer_identifiers(&p.complaint))
            .collect();
        let contacts: Vec<BatchContact> = unique
            .iter()
            .map(|p| BatchContact {
                id: Uuid::now_v7(),
                key: contact_key(&p.complaint),
                received_at: p.received_at,
            })
            .collect();
        // One round trip: the customers' locks, the transaction's BEGIN, and the stored
        // complaints this batch may be a repeat contact of.
        let lookup = self.candidate_lookup(&contacts);
        // Reference numbers come from this replica's block, topped up in the same round trip
        // when it runs short (a failed batch leaves a gap: references have gaps, never
        // duplicates).
        let mut numbers = self.take_reference_numbers(unique.len());
        let missing = unique.len() - numbers.len();
        let reserve = if missing > 0 {
            missing + REFERENCE_BLOCK
        } else {
            0
        };
        let begun = store::begin_for_customer(
            connection,
            &identifiers,
            lookup.as_ref(),
            reserve,
            lock_timeout,
        )
        .await
        .map_err(storage)?;
        let store::Begun {
            transaction: mut tx,
            candidates: stored,
            reference_numbers: mut block,
        } = begun;
        if reserve > 0 {
            let rest = block.split_off(missing);
            numbers.extend(block);
            if let Ok(mut queue) = self.reference_numbers.lock() {
                queue.extend(rest);
            }
        }
        // The candidates are locked: each stays open and unlinked until this batch commits.
        let decisions = repeat::decide_batch(&contacts, &candidates(&stored), &self.rules);
        let roots: HashMap<Uuid, &store::CandidateRow> = stored.iter().map(|r| (r.id, r)).collect();

        let references: Vec<String> = unique
            .iter()
            .zip(&numbers)
            .map(|(p, n)| format!("CMP-{}-{n:07}", p.day))
            .collect();
        let mut classifications: Vec<Classification> =
            unique.iter().map(|p| p.classification.clone()).collect();
        let mut links: Vec<Option<Uuid>> = Vec::with_capacity(unique.len());
        for (i, decision) in decisions.iter().enumerate() {
            links.push(match decision {
                Some((root, why)) => {
                    let (id, reference) = match root {
                        Root::Stored(id) => (
                            *id,
                            roots
                                .get(id)
                                .map(|r| r.reference.as_str())
                                .unwrap_or_default(),
                        ),
                        Root::Earlier(j) => (contacts[*j].id, references[*j].as_str()),
                    };
                    classifications[i]
                        .reasons
                        .push(format!("linked to {reference}: {why}"));
                    Some(id)
                }
                None => None,
            });
        }
        let rows: Vec<(store::NewComplaintRow<'_>, Option<EncodedEvent>)> = unique
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let row = store::NewComplaintRow {
                    id: contacts[i].id,
                    reference: &references[i],
                    complaint: &p.complaint,
                    fingerprint: &p.fingerprint,
                    classification: &classifications[i],
                    received_at: p.received_at,
                    status: if links[i].is_some() {
                        pb::ComplaintStatus::Linked
                    } else {
                        pb::ComplaintStatus::Received
                    } as i16,
                    linked_to: links[i],
                };
                // A first contact is announced in the statement that stores it.
                let announcement = links[i].is_none().then(|| {
                    self.events
                        .encode(&row.id.to_string(), &p.traceparent, accepted_event_of(&row))
                });
                (row, announcement)
            })
            .collect();
        // A contact linked to an earlier one of this batch whose request id turns out to be
        // taken (a replay) would point at a complaint never stored: the foreign key on
        // `linked_to` refuses the statement, and the batch is retried one by one.
        // A statement that fails leaves the transaction failed: it is rolled back, so that the
        // connection stays usable for the one-by-one retry (dropped, it would be closed).
        macro_rules! or_roll_back {
            ($tx:ident, $result:expr) => {
                match $result {
                    Ok(value) => value,
                    Err(error) => {
                        $tx.rollback().await;
                        return Err(storage(error));
                    }
                }
            };
        }
        let mut inserted: HashMap<Uuid, ComplaintRow> =
            or_roll_back!(tx, store::insert_complaints(&mut tx, &rows).await)
                .into_iter()
                .map(|r| (r.id, r))
                .collect();
        // Request ids already taken: replays, or the same requests committed concurrently.
        let taken: Vec<&str> = unique
            .iter()
            .zip(&contacts)
            .filter(|(_, c)| !inserted.contains_key(&c.id))
            .map(|(p, _)| p.complaint.request_id.as_str())
            .collect();
        let mut existing: HashMap<String, ComplaintRow> = if taken.is_empty() {
            HashMap::new()
        } else {
            or_roll_back!(tx, store::find_by_request_ids(&mut tx, &taken).await)
                .into_iter()
                .collect()
        };

        // Repeat contacts count on their roots, in order (each may raise the priority again),
        // recorded with their announcements in one statement.
        let mut priorities: HashMap<Uuid, i16> =
            roots.values().map(|r| (r.id, r.priority)).collect();
        for row in inserted.values() {
            priorities.entry(row.id).or_insert(row.priority);
        }
        let mut counts: HashMap<Uuid, i32> = HashMap::new();
        let mut linked_references: Vec<String> = vec![String::new(); unique.len()];
        let mut repeat_events = Vec::new();
        for (i, p) in unique.iter().enumerate() {
            let (Some(root_id), Some(row)) = (links[i], inserted.get(&contacts[i].id)) else {
                continue;
            };
            let current = priorities
                .get(&root_id)
                .and_then(|p| Priority::try_from(i32::from(*p)).ok())
                .unwrap_or(Priority::P3);
            let raised = (self.rules.raises_priority && current != Priority::P1)
                .then(|| classify::raise(current));
            priorities.insert(root_id, raised.unwrap_or(current) as i16);
            *counts.entry(root_id).or_default() += 1;
            repeat_events.push(self.events.encode(
                &root_id.to_string(),
                &p.traceparent,
                repeat_event(root_id, row, raised, p.received_at),
            ));
            // A stored root, or one stored by this batch (the foreign key saw to that).
            linked_references[i] = match roots.get(&root_id) {
                Some(root) => root.reference.clone(),
                None => inserted
                    .get(&root_id)
                    .map(|r| r.reference.clone())
                    .unwrap_or_default(),
            };
        }
        if !counts.is_empty() {
            let mut recorded: Vec<(Uuid, i32, i16)> = counts
                .iter()
                .map(|(id, n)| (*id, *n, priorities[id]))
                .collect();
            // In id order, as every writer locks them.
            recorded.sort_unstable_by_key(|r| r.0);
            or_roll_back!(
                tx,
                store::record_repeats(&mut tx, &recorded, &repeat_events).await
            );
        }
        tx.commit().await.map_err(storage)?;
        for (row, event) in &rows {
            if let Some(event) = event
                && inserted.contains_key(&row.id)
            {
                self.events.produced(event.event_type);
            }
        }
        for event in &repeat_events {
            self.events.produced(event.event_type);
        }
        self.events.committed();

        // Committed: from here on every submission gets its own answer.
        let mut outcomes: Vec<Result<Outcome, Status>> = Vec::with_capacity(batch.len());
        let mut unique_index = 0;
        for (i, p) in batch.iter().enumerate() {
            let outcome = match replay_of[i] {
                Some(first) => match &outcomes[first] {
                    Ok(Outcome::Created { row, .. }) | Ok(Outcome::Existing(row)) => {
                        Ok(Outcome::Existing(row.clone()))
                    }
                    Err(_) => Err(Status::aborted("concurrent submission; retry")),
                },
                None => {
                    let k = unique_index;
                    unique_index += 1;
                    match inserted.remove(&contacts[k].id) {
                        Some(row) => Ok(Outcome::Created {
                            row,
                            linked_reference: std::mem::take(&mut linked_references[k]),
                        }),
                        None => existing
                            .remove(&p.complaint.request_id)
                            .map(Outcome::Existing)
                            .ok_or_else(|| Status::aborted("concurrent submission; retry")),
                    }
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// What the batch's repeat-contact lookup looks for (nothing if no contact can be matched).
    fn candidate_lookup<'a>(
        &self,
        contacts: &'a [BatchContact],
    ) -> Option<store::CandidateLookup<'a>> {
        let matchable: Vec<&ContactKey> = contacts
            .iter()
            .map(|c| &c.key)
            .filter(|k| k.is_matchable())
            .collect();
        let earliest = contacts
            .iter()
            .filter(|c| c.key.is_matchable())
            .map(|c| c.received_at)
            .min()?;
        let values = |f: fn(&ContactKey) -> &Option<String>| -> Vec<&str> {
            let mut v: Vec<&str> = matchable.iter().filter_map(|k| f(k).as_deref()).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        Some(store::CandidateLookup {
            customer_ids: values(|k| &k.customer_id),
            phones: values(|k| &k.phone),
            emails: values(|k| &k.email),
            since: earliest - self.rules.window,
        })
    }

    /// Up to `n` numbers of this replica's block of reference numbers.
    fn take_reference_numbers(&self, n: usize) -> Vec<i64> {
        match self.reference_numbers.lock() {
            Ok(mut queue) => {
                let n = n.min(queue.len());
                queue.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// The stored complaints a batch's lookup found (open and unlinked, locked by the batch), as
/// repeat matching sees them.
fn candidates(rows: &[store::CandidateRow]) -> Vec<Candidate> {
    rows.iter()
        .map(|r| Candidate {
            id: r.id,
            key: ContactKey {
                customer_id: r.customer_id.clone(),
                phone: r.phone.clone(),
                email: r.email.clone(),
                order_ref: r.order_ref.clone(),
                product_ref: r.product_ref.clone(),
            },
            received_at: r.received_at,
            open: true,
            linked: false,
        })
        .collect()
}

/// A storage error as the caller sees it: a lock wait that ran out is `ABORTED` (retry with
/// the same request id; nothing was stored), everything else as the kit maps it.
fn storage_or_busy(error: &sqlx::Error, waited: std::time::Duration) -> Status {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
            tracing::warn!(error = %error, "submission gave up waiting for a lock");
            Status::aborted(format!(
                "a lock this submission needs (its customer's, or a stored complaint's) is held by \
                 another transaction (waited {} ms); nothing was stored: retry with the same \
                 request_id",
                waited.as_millis()
            ))
        }
        _ => grpc::storage(error),
    }
}

fn contact_key(complaint: &NewComplaint) -> ContactKey {
    ContactKey {
        customer_id: complaint.customer_id.clone(),
        phone: complaint.phone.clone(),
        email: complaint.email.clone(),
        order_ref: complaint.order_ref.clone(),
        product_ref: complaint.product_ref.clone(),
    }
}

/// The identifiers a contact can be recognised by again (none when it cannot be matched to an
/// earlier one), for serialising one customer's submissions.
fn customer_identifiers(complaint: &NewComplaint) -> Vec<String> {
    let key = contact_key(complaint);
    if !key.is_matchable() {
        return Vec::new();
    }
    [
        key.customer_id.map(|v| format!("customer:{v}")),
        key.phone.map(|v| format!("phone:{v}")),
        key.email.map(|v| format!("email:{v}")),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The `ComplaintAccepted` of a complaint about to be stored.
fn accepted_event_of(new: &store::NewComplaintRow<'_>) -> Payload {
    let (complaint, classification) = (new.complaint, new.classification);
    Payload::ComplaintAccepted(ComplaintAccepted {
        complaint_id: new.id.to_string(),
        reference: new.reference.to_owned(),
        channel: complaint.channel as i32,
        customer_id: complaint.customer_id.clone().unwrap_or_default(),
        customer_tier: complaint.tier as i32,
        category: classification.category.clone(),
        severity: classification.severity as i32,
        priority: classification.priority as i32,
        complexity: classification.complexity as i32,
        received_at: Some(to_timestamp(new.received_at)),
        order_ref: complaint.order_ref.clone().unwrap_or_default(),
        product_ref: complaint.product_ref.clone().unwrap_or_default(),
        language: complaint.language.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn finishes_within(wait: impl std::future::Future<Output = ()>, limit: Duration) -> bool {
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Sends `value` on `sender` after `after`, from a task of its own.
    fn send_after(sender: &mpsc::Sender<i32>, after: Duration, value: i32) {
        let sender = sender.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            sender.send(value).await.unwrap();
        });
    }

    #[tokio::test]
    async fn an_idle_writer_keeps_its_connection_for_a_while_then_gives_it_back() {
        let keep = Duration::from_millis(200);
        let (sender, mut receiver) = mpsc::channel(16);
        let released = std::cell::Cell::new(0);
        // A submission within the keep: the connection stays. Then nothing for longer: given
        // back, and the late submission is still received.
        for (after, value, released_by_then) in [(20, 1, 0), (500, 2, 1)] {
            send_after(&sender, Duration::from_millis(after), value);
            let mut jobs = Vec::new();
            let n = receive(&mut receiver, &mut jobs, true, keep, || {
                released.set(released.get() + 1)
            })
            .await;
            assert_eq!(
                (n, jobs, released.get()),
                (1, vec![value], released_by_then)
            );
        }
        // Queued already, or no connection held: nothing to give back.
        sender.send(3).await.unwrap();
        let mut jobs = Vec::new();
        receive(&mut receiver, &mut jobs, true, keep, || panic!("released")).await;
        assert_eq!(jobs, [3]);
        drop(sender);
        let mut jobs = Vec::new();
        let n = receive(&mut receiver, &mut jobs, false, keep, || panic!("released")).await;
        assert_eq!(n, 0, "the queue closed");
    }

    #[tokio::test]
    async fn a_small_batch_takes_in_what_arrives_within_the_window() {
        let (sender, mut receiver) = mpsc::channel(16);
        let mut jobs = vec![0];
        send_after(&sender, Duration::from_millis(30), 1);
        gather(&mut receiver, &mut jobs, Duration::from_millis(300), 4).await;
        assert_eq!(jobs, [0, 1]);
        // Nothing gathered without a window; what is already queued is taken either way.
        send_after(&sender, Duration::from_millis(30), 3);
        sender.send(2).await.unwrap();
        let mut jobs = vec![0];
        gather(&mut receiver, &mut jobs, Duration::ZERO, 4).await;
        assert_eq!(jobs, [0, 2]);
        assert_eq!(receiver.recv().await, Some(3));
    }

    #[tokio::test]
    async fn a_batch_that_has_enough_goes_without_waiting_out_the_window() {
        let (sender, mut receiver) = mpsc::channel(16);
        for n in 1..=5 {
            sender.send(n).await.unwrap();
        }
        let mut jobs = vec![0];
        let window = Duration::from_secs(60);
        assert!(
            finishes_within(
                gather(&mut receiver, &mut jobs, window, 4),
                Duration::from_secs(5)
            )
            .await
        );
        assert_eq!(jobs, [0, 1, 2, 3]);
        // A full batch does not even look.
        let mut jobs = vec![0, 1, 2, 3];
        assert!(
            finishes_within(
                gather(&mut receiver, &mut jobs, window, 4),
                Duration::from_secs(5)
            )
            .await
        );
        assert_eq!(jobs.len(), 4);
        assert_eq!(receiver.recv().await, Some(4));
    }

    #[tokio::test]
    async fn the_next_batch_waits_for_the_one_in_flight_until_it_is_done() {
        let in_flight = InFlight::new(Duration::from_secs(60));
        // Nothing in flight: no wait.
        assert!(finishes_within(in_flight.wait(), Duration::from_secs(5)).await);
        let started = in_flight.start();
        assert!(!finishes_within(in_flight.wait(), Duration::from_millis(50)).await);
        let waiting = in_flight.wait();
        tokio::pin!(waiting);
        assert!(!finishes_within(&mut waiting, Duration::from_millis(20)).await);
        in_flight.finish(started);
        assert!(finishes_within(&mut waiting, Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_batch_stuck_past_the_standby_holds_the_next_one_back_no_longer() {
        let standby = Duration::from_millis(100);
        let in_flight = InFlight::new(standby);
        in_flight.start();
        let t = tokio::time::Instant::now();
        assert!(finishes_within(in_flight.wait(), Duration::from_secs(5)).await);
        assert!(t.elapsed() >= standby - Duration::from_millis(1));
    }

    #[tokio::test]
    async fn a_stuck_batch_finishing_late_does_not_clear_the_batch_now_in_flight() {
        let in_flight = InFlight::new(Duration::from_secs(60));
        let stuck = in_flight.start();
        // The other writer gave up waiting and started its own batch.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let current = in_flight.start();
        in_flight.finish(stuck);
        assert!(!finishes_within(in_flight.wait(), Duration::from_millis(50)).await);
        in_flight.finish(current);
        assert!(finishes_within(in_flight.wait(), Duration::from_secs(5)).await);
    }
}
