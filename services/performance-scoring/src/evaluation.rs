//! The quarterly service evaluation (服务评鉴): scores every agent, team, department and the
//! organisation over a quarter under a scoring model and publishes the results, immutable.
//!
//! Entry point for every run, scheduled or on demand: [`run_evaluation`]. The scheduler
//! ([`run_scheduler`]) calls [`run_due_evaluation`] which evaluates the quarter that just ended
//! (organisation time zone) once.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, DurationRound, Utc};
use chrono_tz::Tz;
use complaints_kit::Shutdown;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::kpi::Indicators;
use crate::domain::model;
use crate::domain::period::{Quarter, local_day, quarter_due};
use crate::domain::ranking::fold_subjects;
use crate::store::{self, EvaluationRecord, ResultRow};

pub const TRIGGER_SCHEDULED: i16 = 1;
pub const TRIGGER_ON_DEMAND: i16 = 2;

#[derive(Clone, Debug)]
pub struct EvaluationRequest<'a> {
    /// Idempotency key of an on-demand run.
    pub request_id: Option<&'a str>,
    pub quarter: Quarter,
    /// `None`: the active (newest) model.
    pub model_version: Option<u32>,
    pub trigger: i16,
    pub run_by: &'a str,
    pub reason: &'a str,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Published(EvaluationRecord),
    /// Nothing new: the request was seen before, or the quarter was already evaluated.
    AlreadyPublished(EvaluationRecord),
}

impl Outcome {
    pub fn record(&self) -> &EvaluationRecord {
        match self {
            Outcome::Published(r) | Outcome::AlreadyPublished(r) => r,
        }
    }

    /// Label for the `outcome` of a runs metric.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Published(_) => "published",
            Outcome::AlreadyPublished(_) => "already_published",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    #[error("scoring model version {0} does not exist")]
    UnknownModel(u32),
    #[error("the quarter has not started yet")]
    QuarterNotStarted,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// `scoring_evaluation_runs_total{outcome}`; registered in the service's registry at start.
static RUNS: std::sync::OnceLock<prometheus::IntCounterVec> = std::sync::OnceLock::new();

/// Registers the evaluation-runs counter (all outcomes start at 0, so alerts see the series).
pub fn register_metrics(metrics: &complaints_kit::metrics::Metrics) {
    let runs = RUNS.get_or_init(|| {
        prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "scoring_evaluation_runs_total",
                "Quarterly evaluation runs by outcome.",
            ),
            &["outcome"],
        )
        .expect("metric")
    });
    for outcome in ["published", "already_published", "failed"] {
        runs.with_label_values(&[outcome]);
    }
    metrics.register(runs);
}

/// Runs an evaluation (scheduled or on demand) and counts its outcome.
pub async fn run_evaluation(
    pool: &PgPool,
    tz: Tz,
    now: DateTime<Utc>,
    request: &EvaluationRequest<'_>,
) -> Result<Outcome, EvaluationError> {
    let outcome = evaluate(pool, tz, now, request).await;
    if let Some(runs) = RUNS.get() {
        let label = match &outcome {
            Ok(outcome) => outcome.label(),
            Err(_) => "failed",
        };
        runs.with_label_values(&[label]).inc();
    }
    outcome
}

