//! What happens to a case, inside one transaction: the case row is locked first, the rules of
//! `domain` decide, then the case, its timeline and its events are written together. Used by the
//! gRPC handlers and by the event consumers alike.

use chrono::{DateTime, Utc};
use complaints_kit::events::EventLog;
use complaints_kit::grpc;
use complaints_kit::time::to_timestamp;
use complaints_proto::common::v1::{CaseStatus, CustomerTier, Severity};
use complaints_proto::events::v1::{
    CaseAcknowledged, CaseAssigned, CaseEscalated, CaseOpened, CaseStatusChanged,
    ComplaintAccepted, event::Payload,
};
use sqlx::PgConnection;
use tonic::Status;
use uuid::Uuid;

use crate::domain::lifecycle::{self, IllegalTransition};
use crate::domain::routing;
use crate::store::{self, CaseRow, TimelineEntry};

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("case {0} not found")]
    NotFound(String),
    #[error("case is at version {actual}, not {expected}")]
    Stale { expected: u64, actual: u64 },
    #[error("{0}")]
    Illegal(IllegalTransition),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<WorkflowError> for Status {
    fn from(error: WorkflowError) -> Self {
        match error {
            WorkflowError::NotFound(id) => grpc::not_found("case", &id),
            WorkflowError::Stale { expected, actual } => {
                grpc::stale_version("case", expected, actual)
            }
            WorkflowError::Illegal(illegal) => {
                grpc::failed_precondition("STATUS", "case", &illegal.to_string())
            }
            WorkflowError::Precondition(why) => grpc::failed_precondition("STATE", "case", &why),
            WorkflowError::Database(e) => grpc::storage(&e),
        }
    }
}

pub fn status_of(case: &CaseRow) -> CaseStatus {
    CaseStatus::try_from(case.status as i32).unwrap_or(CaseStatus::Unspecified)
}

fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(to_timestamp(at))
}

