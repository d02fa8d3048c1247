//! The SLA series SREs watch: warnings and breaches by kind, severity and department, the firing
//! lag histogram, open clocks by kind, state and severity, and cases at risk. Counters start at
//! zero for every kind × severity × shipped department, so alerts see them before the first breach.

use std::time::Duration;

use complaints_kit::Shutdown;
use complaints_kit::metrics::Metrics;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts};
use sqlx::PgPool;

use crate::engine::{FireReport, FiredKind};
use crate::store;

#[derive(Clone)]
pub struct SlaMetrics {
    warnings: IntCounterVec,
    breaches: IntCounterVec,
    firing_lag: Histogram,
    open_clocks: IntGaugeVec,
    at_risk: IntGaugeVec,
}

const KINDS: [&str; 4] = [
    "first_response",
    "resolution",
    "follow_up",
    "customer_update",
];
const SEVERITIES: [&str; 3] = ["general", "major", "crisis"];
const DEPARTMENTS: [&str; 5] = [
    "customer-care",
    "quality",
    "after-sales",
    "logistics",
    "billing",
];

pub fn kind_label(kind: i16) -> &'static str {
    match kind {
        1 => "first_response",
        2 => "resolution",
        3 => "follow_up",
        4 => "customer_update",
        _ => "unknown",
    }
}

pub fn severity_label(severity: i16) -> &'static str {
    match severity {
        1 => "general",
        2 => "major",
        3 => "crisis",
        _ => "unknown",
    }
}

fn state_label(state: i16) -> &'static str {
    match state {
        store::RUNNING => "running",
        store::PAUSED => "paused",
        store::BREACHED => "breached",
        _ => "other",
    }
}

impl SlaMetrics {
    pub fn register(registry: &Metrics) -> Self {
        let labels = &["kind", "severity", "department"];
        let warnings = IntCounterVec::new(
            Opts::new("sla_warnings_total", "SLA warning thresholds reached."),
            labels,
        )
        .expect("metric");
        let breaches = IntCounterVec::new(
            Opts::new("sla_breaches_total", "SLA targets breached."),
            labels,
        )
        .expect("metric");
        let firing_lag = Histogram::with_opts(
            HistogramOpts::new(
                "sla_firing_lag_seconds",
                "How late warnings, breaches and escalations fired (commit time minus due time).",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0,
            ]),
        )
        .expect("metric");
        let open_clocks = IntGaugeVec::new(
            Opts::new(
                "sla_open_clocks",
                "Clocks still counting, by kind, state and severity.",
            ),
            &["kind", "state", "severity"],
        )
        .expect("metric");
        let at_risk = IntGaugeVec::new(
            Opts::new(
                "sla_cases_at_risk",
                "Cases with a running clock past a warning threshold or breached.",
            ),
            &["severity", "department"],
        )
        .expect("metric");
        for kind in KINDS {
            for severity in SEVERITIES {
                for department in DEPARTMENTS {
                    warnings.with_label_values(&[kind, severity, department]);
                    breaches.with_label_values(&[kind, severity, department]);
                }
            }
        }
        registry.register(&warnings);
        registry.register(&breaches);
        registry.register(&firing_lag);
        registry.register(&open_clocks);
        registry.register(&at_risk);
        Self {
            warnings,
            breaches,
            firing_lag,
            open_clocks,
            at_risk,
        }
    }

    /// Counts what one scheduler pass fired.
    pub fn record(&self, report: &FireReport) {
        for fired in &report.fired {
            let labels = [
                kind_label(fired.kind),
                severity_label(fired.severity),
                fired.department_id.as_str(),
            ];
            match fired.what {
                FiredKind::Warning { .. } => self.warnings.with_label_values(&labels).inc(),
                FiredKind::Breach => self.breaches.with_label_values(&labels).inc(),
                FiredKind::Escalation { .. } => {}
            }
            self.firing_lag
                .observe(fired.lag.num_milliseconds().max(0) as f64 / 1000.0);
        }
    }

    /// Refreshes the gauges from the clocks table every `every` until shutdown.
    pub async fn refresh_gauges(self, pool: PgPool, every: Duration, shutdown: Shutdown) {
        loop {
            match (
                store::open_clock_counts(&pool).await,
                store::at_risk_counts(&pool).await,
            ) {
                (Ok(open), Ok(risk)) => {
                    self.open_clocks.reset();
                    for kind in KINDS {
                        for state in ["running", "paused", "breached"] {
                            for severity in SEVERITIES {
                                self.open_clocks
                                    .with_label_values(&[kind, state, severity])
                                    .set(0);
                            }
                        }
                    }
                    for (kind, state, severity, n) in open {
                        self.open_clocks
                            .with_label_values(&[
                                kind_label(kind),
                                state_label(state),
                                severity_label(severity),
                            ])
                            .set(n);
                    }
                    self.at_risk.reset();
                    for severity in SEVERITIES {
                        for department in DEPARTMENTS {
                            self.at_risk
                                .with_label_values(&[severity, department])
                                .set(0);
                        }
                    }
                    for (severity, department, n) in risk {
                        self.at_risk
                            .with_label_values(&[severity_label(severity), &department])
                            .set(n);
                    }
                }
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "SLA gauges not refreshed")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => return,
            }
        }
    }
}
