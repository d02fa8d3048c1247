//! gRPC handlers of `IntakeService`: decode, authorise, call the domain and the store, encode.

use chrono::DurationRound as _;
use chrono::Utc;
use complaints_kit::auth::{self, Principal, Role};
use complaints_kit::events::EventLog;
use complaints_kit::grpc::{self, FieldErrors};
use complaints_kit::pagination;
use complaints_kit::telemetry::mask;
use complaints_kit::time::{from_timestamp, opt_timestamp, to_timestamp};
use complaints_proto::common::v1::{Channel, Complexity, Priority, Severity};
use complaints_proto::events::v1::{
    ComplaintAccepted, ComplaintReclassified, ComplaintRejected, ComplaintRepeatContact,
    event::Payload,
};
use complaints_proto::intake::v1 as pb;
use complaints_proto::intake::v1::intake_service_server::IntakeService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::classify::{self, CategoryRule, SeveritySignal, Taxonomy, TaxonomyRules};
use crate::domain::record::{self, Attachment, Submission};
use crate::store::{self, ComplaintRow};
use crate::submit::{Outcome, Prepared, Submitter};
use crate::taxonomy::TaxonomyCache;

pub struct IntakeApi {
    pool: PgPool,
    events: EventLog,
    accepted: prometheus::IntCounterVec,
    default_country_code: String,
    org_timezone: chrono_tz::Tz,
    taxonomy: TaxonomyCache,
    submitter: Submitter,
}

impl IntakeApi {
    pub fn new(
        pool: PgPool,
        events: EventLog,
        config: &crate::Config,
        metrics: &complaints_kit::metrics::Metrics,
        taxonomy: TaxonomyCache,
    ) -> Self {
        let accepted = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "intake_complaints_accepted_total",
                "Complaints accepted, by channel, category and severity.",
            ),
            &["channel", "category", "severity"],
        )
        .expect("metric");
        metrics.register(&accepted);
        let submitter = Submitter::start(
            pool.clone(),
            events.clone(),
            config.repeat_rules.clone(),
            config.submit_lock_timeout,
            config.submit_batch_gather,
            metrics,
        );
        Self {
            submitter,
            pool,
            events,
            accepted,
            default_country_code: config.default_country_code.clone(),
            org_timezone: config.org_timezone,
            taxonomy,
        }
    }

    /// Locks a complaint for a change, checking its version.
    async fn lock_current(
        &self,
        tx: &mut sqlx::PgConnection,
        id: Uuid,
        version: u64,
    ) -> Result<ComplaintRow, Status> {
        let current = store::lock(tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("complaint", &id.to_string()))?;
        if current.version as u64 != version {
            return Err(grpc::stale_version(
                "complaint",
                version,
                current.version as u64,
            ));
        }
        Ok(current)
    }
}

/// The answer to a replayed request: the same complaint, or a refusal if the content differs.
fn replay(
    existing: ComplaintRow,
    fingerprint: &str,
    request_id: &str,
    principal: &Principal,
) -> Result<Response<pb::SubmitComplaintResponse>, Status> {
    if existing.request_fingerprint != fingerprint {
        return Err(Status::already_exists(format!(
            "request_id {request_id} was already used for a different complaint ({})",
            existing.reference
        )));
    }
    Ok(Response::new(pb::SubmitComplaintResponse {
        complaint: Some(to_proto(existing, principal)),
        created: false,
    }))
}

pub(crate) fn repeat_event(
    root: uuid::Uuid,
    repeat: &ComplaintRow,
    raised: Option<Priority>,
    at: chrono::DateTime<Utc>,
) -> Payload {
    Payload::ComplaintRepeatContact(ComplaintRepeatContact {
        complaint_id: root.to_string(),
        repeat_complaint_id: repeat.id.to_string(),
        repeat_reference: repeat.reference.clone(),
        channel: repeat.channel as i32,
        raised_priority: raised.map(|p| p as i32).unwrap_or(0),
        contacted_at: Some(to_timestamp(at)),
    })
}