/// Opens the case of an accepted complaint; `None` if it already has one.
pub async fn open_case(
    conn: &mut PgConnection,
    events: &EventLog,
    accepted: &ComplaintAccepted,
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<Option<CaseRow>, WorkflowError> {
    let complaint_id = Uuid::parse_str(&accepted.complaint_id)
        .map_err(|_| WorkflowError::Precondition("complaint id is not a UUID".into()))?;
    let departments: Vec<routing::Department> = store::departments(&mut *conn)
        .await?
        .iter()
        .map(|d| d.routing())
        .collect();
    let department = routing::department_for(&departments, &accepted.category)
        .cloned()
        .ok_or_else(|| WorkflowError::Precondition("no department is configured".into()))?;
    let loads: Vec<routing::AgentLoad> = store::agents(&mut *conn, Some(&department.id))
        .await?
        .iter()
        .map(|a| a.load())
        .collect();
    let tier = CustomerTier::try_from(accepted.customer_tier).unwrap_or(CustomerTier::Regular);
    let severity = Severity::try_from(accepted.severity).unwrap_or(Severity::General);
    let owner = routing::choose_owner(&department, &loads, routing::needs_senior(tier, severity));
    let received_at = accepted
        .received_at
        .as_ref()
        .and_then(complaints_kit::time::from_timestamp)
        .unwrap_or(now);
    let case = CaseRow {
        id: Uuid::now_v7(),
        complaint_id,
        complaint_reference: accepted.reference.clone(),
        status: CaseStatus::Accepted as i16,
        department_id: department.id.clone(),
        owner_id: owner.clone(),
        category: accepted.category.clone(),
        severity: accepted.severity as i16,
        priority: accepted.priority as i16,
        complexity: accepted.complexity as i16,
        channel: accepted.channel as i16,
        customer_tier: accepted.customer_tier as i16,
        customer_id: accepted.customer_id.clone(),
        escalation_level: 0,
        received_at,
        opened_at: now,
        acknowledged_at: None,
        resolved_at: None,
        closed_at: None,
        version: 1,
    };
    let Some(case) = store::insert_case(&mut *conn, &case).await? else {
        return Ok(None);
    };
    store::append_timeline(
        &mut *conn,
        &TimelineEntry {
            case_id: case.id,
            at: now,
            actor: "case-management".into(),
            kind: "opened",
            from_value: String::new(),
            to_value: format!("{} / {}", department.id, owner),
            note: format!("Complaint {} received; case opened", accepted.reference),
            customer_visible: true,
        },
    )
    .await?;
    events
        .append(
            &mut *conn,
            &case.id.to_string(),
            traceparent,
            Payload::CaseOpened(CaseOpened {
                case_id: case.id.to_string(),
                complaint_id: accepted.complaint_id.clone(),
                complaint_reference: accepted.reference.clone(),
                department_id: case.department_id.clone(),
                owner_id: case.owner_id.clone(),
                category: case.category.clone(),
                severity: accepted.severity,
                priority: accepted.priority,
                complexity: accepted.complexity,
                channel: accepted.channel,
                customer_tier: accepted.customer_tier,
                received_at: ts(received_at),
                opened_at: ts(now),
            }),
        )
        .await?;
    Ok(Some(case))
}

/// A change someone asks for.
#[derive(Clone, Debug)]
pub enum Change {
    Acknowledge {
        note: String,
    },
    Transition {
        to: CaseStatus,
        note: String,
        customer_visible: bool,
    },
}

/// Applies `change` to a locked case whose access and version the caller has checked.
pub async fn apply_change(
    conn: &mut PgConnection,
    events: &EventLog,
    mut case: CaseRow,
    change: Change,
    actor: &str,
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<CaseRow, WorkflowError> {
    let aggregate = case.id.to_string();
    match change {
        Change::Acknowledge { note } => {
            if !lifecycle::can_acknowledge(status_of(&case), case.acknowledged_at.is_some()) {
                return Err(WorkflowError::Precondition(
                    "the case was already acknowledged, or is closed or cancelled".into(),
                ));
            }
            case.acknowledged_at = Some(now);
            let saved = store::save(&mut *conn, &case).await?;
            store::append_timeline(
                &mut *conn,
                &TimelineEntry {
                    case_id: case.id,
                    at: now,
                    actor: actor.into(),
                    kind: "acknowledged",
                    from_value: String::new(),
                    to_value: String::new(),
                    note,
                    customer_visible: true,
                },
            )
            .await?;
            events
                .append(
                    &mut *conn,
                    &aggregate,
                    traceparent,
                    Payload::CaseAcknowledged(CaseAcknowledged {
                        case_id: aggregate.clone(),
                        by: actor.into(),
                        acknowledged_at: ts(now),
                    }),
                )
                .await?;
            Ok(saved)
        }
        Change::Transition {
            to,
            note,
            customer_visible,
        } => {
            let from = status_of(&case);
            lifecycle::check_transition(from, to).map_err(WorkflowError::Illegal)?;
            case.status = to as i16;
            match to {
                CaseStatus::Resolved => case.resolved_at = Some(now),
                CaseStatus::Closed | CaseStatus::Cancelled => case.closed_at = Some(now),
                CaseStatus::Reopened => {
                    case.resolved_at = None;
                    case.closed_at = None;
                }
                _ => {}
            }
            let saved = store::save(&mut *conn, &case).await?;
            store::append_timeline(
                &mut *conn,
                &TimelineEntry {
                    case_id: case.id,
                    at: now,
                    actor: actor.into(),
                    kind: "status_changed",
                    from_value: from.as_str_name().into(),
                    to_value: to.as_str_name().into(),
                    note: note.clone(),
                    customer_visible,
                },
            )
            .await?;
            events
                .append(
                    &mut *conn,
                    &aggregate,
                    traceparent,
                    Payload::CaseStatusChanged(CaseStatusChanged {
                        case_id: aggregate.clone(),
                        from: from as i32,
                        to: to as i32,
                        by: actor.into(),
                        changed_at: ts(now),
                        department_id: saved.department_id.clone(),
                        owner_id: saved.owner_id.clone(),
                        reason: note,
                    }),
                )
                .await?;
            Ok(saved)
        }
    }
}

/// Why and by whom a case is escalated; `escalation_id` makes it happen at most once.
pub struct EscalationRequest<'a> {
    pub escalation_id: &'a str,
    pub reason: &'a str,
    pub actor: &'a str,
    pub traceparent: &'a str,
}

/// Raises the escalation level of a locked case and hands it up the chain, once per
/// `escalation_id`. Returns the case and whether this call escalated it.
pub async fn escalate(
    conn: &mut PgConnection,
    events: &EventLog,
    mut case: CaseRow,
    request: &EscalationRequest<'_>,
    now: DateTime<Utc>,
) -> Result<(CaseRow, bool), WorkflowError> {
    let EscalationRequest {
        escalation_id,
        reason,
        actor,
        traceparent,
    } = *request;
    let department = store::department(&mut *conn, &case.department_id)
        .await?
        .map(|d| d.routing())
        .ok_or_else(|| {
            WorkflowError::Precondition("the case's department no longer exists".into())
        })?;
    let level = case.escalation_level + 1;
    let owner = routing::escalation_owner(&department, level as u32);
    if !store::record_escalation(
        &mut *conn,
        escalation_id,
        case.id,
        level,
        &owner,
        reason,
        actor,
    )
    .await?
    {
        return Ok((case, false));
    }
    if !lifecycle::is_open(status_of(&case)) {
        // Recorded, so it is never retried, but a resolved case is not handed upwards.
        return Ok((case, false));
    }
    let previous_owner = std::mem::replace(&mut case.owner_id, owner.clone());
    case.escalation_level = level;
    let saved = store::save(&mut *conn, &case).await?;
    let aggregate = case.id.to_string();
    store::append_timeline(
        &mut *conn,
        &TimelineEntry {
            case_id: case.id,
            at: now,
            actor: actor.into(),
            kind: "escalated",
            from_value: previous_owner.clone(),
            to_value: owner.clone(),
            note: format!("level {level}: {reason}"),
            customer_visible: false,
        },
    )
    .await?;
    events
        .append(
            &mut *conn,
            &aggregate,
            traceparent,
            Payload::CaseEscalated(CaseEscalated {
                case_id: aggregate.clone(),
                escalation_id: escalation_id.into(),
                level: level as u32,
                owner_id: owner.clone(),
                reason: reason.into(),
            }),
        )
        .await?;
    events
        .append(
            &mut *conn,
            &aggregate,
            traceparent,
            Payload::CaseAssigned(CaseAssigned {
                case_id: aggregate.clone(),
                department_id: saved.department_id.clone(),
                owner_id: owner,
                previous_department_id: saved.department_id.clone(),
                previous_owner_id: previous_owner,
                reason: format!("escalation level {level}"),
            }),
        )
        .await?;
    Ok((saved, true))
}
