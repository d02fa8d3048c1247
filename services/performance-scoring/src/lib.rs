//! Performance scoring (绩效考核): KPIs per agent, team, department and organisation from a
//! read model built only from the lifecycle events of case-management, the SLA timer and
//! feedback-survey; pre-aggregated per day, rolled up into weeks, months and quarters; scored
//! under a versioned model and graded A–E in a quarterly evaluation.

pub mod api;
pub mod consumer;
pub mod domain;
pub mod evaluation;
pub mod reports;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use complaints_kit::Shutdown;
use complaints_kit::config::{self, CommonConfig, ConfigError};
use complaints_kit::db::Migration;
use complaints_kit::events::CURSOR_MIGRATION;
use complaints_kit::server::ServiceContext;
use complaints_proto::scoring::v1::scoring_service_server::ScoringServiceServer;
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const SERVICE_NAME: &str = "performance-scoring";
pub const SCHEMA: &str = "scoring";
pub const DEFAULT_PORT: u16 = 50055;

pub const MIGRATIONS: &[Migration] = &[
    CURSOR_MIGRATION,
    Migration {
        name: "0001_case_facts",
        sql: include_str!("../migrations/0001_case_facts.sql"),
    },
    Migration {
        name: "0002_aggregates_models_evaluations",
        sql: include_str!("../migrations/0002_aggregates_models_evaluations.sql"),
    },
];

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `CASES_URL`, default `http://127.0.0.1:50052`.
    pub cases_url: String,
    /// `SLA_URL`, default `http://127.0.0.1:50053`.
    pub sla_url: String,
    /// `SURVEY_URL`, default `http://127.0.0.1:50054`.
    pub survey_url: String,
    /// `ORG_TIMEZONE`, default `Asia/Shanghai`: days, weeks, months and quarters of the figures.
    pub org_timezone: Tz,
    /// `EVALUATION_POLL`, default `1m`: how often the scheduler checks for an ended quarter.
    pub evaluation_poll: Duration,
    /// `EVALUATION_GRACE`, default `1h`: how long after quarter end the evaluation waits for
    /// the quarter's last events.
    pub evaluation_grace: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            cases_url: config::upstream_url("CASES_URL", "http://127.0.0.1:50052")?,
            sla_url: config::upstream_url("SLA_URL", "http://127.0.0.1:50053")?,
            survey_url: config::upstream_url("SURVEY_URL", "http://127.0.0.1:50054")?,
            org_timezone: config::parse_or("ORG_TIMEZONE", chrono_tz::Asia::Shanghai)?,
            evaluation_poll: config::duration_or("EVALUATION_POLL", Duration::from_secs(60))?,
            evaluation_grace: config::duration_or("EVALUATION_GRACE", Duration::from_secs(3600))?,
        })
    }

    /// Defaults for everything but the common part and the upstream URLs (tests, the suite).
    pub fn new(
        common: CommonConfig,
        cases_url: String,
        sla_url: String,
        survey_url: String,
    ) -> Self {
        Self {
            common,
            cases_url,
            sla_url,
            survey_url,
            org_timezone: chrono_tz::Asia::Shanghai,
            evaluation_poll: Duration::from_secs(60),
            evaluation_grace: Duration::from_secs(3600),
        }
    }
}

/// Runs performance-scoring on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let context =
        ServiceContext::start(SERVICE_NAME, &config.common, SCHEMA, MIGRATIONS, shutdown).await?;
    store::ensure_default_model(&context.pool, &domain::model::default_model()).await?;
    evaluation::register_metrics(&context.metrics);
    let handler = Arc::new(consumer::ScoringEvents {
        org_timezone: config.org_timezone,
    });
    let restart = Arc::new(Notify::new());
    let sources = vec![
        ("case-management", config.cases_url.clone()),
        ("sla-timer", config.sla_url.clone()),
        ("feedback-survey", config.survey_url.clone()),
    ];
    tokio::spawn(consumer::supervise(
        context.clone(),
        sources,
        handler,
        restart.clone(),
    ));
    tokio::spawn(evaluation::run_scheduler(
        context.pool.clone(),
        config.org_timezone,
        config.evaluation_poll,
        config.evaluation_grace,
        context.shutdown.clone(),
    ));
    let api = api::ScoringApi::new(context.pool.clone(), config.org_timezone, restart);
    let routes = tonic::service::Routes::new(context.authenticated(ScoringServiceServer::new(api)));
    context
        .serve(listener, routes, &["complaints.scoring.v1.ScoringService"])
        .await
}