const SUBMITTERS: &[Role] = &[Role::Service, Role::Agent, Role::Supervisor, Role::Admin];
const READERS: &[Role] = &[
    Role::Service,
    Role::Agent,
    Role::Supervisor,
    Role::Quality,
    Role::Admin,
];
const VERIFIERS: &[Role] = &[Role::Agent, Role::Supervisor, Role::Admin];

fn submission(request: pb::SubmitComplaintRequest) -> Submission {
    let complainant = request.complainant.unwrap_or_default();
    let content = request.content.unwrap_or_default();
    let occurred = content.occurred_at.as_ref().map(from_timestamp);
    Submission {
        request_id: request.request_id,
        channel: request.channel,
        name: complainant.name,
        phone: complainant.phone,
        email: complainant.email,
        customer_id: complainant.customer_id,
        tier: complainant.tier,
        subject: content.subject,
        description: content.description,
        demand: content.demand,
        occurred_at: occurred.flatten(),
        occurred_at_invalid: matches!(occurred, Some(None)),
        order_ref: content.order_ref,
        product_ref: content.product_ref,
        language: content.language,
        recorded_by: request.recorded_by,
        attachments: content
            .attachments
            .into_iter()
            .map(|a| Attachment {
                uri: a.uri,
                file_name: a.file_name,
                content_type: a.content_type,
                size_bytes: a.size_bytes,
                sha256: a.sha256,
            })
            .collect(),
    }
}

fn to_proto(row: ComplaintRow, viewer: &Principal) -> pb::Complaint {
    to_proto_linked(row, viewer, String::new())
}

fn to_proto_linked(
    row: ComplaintRow,
    viewer: &Principal,
    linked_to_reference: String,
) -> pb::Complaint {
    let attachments: Vec<Attachment> =
        serde_json::from_value(row.attachments.clone()).unwrap_or_default();
    let personal = viewer.may_see_personal_data();
    let shown = |v: Option<String>| {
        let v = v.unwrap_or_default();
        if personal { v } else { mask(&v) }
    };
    pb::Complaint {
        id: row.id.to_string(),
        reference: row.reference,
        channel: row.channel as i32,
        complainant: Some(pb::Complainant {
            name: shown(Some(row.complainant_name)),
            phone: shown(row.phone),
            email: shown(row.email),
            customer_id: row.customer_id.unwrap_or_default(),
            tier: row.customer_tier as i32,
        }),
        content: Some(pb::ComplaintContent {
            subject: row.subject,
            description: row.description,
            demand: row.demand,
            occurred_at: opt_timestamp(row.occurred_at),
            order_ref: row.order_ref.unwrap_or_default(),
            product_ref: row.product_ref.unwrap_or_default(),
            language: row.language,
            attachments: attachments
                .into_iter()
                .map(|a| pb::Attachment {
                    uri: a.uri,
                    file_name: a.file_name,
                    content_type: a.content_type,
                    size_bytes: a.size_bytes,
                    sha256: a.sha256,
                })
                .collect(),
        }),
        classification: Some(pb::Classification {
            category: row.category,
            matched_terms: row.matched_terms,
            severity: row.severity as i32,
            priority: row.priority as i32,
            complexity: row.complexity as i32,
            reasons: row.reasons,
        }),
        status: row.status as i32,
        received_at: Some(to_timestamp(row.received_at)),
        recorded_by: row.recorded_by.unwrap_or_default(),
        rejection_reason: row.rejection_reason as i32,
        status_note: row.status_note,
        version: row.version as u64,
        linked_to_complaint_id: row.linked_to.map(|l| l.to_string()).unwrap_or_default(),
        linked_to_reference,
        repeat_contacts: row.repeat_contacts.max(0) as u32,
        taxonomy_version: row.taxonomy_version.max(0) as u32,
        classification_overridden: row.overridden,
    }
}

