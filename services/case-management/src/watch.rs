//! `WatchCases`: a server stream of case changes for agent desktops and wallboards. It tails
//! the cases outbox (so it sees the changes every replica makes, in commit-safe order) and
//! sends each change with the case as it is now, only for cases the caller may read.

use std::time::Duration;

use complaints_kit::Shutdown;
use complaints_kit::auth::Principal;
use complaints_kit::events::EventLog;
use complaints_kit::grpc;
use complaints_proto::cases::v1::WatchCasesResponse;
use complaints_proto::events::v1::Event;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::api::case_to_proto;
use crate::domain::access::{self, CaseScope};

/// Wakes the watch streams at once after this process committed a change; changes made by
/// other replicas are picked up by polling.
#[derive(Clone)]
pub struct ChangeSignal(watch::Sender<u64>);

impl Default for ChangeSignal {
    fn default() -> Self {
        Self(watch::channel(0).0)
    }
}

impl ChangeSignal {
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

const POLL: Duration = Duration::from_millis(250);
const BATCH: i64 = 200;

/// Optional narrowing of a watch; the caller's access always applies on top.
pub struct WatchFilter {
    pub case_id: Option<Uuid>,
    pub department_id: Option<String>,
}

pub struct Watcher {
    pub pool: PgPool,
    pub events: EventLog,
    pub signal: ChangeSignal,
    pub shutdown: Shutdown,
}

impl Watcher {
    /// Starts streaming changes committed from now on.
    pub async fn start(
        &self,
        principal: Principal,
        filter: WatchFilter,
    ) -> Result<ReceiverStream<Result<WatchCasesResponse, Status>>, Status> {
        let mut position = complaints_kit::events::live_feed_start(&self.pool)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let (tx, rx) = mpsc::channel(16);
        let pool = self.pool.clone();
        let events = self.events.clone();
        let shutdown = self.shutdown.clone();
        let mut wake = self.signal.subscribe();
        tokio::spawn(async move {
            loop {
                let batch = match events.read_after(&pool, position, BATCH).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        let _ = tx.send(Err(grpc::storage(&error))).await;
                        return;
                    }
                };
                if let Some(last) = batch.last().and_then(|e| e.position) {
                    position = (last.transaction_id as i64, last.sequence as i64);
                }
                match visible_changes(&pool, &principal, &filter, &batch).await {
                    Ok(changes) => {
                        for change in changes {
                            if tx.send(Ok(change)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(grpc::storage(&error))).await;
                        return;
                    }
                }
                if batch.len() as i64 == BATCH {
                    continue;
                }
                tokio::select! {
                    _ = wake.changed() => {
                        // Let the commit that woke us become visible below xmin.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ = tokio::time::sleep(POLL) => {}
                    _ = tx.closed() => return,
                    _ = shutdown.wait() => return,
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// The events of a batch the principal may see, each with its case as it is now.
async fn visible_changes(
    pool: &PgPool,
    principal: &Principal,
    filter: &WatchFilter,
    batch: &[Event],
) -> Result<Vec<WatchCasesResponse>, sqlx::Error> {
    let mut ids: Vec<Uuid> = batch
        .iter()
        .filter_map(|e| Uuid::parse_str(&e.aggregate_id).ok())
        .filter(|id| filter.case_id.is_none_or(|wanted| wanted == *id))
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let cases = crate::store::get_many(pool, &ids).await?;
    let mut changes = Vec::new();
    for event in batch {
        let Some(case) = cases
            .iter()
            .find(|c| c.id.to_string() == event.aggregate_id)
        else {
            continue;
        };
        let scope = CaseScope {
            department_id: &case.department_id,
            owner_id: &case.owner_id,
        };
        if !access::can_read(principal, &scope) {
            continue;
        }
        if filter
            .department_id
            .as_deref()
            .is_some_and(|d| d != case.department_id)
        {
            continue;
        }
        let change = event
            .payload
            .as_ref()
            .map(complaints_kit::events::payload_name)
            .unwrap_or("Unknown");
        changes.push(WatchCasesResponse {
            event_id: event.event_id.clone(),
            change: change.into(),
            occurred_at: event.occurred_at,
            case: Some(case_to_proto(case.clone())),
        });
    }
    Ok(changes)
}
