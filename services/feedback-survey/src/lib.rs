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
use complaints_kit::events::{
    CURSOR_MIGRATION, Consumer, EventLog, OUTBOX_INDEX_MIGRATION, OUTBOX_MIGRATION,
    OUTBOX_POSITION_MIGRATION, OUTBOX_STATISTICS_MIGRATION,
};
use complaints_kit::server::ServiceContext;
use complaints_proto::survey::v1::survey_service_server::SurveyServiceServer;
use tokio::net::TcpListener;

use crate::domain::questionnaire::{self, DissatisfactionRule};
use crate::domain::token::TokenKey;

pub const SERVICE_NAME: &str = "feedback-survey";
pub const SCHEMA: &str = "survey";
pub const DEFAULT_PORT: u16 = 50054;

pub const MIGRATIONS: &[Migration] = &[
    OUTBOX_MIGRATION,
    OUTBOX_INDEX_MIGRATION,
    OUTBOX_STATISTICS_MIGRATION,
    OUTBOX_POSITION_MIGRATION,
    CURSOR_MIGRATION,
    Migration {
        name: "0001_invitations",
        sql: include_str!("../migrations/0001_invitations.sql"),
    },
    Migration {
        name: "0002_templates_reminders_return_visits",
        sql: include_str!("../migrations/0002_templates_reminders_return_visits.sql"),
    },
    Migration {
        name: "0003_invitation_trace",
        sql: include_str!("../migrations/0003_invitation_trace.sql"),
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
    pub policy: Policy,
}

/// The survey rules an operator tunes. `Policy::default()` is what the variables default to.
#[derive(Clone, Debug)]
pub struct Policy {
    /// `SURVEY_REMINDER_AFTER`, default `72h` (`off` disables): the one reminder goes to link
    /// invitations still unanswered this long after they were sent; shorter than the token TTL.
    pub reminder_after: Option<std::time::Duration>,
    /// `SURVEY_DISSATISFIED_CSAT_AT_MOST` (default `2`, `off`), `SURVEY_DISSATISFIED_WHEN_UNSOLVED`
    /// (default `true`), `SURVEY_DISSATISFIED_NPS_AT_MOST` (default `off`).
    pub dissatisfaction: DissatisfactionRule,
    /// `SURVEY_TEMPLATE`, default `standard`: new invitations take its latest version.
    pub template_id: String,
    /// `SURVEY_TARGET_SATISFACTION`, default `0.92` (seed 002: satisfaction ≥ 92 %).
    pub satisfaction_target: f64,
    /// `SURVEY_TARGET_NPS_INCREASE`, default `35` (seed 002: NPS up ≥ 35).
    pub nps_increase_target: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            reminder_after: Some(std::time::Duration::from_secs(72 * 3600)),
            dissatisfaction: DissatisfactionRule::default(),
            template_id: questionnaire::STANDARD_TEMPLATE_ID.into(),
            satisfaction_target: 0.92,
            nps_increase_target: 35.0,
        }
    }
}

fn invalid(name: &str, value: impl Into<String>, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// An optional bound: a number in `range`, or `off`.
fn bound_or(
    name: &str,
    default: Option<u32>,
    range: std::ops::RangeInclusive<u32>,
) -> Result<Option<u32>, ConfigError> {
    match config::optional(name) {
        None => Ok(default),
        Some(value) if value.trim() == "off" => Ok(None),
        Some(value) => match value.trim().parse::<u32>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(invalid(
                name,
                value,
                &format!("a number {}–{} or off", range.start(), range.end()),
            )),
        },
    }
}

impl Policy {
    pub fn from_env(token_ttl: std::time::Duration) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let reminder_after = match config::optional("SURVEY_REMINDER_AFTER") {
            Some(value) if value.trim() == "off" => None,
            _ => Some(config::duration_or(
                "SURVEY_REMINDER_AFTER",
                defaults.reminder_after.unwrap_or_default(),
            )?),
        };
        if let Some(after) = reminder_after
            && after >= token_ttl
        {
            return Err(invalid(
                "SURVEY_REMINDER_AFTER",
                format!("{after:?}"),
                "must be shorter than SURVEY_TOKEN_TTL, or the reminder would carry a dead link",
            ));
        }
        let dissatisfaction = DissatisfactionRule {
            csat_at_most: bound_or("SURVEY_DISSATISFIED_CSAT_AT_MOST", Some(2), 1..=5)?,
            when_unsolved: config::parse_or("SURVEY_DISSATISFIED_WHEN_UNSOLVED", true)?,
            nps_at_most: bound_or("SURVEY_DISSATISFIED_NPS_AT_MOST", None, 0..=10)?,
        };
        let template_id = config::optional("SURVEY_TEMPLATE").unwrap_or(defaults.template_id);
        if !questionnaire::valid_identifier(&template_id) {
            return Err(invalid("SURVEY_TEMPLATE", template_id, "lower snake case"));
        }
        let satisfaction_target =
            config::parse_or("SURVEY_TARGET_SATISFACTION", defaults.satisfaction_target)?;
        if !(0.0..=1.0).contains(&satisfaction_target) {
            return Err(invalid(
                "SURVEY_TARGET_SATISFACTION",
                satisfaction_target.to_string(),
                "a share between 0 and 1, like 0.92",
            ));
        }
        Ok(Self {
            reminder_after,
            dissatisfaction,
            template_id,
            satisfaction_target,
            nps_increase_target: config::parse_or(
                "SURVEY_TARGET_NPS_INCREASE",
                defaults.nps_increase_target,
            )?,
        })
    }
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
        let token_ttl = config::duration_or(
            "SURVEY_TOKEN_TTL",
            std::time::Duration::from_secs(7 * 86_400),
        )?;
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            cases_url: config::upstream_url("CASES_URL", "http://127.0.0.1:50052")?,
            token_secret,
            delay,
            token_ttl,
            policy: Policy::from_env(token_ttl)?,
        })
    }
}

/// Runs the survey service on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let context =
        ServiceContext::start(SERVICE_NAME, &config.common, SCHEMA, MIGRATIONS, shutdown).await?;
    let events = EventLog::new(SCHEMA, SERVICE_NAME);
    let token_key = TokenKey::new(config.token_secret.as_bytes());
    store::ensure_template(&context.pool, &questionnaire::standard_template()).await?;
    let handler = Arc::new(consumer::SurveyEvents {
        events: events.clone(),
        token_key: token_key.clone(),
        delay: chrono::Duration::from_std(config.delay)?,
        template_id: config.policy.template_id.clone(),
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
        config.policy,
    )?
    .with_metrics(&context.metrics);
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
