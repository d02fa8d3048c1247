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
    match &event.payload {
        Some(Payload::CaseOpened(_)) => {
            if let Some(pair) = opened_of(event) {
                store::set_cases(conn, &[pair]).await?;
            }
        }
        Some(Payload::CaseStatusChanged(change)) => {
            let Ok(case_id) = Uuid::parse_str(&change.case_id) else {
                return Ok(());
            };
            let to = CaseStatus::try_from(change.to).unwrap_or(CaseStatus::Unspecified);
            match to {
                CaseStatus::Closed | CaseStatus::Cancelled => {
                    store::set_case_open(conn, case_id, false).await?
                }
                CaseStatus::Reopened => store::set_case_open(conn, case_id, true).await?,
                _ => {}
            }
        }
        _ => {}
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

    fn in_sets(&self, event: &Event) -> bool {
        opened_of(event).is_some()
    }

    /// Records the cases of a run of opened cases with one statement.
    fn apply_set<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        run: &'a [Incoming<'a>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        let pairs: Vec<(Uuid, Uuid)> = run.iter().filter_map(|i| opened_of(i.event)).collect();
        Box::pin(async move {
            store::set_cases(tx, &pairs).await?;
            Ok(())
        })
    }
}
