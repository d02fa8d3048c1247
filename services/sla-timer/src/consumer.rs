//! Clocks driven by case and survey events: started when a case opens, met on the first
//! response and on resolution, paused while waiting on the customer, restarted on reopen,
//! re-planned on reclassification, the periodic customer-update clock (only once the first
//! response exists) met by each contact that reached the customer, and the follow-up clock met
//! by the survey answer or a return visit recorded as one.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use complaints_kit::events::{EventHandler, Incoming};
use complaints_kit::time::from_timestamp;
use complaints_proto::common::v1::{CaseStatus, ClockKind};
use complaints_proto::events::v1::{
    CaseOpened, CaseReclassified, CaseStatusChanged, Event, event::Payload,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::engine::{CalendarsRead, ClockStart, Engine};
use crate::store::{self, CaseChange, CaseClocks, CaseRow};

pub struct ClockEvents {
    pub engine: Engine,
}

fn when(ts: &Option<prost_types::Timestamp>, fallback: DateTime<Utc>) -> DateTime<Utc> {
    ts.as_ref().and_then(from_timestamp).unwrap_or(fallback)
}

impl ClockEvents {
    async fn on_event(&self, conn: &mut PgConnection, event: &Event) -> anyhow::Result<()> {
        let now = Utc::now();
        let trace = event.traceparent.as_str();
        let engine = &self.engine;
        match &event.payload {
            Some(Payload::CaseOpened(opened)) => {
                let mut calendars = CalendarsRead::shared();
                self.cases_opened(conn, &mut calendars, &[(opened, event)])
                    .await?;
            }
            Some(Payload::CaseAcknowledged(ack)) => {
                let case_id = Uuid::parse_str(&ack.case_id)?;
                let at = when(&ack.acknowledged_at, now);
                self.customer_heard_from_us(conn, case_id, at, trace)
                    .await?;
            }
            Some(Payload::CaseCustomerContacted(contact)) if contact.reached => {
                let case_id = Uuid::parse_str(&contact.case_id)?;
                let at = when(&contact.contacted_at, now);
                self.customer_heard_from_us(conn, case_id, at, trace)
                    .await?;
            }
            Some(Payload::CaseAssigned(assigned)) => {
                let case_id = Uuid::parse_str(&assigned.case_id)?;
                let change = CaseChange {
                    department_id: Some(&assigned.department_id),
                    owner_id: Some(&assigned.owner_id),
                    ..CaseChange::default()
                };
                if let Some(case) = store::change_case(conn, case_id, change).await? {
                    store::move_open_clocks(conn, case_id, &case.department_id).await?;
                }
            }
            Some(Payload::CaseReclassified(change)) => {
                let case_id = Uuid::parse_str(&change.case_id)?;
                let mut calendars = CalendarsRead::shared();
                self.cases_reclassified(conn, &mut calendars, &[(case_id, change)], now)
                    .await?;
            }
            Some(Payload::CaseStatusChanged(change)) if !clockless(change) => {
                let case_id = Uuid::parse_str(&change.case_id)?;
                let at = when(&change.changed_at, now);
                let from = CaseStatus::try_from(change.from).unwrap_or(CaseStatus::Unspecified);
                let to = CaseStatus::try_from(change.to).unwrap_or(CaseStatus::Unspecified);
                let clocks = store::lock_clocks(conn, case_id).await?;
                let mut calendars = CalendarsRead::shared();
                let calendars = &mut calendars;
                match to {
                    CaseStatus::WaitingOnCustomer => {
                        // The ball is in the customer's court: neither resolution nor updates count.
                        for kind in [ClockKind::Resolution, ClockKind::CustomerUpdate] {
                            for clock in clocks.active_of_kind(kind as i16) {
                                engine.pause(conn, calendars, clock, at).await?;
                            }
                        }
                    }
                    CaseStatus::Resolved => {
                        // Resolving answers the customer too (all met with one update).
                        let met = [
                            ClockKind::FirstResponse,
                            ClockKind::Resolution,
                            ClockKind::CustomerUpdate,
                        ]
                        .into_iter()
                        .flat_map(|kind| clocks.active_of_kind(kind as i16))
                        .map(|clock| (clock, at, trace))
                        .collect();
                        engine.meet_all(conn, calendars, met).await?;
                        if let Some(case) = store::case(conn, case_id).await? {
                            let cycle = clocks.max_cycle(ClockKind::FollowUp as i16) + 1;
                            let started = engine
                                .start_clock(conn, &case, ClockKind::FollowUp, cycle, at, trace)
                                .await?;
                            // The survey of this resolution may have been answered already.
                            if let Some(clock) = started
                                && let Some(answered_at) =
                                    store::survey_answered_since(conn, case_id, at).await?
                            {
                                engine.meet(conn, clock, answered_at, trace).await?;
                            }
                        }
                    }
                    CaseStatus::Cancelled => {
                        for clock in clocks.active() {
                            engine.cancel(conn, calendars, clock, at).await?;
                        }
                    }
                    CaseStatus::Reopened => {
                        for clock in clocks.active_of_kind(ClockKind::FollowUp as i16) {
                            engine.cancel(conn, calendars, clock, at).await?;
                        }
                        if let Some(case) = store::case(conn, case_id).await? {
                            let cycle = clocks.max_cycle(ClockKind::Resolution as i16) + 1;
                            engine
                                .start_clock(conn, &case, ClockKind::Resolution, cycle, at, trace)
                                .await?;
                            self.start_update_cycle(conn, &case, &clocks, at, trace)
                                .await?;
                        }
                    }
                    _ if from == CaseStatus::WaitingOnCustomer => {
                        for kind in [ClockKind::Resolution, ClockKind::CustomerUpdate] {
                            for clock in clocks.active_of_kind(kind as i16) {
                                engine.resume(conn, calendars, clock, at).await?;
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some(Payload::SurveyAnswered(answer)) => {
                let case_id = Uuid::parse_str(&answer.case_id)?;
                let at = when(&answer.answered_at, now);
                // The answer and a reopen it caused travel on different streams; whichever
                // arrives first, the follow-up target counts as met by the answer.
                match store::lock_unmet_follow_up(conn, case_id, ClockKind::FollowUp as i16).await?
                {
                    Some(clock) => engine.meet(conn, clock, at, trace).await?,
                    // The resolution that starts the clock has not arrived yet (it comes on
                    // case management's stream): the clock will start met.
                    None => store::remember_survey_answer(conn, case_id, at).await?,
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl ClockEvents {
    /// A first response or a later contact that reached the customer: meets the first-response
    /// clock, or else the running customer-update clock, and starts the next update period.
    async fn customer_heard_from_us(
        &self,
        conn: &mut PgConnection,
        case_id: Uuid,
        at: DateTime<Utc>,
        trace: &str,
    ) -> anyhow::Result<()> {
        let mut calendars = CalendarsRead::shared();
        self.customers_heard_from_us(conn, &mut calendars, &[(case_id, at, trace)])
            .await
    }

    /// [`Self::customer_heard_from_us`] for several cases, with set-based statements: the
    /// cases and all their clocks locked at once, one update of the clocks met, the next
    /// update periods started together. A case given twice is taken one contact at a time.
    async fn customers_heard_from_us(
        &self,
        conn: &mut PgConnection,
        calendars: &mut CalendarsRead,
        contacts: &[(Uuid, DateTime<Utc>, &str)],
    ) -> anyhow::Result<()> {
        let mut ids: Vec<Uuid> = contacts.iter().map(|(id, _, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() < contacts.len() && contacts.len() > 1 {
            // Lock every case of the run first, in case order as a run without repeats does
            // (two replicas racing over overlapping runs then never lock in opposite orders);
            // each contact then re-reads what it changes under the locks it already holds.
            store::cases_locked(conn, &ids).await?;
            store::lock_clocks_of(conn, &ids).await?;
            for contact in contacts {
                let contact = std::slice::from_ref(contact);
                Box::pin(self.customers_heard_from_us(conn, calendars, contact)).await?;
            }
            return Ok(());
        }
        let cases = store::cases_locked(conn, &ids).await?;
        let mut clocks = store::lock_clocks_of(conn, &ids).await?;
        let mut met = Vec::new();
        let mut next_periods = Vec::new();
        for &(case_id, at, trace) in contacts {
            let Some(case) = cases.get(&case_id) else {
                continue;
            };
            let clocks = clocks.entry(case_id).or_default();
            for kind in [ClockKind::FirstResponse, ClockKind::CustomerUpdate] {
                for clock in clocks.active_of_kind(kind as i16) {
                    clocks.met(clock.id);
                    met.push((clock, at, trace));
                }
            }
            // Updates are owed only while the case is being worked on (a resolution clock
            // runs), and never before the first response exists.
            if !clocks
                .active_of_kind(ClockKind::Resolution as i16)
                .is_empty()
                && clocks.any_met(ClockKind::FirstResponse as i16)
            {
                next_periods.push(ClockStart {
                    case,
                    kind: ClockKind::CustomerUpdate,
                    cycle: clocks.max_cycle(ClockKind::CustomerUpdate as i16) + 1,
                    origin: at,
                    traceparent: trace,
                });
            }
        }
        self.engine.meet_all(conn, calendars, met).await?;
        self.engine
            .start_clocks(conn, calendars, &next_periods)
            .await?;
        Ok(())
    }

    /// Starts the next customer-update period — never before the first response exists, so
    /// the periodic target cannot override the first-response target. `clocks` are the case's
    /// clocks as locked (and changed) by the caller.
    async fn start_update_cycle(
        &self,
        conn: &mut PgConnection,
        case: &CaseRow,
        clocks: &CaseClocks,
        at: DateTime<Utc>,
        trace: &str,
    ) -> anyhow::Result<()> {
        if !clocks.any_met(ClockKind::FirstResponse as i16) {
            return Ok(());
        }
        let cycle = clocks.max_cycle(ClockKind::CustomerUpdate as i16) + 1;
        self.engine
            .start_clock(conn, case, ClockKind::CustomerUpdate, cycle, at, trace)
            .await?;
        Ok(())
    }
}

impl ClockEvents {
    /// Records reclassifications (each case given once) and re-plans the open clocks of the
    /// cases with set-based statements. A case this service never saw opened is left alone.
    async fn cases_reclassified(
        &self,
        conn: &mut PgConnection,
        calendars: &mut CalendarsRead,
        changes: &[(Uuid, &CaseReclassified)],
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let facts: Vec<(Uuid, CaseChange<'_>)> = changes
            .iter()
            .map(|(case_id, change)| (*case_id, reclassified(change)))
            .collect();
        let cases = store::change_cases(conn, &facts).await?;
        let replans: Vec<(&CaseRow, &str)> = changes
            .iter()
            .filter_map(|(case_id, change)| {
                cases
                    .get(case_id)
                    .map(|case| (case, change.reason.as_str()))
            })
            .collect();
        self.engine
            .reclassify_all(conn, calendars, &replans, now)
            .await?;
        Ok(())
    }

    /// Records opened cases and starts their first-response and resolution clocks, with
    /// set-based statements for the whole run.
    async fn cases_opened(
        &self,
        conn: &mut PgConnection,
        calendars: &mut CalendarsRead,
        run: &[(&CaseOpened, &Event)],
    ) -> anyhow::Result<()> {
        let now = Utc::now();
        let mut cases = Vec::with_capacity(run.len());
        for (opened, event) in run {
            let case = CaseRow {
                case_id: Uuid::parse_str(&opened.case_id)?,
                department_id: opened.department_id.clone(),
                owner_id: opened.owner_id.clone(),
                category: opened.category.clone(),
                severity: opened.severity as i16,
                priority: opened.priority as i16,
                complexity: opened.complexity as i16,
                customer_tier: opened.customer_tier as i16,
                channel: opened.channel as i16,
                received_at: when(&opened.received_at, now),
            };
            cases.push((case, event.traceparent.as_str()));
        }
        store::upsert_cases(conn, &cases).await?;
        // The first response counts from receipt, resolution too: the customer's wait
        // started when they complained, not when we opened the case.
        let starts: Vec<ClockStart<'_>> = cases
            .iter()
            .flat_map(|(case, traceparent)| {
                [ClockKind::FirstResponse, ClockKind::Resolution].map(|kind| ClockStart {
                    case,
                    kind,
                    cycle: 1,
                    origin: case.received_at,
                    traceparent,
                })
            })
            .collect();
        self.engine.start_clocks(conn, calendars, &starts).await?;
        Ok(())
    }
}

impl EventHandler for ClockEvents {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(self.on_event(tx, event))
    }

    fn in_sets(&self, event: &Event) -> bool {
        opened_of(event).is_some()
            || heard_from_us(event).is_some()
            || matches!(&event.payload, Some(Payload::CaseReclassified(_)))
            || matches!(&event.payload, Some(Payload::CaseStatusChanged(c)) if clockless(c))
    }

    /// Starts the clocks of the opened cases of a run, then takes the acknowledgements, the
    /// contacts that reached the customer and the reclassifications in their order, with
    /// set-based statements (see [`phases`]); status changes that move no clock are in runs
    /// only so as not to split them. Taking the openings first keeps each case's order: a case
    /// is contacted or reclassified only after it opened.
    fn apply_set<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        run: &'a [Incoming<'a>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        let cases: Vec<(&CaseOpened, &Event)> = run
            .iter()
            .filter_map(|i| opened_of(i.event).map(|o| (o, i.event)))
            .collect();
        Box::pin(async move {
            let now = Utc::now();
            let mut later = Vec::new();
            for incoming in run {
                let event = incoming.event;
                if let Some((case_id, at)) = heard_from_us(event) {
                    let heard = (
                        Uuid::parse_str(case_id)?,
                        when(at, now),
                        event.traceparent.as_str(),
                    );
                    later.push(Later::Heard(heard));
                } else if let Some(Payload::CaseReclassified(change)) = &event.payload {
                    later.push(Later::Reclassified(
                        Uuid::parse_str(&change.case_id)?,
                        change,
                    ));
                }
            }
            // Each calendar is read (and share-locked) once for the whole run.
            let calendars = &mut CalendarsRead::shared();
            if !cases.is_empty() {
                self.cases_opened(tx, calendars, &cases).await?;
            }
            for (heard, reclassified) in phases(later) {
                if !heard.is_empty() {
                    self.customers_heard_from_us(tx, calendars, &heard).await?;
                }
                if !reclassified.is_empty() {
                    self.cases_reclassified(tx, calendars, &reclassified, now)
                        .await?;
                }
            }
            Ok(())
        })
    }

    fn after_commit(&self) {
        self.engine.events.committed();
    }
}

/// An event of a set run taken after the openings.
enum Later<'e> {
    /// A first response or a contact that reached the customer: (case, when, trace).
    Heard((Uuid, DateTime<Utc>, &'e str)),
    Reclassified(Uuid, &'e CaseReclassified),
}

/// Contacts and reclassifications of a run, in phases each applied with set-based statements:
/// first its contacts (a case may be contacted more than once), then its reclassifications
/// (a case at most once, and never one contacted after it was reclassified). An event that
/// would break this starts the next phase, so each case's events keep their order; phases
/// are applied in their order.
#[allow(clippy::type_complexity)]
fn phases(
    later: Vec<Later<'_>>,
) -> Vec<(
    Vec<(Uuid, DateTime<Utc>, &str)>,
    Vec<(Uuid, &CaseReclassified)>,
)> {
    let mut phases = vec![(Vec::new(), Vec::new())];
    let mut reclassified = std::collections::HashSet::new();
    for item in later {
        let case_id = match &item {
            Later::Heard((case_id, _, _)) | Later::Reclassified(case_id, _) => *case_id,
        };
        if reclassified.contains(&case_id) {
            phases.push((Vec::new(), Vec::new()));
            reclassified.clear();
        }
        let (heard, changes) = phases.last_mut().expect("a phase");
        match item {
            Later::Heard(contact) => heard.push(contact),
            Later::Reclassified(case_id, change) => {
                reclassified.insert(case_id);
                changes.push((case_id, change));
            }
        }
    }
    phases
}

fn opened_of(event: &Event) -> Option<&CaseOpened> {
    match &event.payload {
        Some(Payload::CaseOpened(opened)) => Some(opened),
        _ => None,
    }
}

/// What a reclassification changes: the facts it gives (an empty category or a zero level
/// leaves the stored one).
fn reclassified(change: &CaseReclassified) -> CaseChange<'_> {
    let given = |level: i32| (level != 0).then_some(level as i16);
    CaseChange {
        category: (!change.category.is_empty()).then_some(change.category.as_str()),
        severity: given(change.severity),
        priority: given(change.priority),
        complexity: given(change.complexity),
        ..CaseChange::default()
    }
}

/// Whether a status change leaves every clock as it is (e.g. accepted → investigating): no
/// pause, resume, meeting, cancellation or new clock, so nothing to lock or write.
fn clockless(change: &CaseStatusChanged) -> bool {
    let from = CaseStatus::try_from(change.from).unwrap_or(CaseStatus::Unspecified);
    let to = CaseStatus::try_from(change.to).unwrap_or(CaseStatus::Unspecified);
    from != CaseStatus::WaitingOnCustomer
        && !matches!(
            to,
            CaseStatus::WaitingOnCustomer
                | CaseStatus::Resolved
                | CaseStatus::Cancelled
                | CaseStatus::Reopened
        )
}

/// (case, when) of an acknowledgement or of a contact that reached the customer.
fn heard_from_us(event: &Event) -> Option<(&str, &Option<prost_types::Timestamp>)> {
    match &event.payload {
        Some(Payload::CaseAcknowledged(ack)) => Some((&ack.case_id, &ack.acknowledged_at)),
        Some(Payload::CaseCustomerContacted(contact)) if contact.reached => {
            Some((&contact.case_id, &contact.contacted_at))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reclassification_changes_only_the_facts_it_gives() {
        let change = CaseReclassified {
            case_id: "c".into(),
            severity: 3,
            complexity: 2,
            reason: "why".into(),
            ..Default::default()
        };
        let facts = reclassified(&change);
        assert_eq!(facts.severity, Some(3));
        assert_eq!(facts.complexity, Some(2));
        assert_eq!(facts.priority, None, "zero keeps the stored priority");
        assert_eq!(facts.category, None, "empty keeps the stored category");
        assert_eq!((facts.department_id, facts.owner_id), (None, None));
        let recategorised = CaseReclassified {
            category: "billing".into(),
            priority: 1,
            ..Default::default()
        };
        let facts = reclassified(&recategorised);
        assert_eq!(facts.category, Some("billing"));
        assert_eq!(facts.priority, Some(1));
        assert_eq!((facts.severity, facts.complexity), (None, None));
    }

    #[test]
    fn only_status_changes_that_move_no_clock_are_clockless() {
        let change = |from: CaseStatus, to: CaseStatus| CaseStatusChanged {
            from: from as i32,
            to: to as i32,
            ..Default::default()
        };
        use CaseStatus::*;
        assert!(clockless(&change(Accepted, Investigating)));
        assert!(clockless(&change(Resolved, Closed)));
        for to in [WaitingOnCustomer, Resolved, Cancelled, Reopened] {
            assert!(!clockless(&change(Investigating, to)), "{to:?}");
        }
        // Leaving the customer's court resumes the paused clocks.
        assert!(!clockless(&change(WaitingOnCustomer, Investigating)));
    }
}
