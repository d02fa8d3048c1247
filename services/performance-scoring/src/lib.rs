//! Performance scoring (绩效考核): KPIs per agent and department from a read model built only
//! from the lifecycle events of case-management, the SLA timer and feedback-survey.

pub mod api;
pub mod consumer;
pub mod domain;
pub mod store;

use std::sync::Arc;

use complaints_kit::Shutdown;
use complaints_kit::config::{self, CommonConfig, ConfigError};
use complaints_kit::db::Migration;
use complaints_kit::events::{CURSOR_MIGRATION, Consumer};
use complaints_kit::server::ServiceContext;
use complaints_proto::scoring::v1::scoring_service_server::ScoringServiceServer;
use tokio::net::TcpListener;

pub const SERVICE_NAME: &str = "performance-scoring";
pub const SCHEMA: &str = "scoring";
pub const DEFAULT_PORT: u16 = 50055;

pub const MIGRATIONS: &[Migration] = &[
    CURSOR_MIGRATION,
    Migration {
        name: "0001_case_facts",
        sql: include_str!("../migrations/0001_case_facts.sql"),
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
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            cases_url: config::upstream_url("CASES_URL", "http://127.0.0.1:50052")?,
            sla_url: config::upstream_url("SLA_URL", "http://127.0.0.1:50053")?,
            survey_url: config::upstream_url("SURVEY_URL", "http://127.0.0.1:50054")?,
        })
    }
}

/// Runs performance-scoring on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let context =
        ServiceContext::start(SERVICE_NAME, &config.common, SCHEMA, MIGRATIONS, shutdown).await?;
    let handler = Arc::new(consumer::ScoringEvents);
    for (source, url) in [
        ("case-management", &config.cases_url),
        ("sla-timer", &config.sla_url),
        ("feedback-survey", &config.survey_url),
    ] {
        tokio::spawn(Consumer::new(&context, SCHEMA, source, url, handler.clone())?.run());
    }
    let api = api::ScoringApi::new(context.pool.clone());
    let routes = tonic::service::Routes::new(context.authenticated(ScoringServiceServer::new(api)));
    context
        .serve(listener, routes, &["complaints.scoring.v1.ScoringService"])
        .await
}