/// Runs one evaluation. A scheduled run publishes only if no complete evaluation of the quarter
/// exists; an on-demand run publishes the next revision of (model, quarter), superseding the
/// previous one, unless its `request_id` was seen before.
async fn evaluate(
    pool: &PgPool,
    tz: Tz,
    now: DateTime<Utc>,
    request: &EvaluationRequest<'_>,
) -> Result<Outcome, EvaluationError> {
    let period = request.quarter.period();
    if local_day(now, tz) < period.first {
        return Err(EvaluationError::QuarterNotStarted);
    }
    let mut tx = pool.begin().await?;
    store::lock_evaluations(&mut tx).await?;
    if let Some(request_id) = request.request_id
        && let Some(existing) = store::evaluation_by_request(&mut tx, request_id).await?
    {
        return Ok(Outcome::AlreadyPublished(existing));
    }
    let quarter_complete = now >= request.quarter.ends_at(tz);
    if request.trigger == TRIGGER_SCHEDULED
        && let Some(existing) =
            store::complete_evaluation(&mut tx, request.quarter.year, request.quarter.quarter)
                .await?
    {
        return Ok(Outcome::AlreadyPublished(existing));
    }
    let Some(scoring_model) = store::model(&mut *tx, request.model_version).await? else {
        return Err(EvaluationError::UnknownModel(
            request.model_version.unwrap_or(0),
        ));
    };
    let previous = store::latest_revision(
        &mut tx,
        scoring_model.version,
        request.quarter.year,
        request.quarter.quarter,
    )
    .await?;
    let rows = store::all_subjects(
        &mut tx,
        period.first,
        period.end_exclusive(),
        scoring_model.definition.uses_histogram(),
    )
    .await?;
    let results: Vec<ResultRow> = fold_subjects(rows)
        .into_iter()
        .filter(|s| s.counters.cases_opened > 0)
        .map(|s| {
            let indicators = Indicators::from_counters(&s.counters);
            ResultRow {
                subject_kind: s.kind,
                cases_opened: s.counters.cases_opened,
                score: model::score(
                    scoring_model.version,
                    &scoring_model.definition,
                    &indicators,
                ),
                subject_id: s.subject_id,
                department_id: s.department_id,
            }
        })
        .collect();
    let record = EvaluationRecord {
        id: Uuid::now_v7(),
        year: request.quarter.year,
        quarter: request.quarter.quarter,
        model_version: scoring_model.version,
        revision: previous.as_ref().map(|p| p.revision + 1).unwrap_or(1),
        trigger: request.trigger,
        // As stored: Postgres keeps microseconds.
        published_at: now.duration_trunc(Duration::microseconds(1)).unwrap_or(now),
        run_by: request.run_by.to_owned(),
        reason: request.reason.to_owned(),
        quarter_complete,
        subjects: results.len() as u32,
        subjects_graded: results.iter().filter(|r| r.score.grade.is_some()).count() as u32,
        supersedes_id: previous.map(|p| p.id),
    };
    store::insert_evaluation(&mut tx, request.request_id, &record, &results).await?;
    tx.commit().await?;
    tracing::info!(
        year = record.year,
        quarter = record.quarter,
        model_version = record.model_version,
        revision = record.revision,
        subjects = record.subjects,
        "evaluation published"
    );
    Ok(Outcome::Published(record))
}

/// The scheduler's step: evaluates the latest quarter that ended at least `grace` ago, once.
pub async fn run_due_evaluation(
    pool: &PgPool,
    tz: Tz,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<Outcome, EvaluationError> {
    let quarter = quarter_due(now, tz, grace);
    run_evaluation(
        pool,
        tz,
        now,
        &EvaluationRequest {
            request_id: None,
            quarter,
            model_version: None,
            trigger: TRIGGER_SCHEDULED,
            run_by: "scheduler",
            reason: "end of quarter",
        },
    )
    .await
}

/// Background loop: checks every `poll` whether a quarter has ended and evaluates it.
pub async fn run_scheduler(
    pool: PgPool,
    tz: Tz,
    poll: StdDuration,
    grace: StdDuration,
    shutdown: Shutdown,
) {
    let grace = Duration::from_std(grace).unwrap_or(Duration::hours(1));
    loop {
        // Wait first: after a (re)start the consumers catch up before a quarter is judged.
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait() => return,
        }
        match run_due_evaluation(&pool, tz, Utc::now(), grace).await {
            Ok(Outcome::Published(r)) => {
                tracing::info!(
                    year = r.year,
                    quarter = r.quarter,
                    "quarterly evaluation ran"
                )
            }
            Ok(Outcome::AlreadyPublished(_)) => {}
            Err(error) => tracing::warn!(%error, "quarterly evaluation failed; will retry"),
        }
    }
}
