//! The loops that make clocks fire: one claims due clocks (several replicas may run it; row
//! locks with SKIP LOCKED keep each firing single), the other delivers queued escalations to
//! case-management, retrying until delivered (its escalation ids make retries harmless).

use std::time::Duration;

use chrono::Utc;
use complaints_kit::Shutdown;
use complaints_kit::auth::BearerToken;
use complaints_proto::cases::v1::EscalateRequest;
use complaints_proto::cases::v1::case_service_client::CaseServiceClient;
use sqlx::PgPool;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::engine::Engine;
use crate::metrics::SlaMetrics;
use crate::store;

pub const FIRE_BATCH: i64 = 500;

/// Fires due clocks until shutdown, recording what fired.
pub async fn run_clock_scheduler(
    engine: Engine,
    pool: PgPool,
    poll: Duration,
    metrics: SlaMetrics,
    shutdown: Shutdown,
) {
    while !shutdown.is_triggered() {
        match engine.fire_due_report(&pool, Utc::now(), FIRE_BATCH).await {
            Ok(report) => {
                metrics.record(&report);
                if let Some(max) = report.fired.iter().map(|f| f.lag).max() {
                    tracing::debug!(
                        fired = report.fired.len(),
                        max_lag_ms = max.num_milliseconds(),
                        "clocks fired"
                    );
                }
                if report.claimed as i64 == FIRE_BATCH {
                    continue;
                }
            }
            Err(error) => tracing::warn!(error = %error, "firing due clocks failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait() => return,
        }
    }
}

type CasesClient = CaseServiceClient<InterceptedService<Channel, BearerToken>>;

/// Delivers queued escalations to case-management until shutdown.
pub async fn run_escalation_dispatcher(
    pool: PgPool,
    mut cases: CasesClient,
    poll: Duration,
    shutdown: Shutdown,
) {
    while !shutdown.is_triggered() {
        if let Err(error) = deliver_batch(&pool, &mut cases).await {
            tracing::warn!(error = %error, "delivering escalations failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait() => return,
        }
    }
}

async fn deliver_batch(pool: &PgPool, cases: &mut CasesClient) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let pending = store::claim_pending_escalations(&mut tx, Utc::now(), 20).await?;
    let case_ids: Vec<uuid::Uuid> = pending.iter().map(|e| e.case_id).collect();
    let traces = store::case_traces(&mut tx, &case_ids).await?;
    for escalation in pending {
        let request = EscalateRequest {
            case_id: escalation.case_id.to_string(),
            escalation_id: escalation.escalation_id.clone(),
            reason: escalation.reason.clone(),
        };
        // The call carries the complaint's trace, so the escalation is part of it.
        let span = tracing::info_span!(
            "sla.escalate",
            otel.name = "deliver SLA escalation",
            case.id = %escalation.case_id,
            sla.escalation.level = escalation.level,
        );
        if let Some(trace) = traces.get(&escalation.case_id) {
            complaints_kit::telemetry::continue_trace(&span, trace);
        }
        use tracing::Instrument as _;
        match cases.escalate(request).instrument(span).await {
            Ok(response) => {
                store::mark_escalation_delivered(&mut tx, &escalation.escalation_id).await?;
                tracing::info!(
                    case_id = %escalation.case_id,
                    level = escalation.level,
                    escalated = response.get_ref().escalated,
                    "escalation delivered"
                );
            }
            Err(status) => {
                let backoff = 2i64.saturating_pow(escalation.attempts.clamp(0, 8) as u32);
                let retry_at = Utc::now() + chrono::Duration::seconds(backoff);
                store::mark_escalation_failed(
                    &mut tx,
                    &escalation.escalation_id,
                    retry_at,
                    status.message(),
                )
                .await?;
                tracing::warn!(case_id = %escalation.case_id, code = ?status.code(), "escalation not delivered; will retry");
            }
        }
    }
    tx.commit().await?;
    Ok(())
}