fn accepted_event(row: &ComplaintRow) -> Payload {
    Payload::ComplaintAccepted(ComplaintAccepted {
        complaint_id: row.id.to_string(),
        reference: row.reference.clone(),
        channel: row.channel as i32,
        customer_id: row.customer_id.clone().unwrap_or_default(),
        customer_tier: row.customer_tier as i32,
        category: row.category.clone(),
        severity: row.severity as i32,
        priority: row.priority as i32,
        complexity: row.complexity as i32,
        received_at: Some(to_timestamp(row.received_at)),
        order_ref: row.order_ref.clone().unwrap_or_default(),
        product_ref: row.product_ref.clone().unwrap_or_default(),
        language: row.language.clone(),
    })
}

#[tonic::async_trait]
impl IntakeService for IntakeApi {
    async fn submit_complaint(
        &self,
        request: Request<pb::SubmitComplaintRequest>,
    ) -> Result<Response<pb::SubmitComplaintResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(SUBMITTERS)?;
        // At the database's precision: the event is built before the row is stored, and both
        // must carry the same receipt time.
        let now = Utc::now();
        let now = now
            .duration_trunc(chrono::Duration::microseconds(1))
            .unwrap_or(now);
        let complaint = record::parse_submission(
            submission(request.into_inner()),
            now,
            &self.default_country_code,
        )
        .map_err(FieldErrors::into_status)?;
        let fingerprint = record::fingerprint(&complaint);
        let taxonomy = self.taxonomy.current();
        let classification = classify::classify(
            &taxonomy,
            &complaint.subject,
            &complaint.description,
            &complaint.demand,
            complaint.tier,
        );
        let day = now
            .with_timezone(&self.org_timezone)
            .format("%Y%m%d")
            .to_string();
        let request_id = complaint.request_id.clone();
        let prepared = Prepared {
            complaint,
            fingerprint,
            classification,
            received_at: now,
            day,
            traceparent: complaints_kit::telemetry::current_traceparent(),
        };
        let fingerprint = prepared.fingerprint.clone();
        // Stored together with whatever other submissions are waiting (one transaction).
        let (row, linked_reference) = match self.submitter.submit(prepared).await? {
            Outcome::Created {
                row,
                linked_reference,
            } => (row, linked_reference),
            Outcome::Existing(existing) => {
                return replay(existing, &fingerprint, &request_id, &principal);
            }
        };
        complaints_kit::telemetry::record_complaint(&row.id.to_string());
        self.accepted
            .with_label_values(&[
                label(Channel::try_from(row.channel as i32).map(|c| c.as_str_name())),
                &row.category,
                label(Severity::try_from(row.severity as i32).map(|s| s.as_str_name())),
            ])
            .inc();
        tracing::info!(
            complaint_id = %row.id,
            reference = %row.reference,
            category = %row.category,
            linked = row.linked_to.is_some(),
            "complaint accepted"
        );
        Ok(Response::new(pb::SubmitComplaintResponse {
            complaint: Some(to_proto_linked(row, &principal, linked_reference)),
            created: true,
        }))
    }

    async fn get_complaint(
        &self,
        request: Request<pb::GetComplaintRequest>,
    ) -> Result<Response<pb::GetComplaintResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(READERS)?;
        let id = grpc::parse_uuid("complaint_id", &request.get_ref().complaint_id)?;
        let row = store::get(&self.pool, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("complaint", &id.to_string()))?;
        Ok(Response::new(pb::GetComplaintResponse {
            complaint: Some(to_proto(row, &principal)),
        }))
    }

    async fn list_complaints(
        &self,
        request: Request<pb::ListComplaintsRequest>,
    ) -> Result<Response<pb::ListComplaintsResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(READERS)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size)?;
        let mut errors = FieldErrors::new();
        if request.channel != 0 && Channel::try_from(request.channel).is_err() {
            errors.add("channel", "unknown value");
        }
        if request.status != 0 && pb::ComplaintStatus::try_from(request.status).is_err() {
            errors.add("status", "unknown value");
        }
        if request.severity != 0 && Severity::try_from(request.severity).is_err() {
            errors.add("severity", "unknown value");
        }
        let received_from = request.received_from.as_ref().map(from_timestamp);
        let received_to = request.received_to.as_ref().map(from_timestamp);
        if matches!(received_from, Some(None)) {
            errors.add("received_from", "not a valid timestamp");
        }
        if matches!(received_to, Some(None)) {
            errors.add("received_to", "not a valid timestamp");
        }
        if request.query.chars().count() > 200 {
            errors.add("query", "at most 200 characters");
        }
        errors.into_result()?;
        let after: Option<(chrono::DateTime<Utc>, Uuid)> = pagination::decode(&request.page_token)?;
        let words = record::normalise_text(&request.query)
            .to_lowercase()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let filter = store::ListFilter {
            channel: (request.channel != 0).then_some(request.channel as i16),
            status: (request.status != 0).then_some(request.status as i16),
            customer_id: Some(request.customer_id.trim().to_owned()).filter(|c| !c.is_empty()),
            category: Some(request.category.trim().to_owned()).filter(|c| !c.is_empty()),
            severity: (request.severity != 0).then_some(request.severity as i16),
            received_from: received_from.flatten(),
            received_to: received_to.flatten(),
            words,
            after,
            limit: limit + 1,
        };
        let mut rows = store::list(&self.pool, &filter)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let next_page_token = pagination::next_page(&mut rows, limit, |r| (r.received_at, r.id));
        Ok(Response::new(pb::ListComplaintsResponse {
            complaints: rows.into_iter().map(|r| to_proto(r, &principal)).collect(),
            next_page_token,
        }))
    }

    async fn verify_complaint(
        &self,
        request: Request<pb::VerifyComplaintRequest>,
    ) -> Result<Response<pb::VerifyComplaintResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(VERIFIERS)?;
        let request = request.into_inner();
        let id = grpc::parse_uuid("complaint_id", &request.complaint_id)?;
        let note = record::normalise_text(&request.note);
        let reason = if request.valid {
            pb::RejectionReason::Unspecified
        } else {
            match pb::RejectionReason::try_from(request.rejection_reason) {
                Ok(pb::RejectionReason::Unspecified) | Err(_) => {
                    return Err(grpc::invalid_field(
                        "rejection_reason",
                        "required when rejecting: invalid, duplicate, spam or out of scope",
                    ));
                }
                Ok(reason) => reason,
            }
        };
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let current = store::lock(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("complaint", &id.to_string()))?;
        if current.version as u64 != request.version {
            return Err(grpc::stale_version(
                "complaint",
                request.version,
                current.version as u64,
            ));
        }
        if current.status != pb::ComplaintStatus::Received as i16 {
            return Err(grpc::failed_precondition(
                "STATUS",
                "complaint",
                "only a received complaint can be verified or rejected",
            ));
        }
        let status = if request.valid {
            pb::ComplaintStatus::Verified
        } else {
            pb::ComplaintStatus::Rejected
        };
        let row = store::set_status(&mut tx, id, status as i16, reason as i16, &note)
            .await
            .map_err(|e| grpc::storage(&e))?;
        if !request.valid {
            self.events
                .append(
                    &mut tx,
                    &id.to_string(),
                    "",
                    Payload::ComplaintRejected(ComplaintRejected {
                        complaint_id: id.to_string(),
                        reason: reason.as_str_name().to_owned(),
                        note: note.clone(),
                        by: principal.subject.clone(),
                    }),
                )
                .await
                .map_err(|e| grpc::storage(&e))?;
        }
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.events.committed();
        Ok(Response::new(pb::VerifyComplaintResponse {
            complaint: Some(to_proto(row, &principal)),
        }))
    }

    async fn override_classification(
        &self,
        request: Request<pb::OverrideClassificationRequest>,
    ) -> Result<Response<pb::OverrideClassificationResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(VERIFIERS)?;
        let request = request.into_inner();
        let id = grpc::parse_uuid("complaint_id", &request.complaint_id)?;
        let reason = record::normalise_text(&request.reason);
        let taxonomy = self.taxonomy.current();
        let mut errors = FieldErrors::new();
        if reason.is_empty() {
            errors.add("reason", "required: overrides are audited");
        }
        let category = request.category.trim().to_owned();
        if !category.is_empty()
            && category != classify::OTHER_CATEGORY
            && !taxonomy
                .rules
                .categories
                .iter()
                .any(|c| c.category == category)
        {
            errors.add(
                "category",
                format!("not a category of taxonomy version {}", taxonomy.version),
            );
        }
        let severity = optional_enum::<Severity>(&mut errors, "severity", request.severity);
        let priority = optional_enum::<Priority>(&mut errors, "priority", request.priority);
        let complexity = optional_enum::<Complexity>(&mut errors, "complexity", request.complexity);
        if category.is_empty()
            && severity.is_none()
            && priority.is_none()
            && complexity.is_none()
            && errors.is_empty()
        {
            errors.add(
                "category",
                "nothing to change: give a category, severity, priority or complexity",
            );
        }
        errors.into_result()?;
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let current = self.lock_current(&mut tx, id, request.version).await?;
        if current.status == pb::ComplaintStatus::Rejected as i16 {
            return Err(grpc::failed_precondition(
                "STATUS",
                "complaint",
                "a rejected complaint is not reclassified",
            ));
        }
        let before = serde_json::json!({
            "category": current.category, "severity": current.severity,
            "priority": current.priority, "complexity": current.complexity,
        });
        let new_category = if category.is_empty() {
            current.category.clone()
        } else {
            category
        };
        let new_severity = severity.map(|s| s as i16).unwrap_or(current.severity);
        let new_priority = priority.map(|p| p as i16).unwrap_or(current.priority);
        let new_complexity = complexity.map(|c| c as i16).unwrap_or(current.complexity);
        let mut reasons = current.reasons.clone();
        reasons.push(format!("overridden by {}: {reason}", principal.subject));
        let row = store::set_classification(
            &mut tx,
            id,
            &new_category,
            new_severity,
            new_priority,
            new_complexity,
            &reasons,
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        let after = serde_json::json!({
            "category": row.category, "severity": row.severity,
            "priority": row.priority, "complexity": row.complexity,
        });
        store::record_override(&mut tx, id, &principal.subject, &reason, &before, &after)
            .await
            .map_err(|e| grpc::storage(&e))?;
        // The override follows the complaint to its case (the earlier one, for a linked repeat).
        let target = row.linked_to.unwrap_or(row.id);
        self.events
            .append(
                &mut tx,
                &target.to_string(),
                "",
                Payload::ComplaintReclassified(ComplaintReclassified {
                    complaint_id: target.to_string(),
                    category: row.category.clone(),
                    severity: row.severity as i32,
                    priority: row.priority as i32,
                    complexity: row.complexity as i32,
                    reason: reason.clone(),
                }),
            )
            .await
            .map_err(|e| grpc::storage(&e))?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.events.committed();
        Ok(Response::new(pb::OverrideClassificationResponse {
            complaint: Some(to_proto(row, &principal)),
        }))
    }

    async fn link_complaint(
        &self,
        request: Request<pb::LinkComplaintRequest>,
    ) -> Result<Response<pb::LinkComplaintResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(VERIFIERS)?;
        let request = request.into_inner();
        let id = grpc::parse_uuid("complaint_id", &request.complaint_id)?;
        let target_id = grpc::parse_uuid("target_complaint_id", &request.target_complaint_id)?;
        if id == target_id {
            return Err(grpc::invalid_field(
                "target_complaint_id",
                "a complaint cannot be linked to itself",
            ));
        }
        let reason = record::normalise_text(&request.reason);
        if reason.is_empty() {
            return Err(grpc::invalid_field("reason", "required"));
        }
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        // Lock both in id order so two merges never deadlock.
        let (first, second) = if id < target_id {
            (id, target_id)
        } else {
            (target_id, id)
        };
        let mut locked = Vec::new();
        for each in [first, second] {
            locked.push(
                store::lock(&mut tx, each)
                    .await
                    .map_err(|e| grpc::storage(&e))?
                    .ok_or_else(|| grpc::not_found("complaint", &each.to_string()))?,
            );
        }
        let (current, target) = if locked[0].id == id {
            (locked.remove(0), locked.remove(0))
        } else {
            (locked.remove(1), locked.remove(0))
        };
        if current.version as u64 != request.version {
            return Err(grpc::stale_version(
                "complaint",
                request.version,
                current.version as u64,
            ));
        }
        if current.linked_to.is_some() || current.status == pb::ComplaintStatus::Rejected as i16 {
            return Err(grpc::failed_precondition(
                "STATUS",
                "complaint",
                "only a standalone, not rejected complaint can be merged",
            ));
        }
        if target.linked_to.is_some() || target.status == pb::ComplaintStatus::Rejected as i16 {
            return Err(grpc::failed_precondition(
                "STATUS",
                "target_complaint",
                "merge into a standalone complaint that is not rejected",
            ));
        }
        if current.repeat_contacts > 0 {
            return Err(grpc::failed_precondition(
                "LINKS",
                "complaint",
                "other contacts are linked to this complaint; unlink them first",
            ));
        }
        let row = store::set_link(
            &mut tx,
            id,
            Some(target_id),
            pb::ComplaintStatus::Linked as i16,
            &reason,
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        let root = store::record_repeat(&mut tx, target_id, target.priority)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let now = Utc::now();
        // Its own case closes as a duplicate; the earlier case records the contact.
        self.events
            .append(
                &mut tx,
                &id.to_string(),
                "",
                Payload::ComplaintRejected(ComplaintRejected {
                    complaint_id: id.to_string(),
                    reason: pb::RejectionReason::Duplicate.as_str_name().to_owned(),
                    note: format!("merged into {}: {reason}", root.reference),
                    by: principal.subject.clone(),
                }),
            )
            .await
            .map_err(|e| grpc::storage(&e))?;
        self.events
            .append(
                &mut tx,
                &root.id.to_string(),
                "",
                repeat_event(root.id, &row, None, now),
            )
            .await
            .map_err(|e| grpc::storage(&e))?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.events.committed();
        Ok(Response::new(pb::LinkComplaintResponse {
            complaint: Some(to_proto_linked(row, &principal, root.reference)),
        }))
    }

    async fn unlink_complaint(
        &self,
        request: Request<pb::UnlinkComplaintRequest>,
    ) -> Result<Response<pb::UnlinkComplaintResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(VERIFIERS)?;
        let request = request.into_inner();
        let id = grpc::parse_uuid("complaint_id", &request.complaint_id)?;
        let reason = record::normalise_text(&request.reason);
        if reason.is_empty() {
            return Err(grpc::invalid_field("reason", "required"));
        }
        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let current = self.lock_current(&mut tx, id, request.version).await?;
        let case = store::case_of(&mut tx, id)
            .await
            .map_err(|e| grpc::storage(&e))?;
        if current.linked_to.is_none() || case.is_some() {
            return Err(grpc::failed_precondition(
                "LINKS",
                "complaint",
                "only a repeat contact that never had a case of its own can be unlinked",
            ));
        }
        let row = store::set_link(
            &mut tx,
            id,
            None,
            pb::ComplaintStatus::Received as i16,
            &reason,
        )
        .await
        .map_err(|e| grpc::storage(&e))?;
        // Now a complaint of its own: it gets its own case.
        self.events
            .append(&mut tx, &row.id.to_string(), "", accepted_event(&row))
            .await
            .map_err(|e| grpc::storage(&e))?;
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        self.events.committed();
        Ok(Response::new(pb::UnlinkComplaintResponse {
            complaint: Some(to_proto(row, &principal)),
        }))
    }

    async fn get_customer_history(
        &self,
        request: Request<pb::GetCustomerHistoryRequest>,
    ) -> Result<Response<pb::GetCustomerHistoryResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(READERS)?;
        let request = request.into_inner();
        let limit = pagination::page_size(request.page_size)?;
        let customer_id = Some(request.customer_id.trim().to_owned()).filter(|c| !c.is_empty());
        let mut errors = FieldErrors::new();
        let phone = match request.phone.trim() {
            "" => None,
            raw => record::normalise_phone(raw, &self.default_country_code)
                .map_err(|why| errors.add("phone", why))
                .ok(),
        };
        let email = match request.email.trim() {
            "" => None,
            raw => record::normalise_email(raw)
                .map_err(|why| errors.add("email", why))
                .ok(),
        };
        if customer_id.is_none()
            && request.phone.trim().is_empty()
            && request.email.trim().is_empty()
        {
            errors.add("customer_id", "give a customer id, a phone or an email");
        }
        errors.into_result()?;
        let after = pagination::decode(&request.page_token)?;
        let (c, p, e) = (customer_id.as_deref(), phone.as_deref(), email.as_deref());
        let mut rows = store::customer_history(&self.pool, c, p, e, after, limit + 1)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let next_page_token = pagination::next_page(&mut rows, limit, |r| (r.received_at, r.id));
        let by_channel = store::customer_channels(&self.pool, c, p, e)
            .await
            .map_err(|e| grpc::storage(&e))?
            .into_iter()
            .map(|(channel, n)| {
                let name = Channel::try_from(channel as i32)
                    .map(|c| c.as_str_name())
                    .unwrap_or("CHANNEL_UNSPECIFIED");
                (name.to_owned(), n.max(0) as u32)
            })
            .collect();
        Ok(Response::new(pb::GetCustomerHistoryResponse {
            complaints: rows.into_iter().map(|r| to_proto(r, &principal)).collect(),
            next_page_token,
            by_channel,
        }))
    }

    async fn get_taxonomy(
        &self,
        request: Request<pb::GetTaxonomyRequest>,
    ) -> Result<Response<pb::GetTaxonomyResponse>, Status> {
        auth::principal(&request)?.require_any(READERS)?;
        let version = request.get_ref().version;
        let row = store::taxonomy(&self.pool, (version != 0).then_some(version as i32))
            .await
            .map_err(|e| grpc::storage(&e))?
            .ok_or_else(|| grpc::not_found("taxonomy version", &version.to_string()))?;
        Ok(Response::new(pb::GetTaxonomyResponse {
            taxonomy: Some(taxonomy_to_proto(&row)?),
        }))
    }

    async fn publish_taxonomy(
        &self,
        request: Request<pb::PublishTaxonomyRequest>,
    ) -> Result<Response<pb::PublishTaxonomyResponse>, Status> {
        let principal = auth::principal(&request)?;
        principal.require_any(&[Role::Admin, Role::Quality])?;
        let request = request.into_inner();
        let request_id = request.request_id.trim().to_owned();
        if request_id.is_empty() || request_id.len() > 128 {
            return Err(grpc::invalid_field(
                "request_id",
                "1–128 characters required",
            ));
        }
        let taxonomy = request
            .taxonomy
            .ok_or_else(|| grpc::invalid_field("taxonomy", "required"))?;
        let rules = rules_from_proto(taxonomy);
        // Check the rules compile before storing them (the version is assigned on publish).
        Taxonomy::compile(0, rules.clone()).map_err(|e| match e {
            classify::TaxonomyError::Invalid { field, reason } => {
                grpc::invalid_field(&field, &reason)
            }
        })?;
        let json = serde_json::to_value(&rules).map_err(|_| Status::internal("internal error"))?;
        let row = match store::publish_taxonomy(
            &self.pool,
            &json,
            Some(&request_id),
            &principal.subject,
        )
        .await
        .map_err(|e| grpc::storage(&e))?
        {
            Some(row) => row,
            None => {
                let existing = store::taxonomy_by_request(&self.pool, &request_id)
                    .await
                    .map_err(|e| grpc::storage(&e))?
                    .ok_or_else(|| Status::aborted("concurrent publish; retry"))?;
                if existing.rules != json {
                    return Err(Status::already_exists(format!(
                        "request_id {request_id} already published different rules (version {})",
                        existing.version
                    )));
                }
                existing
            }
        };
        match crate::taxonomy::compile(&row) {
            Ok(compiled) => self.taxonomy.install(compiled),
            Err(error) => tracing::error!(%error, "published taxonomy does not compile"),
        }
        tracing::info!(version = row.version, by = %principal.subject, "taxonomy published");
        Ok(Response::new(pb::PublishTaxonomyResponse {
            taxonomy: Some(taxonomy_to_proto(&row)?),
        }))
    }
}

