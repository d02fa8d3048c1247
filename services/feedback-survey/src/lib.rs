//! Feedback survey (回访): invites the customer after resolution, takes CSAT / NPS answers
//! through single-use tokens, and flags dissatisfaction so the case is reopened.

pub mod api;
pub mod consumer;
pub mod domain;
pub mod store;

use std::sync::Arc;

use complaints_kit::Shutdown;
use complaints_kit::config::{self, CommonConfig, ConfigError};
use complaints_kit::db::Migration;
use complaints_kit::events::{CURSOR_MIGRATION, Consumer, EventLog, OUTBOX_MIGRATION};
use complaints_kit::server::ServiceContext;
use complaints_proto::survey::v1::survey_service_server::SurveyServiceServer;
use tokio::net::TcpListener;

use crate::domain::token::TokenKey;

pub const SERVICE_NAME: &str = "feedback-survey";
pub const SCHEMA: &str = "survey";
pub const DEFAULT_PORT: u16 = 50054;

pub const MIGRATIONS: &[Migration] = &[
    OUTBOX_MIGRATION,
    CURSOR_MIGRATION,
    Migration {
        name: "0001_invitations",
        sql: include_str!("../migrations/0001_invitations.sql"),
    },
];

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `CASES_URL`, default `http://127.0.0.1:50052`.
    pub cases_url: String,
    /// `SURVEY_TOKEN_SECRET` (required, ≥ 32 characters): signs survey tokens.
    pub token_secret: String,
    /// `SURVEY_DELAY`, default `2h`: from resolution to invitation; must stay under 48h.
    pub delay: std::time::Duration,
    /// `SURVEY_TOKEN_TTL`, default `7d`.
    pub token_ttl: std::time::Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let token_secret = config::required(
            "SURVEY_TOKEN_SECRET",
            "at least 32 random characters that sign survey tokens",
        )?;
        if token_secret.len() < 32 {
            return Err(ConfigError::Invalid {
                name: "SURVEY_TOKEN_SECRET".into(),
                value: "<hidden>".into(),
                reason: "must be at least 32 characters".into(),
            });
        }
        let delay = config::duration_or("SURVEY_DELAY", std::time::Duration::from_secs(2 * 3600))?;
        if delay >= std::time::Duration::from_secs(48 * 3600) {
            return Err(ConfigError::Invalid {
                name: "SURVEY_DELAY".into(),
                value: format!("{delay:?}"),
                reason: "the return visit must happen within 48 hours of resolution".into(),
            });
        }
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            cases_url: config::upstream_url("CASES_URL", "http://127.0.0.1:50052")?,
            token_secret,
            delay,
            token_ttl: config::duration_or(
                "SURVEY_TOKEN_TTL",
                std::time::Duration::from_secs(7 * 86_400),
            )?,
        })
    }
}

/// Runs the survey service on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let context =
        ServiceContext::start(SERVICE_NAME, &config.common, SCHEMA, MIGRATIONS, shutdown).await?;
    let events = EventLog::new(SCHEMA, SERVICE_NAME);
    let token_key = TokenKey::new(config.token_secret.as_bytes());
    let handler = Arc::new(consumer::SurveyEvents {
        events: events.clone(),
        token_key: token_key.clone(),
        delay: chrono::Duration::from_std(config.delay)?,
    });
    tokio::spawn(
        Consumer::new(
            &context,
            SCHEMA,
            "case-management",
            &config.cases_url,
            handler,
        )?
        .run(),
    );
    let api = api::SurveyApi::new(
        context.pool.clone(),
        events.clone(),
        token_key,
        chrono::Duration::from_std(config.token_ttl)?,
    );
    let routes = tonic::service::Routes::new(context.authenticated(SurveyServiceServer::new(api)))
        .add_service(events.service(&context));
    context
        .serve(
            listener,
            routes,
            &[
                "complaints.survey.v1.SurveyService",
                "complaints.events.v1.EventStream",
            ],
        )
        .await
}
