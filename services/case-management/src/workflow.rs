//! What happens to a case, inside one transaction: the case row is locked first, the rules of
//! `domain` decide, then the case, its timeline and its events are written together. Used by the
//! gRPC handlers and by the event consumers alike. Acknowledgements and transitions are also
//! decided without a lock ([`plan_simple`]) and written with one statement guarded by the
//! version read (`store::save_if_unchanged`); the handler falls back to the locked path when
//! the case moved on in between.

use chrono::{DateTime, Utc};
use complaints_kit::events::EventLog;
use complaints_kit::grpc;
use complaints_kit::time::to_timestamp;
use complaints_proto::cases::v1::{ContactKind, SubTaskStatus};
use complaints_proto::common::v1::{CaseStatus, Channel, CustomerTier, Priority, Severity};
use complaints_proto::events::v1::{
    CaseAcknowledged, CaseAssigned, CaseCustomerContacted, CaseEscalated, CaseOpened,
    CaseProblemLinked, CaseReclassified, CaseStatusChanged, CaseSubTaskChanged, ComplaintAccepted,
    event::Payload,
};
use sqlx::PgConnection;
use tonic::Status;
use uuid::Uuid;

use crate::domain::coordination;
use crate::domain::lifecycle::{self, IllegalTransition};
use crate::domain::policy::CasePolicy;
use crate::domain::routing;
use crate::store::{self, CaseRow, SubTaskRow, TimelineEntry, TimelineRow};

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
    #[error("{0}: {1}")]
    InvalidField(&'static str, String),
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
            WorkflowError::InvalidField(field, why) => grpc::invalid_field(field, &why),
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

/// Opens a case for each accepted complaint, in order, with a few statements for the whole
/// run: routing data is read once, owners are chosen in memory (each choice counts towards the
/// load the next one sees), and cases, timeline entries and `CaseOpened` events are inserted
/// as multi-row statements. A complaint that already has a case is skipped. Returns the cases
/// opened, each with the index of its complaint in `accepted`.
pub async fn open_cases(
    conn: &mut PgConnection,
    events: &EventLog,
    accepted: &[(&ComplaintAccepted, &str)],
    policy: &CasePolicy,
    now: DateTime<Utc>,
) -> Result<Vec<(usize, CaseRow)>, WorkflowError> {
    if accepted.is_empty() {
        return Ok(Vec::new());
    }
    let departments: Vec<routing::Department> = store::departments(&mut *conn)
        .await?
        .iter()
        .map(|d| d.routing())
        .collect();
    let mut chosen = Vec::with_capacity(accepted.len());
    for (complaint, _) in accepted {
        let complaint_id = Uuid::parse_str(&complaint.complaint_id)
            .map_err(|_| WorkflowError::Precondition("complaint id is not a UUID".into()))?;
        let department = routing::department_for(&departments, &complaint.category)
            .ok_or_else(|| WorkflowError::Precondition("no department is configured".into()))?;
        chosen.push((complaint_id, department));
    }
    let mut wanted: Vec<String> = chosen.iter().map(|(_, d)| d.id.clone()).collect();
    wanted.sort();
    wanted.dedup();
    // (department, load) of every agent of the departments involved.
    let mut loads: Vec<(String, routing::AgentLoad)> = store::agents_in(&mut *conn, &wanted)
        .await?
        .iter()
        .map(|a| (a.department_id.clone(), a.load()))
        .collect();
    let mut cases = Vec::with_capacity(accepted.len());
    let mut seen = std::collections::HashSet::new();
    for ((complaint, traceparent), (complaint_id, department)) in accepted.iter().zip(&chosen) {
        if !seen.insert(*complaint_id) {
            continue;
        }
        let in_department: Vec<routing::AgentLoad> = loads
            .iter()
            .filter(|(d, _)| *d == department.id)
            .map(|(_, load)| load.clone())
            .collect();
        let tier = CustomerTier::try_from(complaint.customer_tier).unwrap_or(CustomerTier::Regular);
        let severity = Severity::try_from(complaint.severity).unwrap_or(Severity::General);
        let need = routing::Need {
            senior: routing::needs_senior(tier, severity),
            skill: Some(routing::skill_for(&complaint.category, &policy.skill_map)),
            language: Some(complaint.language.as_str()).filter(|l| !l.is_empty()),
        };
        let owner = routing::choose_owner(department, &in_department, &need);
        if let Some((_, load)) = loads.iter_mut().find(|(_, a)| a.id == owner) {
            load.open_cases += 1;
        }
        let received_at = complaint
            .received_at
            .as_ref()
            .and_then(complaints_kit::time::from_timestamp)
            .unwrap_or(now);
        cases.push(CaseRow {
            traceparent: (*traceparent).to_owned(),
            id: Uuid::now_v7(),
            complaint_id: *complaint_id,
            complaint_reference: complaint.reference.clone(),
            status: CaseStatus::Accepted as i16,
            department_id: department.id.clone(),
            owner_id: owner,
            category: complaint.category.clone(),
            severity: complaint.severity as i16,
            priority: complaint.priority as i16,
            complexity: complaint.complexity as i16,
            channel: complaint.channel as i16,
            customer_tier: complaint.customer_tier as i16,
            customer_id: complaint.customer_id.clone(),
            escalation_level: 0,
            received_at,
            opened_at: now,
            acknowledged_at: None,
            resolved_at: None,
            closed_at: None,
            version: 1,
            product_ref: complaint.product_ref.trim().to_owned(),
            order_ref: complaint.order_ref.trim().to_owned(),
            problem_id: None,
            under_review: false,
        });
    }
    let inserted: std::collections::HashSet<Uuid> = store::insert_cases(&mut *conn, &cases)
        .await?
        .into_iter()
        .collect();
    let index_of: std::collections::HashMap<Uuid, usize> = chosen
        .iter()
        .enumerate()
        .map(|(i, (complaint_id, _))| (*complaint_id, i))
        .collect();
    let opened: Vec<(usize, CaseRow)> = cases
        .into_iter()
        .filter(|c| inserted.contains(&c.complaint_id))
        .map(|c| (index_of[&c.complaint_id], c))
        .collect();
    let timeline: Vec<TimelineEntry> = opened
        .iter()
        .map(|(i, case)| TimelineEntry {
            case_id: case.id,
            at: now,
            actor: "case-management".into(),
            kind: "opened",
            from_value: String::new(),
            to_value: format!("{} / {}", case.department_id, case.owner_id),
            note: format!(
                "Complaint {} received; case opened",
                accepted[*i].0.reference
            ),
            customer_visible: true,
        })
        .collect();
    store::append_timeline_all(&mut *conn, &timeline).await?;
    let opened_events = opened
        .iter()
        .map(|(i, case)| {
            let (complaint, traceparent) = accepted[*i];
            (
                case.id.to_string(),
                traceparent.to_owned(),
                Payload::CaseOpened(CaseOpened {
                    case_id: case.id.to_string(),
                    complaint_id: complaint.complaint_id.clone(),
                    complaint_reference: complaint.reference.clone(),
                    department_id: case.department_id.clone(),
                    owner_id: case.owner_id.clone(),
                    category: case.category.clone(),
                    severity: complaint.severity,
                    priority: complaint.priority,
                    complexity: complaint.complexity,
                    channel: complaint.channel,
                    customer_tier: complaint.customer_tier,
                    received_at: ts(case.received_at),
                    opened_at: ts(now),
                    customer_id: case.customer_id.clone(),
                }),
            )
        })
        .collect();
    events.append_all(&mut *conn, opened_events).await?;
    Ok(opened)
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
    /// Another owner in the same department (manual assignment).
    Assign {
        owner: String,
        reason: String,
    },
    /// Another department; routing picks the owner unless one is named.
    Transfer {
        department_id: String,
        owner: Option<String>,
        reason: String,
    },
    /// Links the case to a problem of the ledger (`None` unlinks it).
    LinkProblem {
        problem_id: Option<Uuid>,
    },
}

/// The whole effect of a change that writes only the case row, one timeline entry and one
/// event: what [`plan_simple`] decides, before anything is written.
#[derive(Debug)]
pub struct SimpleChange {
    pub case: CaseRow,
    pub entry: TimelineEntry,
    pub event: Payload,
}

/// Whether `change` is decided from the case alone ([`plan_simple`]); the other kinds read
/// departments or agents too.
pub fn is_simple(change: &Change) -> bool {
    matches!(
        change,
        Change::Acknowledge { .. } | Change::Transition { .. }
    )
}

/// Decides an acknowledgement or a status transition of `case` as it stands (pure). `None`
/// for the other kinds of change (see [`is_simple`]).
pub fn plan_simple(
    mut case: CaseRow,
    change: &Change,
    actor: &str,
    now: DateTime<Utc>,
) -> Option<Result<SimpleChange, WorkflowError>> {
    let aggregate = case.id.to_string();
    Some(match change {
        Change::Acknowledge { note } => {
            if !lifecycle::can_acknowledge(status_of(&case), case.acknowledged_at.is_some()) {
                return Some(Err(WorkflowError::Precondition(
                    "the case was already acknowledged, or is closed or cancelled".into(),
                )));
            }
            case.acknowledged_at = Some(now);
            let entry = TimelineEntry {
                case_id: case.id,
                at: now,
                actor: actor.into(),
                kind: "acknowledged",
                from_value: String::new(),
                to_value: String::new(),
                note: note.clone(),
                customer_visible: true,
            };
            let event = Payload::CaseAcknowledged(CaseAcknowledged {
                case_id: aggregate,
                by: actor.into(),
                acknowledged_at: ts(now),
            });
            Ok(SimpleChange { case, entry, event })
        }
        Change::Transition {
            to,
            note,
            customer_visible,
        } => {
            let (from, to) = (status_of(&case), *to);
            if let Err(illegal) = lifecycle::check_transition(from, to) {
                return Some(Err(WorkflowError::Illegal(illegal)));
            }
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
            let entry = TimelineEntry {
                case_id: case.id,
                at: now,
                actor: actor.into(),
                kind: "status_changed",
                from_value: from.as_str_name().into(),
                to_value: to.as_str_name().into(),
                note: note.clone(),
                customer_visible: *customer_visible,
            };
            let event = Payload::CaseStatusChanged(CaseStatusChanged {
                case_id: aggregate,
                from: from as i32,
                to: to as i32,
                by: actor.into(),
                changed_at: ts(now),
                department_id: case.department_id.clone(),
                owner_id: case.owner_id.clone(),
                reason: note.clone(),
            });
            Ok(SimpleChange { case, entry, event })
        }
        _ => return None,
    })
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
    let traceparent = &case.trace_for(traceparent);
    let aggregate = case.id.to_string();
    match change {
        Change::Acknowledge { .. } | Change::Transition { .. } => {
            let Some(planned) = plan_simple(case, &change, actor, now) else {
                unreachable!("acknowledgements and transitions are simple changes")
            };
            let planned = planned?;
            let saved = store::save(&mut *conn, &planned.case).await?;
            store::append_timeline(&mut *conn, &planned.entry).await?;
            events
                .append(&mut *conn, &aggregate, traceparent, planned.event)
                .await?;
            Ok(saved)
        }
        Change::Assign { owner, reason } => {
            let department = department_of(conn, &case.department_id).await?;
            let agents = agent_loads(conn, &case.department_id).await?;
            if !routing::may_own(&department, &agents, &owner) {
                return Err(WorkflowError::InvalidField(
                    "owner_id",
                    format!(
                        "not an agent of {} nor in its escalation chain",
                        case.department_id
                    ),
                ));
            }
            reassign(
                conn,
                events,
                case,
                None,
                owner,
                &reason,
                actor,
                traceparent,
                now,
            )
            .await
        }
        Change::Transfer {
            department_id,
            owner,
            reason,
        } => {
            if !lifecycle::is_open(status_of(&case)) {
                return Err(WorkflowError::Precondition(
                    "only open cases can be transferred".into(),
                ));
            }
            if department_id == case.department_id {
                return Err(WorkflowError::InvalidField(
                    "department_id",
                    "the case is already in this department; use AssignCase".into(),
                ));
            }
            let department = store::department(&mut *conn, &department_id)
                .await?
                .map(|d| d.routing())
                .ok_or_else(|| {
                    WorkflowError::InvalidField("department_id", "no such department".into())
                })?;
            let agents = agent_loads(conn, &department.id).await?;
            let owner = match owner {
                Some(owner) if routing::may_own(&department, &agents, &owner) => owner,
                Some(_) => {
                    return Err(WorkflowError::InvalidField(
                        "owner_id",
                        format!(
                            "not an agent of {} nor in its escalation chain",
                            department.id
                        ),
                    ));
                }
                None => {
                    let tier = CustomerTier::try_from(case.customer_tier as i32)
                        .unwrap_or(CustomerTier::Regular);
                    let severity =
                        Severity::try_from(case.severity as i32).unwrap_or(Severity::General);
                    let need = routing::Need {
                        senior: routing::needs_senior(tier, severity),
                        skill: Some(&case.category),
                        language: None,
                    };
                    routing::choose_owner(&department, &agents, &need)
                }
            };
            reassign(
                conn,
                events,
                case,
                Some(department.id),
                owner,
                &reason,
                actor,
                traceparent,
                now,
            )
            .await
        }
        Change::LinkProblem { problem_id } => {
            let previous = case.problem_id;
            if let Some(id) = problem_id
                && store::problem(&mut *conn, id).await?.is_none()
            {
                return Err(WorkflowError::InvalidField(
                    "problem_id",
                    "no such problem".into(),
                ));
            }
            case.problem_id = problem_id;
            let saved = store::save(&mut *conn, &case).await?;
            let text = |id: Option<Uuid>| id.map(|i| i.to_string()).unwrap_or_default();
            store::append_timeline(
                &mut *conn,
                &TimelineEntry {
                    case_id: case.id,
                    at: now,
                    actor: actor.into(),
                    kind: "problem_linked",
                    from_value: text(previous),
                    to_value: text(problem_id),
                    note: String::new(),
                    customer_visible: false,
                },
            )
            .await?;
            events
                .append(
                    &mut *conn,
                    &aggregate,
                    traceparent,
                    Payload::CaseProblemLinked(CaseProblemLinked {
                        case_id: aggregate.clone(),
                        problem_id: text(problem_id),
                        previous_problem_id: text(previous),
                        by: actor.into(),
                    }),
                )
                .await?;
            Ok(saved)
        }
    }
}

async fn department_of(
    conn: &mut PgConnection,
    id: &str,
) -> Result<routing::Department, WorkflowError> {
    store::department(&mut *conn, id)
        .await?
        .map(|d| d.routing())
        .ok_or_else(|| WorkflowError::Precondition("the case's department no longer exists".into()))
}

async fn agent_loads(
    conn: &mut PgConnection,
    department_id: &str,
) -> Result<Vec<routing::AgentLoad>, WorkflowError> {
    Ok(store::agents(&mut *conn, Some(department_id))
        .await?
        .iter()
        .map(|a| a.load())
        .collect())
}

/// Hands the case to `owner` (and `department`, when it moves), with the reason on the
/// timeline and a `CaseAssigned` event: there is always exactly one owner.
#[allow(clippy::too_many_arguments)]
async fn reassign(
    conn: &mut PgConnection,
    events: &EventLog,
    mut case: CaseRow,
    department: Option<String>,
    owner: String,
    reason: &str,
    actor: &str,
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<CaseRow, WorkflowError> {
    let previous_department = case.department_id.clone();
    let previous_owner = std::mem::replace(&mut case.owner_id, owner);
    let transferred = department.is_some();
    if let Some(department) = department {
        case.department_id = department;
    }
    let saved = store::save(&mut *conn, &case).await?;
    store::append_timeline(
        &mut *conn,
        &TimelineEntry {
            case_id: case.id,
            at: now,
            actor: actor.into(),
            kind: if transferred {
                "transferred"
            } else {
                "assigned"
            },
            from_value: format!("{previous_department} / {previous_owner}"),
            to_value: format!("{} / {}", saved.department_id, saved.owner_id),
            note: reason.into(),
            customer_visible: false,
        },
    )
    .await?;
    let aggregate = case.id.to_string();
    events
        .append(
            &mut *conn,
            &aggregate,
            traceparent,
            Payload::CaseAssigned(CaseAssigned {
                case_id: aggregate.clone(),
                department_id: saved.department_id.clone(),
                owner_id: saved.owner_id.clone(),
                previous_department_id: previous_department,
                previous_owner_id: previous_owner,
                reason: reason.into(),
            }),
        )
        .await?;
    Ok(saved)
}

/// A new classification of a locked case (an agent's override at intake, or a priority raised
/// by a repeat contact). Emits `CaseReclassified` so the SLA timer re-plans; `None` when nothing
/// changed.
pub struct Reclassification {
    pub category: String,
    pub severity: Severity,
    pub priority: Priority,
    pub complexity: i32,
    pub reason: String,
}

pub async fn reclassify(
    conn: &mut PgConnection,
    events: &EventLog,
    mut case: CaseRow,
    change: &Reclassification,
    actor: &str,
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<Option<CaseRow>, WorkflowError> {
    let traceparent = &case.trace_for(traceparent);
    let Some((entry, payload)) = reclassified(&mut case, change, actor, now) else {
        return Ok(None);
    };
    let saved = store::save(&mut *conn, &case).await?;
    store::append_timeline(&mut *conn, &entry).await?;
    events
        .append(&mut *conn, &case.id.to_string(), traceparent, payload)
        .await?;
    Ok(Some(saved))
}

/// Applies a reclassification to a case in memory: the timeline entry and the event that
/// record it, or `None` when it changes nothing.
fn reclassified(
    case: &mut CaseRow,
    change: &Reclassification,
    actor: &str,
    now: DateTime<Utc>,
) -> Option<(TimelineEntry, Payload)> {
    let before = format!(
        "{} / {} / {} / {}",
        case.category, case.severity, case.priority, case.complexity
    );
    if !change.category.is_empty() {
        case.category = change.category.clone();
    }
    if change.severity != Severity::Unspecified {
        case.severity = change.severity as i16;
    }
    if change.priority != Priority::Unspecified {
        case.priority = change.priority as i16;
    }
    if change.complexity != 0 {
        case.complexity = change.complexity as i16;
    }
    let after = format!(
        "{} / {} / {} / {}",
        case.category, case.severity, case.priority, case.complexity
    );
    if before == after {
        return None;
    }
    let entry = TimelineEntry {
        case_id: case.id,
        at: now,
        actor: actor.into(),
        kind: "reclassified",
        from_value: before,
        to_value: after,
        note: change.reason.clone(),
        customer_visible: false,
    };
    let payload = Payload::CaseReclassified(CaseReclassified {
        case_id: case.id.to_string(),
        category: case.category.clone(),
        severity: case.severity as i32,
        priority: case.priority as i32,
        complexity: case.complexity as i32,
        reason: change.reason.clone(),
        by: actor.into(),
    });
    Some((entry, payload))
}

/// A customer's repeat contact about a complaint, as intake announced it.
pub struct RepeatContact<'a> {
    pub complaint_id: Uuid,
    pub reference: &'a str,
    pub raised: Priority,
    pub traceparent: &'a str,
}

/// The customers contacted again about the complaints of some cases: an internal timeline
/// entry each, and the case's priority raised when a contact asks for a more urgent one (a
/// `CaseReclassified` for the SLA timer). Taken in order, as one at a time would, with
/// set-based statements: the cases locked, the classifications saved, the timeline entries and
/// the events written with one statement each. A complaint without a case is left alone.
pub async fn record_repeat_contacts(
    conn: &mut PgConnection,
    events: &EventLog,
    contacts: &[RepeatContact<'_>],
    now: DateTime<Utc>,
) -> Result<(), WorkflowError> {
    let complaint_ids: Vec<Uuid> = contacts.iter().map(|c| c.complaint_id).collect();
    let mut cases = store::lock_by_complaints(&mut *conn, &complaint_ids).await?;
    // Changes per complaint's case: its version moves once for each.
    let mut changes: std::collections::HashMap<Uuid, i64> = Default::default();
    let mut entries = Vec::with_capacity(contacts.len());
    let mut announced = Vec::new();
    for contact in contacts {
        let Some(case) = cases.get_mut(&contact.complaint_id) else {
            continue;
        };
        let reference = contact.reference;
        entries.push(TimelineEntry {
            case_id: case.id,
            at: now,
            actor: "intake".into(),
            kind: "repeat_contact",
            from_value: String::new(),
            to_value: reference.into(),
            note: format!("customer contacted again ({reference})"),
            customer_visible: false,
        });
        let current = Priority::try_from(case.priority as i32).unwrap_or(Priority::Unspecified);
        let Some(priority) = coordination::raised_priority(current, contact.raised) else {
            continue;
        };
        let change = Reclassification {
            category: String::new(),
            severity: Severity::Unspecified,
            priority,
            complexity: 0,
            reason: format!(
                "customer contacted again ({reference}); priority raised to {}",
                priority.as_str_name()
            ),
        };
        if let Some((entry, payload)) = reclassified(case, &change, "intake", now) {
            entries.push(entry);
            announced.push((
                case.id.to_string(),
                case.trace_for(contact.traceparent),
                payload,
            ));
            *changes.entry(contact.complaint_id).or_default() += 1;
        }
    }
    let changed: Vec<(&CaseRow, i64)> = changes
        .iter()
        .filter_map(|(complaint_id, n)| cases.get(complaint_id).map(|case| (case, *n)))
        .collect();
    store::save_classifications(&mut *conn, &changed).await?;
    store::append_timeline_all(&mut *conn, &entries).await?;
    events.append_all(&mut *conn, announced).await?;
    Ok(())
}

/// What a new sub-task asks for.
pub struct NewSubTask {
    pub request_id: String,
    pub department_id: String,
    pub owner_id: Option<String>,
    pub title: String,
    pub detail: String,
    pub due_at: DateTime<Utc>,
    pub customer_visible: bool,
    pub purpose: &'static str,
}

/// Creates a sub-task on a locked case, once per request id: returns the sub-task and whether
/// this call created it.
pub async fn create_sub_task(
    conn: &mut PgConnection,
    events: &EventLog,
    case: &CaseRow,
    new: NewSubTask,
    actor: &str,
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<(SubTaskRow, bool), WorkflowError> {
    let traceparent = &case.trace_for(traceparent);
    if let Some(existing) = store::sub_task_by_request(&mut *conn, &new.request_id).await? {
        if existing.case_id != case.id {
            return Err(WorkflowError::InvalidField(
                "request_id",
                "already used for a sub-task of another case".into(),
            ));
        }
        return Ok((existing, false));
    }
    let department = store::department(&mut *conn, &new.department_id)
        .await?
        .map(|d| d.routing())
        .ok_or_else(|| {
            WorkflowError::InvalidField("sub_task.department_id", "no such department".into())
        })?;
    let agents = agent_loads(conn, &department.id).await?;
    let owner = match new.owner_id {
        Some(owner) if routing::may_own(&department, &agents, &owner) => owner,
        Some(_) => {
            return Err(WorkflowError::InvalidField(
                "sub_task.owner_id",
                format!(
                    "not an agent of {} nor in its escalation chain",
                    department.id
                ),
            ));
        }
        None if new.purpose == store::PURPOSE_REVIEW => routing::supervisor(&department),
        None => routing::choose_owner(&department, &agents, &routing::Need::default()),
    };
    let task = SubTaskRow {
        id: Uuid::now_v7(),
        case_id: case.id,
        department_id: department.id.clone(),
        owner_id: owner,
        title: new.title,
        detail: new.detail,
        due_at: new.due_at,
        status: SubTaskStatus::Open as i16,
        result: String::new(),
        customer_visible: new.customer_visible,
        purpose: new.purpose.into(),
        created_by: actor.into(),
        created_at: now,
        completed_at: None,
        version: 1,
    };
    let Some(task) = store::insert_sub_task(&mut *conn, &task, &new.request_id).await? else {
        // A concurrent call with the same request id won; it holds the case lock order too.
        let existing = store::sub_task_by_request(&mut *conn, &new.request_id)
            .await?
            .ok_or_else(|| WorkflowError::Precondition("sub-task vanished".into()))?;
        return Ok((existing, false));
    };
    store::append_timeline(
        &mut *conn,
        &TimelineEntry {
            case_id: case.id,
            at: now,
            actor: actor.into(),
            kind: "sub_task_requested",
            from_value: String::new(),
            to_value: format!("{} / {}", task.department_id, task.owner_id),
            note: task.title.clone(),
            customer_visible: task.customer_visible,
        },
    )
    .await?;
    sub_task_event(conn, events, &task, actor, traceparent).await?;
    Ok((task, true))
}

async fn sub_task_event(
    conn: &mut PgConnection,
    events: &EventLog,
    task: &SubTaskRow,
    actor: &str,
    traceparent: &str,
) -> Result<(), WorkflowError> {
    let status = SubTaskStatus::try_from(task.status as i32).unwrap_or(SubTaskStatus::Unspecified);
    events
        .append(
            &mut *conn,
            &task.case_id.to_string(),
            traceparent,
            Payload::CaseSubTaskChanged(CaseSubTaskChanged {
                case_id: task.case_id.to_string(),
                sub_task_id: task.id.to_string(),
                department_id: task.department_id.clone(),
                owner_id: task.owner_id.clone(),
                status: status.as_str_name().into(),
                due_at: ts(task.due_at),
                by: actor.into(),
            }),
        )
        .await?;
    Ok(())
}

/// Moves a locked sub-task of a locked case to `to`. Finishing the last open dissatisfaction
/// review clears the case's `under_review` flag.
#[allow(clippy::too_many_arguments)]
pub async fn update_sub_task(
    conn: &mut PgConnection,
    events: &EventLog,
    mut case: CaseRow,
    mut task: SubTaskRow,
    to: SubTaskStatus,
    result: String,
    actor: &str,
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<SubTaskRow, WorkflowError> {
    let traceparent = &case.trace_for(traceparent);
    let from = SubTaskStatus::try_from(task.status as i32).unwrap_or(SubTaskStatus::Unspecified);
    let allowed = coordination::sub_task_next(from);
    if !allowed.contains(&to) {
        let names: Vec<&str> = allowed.iter().map(|s| s.as_str_name()).collect();
        return Err(WorkflowError::Precondition(format!(
            "a sub-task in {} cannot move to {}; allowed: {}",
            from.as_str_name(),
            to.as_str_name(),
            if names.is_empty() {
                "none (final status)".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    task.status = to as i16;
    if !result.is_empty() {
        task.result = result;
    }
    if coordination::sub_task_is_finished(to) {
        task.completed_at = Some(now);
    }
    let saved = store::save_sub_task(&mut *conn, &task).await?;
    store::append_timeline(
        &mut *conn,
        &TimelineEntry {
            case_id: case.id,
            at: now,
            actor: actor.into(),
            kind: "sub_task_updated",
            from_value: from.as_str_name().into(),
            to_value: to.as_str_name().into(),
            note: format!("{}: {}", saved.title, saved.result),
            customer_visible: saved.customer_visible,
        },
    )
    .await?;
    sub_task_event(conn, events, &saved, actor, traceparent).await?;
    if saved.purpose == store::PURPOSE_REVIEW
        && case.under_review
        && store::open_sub_tasks(&mut *conn, case.id, store::PURPOSE_REVIEW).await? == 0
    {
        case.under_review = false;
        store::save(&mut *conn, &case).await?;
    }
    Ok(saved)
}

/// Opens a dissatisfaction review on a locked case: a sub-task for its department's
/// supervisor, due in 48 hours, and the `under_review` flag. Once per survey invitation.
pub async fn open_dissatisfaction_review(
    conn: &mut PgConnection,
    events: &EventLog,
    mut case: CaseRow,
    invitation_id: &str,
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<(), WorkflowError> {
    let traceparent = &case.trace_for(traceparent);
    let new = NewSubTask {
        request_id: format!("dissatisfaction-review:{invitation_id}"),
        department_id: case.department_id.clone(),
        owner_id: None,
        title: "Dissatisfaction review (不满意复核)".into(),
        detail: "The customer answered the follow-up survey dissatisfied: review the handling and decide whether to reopen.".into(),
        due_at: now + chrono::Duration::hours(48),
        customer_visible: true,
        purpose: store::PURPOSE_REVIEW,
    };
    let (_, created) = create_sub_task(
        conn,
        events,
        &case,
        new,
        "feedback-survey",
        traceparent,
        now,
    )
    .await?;
    if created && !case.under_review {
        case.under_review = true;
        store::save(&mut *conn, &case).await?;
    }
    Ok(())
}

/// Logs a contact with the customer on the case's timeline, once per request id; returns the
/// entry and whether this call logged it.
#[allow(clippy::too_many_arguments)]
pub async fn log_contact(
    conn: &mut PgConnection,
    events: &EventLog,
    case: &CaseRow,
    request_id: &str,
    kind: ContactKind,
    channel: Channel,
    note: String,
    customer_visible: bool,
    actor: &str,
    traceparent: &str,
    now: DateTime<Utc>,
) -> Result<(TimelineRow, bool), WorkflowError> {
    let traceparent = &case.trace_for(traceparent);
    if let Some(existing) = store::timeline_by_request(&mut *conn, request_id).await? {
        if existing.case_id != case.id {
            return Err(WorkflowError::InvalidField(
                "request_id",
                "already used on another case".into(),
            ));
        }
        return Ok((existing, false));
    }
    let entry = TimelineEntry {
        case_id: case.id,
        at: now,
        actor: actor.into(),
        kind: "contact",
        from_value: kind.as_str_name().into(),
        to_value: channel.as_str_name().into(),
        note,
        customer_visible,
    };
    let Some(row) = store::append_timeline_once(&mut *conn, &entry, request_id).await? else {
        let existing = store::timeline_by_request(&mut *conn, request_id)
            .await?
            .ok_or_else(|| WorkflowError::Precondition("contact vanished".into()))?;
        return Ok((existing, false));
    };
    let aggregate = case.id.to_string();
    events
        .append(
            &mut *conn,
            &aggregate,
            traceparent,
            Payload::CaseCustomerContacted(CaseCustomerContacted {
                case_id: aggregate.clone(),
                kind: kind.as_str_name().into(),
                channel: channel as i32,
                reached: kind != ContactKind::Attempt,
                by: actor.into(),
                contacted_at: ts(now),
            }),
        )
        .await?;
    Ok((row, true))
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
    let traceparent = &case.trace_for(traceparent);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn case(status: CaseStatus) -> CaseRow {
        let at = Utc::now();
        CaseRow {
            id: Uuid::now_v7(),
            complaint_id: Uuid::now_v7(),
            complaint_reference: "CMP-1".into(),
            status: status as i16,
            department_id: "quality".into(),
            owner_id: "agent-a".into(),
            category: "quality".into(),
            severity: 2,
            priority: 3,
            complexity: 1,
            channel: 1,
            customer_tier: 1,
            customer_id: "C1".into(),
            escalation_level: 0,
            received_at: at,
            opened_at: at,
            acknowledged_at: None,
            resolved_at: None,
            closed_at: None,
            version: 4,
            product_ref: String::new(),
            order_ref: String::new(),
            problem_id: None,
            under_review: false,
            traceparent: String::new(),
        }
    }

    #[test]
    fn an_acknowledgement_is_planned_once_with_its_entry_and_event() {
        let now = Utc::now();
        let ack = Change::Acknowledge {
            note: "收到".into(),
        };
        let planned = plan_simple(case(CaseStatus::Accepted), &ack, "agent-a", now)
            .unwrap()
            .unwrap();
        assert_eq!(planned.case.acknowledged_at, Some(now));
        assert_eq!(planned.case.version, 4, "the store moves the version");
        assert_eq!(planned.entry.kind, "acknowledged");
        assert_eq!(planned.entry.note, "收到");
        assert!(matches!(planned.event, Payload::CaseAcknowledged(ref a) if a.by == "agent-a"));
        let again = plan_simple(planned.case, &ack, "agent-a", now).unwrap();
        assert!(matches!(again, Err(WorkflowError::Precondition(_))));
    }

    #[test]
    fn a_transition_sets_its_times_and_an_illegal_one_is_refused() {
        let now = Utc::now();
        let to = |to| Change::Transition {
            to,
            note: "done".into(),
            customer_visible: true,
        };
        let resolved = plan_simple(
            case(CaseStatus::Investigating),
            &to(CaseStatus::Resolved),
            "agent-a",
            now,
        )
        .unwrap()
        .unwrap();
        assert_eq!(resolved.case.status, CaseStatus::Resolved as i16);
        assert_eq!(resolved.case.resolved_at, Some(now));
        assert_eq!(resolved.entry.from_value, "CASE_STATUS_INVESTIGATING");
        assert_eq!(resolved.entry.to_value, "CASE_STATUS_RESOLVED");
        assert!(resolved.entry.customer_visible);
        match &resolved.event {
            Payload::CaseStatusChanged(c) => {
                assert_eq!(c.from, CaseStatus::Investigating as i32);
                assert_eq!(c.to, CaseStatus::Resolved as i32);
                assert_eq!(c.owner_id, "agent-a");
            }
            other => panic!("{other:?}"),
        }
        let reopened = plan_simple(resolved.case, &to(CaseStatus::Reopened), "agent-a", now)
            .unwrap()
            .unwrap();
        assert_eq!(reopened.case.resolved_at, None);
        let illegal = plan_simple(
            case(CaseStatus::Cancelled),
            &to(CaseStatus::Investigating),
            "agent-a",
            now,
        )
        .unwrap();
        assert!(matches!(illegal, Err(WorkflowError::Illegal(_))));
        let other = Change::LinkProblem { problem_id: None };
        assert!(plan_simple(case(CaseStatus::Accepted), &other, "agent-a", now).is_none());
        assert!(!is_simple(&other));
        assert!(is_simple(&to(CaseStatus::Resolved)));
    }
}