/// An optional enum field: 0 keeps the current value; unknown numbers are refused.
fn optional_enum<E: TryFrom<i32>>(errors: &mut FieldErrors, field: &str, raw: i32) -> Option<E> {
    if raw == 0 {
        return None;
    }
    match E::try_from(raw) {
        Ok(value) => Some(value),
        Err(_) => {
            errors.add(field, format!("unknown value {raw}"));
            None
        }
    }
}

fn rules_from_proto(taxonomy: pb::Taxonomy) -> TaxonomyRules {
    TaxonomyRules {
        categories: taxonomy
            .categories
            .into_iter()
            .map(|c| CategoryRule {
                category: c.category.trim().to_owned(),
                label_zh: c.label_zh.trim().to_owned(),
                label_en: c.label_en.trim().to_owned(),
                keywords: c
                    .keywords
                    .iter()
                    .map(|k| record::normalise_text(k))
                    .collect(),
            })
            .collect(),
        severity_signals: taxonomy
            .severity_signals
            .into_iter()
            .map(|s| SeveritySignal {
                signal: s.signal.trim().to_owned(),
                severity: s.severity,
                keywords: s
                    .keywords
                    .iter()
                    .map(|k| record::normalise_text(k))
                    .collect(),
            })
            .collect(),
        complex_keywords: taxonomy
            .complex_keywords
            .iter()
            .map(|k| record::normalise_text(k))
            .collect(),
        urgent_keywords: taxonomy
            .urgent_keywords
            .iter()
            .map(|k| record::normalise_text(k))
            .collect(),
    }
}

