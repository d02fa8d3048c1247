//! What intake learns from case-management: which case each complaint got, and whether it is
//! still open — a repeat contact links only to an open complaint.

use std::future::Future;
use std::pin::Pin;

use complaints_kit::events::{EventHandler, Incoming};
use complaints_proto::common::v1::CaseStatus;
use complaints_proto::events::v1::{Event, event::Payload};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::store;

pub struct CaseEvents;

async fn on_event(conn: &mut PgConnection, event: &Event) -> anyhow::Result<()> {
    if let Some(pair) = opened_of(event) {
        store::set_cases(conn, &[pair]).await?;
    } else if let Some((case_id, open)) = open_change_of(event) {
        store::set_case_open(conn, case_id, open).await?;
    }
    Ok(())
}

/// (case, whether it is open now) of a `CaseStatusChanged` event that closes, cancels or
/// reopens a case; other changes leave its complaints as they are.
fn open_change_of(event: &Event) -> Option<(Uuid, bool)> {
    let Some(Payload::CaseStatusChanged(change)) = &event.payload else {
        return None;
    };
    let case_id = Uuid::parse_str(&change.case_id).ok()?;
    match CaseStatus::try_from(change.to).unwrap_or(CaseStatus::Unspecified) {
        CaseStatus::Closed | CaseStatus::Cancelled => Some((case_id, false)),
        CaseStatus::Reopened => Some((case_id, true)),
        _ => None,
    }
}

/// Applies a chunk in its order: each run of openings with one statement, closings and
/// reopenings one by one. First, one statement locks every complaint the chunk will close or
/// reopen, in id order: the order in which submission batches lock the complaints a repeat
/// contact may be linked to. Updated in the events' order, two complaints whose cases closed
/// in one chunk could be locked in the opposite order to a batch that holds one and waits for
/// the other: a deadlock, which PostgreSQL breaks only after a second.
async fn apply_run(conn: &mut PgConnection, run: &[Incoming<'_>]) -> anyhow::Result<()> {
    let changed: Vec<Uuid> = run
        .iter()
        .filter_map(|i| open_change_of(i.event).map(|(case, _)| case))
        .collect();
    if !changed.is_empty() {
        // Complaints given one of these cases by this chunk, besides those that have it.
        let joining: Vec<Uuid> = run
            .iter()
            .filter_map(|i| opened_of(i.event))
            .filter(|(_, case)| changed.contains(case))
            .map(|(complaint, _)| complaint)
            .collect();
        store::lock_complaints_of_cases(conn, &changed, &joining).await?;
    }
    let mut opened = Vec::new();
    for incoming in run {
        if let Some(pair) = opened_of(incoming.event) {
            opened.push(pair);
        } else if let Some((case_id, open)) = open_change_of(incoming.event) {
            if !opened.is_empty() {
                store::set_cases(conn, &std::mem::take(&mut opened)).await?;
            }
            store::set_case_open(conn, case_id, open).await?;
        }
    }
    if !opened.is_empty() {
        store::set_cases(conn, &opened).await?;
    }
    Ok(())
}

/// (complaint, case) of a `CaseOpened` event.
fn opened_of(event: &Event) -> Option<(Uuid, Uuid)> {
    match &event.payload {
        Some(Payload::CaseOpened(opened)) => Some((
            Uuid::parse_str(&opened.complaint_id).ok()?,
            Uuid::parse_str(&opened.case_id).ok()?,
        )),
        _ => None,
    }
}

impl EventHandler for CaseEvents {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(on_event(tx, event))
    }

    /// Every event: a chunk is one run, applied in its order (see [`apply_run`]).
    fn in_sets(&self, _event: &Event) -> bool {
        true
    }

    fn apply_set<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        run: &'a [Incoming<'a>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(apply_run(tx, run))
    }
}
