//! Invitations follow resolutions: when a case is resolved, an invitation is scheduled inside
//! the 48-hour follow-up limit, as a link or, for phone complaints, as a return-visit call,
//! on the latest version of the configured questionnaire. Customers who opted out get none.

use std::future::Future;
use std::pin::Pin;

use chrono::{Duration, Utc};
use complaints_kit::events::{EventHandler, EventLog, Incoming};
use complaints_kit::time::from_timestamp;
use complaints_proto::common::v1::CaseStatus;
use complaints_proto::events::v1::{CaseOpened, Event, SurveyInvitationIssued, event::Payload};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::delivery::Delivery;
use crate::domain::questionnaire::standard_template;
use crate::domain::token::{self, TokenKey};
use crate::store::{self, CaseRow, InvitationRow, OPTED_OUT, SCHEDULED};

pub struct SurveyEvents {
    pub events: EventLog,
    pub token_key: TokenKey,
    pub delay: Duration,
    /// New invitations take the latest version of this template.
    pub template_id: String,
}

impl SurveyEvents {
    async fn on_event(&self, conn: &mut PgConnection, event: &Event) -> anyhow::Result<()> {
        match &event.payload {
            Some(Payload::CaseOpened(opened)) => {
                store::upsert_cases(conn, &[case_of(opened)?]).await?;
            }
            Some(Payload::CaseAssigned(assigned)) => {
                let case_id = Uuid::parse_str(&assigned.case_id)?;
                if let Some(mut case) = store::case(conn, case_id).await? {
                    case.department_id = assigned.department_id.clone();
                    case.owner_id = assigned.owner_id.clone();
                    store::upsert_case(conn, &case).await?;
                }
            }
            Some(Payload::CaseStatusChanged(change))
                if change.to == CaseStatus::Resolved as i32 =>
            {
                let case_id = Uuid::parse_str(&change.case_id)?;
                let Some(case) = store::case(conn, case_id).await? else {
                    tracing::warn!(%case_id, "resolved case unknown to the survey service; no invitation");
                    return Ok(());
                };
                let resolved_at = change
                    .changed_at
                    .as_ref()
                    .and_then(from_timestamp)
                    .unwrap_or_else(Utc::now);
                let (template_id, template_version) = match store::latest_template(
                    conn,
                    &self.template_id,
                )
                .await?
                {
                    Some(t) => (t.template_id, t.version),
                    None => {
                        tracing::warn!(template = %self.template_id, "configured survey template missing; using standard v1");
                        let standard = standard_template();
                        (standard.id, standard.version as i32)
                    }
                };
                let id = Uuid::now_v7();
                let delivery = Delivery::for_channel(case.channel as i32);
                let opted_out = store::is_opted_out(conn, &case.customer_id).await?;
                let invitation = InvitationRow {
                    id,
                    case_id,
                    cycle: store::next_cycle(conn, case_id).await?,
                    status: if opted_out { OPTED_OUT } else { SCHEDULED },
                    delivery: delivery.as_str().into(),
                    template_id,
                    template_version,
                    scheduled_for: resolved_at + self.delay,
                    sent_at: None,
                    expires_at: None,
                    answered_at: None,
                    answers: None,
                    dissatisfied: false,
                    department_id: change.department_id.clone(),
                    owner_id: change.owner_id.clone(),
                    category: case.category.clone(),
                    version: 1,
                    customer_id: case.customer_id.clone(),
                    reminder_sent_at: None,
                    opted_out_at: opted_out.then_some(resolved_at),
                    answered_via: None,
                    answered_by: None,
                    traceparent: event.traceparent.clone(),
                };
                let hash = token::hash(&self.token_key.token(id));
                if store::insert_invitation(conn, &invitation, &hash).await? && !opted_out {
                    self.events
                        .append(
                            conn,
                            &change.case_id,
                            &event.traceparent,
                            Payload::SurveyInvitationIssued(SurveyInvitationIssued {
                                invitation_id: id.to_string(),
                                case_id: change.case_id.clone(),
                            }),
                        )
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl EventHandler for SurveyEvents {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Event,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(self.on_event(tx, event))
    }

    fn in_sets(&self, event: &Event) -> bool {
        matches!(event.payload, Some(Payload::CaseOpened(_)))
    }

    /// Records a run of opened cases with one statement.
    fn apply_set<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        run: &'a [Incoming<'a>],
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let mut cases = Vec::with_capacity(run.len());
            for incoming in run {
                if let Some(Payload::CaseOpened(opened)) = &incoming.event.payload {
                    cases.push(case_of(opened)?);
                }
            }
            store::upsert_cases(tx, &cases).await?;
            Ok(())
        })
    }

    fn after_commit(&self) {
        self.events.committed();
    }
}

fn case_of(opened: &CaseOpened) -> anyhow::Result<CaseRow> {
    Ok(CaseRow {
        case_id: Uuid::parse_str(&opened.case_id)?,
        department_id: opened.department_id.clone(),
        owner_id: opened.owner_id.clone(),
        category: opened.category.clone(),
        channel: opened.channel as i16,
        customer_id: opened.customer_id.clone(),
    })
}