fn taxonomy_to_proto(row: &store::TaxonomyRow) -> Result<pb::Taxonomy, Status> {
    let rules: TaxonomyRules = serde_json::from_value(row.rules.clone())
        .map_err(|_| Status::internal("stored taxonomy is unreadable"))?;
    Ok(pb::Taxonomy {
        version: row.version.max(0) as u32,
        categories: rules
            .categories
            .into_iter()
            .map(|c| pb::CategoryRule {
                category: c.category,
                label_zh: c.label_zh,
                label_en: c.label_en,
                keywords: c.keywords,
            })
            .collect(),
        severity_signals: rules
            .severity_signals
            .into_iter()
            .map(|s| pb::SeveritySignal {
                signal: s.signal,
                severity: s.severity,
                keywords: s.keywords,
            })
            .collect(),
        complex_keywords: rules.complex_keywords,
        urgent_keywords: rules.urgent_keywords,
        published_at: Some(to_timestamp(row.published_at)),
        published_by: row.published_by.clone(),
    })
}

/// A metric label from an enum name: `CHANNEL_WEB_FORM` → `web_form`.
fn label<E>(name: Result<&'static str, E>) -> &'static str {
    match name {
        Ok(name) => {
            let short = name.split_once('_').map(|(_, rest)| rest).unwrap_or(name);
            LABELS
                .iter()
                .find(|(upper, _)| *upper == short)
                .map(|(_, l)| *l)
                .unwrap_or("other")
        }
        Err(_) => "unknown",
    }
}

const LABELS: &[(&str, &str)] = &[
    ("PHONE", "phone"),
    ("EMAIL", "email"),
    ("WEB_FORM", "web_form"),
    ("CHAT", "chat"),
    ("SOCIAL_MEDIA", "social_media"),
    ("WECHAT", "wechat"),
    ("APP", "app"),
    ("IN_STORE", "in_store"),
    ("DEDICATED_ADVISOR", "dedicated_advisor"),
    ("GENERAL", "general"),
    ("MAJOR", "major"),
    ("CRISIS", "crisis"),
];
