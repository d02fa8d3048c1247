//! Effects of other services' events on cases: a case opens for every accepted complaint,
//! a rejected complaint cancels its case, a repeat contact or an intake reclassification
//! updates it, and a dissatisfied survey answer reopens it or opens a review (per policy).

use std::future::Future;
use std::pin::Pin;

use chrono::Utc;
use complaints_kit::events::{EventHandler, EventLog, Incoming};
use complaints_proto::common::v1::{CaseStatus, Priority, Severity};
use complaints_proto::events::v1::{ComplaintAccepted, Event, event::Payload};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::lifecycle;
use crate::domain::policy::{CasePolicy, DissatisfactionAction};
use crate::store;
use crate::watch::ChangeSignal;
use crate::workflow::{self, Change, RepeatContact, WorkflowError};

pub struct CaseEvents {
    pub events: EventLog,
    pub policy: CasePolicy,
    pub changes: ChangeSignal,
}

impl CaseEvents {
    async fn on_event(&self, conn: &mut PgConnection, event: &Event) -> anyhow::Result<()> {
        let now = Utc::now();
        match &event.payload {
            Some(Payload::ComplaintAccepted(accepted)) => {
                self.open_cases(conn, &[(accepted, event)]).await?;
            }
            Some(Payload::ComplaintRejected(rejected)) => {
                let Ok(complaint_id) = Uuid::parse_str(&rejected.complaint_id) else {
                    return Ok(());
                };
                let Some(case) = store::lock_by_complaint(conn, complaint_id).await? else {
                    return Ok(());
                };
                let status = workflow::status_of(&case);
                if lifecycle::check_transition(status, CaseStatus::Cancelled).is_ok() {
                    let note = format!(
                        "complaint rejected at verification: {} {}",
                        rejected.reason, rejected.note
                    );
                    let change = Change::Transition {
                        to: CaseStatus::Cancelled,
                        note,
                        customer_visible: true,
                    };
                    workflow::apply_change(
                        conn,
                        &self.events,
                        case,
                        change,
                        &rejected.by,
                        &event.traceparent,
                        now,
                    )
                    .await?;
                }
            }
            Some(Payload::ComplaintRepeatContact(_)) => {
                self.repeat_contacts(conn, &[event], now).await?;
            }
            Some(Payload::ComplaintReclassified(reclassified)) => {
                let Ok(complaint_id) = Uuid::parse_str(&reclassified.complaint_id) else {
                    return Ok(());
                };
                let Some(case) = store::lock_by_complaint(conn, complaint_id).await? else {
                    return Ok(());
                };
                let change = workflow::Reclassification {
                    category: reclassified.category.trim().to_owned(),
                    severity: Severity::try_from(reclassified.severity)
                        .unwrap_or(Severity::Unspecified),
                    priority: Priority::try_from(reclassified.priority)
                        .unwrap_or(Priority::Unspecified),
                    complexity: reclassified.complexity,
                    reason: if reclassified.reason.trim().is_empty() {
                        "reclassified at intake".into()
                    } else {
                        reclassified.reason.trim().to_owned()
                    },
                };
                workflow::reclassify(
                    conn,
                    &self.events,
                    case,
                    &change,
                    "intake",
                    &event.traceparent,
                    now,
                )
                .await?;
            }
            Some(Payload::SurveyAnswered(answer)) if answer.dissatisfied => {
                let Ok(case_id) = Uuid::parse_str(&answer.case_id) else {
                    return Ok(());
                };
                let Some(case) = store::lock(conn, case_id).await? else {
                    return Ok(());
                };
                let status = workflow::status_of(&case);
                match self.policy.dissatisfaction {
                    DissatisfactionAction::Review => {
                        if status != CaseStatus::Cancelled {
                            workflow::open_dissatisfaction_review(
                                conn,
                                &self.events,
                                case,
                                &answer.invitation_id,
                                &event.traceparent,
                                now,
                            )
                            .await?;
                        }
                    }
                    DissatisfactionAction::Reopen => {
                        if lifecycle::check_transition(status, CaseStatus::Reopened).is_ok() {
                            let change = Change::Transition {
                                to: CaseStatus::Reopened,
                                note: "customer dissatisfied in the follow-up survey; reopened for investigation".into(),
                                customer_visible: true,
                            };
                            match workflow::apply_change(
                                conn,
                                &self.events,
                                case,
                                change,
                                "feedback-survey",
                                &event.traceparent,
                                now,
                            )
                            .await
                            {
                                Ok(_) | Err(WorkflowError::Illegal(_)) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl CaseEvents {
    /// Records the repeat contacts among `events`, in order, with set-based statements.
    async fn repeat_contacts(
        &self,
        conn: &mut PgConnection,
        events: &[&Event],
        now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let contacts: Vec<RepeatContact<'_>> = events
            .iter()
            .filter_map(|event| {
                let Some(Payload::ComplaintRepeatContact(repeat)) = &event.payload else {
                    return None;
                };
                // An id that is not one (never from intake) is skipped, as before.
                let complaint_id = Uuid::parse_str(&repeat.complaint_id).ok()?;
                Some(RepeatContact {
                    complaint_id,
                    reference: if repeat.repeat_reference.is_empty() {
                        &repeat.repeat_complaint_id
                    } else {
                        &repeat.repeat_reference
                    },
                    raised: Priority::try_from(repeat.raised_priority)
                        .unwrap_or(Priority::Unspecified),
                    traceparent: &event.traceparent,
                })
            })
            .collect();
        if !contacts.is_empty() {
            workflow::record_repeat_contacts(conn, &self.events, &contacts, now).await?;
        }
        Ok(())
    }

    /// Opens the cases of a run of accepted complaints with set-based statements.
    async fn open_cases(
        &self,
        conn: &mut PgConnection,
        run: &[(&ComplaintAccepted, &Event)],
    ) -> anyhow::Result<()> {
        let accepted: Vec<(&ComplaintAccepted, &str)> = run
            .iter()
            .map(|(accepted, event)| (*accepted, event.traceparent.as_str()))
            .collect();
        let opened =
            workflow::open_cases(conn, &self.events, &accepted, &self.policy, Utc::now()).await?;
        for (i, case) in opened {
            tracing::info!(case_id = %case.id, complaint_id = %accepted[i].0.complaint_id, department = %case.department_id, "case opened");
        }
        Ok(())
    }
}

impl EventHandler for CaseEvents {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(self.on_event(tx, event))
    }

    fn in_sets(&self, event: &Event) -> bool {
        accepted_of(event).is_some()
            || matches!(&event.payload, Some(Payload::ComplaintRepeatContact(_)))
    }

    /// Opens the cases of a run of accepted complaints, then records its repeat contacts (a
    /// repeat contact is about a complaint accepted before it, so each complaint's order is
    /// kept), with set-based statements.
    fn apply_set<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        run: &'a [Incoming<'a>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        let complaints: Vec<(&ComplaintAccepted, &Event)> = run
            .iter()
            .filter_map(|i| accepted_of(i.event).map(|a| (a, i.event)))
            .collect();
        Box::pin(async move {
            if !complaints.is_empty() {
                self.open_cases(tx, &complaints).await?;
            }
            let events: Vec<&Event> = run.iter().map(|incoming| incoming.event).collect();
            self.repeat_contacts(tx, &events, Utc::now()).await
        })
    }

    fn after_commit(&self) {
        self.events.committed();
        self.changes.notify();
    }
}

fn accepted_of(event: &Event) -> Option<&ComplaintAccepted> {
    match &event.payload {
        Some(Payload::ComplaintAccepted(accepted)) => Some(accepted),
        _ => None,
    }
}
