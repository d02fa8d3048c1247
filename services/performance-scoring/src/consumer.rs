//! Builds the read model from the three event streams. Each event changes some facts of one
//! case; the case's old contribution to the daily aggregates is taken out and the new one put
//! in, in the transaction that also moves the cursor. Each event sets only its own facts, so
//! the streams may interleave in any order and the aggregates stay exact.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use chrono_tz::Tz;
use complaints_kit::events::{Consumer, EventHandler};
use complaints_kit::server::ServiceContext;
use complaints_kit::shutdown::Shutdown;
use complaints_kit::time::{from_pb_duration, from_timestamp};
use complaints_proto::common::v1::{CaseStatus, ClockKind};
use complaints_proto::events::v1::{Event, event::Payload};
use sqlx::PgConnection;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::facts::{CaseFacts, deltas};
use crate::store;

pub struct ScoringEvents {
    pub org_timezone: Tz,
}

/// Applies `change` to the facts of a case and moves its contribution accordingly.
async fn change_case(
    conn: &mut PgConnection,
    tz: Tz,
    case_id: &str,
    change: impl FnOnce(&mut CaseFacts),
) -> anyhow::Result<()> {
    let case_id = Uuid::parse_str(case_id)?;
    let before = store::lock_facts(conn, case_id).await?;
    let mut after = before.clone();
    change(&mut after);
    if after.owner_id != before.owner_id || after.opened_at != before.opened_at {
        // A case belongs to the team its owner was in when it was opened.
        after.team_id = match (after.owner_id.as_deref(), after.opened_at) {
            (Some(owner), Some(opened_at)) if !owner.is_empty() => {
                store::team_at(conn, owner, opened_at).await?
            }
            _ => None,
        };
    }
    if after == before {
        return Ok(());
    }
    store::save_facts(conn, case_id, &after).await?;
    let d = deltas(
        before.contribution(tz).as_ref(),
        after.contribution(tz).as_ref(),
    );
    store::apply_deltas(conn, &d).await?;
    Ok(())
}

fn text(value: &str) -> Option<String> {
    Some(value.to_owned()).filter(|v| !v.is_empty())
}

async fn on_event(conn: &mut PgConnection, tz: Tz, event: &Event) -> anyhow::Result<()> {
    let now = Utc::now();
    match &event.payload {
        Some(Payload::CaseOpened(o)) => {
            let opened_at = o.opened_at.as_ref().and_then(from_timestamp).unwrap_or(now);
            change_case(conn, tz, &o.case_id, |f| {
                f.department_id = text(&o.department_id);
                f.owner_id = text(&o.owner_id);
                f.category = text(&o.category);
                f.severity = Some(o.severity as i16);
                f.opened_at = Some(opened_at);
            })
            .await?;
        }
        Some(Payload::CaseAssigned(a)) => {
            let moved =
                !a.previous_department_id.is_empty() && a.previous_department_id != a.department_id;
            change_case(conn, tz, &a.case_id, |f| {
                f.department_id = text(&a.department_id);
                f.owner_id = text(&a.owner_id);
                if moved {
                    f.transfers += 1;
                }
            })
            .await?;
        }
        Some(Payload::CaseReclassified(r)) => {
            change_case(conn, tz, &r.case_id, |f| {
                if !r.category.is_empty() {
                    f.category = Some(r.category.clone());
                }
                if r.severity != 0 {
                    f.severity = Some(r.severity as i16);
                }
            })
            .await?;
        }
        Some(Payload::CaseStatusChanged(c)) => {
            let to = CaseStatus::try_from(c.to).unwrap_or(CaseStatus::Unspecified);
            change_case(conn, tz, &c.case_id, |f| match to {
                CaseStatus::Resolved => {
                    f.resolved = true;
                    f.ever_resolved = true;
                }
                CaseStatus::Reopened => {
                    f.resolved = false;
                    f.reopen_count += 1;
                }
                CaseStatus::Cancelled => f.cancelled = true,
                _ => {}
            })
            .await?;
        }
        Some(Payload::CaseEscalated(e)) => {
            change_case(conn, tz, &e.case_id, |f| f.escalations += 1).await?;
        }
        Some(Payload::ClockMet(m)) if m.kind == ClockKind::FirstResponse as i32 => {
            change_case(conn, tz, &m.case_id, |f| {
                f.first_response_on_time = Some(m.on_time)
            })
            .await?;
        }
        Some(Payload::ClockMet(m)) if m.kind == ClockKind::Resolution as i32 => {
            let elapsed = m
                .elapsed
                .as_ref()
                .map(|d| from_pb_duration(d).num_seconds().max(0))
                .unwrap_or(0);
            change_case(conn, tz, &m.case_id, |f| {
                f.resolution_met_count += 1;
                f.handling_seconds += elapsed;
                if !m.on_time {
                    f.resolution_late = true;
                }
            })
            .await?;
        }
        Some(Payload::ClockBreached(b)) if b.kind == ClockKind::FirstResponse as i32 => {
            change_case(conn, tz, &b.case_id, |f| f.first_response_breached = true).await?;
        }
        Some(Payload::ClockBreached(b)) if b.kind == ClockKind::Resolution as i32 => {
            change_case(conn, tz, &b.case_id, |f| f.resolution_late = true).await?;
        }
        Some(Payload::SurveyInvitationIssued(i)) => {
            change_case(conn, tz, &i.case_id, |f| f.survey_invited = true).await?;
        }
        Some(Payload::SurveyAnswered(s)) => {
            change_case(conn, tz, &s.case_id, |f| {
                f.survey_answered = true;
                f.csat = s.csat.map(|v| v.min(5) as i16);
                f.nps = s.nps.map(|v| v.min(10) as i16);
                f.solved = s.solved;
            })
            .await?;
        }
        _ => {}
    }
    Ok(())
}

impl EventHandler for ScoringEvents {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(on_event(tx, self.org_timezone, event))
    }
}

/// The producers this service follows: (source name, gRPC URL).
pub type Sources = Vec<(&'static str, String)>;

/// Runs the consumers until shutdown, restarting them from their stored cursors whenever
/// `restart` is notified (after a rebuild rewound the cursors), so an idle stream replays at once.
pub async fn supervise(
    context: ServiceContext,
    sources: Sources,
    handler: Arc<ScoringEvents>,
    restart: Arc<Notify>,
) -> anyhow::Result<()> {
    // The three streams update the same daily aggregate rows: one transaction at a time.
    let serial = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        let (trigger, generation) = Shutdown::new();
        let mut consumer_context = context.clone();
        consumer_context.shutdown = generation;
        let mut tasks = Vec::new();
        for (source, url) in &sources {
            let consumer = Consumer::new(
                &consumer_context,
                crate::SCHEMA,
                source,
                url,
                handler.clone(),
            )?
            .serialised_with(serial.clone());
            tasks.push(tokio::spawn(consumer.run()));
        }
        let restarting = tokio::select! {
            _ = context.shutdown.wait() => false,
            _ = restart.notified() => true,
        };
        trigger.trigger();
        for task in tasks {
            let _ = task.await;
        }
        if !restarting {
            return Ok(());
        }
        tracing::info!("event consumers restarted to replay from their cursors");
    }
}
