//! Case management: opens a case for every accepted complaint, routes it to a department and an
//! owner, runs its lifecycle, escalations and timeline, and announces every change as an event.

pub mod api;
pub mod consumer;
pub mod domain;
pub mod store;
pub mod watch;
pub mod workflow;

use std::sync::Arc;

use complaints_kit::Shutdown;
use complaints_kit::config::{self, CommonConfig, ConfigError};
use complaints_kit::db::Migration;
use complaints_kit::events::{
    CURSOR_MIGRATION, Consumer, EventLog, OUTBOX_INDEX_MIGRATION, OUTBOX_MIGRATION,
    OUTBOX_POSITION_MIGRATION, OUTBOX_STATISTICS_MIGRATION,
};
use complaints_kit::server::ServiceContext;
use complaints_proto::cases::v1::case_service_server::CaseServiceServer;
use tokio::net::TcpListener;

pub const SERVICE_NAME: &str = "case-management";
pub const SCHEMA: &str = "cases";
pub const DEFAULT_PORT: u16 = 50052;

pub const MIGRATIONS: &[Migration] = &[
    OUTBOX_MIGRATION,
    OUTBOX_INDEX_MIGRATION,
    OUTBOX_STATISTICS_MIGRATION,
    OUTBOX_POSITION_MIGRATION,
    CURSOR_MIGRATION,
    Migration {
        name: "0001_cases",
        sql: include_str!("../migrations/0001_cases.sql"),
    },
    Migration {
        name: "0002_coordination_and_ledger",
        sql: include_str!("../migrations/0002_coordination_and_ledger.sql"),
    },
    Migration {
        name: "0003_case_trace",
        sql: include_str!("../migrations/0003_case_trace.sql"),
    },
    Migration {
        name: "0004_column_statistics",
        sql: include_str!("../migrations/0004_column_statistics.sql"),
    },
    Migration {
        name: "0005_timeline_case_check_in_code",
        sql: include_str!("../migrations/0005_timeline_case_check_in_code.sql"),
    },
];

pub use domain::policy::{CasePolicy, DissatisfactionAction};

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `INTAKE_URL`, default `http://127.0.0.1:50051`.
    pub intake_url: String,
    /// `SURVEY_URL`, default `http://127.0.0.1:50054`.
    pub survey_url: String,
    /// `DISSATISFACTION_ACTION` (`reopen`, default, or `review`) and `ROUTING_SKILL_MAP`
    /// (`category=skill,...`, default empty: a category calls for the skill of its own name).
    pub policy: CasePolicy,
}

impl CasePolicy {
    pub fn from_env() -> Result<Self, ConfigError> {
        let skill_map = match config::optional("ROUTING_SKILL_MAP") {
            None => Default::default(),
            Some(text) => {
                domain::policy::parse_skill_map(&text).map_err(|reason| ConfigError::Invalid {
                    name: "ROUTING_SKILL_MAP".into(),
                    value: text,
                    reason,
                })?
            }
        };
        Ok(Self {
            dissatisfaction: config::parse_or("DISSATISFACTION_ACTION", Default::default())?,
            skill_map,
        })
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            intake_url: config::upstream_url("INTAKE_URL", "http://127.0.0.1:50051")?,
            survey_url: config::upstream_url("SURVEY_URL", "http://127.0.0.1:50054")?,
            policy: CasePolicy::from_env()?,
        })
    }
}

/// Runs case-management on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let context =
        ServiceContext::start(SERVICE_NAME, &config.common, SCHEMA, MIGRATIONS, shutdown).await?;
    let events = EventLog::new(SCHEMA, SERVICE_NAME);
    let changes = watch::ChangeSignal::default();
    let handler = Arc::new(consumer::CaseEvents {
        events: events.clone(),
        policy: config.policy.clone(),
        changes: changes.clone(),
    });
    let consumers = [
        Consumer::new(
            &context,
            SCHEMA,
            "intake",
            &config.intake_url,
            handler.clone(),
        )?,
        Consumer::new(
            &context,
            SCHEMA,
            "feedback-survey",
            &config.survey_url,
            handler,
        )?,
    ];
    for consumer in consumers {
        tokio::spawn(consumer.run());
    }
    let watcher = watch::Watcher {
        pool: context.pool.clone(),
        events: events.clone(),
        signal: changes,
        shutdown: context.shutdown.clone(),
    };
    let api = api::CaseApi::new(context.pool.clone(), events.clone(), watcher);
    let routes = tonic::service::Routes::new(context.authenticated(CaseServiceServer::new(api)))
        .add_service(events.service(&context));
    context
        .serve(
            listener,
            routes,
            &[
                "complaints.cases.v1.CaseService",
                "complaints.events.v1.EventStream",
            ],
        )
        .await
}
