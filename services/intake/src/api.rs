//! gRPC handlers of `IntakeService`: decode, authorise, call the domain and the store, encode.

use chrono::Utc;
use complaints_kit::auth::{self, Principal, Role};
use complaints_kit::events::EventLog;
use complaints_kit::grpc::{self, FieldErrors};
use complaints_kit::pagination;
use complaints_kit::telemetry::mask;
use complaints_kit::time::{from_timestamp, opt_timestamp, to_timestamp};
use complaints_proto::common::v1::{Channel, Severity};
use complaints_proto::events::v1::{ComplaintAccepted, ComplaintRejected, event::Payload};
use complaints_proto::intake::v1 as pb;
use complaints_proto::intake::v1::intake_service_server::IntakeService;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::classify::{self, DEFAULT_TAXONOMY};
use crate::domain::record::{self, Submission};
use crate::store::{self, ComplaintRow};

pub struct IntakeApi {
    pool: PgPool,
    events: EventLog,
    accepted: prometheus::IntCounterVec,
    default_country_code: String,
    org_timezone: chrono_tz::Tz,
}

impl IntakeApi {
    pub fn new(
        pool: PgPool,
        events: EventLog,
        config: &crate::Config,
        metrics: &complaints_kit::metrics::Metrics,
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
        Self {
            pool,
            events,
            accepted,
            default_country_code: config.default_country_code.clone(),
            org_timezone: config.org_timezone,
        }
    }
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
    }
}

fn to_proto(row: ComplaintRow, viewer: &Principal) -> pb::Complaint {
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
        let now = Utc::now();
        let complaint = record::parse_submission(
            submission(request.into_inner()),
            now,
            &self.default_country_code,
        )
        .map_err(FieldErrors::into_status)?;
        let fingerprint = record::fingerprint(&complaint);
        let classification = classify::classify(
            DEFAULT_TAXONOMY,
            &complaint.subject,
            &complaint.description,
            &complaint.demand,
            complaint.tier,
            complaint.channel,
        );
        let day = now
            .with_timezone(&self.org_timezone)
            .format("%Y%m%d")
            .to_string();
        let id = Uuid::now_v7();

        let mut tx = self.pool.begin().await.map_err(|e| grpc::storage(&e))?;
        let row = store::NewComplaintRow {
            id,
            complaint: &complaint,
            fingerprint: &fingerprint,
            classification: &classification,
            reference_day: &day,
            received_at: now,
            status: pb::ComplaintStatus::Received as i16,
        };
        let inserted = store::insert_complaint(&mut tx, &row)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let (row, created) = match inserted {
            Some(row) => {
                self.events
                    .append(&mut tx, &row.id.to_string(), "", accepted_event(&row))
                    .await
                    .map_err(|e| grpc::storage(&e))?;
                (row, true)
            }
            None => {
                let existing = store::find_by_request_id(&mut tx, &complaint.request_id)
                    .await
                    .map_err(|e| grpc::storage(&e))?
                    .ok_or_else(|| Status::aborted("concurrent submission; retry"))?;
                if existing.request_fingerprint != fingerprint {
                    return Err(Status::already_exists(format!(
                        "request_id {} was already used for a different complaint ({})",
                        complaint.request_id, existing.reference
                    )));
                }
                (existing, false)
            }
        };
        tx.commit().await.map_err(|e| grpc::storage(&e))?;
        complaints_kit::telemetry::record_complaint(&row.id.to_string());
        if created {
            self.events.committed();
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
                "complaint accepted"
            );
        }
        Ok(Response::new(pb::SubmitComplaintResponse {
            complaint: Some(to_proto(row, &principal)),
            created,
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
        errors.into_result()?;
        let after: Option<(chrono::DateTime<Utc>, Uuid)> = pagination::decode(&request.page_token)?;
        let filter = store::ListFilter {
            channel: (request.channel != 0).then_some(request.channel as i16),
            status: (request.status != 0).then_some(request.status as i16),
            customer_id: Some(request.customer_id.trim().to_owned()).filter(|c| !c.is_empty()),
            after,
            limit: limit + 1,
        };
        let mut rows = store::list(&self.pool, &filter)
            .await
            .map_err(|e| grpc::storage(&e))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| pagination::encode(&(r.received_at, r.id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
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
