//! Builds the read model from the three event streams. Each event changes some facts of one
//! case; the case's old contribution to the daily aggregates is taken out and the new one put
//! in, in the transaction that also moves the cursor. Each event sets only its own facts, so
//! the streams may interleave in any order and the aggregates stay exact.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use chrono_tz::Tz;
use complaints_kit::events::{Consumer, EventHandler, Incoming};
use complaints_kit::server::ServiceContext;
use complaints_kit::shutdown::Shutdown;
use complaints_kit::time::{from_pb_duration, from_timestamp};
use complaints_proto::common::v1::{CaseStatus, ClockKind};
use complaints_proto::events::v1::{Event, event::Payload};
use sqlx::PgConnection;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::facts::{CaseFacts, combined, deltas};
use crate::store;

pub struct ScoringEvents {
    pub org_timezone: Tz,
}

/// What an event changes in the facts of one case (applied once to the facts stored, or to an
/// empty row for a case seen for the first time).
type Change<'a> = Box<dyn Fn(&mut CaseFacts) + Send + 'a>;

/// Applies changes to the facts of cases, in order, and moves their contributions: the facts
/// of every case involved are locked and read at once, changed in memory, saved with one
/// statement, and the aggregates move by the sum of every case's change (one row update per
/// aggregate key however many events touched it). A case seen for the first time is inserted
/// with its facts already changed.
async fn change_cases(
    conn: &mut PgConnection,
    tz: Tz,
    changes: Vec<(Uuid, Change<'_>)>,
) -> anyhow::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    // What the batch makes of each case if it has no row yet: a case seen for the first time
    // is inserted with it. (Worked out for every case, as which are new is only known once
    // the insert ran; a case seen before costs a conflicting insert, as the empty row did.)
    let empty: HashMap<Uuid, CaseFacts> = changes
        .iter()
        .map(|(id, _)| (*id, CaseFacts::default()))
        .collect();
    let mut fresh = empty.clone();
    for (case_id, change) in &changes {
        change(fresh.get_mut(case_id).expect("every case has an empty row"));
    }
    regroup(conn, &empty, &mut fresh).await?;
    let fresh: Vec<(Uuid, CaseFacts)> = fresh.into_iter().collect();
    let (stored, created) = store::lock_facts_all(conn, &fresh).await?;
    // A case created now contributes from nothing; the others from what was stored.
    let mut before = stored.clone();
    for id in &created {
        before.insert(*id, CaseFacts::default());
    }
    // The cases seen before change from what is stored, and are saved where they changed.
    let mut after: HashMap<Uuid, CaseFacts> = stored
        .iter()
        .filter(|(id, _)| !created.contains(*id))
        .map(|(id, facts)| (*id, facts.clone()))
        .collect();
    for (case_id, change) in &changes {
        match after.get_mut(case_id) {
            Some(facts) => change(facts),
            None if created.contains(case_id) => {}
            None => anyhow::bail!("facts of case {case_id} were not locked"),
        }
    }
    regroup(conn, &before, &mut after).await?;
    let mut changed: Vec<(Uuid, CaseFacts)> = after
        .iter()
        .filter(|(case_id, facts)| stored[*case_id] != **facts)
        .map(|(id, facts)| (*id, facts.clone()))
        .collect();
    changed.sort_by_key(|(case_id, _)| *case_id);
    store::save_facts_all(conn, &changed).await?;
    // The created ones hold their fresh facts, already stored.
    after.extend(created.iter().map(|id| (*id, stored[id].clone())));
    let moved = combined(
        after
            .iter()
            .filter(|(case_id, facts)| before[*case_id] != **facts)
            .map(|(case_id, facts)| {
                deltas(
                    before[case_id].contribution(tz).as_ref(),
                    facts.contribution(tz).as_ref(),
                )
            }),
    );
    store::apply_deltas(conn, &moved).await?;
    Ok(())
}

/// A case belongs to the team its owner was in when it was opened: the team of every case
/// whose owner or opening moved from `before` to `after` (one query for all).
async fn regroup(
    conn: &mut PgConnection,
    before: &HashMap<Uuid, CaseFacts>,
    after: &mut HashMap<Uuid, CaseFacts>,
) -> anyhow::Result<()> {
    let mut regrouped = Vec::new();
    let mut asks = Vec::new();
    for (case_id, facts) in after.iter_mut() {
        let old = &before[case_id];
        if facts.owner_id == old.owner_id && facts.opened_at == old.opened_at {
            continue;
        }
        match (facts.owner_id.as_deref(), facts.opened_at) {
            (Some(owner), Some(opened_at)) if !owner.is_empty() => {
                regrouped.push(*case_id);
                asks.push((owner.to_owned(), opened_at));
            }
            _ => facts.team_id = None,
        }
    }
    for (case_id, team) in regrouped.iter().zip(store::teams_at(conn, &asks).await?) {
        if let Some(facts) = after.get_mut(case_id) {
            facts.team_id = team;
        }
    }
    Ok(())
}

