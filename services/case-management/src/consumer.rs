//! Effects of other services' events on cases: a case opens for every accepted complaint,
//! a rejected complaint cancels its case, a dissatisfied survey answer reopens it.

use std::future::Future;
use std::pin::Pin;

use chrono::Utc;
use complaints_kit::events::{EventHandler, EventLog};
use complaints_proto::common::v1::CaseStatus;
use complaints_proto::events::v1::{Event, event::Payload};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::lifecycle;
use crate::store;
use crate::workflow::{self, Change, WorkflowError};

pub struct CaseEvents {
    pub events: EventLog,
}

impl CaseEvents {
    async fn on_event(&self, conn: &mut PgConnection, event: &Event) -> anyhow::Result<()> {
        let now = Utc::now();
        match &event.payload {
            Some(Payload::ComplaintAccepted(accepted)) => {
                if let Some(case) =
                    workflow::open_case(conn, &self.events, accepted, &event.traceparent, now)
                        .await?
                {
                    tracing::info!(case_id = %case.id, complaint_id = %accepted.complaint_id, department = %case.department_id, "case opened");
                }
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
            Some(Payload::SurveyAnswered(answer)) if answer.dissatisfied => {
                let Ok(case_id) = Uuid::parse_str(&answer.case_id) else {
                    return Ok(());
                };
                let Some(case) = store::lock(conn, case_id).await? else {
                    return Ok(());
                };
                let status = workflow::status_of(&case);
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
            _ => {}
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

    fn after_commit(&self) {
        self.events.committed();
    }
}
