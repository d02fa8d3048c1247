//! Builds the read model from the three event streams; each event sets only its own facts,
//! so the streams may interleave in any order.

use std::future::Future;
use std::pin::Pin;

use chrono::Utc;
use complaints_kit::events::EventHandler;
use complaints_kit::time::from_timestamp;
use complaints_proto::common::v1::{CaseStatus, ClockKind};
use complaints_proto::events::v1::{Event, event::Payload};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::{self, FactValue};

pub struct ScoringEvents;

async fn on_event(conn: &mut PgConnection, event: &Event) -> anyhow::Result<()> {
    let now = Utc::now();
    match &event.payload {
        Some(Payload::CaseOpened(o)) => {
            let opened_at = o.opened_at.as_ref().and_then(from_timestamp).unwrap_or(now);
            store::upsert_opened(
                conn,
                Uuid::parse_str(&o.case_id)?,
                &o.department_id,
                &o.owner_id,
                &o.category,
                o.severity as i16,
                opened_at,
            )
            .await?;
        }
        Some(Payload::CaseAssigned(a)) => {
            let value = FactValue::Owner(a.department_id.clone(), a.owner_id.clone());
            store::update_facts(
                conn,
                Uuid::parse_str(&a.case_id)?,
                "department_id = $2, owner_id = $3",
                value,
            )
            .await?;
        }
        Some(Payload::CaseStatusChanged(c)) => {
            let case_id = Uuid::parse_str(&c.case_id)?;
            let at = c
                .changed_at
                .as_ref()
                .and_then(from_timestamp)
                .unwrap_or(now);
            if c.to == CaseStatus::Resolved as i32 {
                store::update_facts(
                    conn,
                    case_id,
                    "resolved = true, resolved_at = $2",
                    FactValue::Time(at),
                )
                .await?;
            } else if c.to == CaseStatus::Reopened as i32 {
                store::update_facts(
                    conn,
                    case_id,
                    "resolved = false, reopen_count = reopen_count + 1",
                    FactValue::None,
                )
                .await?;
            }
        }
        Some(Payload::CaseEscalated(e)) => {
            store::update_facts(
                conn,
                Uuid::parse_str(&e.case_id)?,
                "escalations = escalations + 1",
                FactValue::None,
            )
            .await?;
        }
        Some(Payload::ClockMet(m)) if m.kind == ClockKind::FirstResponse as i32 => {
            store::update_facts(
                conn,
                Uuid::parse_str(&m.case_id)?,
                "first_response_on_time = $2",
                FactValue::Bool(m.on_time),
            )
            .await?;
        }
        Some(Payload::ClockBreached(b)) if b.kind == ClockKind::FirstResponse as i32 => {
            store::update_facts(
                conn,
                Uuid::parse_str(&b.case_id)?,
                "first_response_breached = true",
                FactValue::None,
            )
            .await?;
        }
        Some(Payload::SurveyAnswered(s)) => {
            let value = FactValue::Survey {
                csat: s.csat.map(|v| v as i16),
                nps: s.nps.map(|v| v as i16),
                solved: s.solved,
            };
            store::update_facts(
                conn,
                Uuid::parse_str(&s.case_id)?,
                "csat = $2, nps = $3, solved = $4",
                value,
            )
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
        Box::pin(on_event(tx, event))
    }
}