fn text(value: &str) -> Option<String> {
    Some(value.to_owned()).filter(|v| !v.is_empty())
}

/// The case an event is about and what it changes in that case's facts (`None`: nothing).
fn change_of(event: &Event) -> anyhow::Result<Option<(Uuid, Change<'_>)>> {
    let now = Utc::now();
    let (case_id, change): (&str, Change<'_>) = match &event.payload {
        Some(Payload::CaseOpened(o)) => {
            let opened_at = o.opened_at.as_ref().and_then(from_timestamp).unwrap_or(now);
            (
                &o.case_id,
                Box::new(move |f: &mut CaseFacts| {
                    f.department_id = text(&o.department_id);
                    f.owner_id = text(&o.owner_id);
                    f.category = text(&o.category);
                    f.severity = Some(o.severity as i16);
                    f.opened_at = Some(opened_at);
                }),
            )
        }
        Some(Payload::CaseAssigned(a)) => {
            let moved =
                !a.previous_department_id.is_empty() && a.previous_department_id != a.department_id;
            (
                &a.case_id,
                Box::new(move |f: &mut CaseFacts| {
                    f.department_id = text(&a.department_id);
                    f.owner_id = text(&a.owner_id);
                    if moved {
                        f.transfers += 1;
                    }
                }),
            )
        }
        Some(Payload::CaseReclassified(r)) => (
            &r.case_id,
            Box::new(move |f: &mut CaseFacts| {
                if !r.category.is_empty() {
                    f.category = Some(r.category.clone());
                }
                if r.severity != 0 {
                    f.severity = Some(r.severity as i16);
                }
            }),
        ),
        Some(Payload::CaseStatusChanged(c)) => {
            let to = CaseStatus::try_from(c.to).unwrap_or(CaseStatus::Unspecified);
            (
                &c.case_id,
                Box::new(move |f: &mut CaseFacts| match to {
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
                }),
            )
        }
        Some(Payload::CaseEscalated(e)) => {
            (&e.case_id, Box::new(|f: &mut CaseFacts| f.escalations += 1))
        }
        Some(Payload::ClockMet(m)) if m.kind == ClockKind::FirstResponse as i32 => (
            &m.case_id,
            Box::new(move |f: &mut CaseFacts| f.first_response_on_time = Some(m.on_time)),
        ),
        Some(Payload::ClockMet(m)) if m.kind == ClockKind::Resolution as i32 => {
            let elapsed = m
                .elapsed
                .as_ref()
                .map(|d| from_pb_duration(d).num_seconds().max(0))
                .unwrap_or(0);
            (
                &m.case_id,
                Box::new(move |f: &mut CaseFacts| {
                    f.resolution_met_count += 1;
                    f.handling_seconds += elapsed;
                    if !m.on_time {
                        f.resolution_late = true;
                    }
                }),
            )
        }
        Some(Payload::ClockBreached(b)) if b.kind == ClockKind::FirstResponse as i32 => (
            &b.case_id,
            Box::new(|f: &mut CaseFacts| f.first_response_breached = true),
        ),
        Some(Payload::ClockBreached(b)) if b.kind == ClockKind::Resolution as i32 => (
            &b.case_id,
            Box::new(|f: &mut CaseFacts| f.resolution_late = true),
        ),
        Some(Payload::SurveyInvitationIssued(i)) => (
            &i.case_id,
            Box::new(|f: &mut CaseFacts| f.survey_invited = true),
        ),
        Some(Payload::SurveyAnswered(s)) => (
            &s.case_id,
            Box::new(move |f: &mut CaseFacts| {
                f.survey_answered = true;
                f.csat = s.csat.map(|v| v.min(5) as i16);
                f.nps = s.nps.map(|v| v.min(10) as i16);
                f.solved = s.solved;
            }),
        ),
        _ => return Ok(None),
    };
    Ok(Some((Uuid::parse_str(case_id)?, change)))
}

impl EventHandler for ScoringEvents {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let changes = change_of(event)?.into_iter().collect();
            change_cases(tx, self.org_timezone, changes).await
        })
    }

    /// Every event changes facts of one case, so a whole batch is one set-based change.
    fn in_sets(&self, _event: &Event) -> bool {
        true
    }

    fn apply_set<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        run: &'a [Incoming<'a>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let mut changes = Vec::with_capacity(run.len());
            for incoming in run {
                let change = change_of(incoming.event)
                    .with_context(|| format!("event {}", incoming.event.event_id))?;
                changes.extend(change);
            }
            change_cases(tx, self.org_timezone, changes).await
        })
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
