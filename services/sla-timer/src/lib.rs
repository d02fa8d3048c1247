//! SLA timer: business-time clocks on every case, driven by case events; warnings, breaches
//! and automatic escalation to case-management; durable in Postgres and safe with replicas.

pub mod api;
pub mod consumer;
pub mod domain;
pub mod engine;
pub mod metrics;
pub mod scheduler;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use complaints_kit::Shutdown;
use complaints_kit::config::{self, CommonConfig, ConfigError};
use complaints_kit::db::Migration;
use complaints_kit::events::{
    CURSOR_MIGRATION, Consumer, EventLog, OUTBOX_INDEX_MIGRATION, OUTBOX_MIGRATION,
    OUTBOX_POSITION_MIGRATION, OUTBOX_STATISTICS_MIGRATION,
};
use complaints_kit::server::ServiceContext;
use complaints_proto::cases::v1::case_service_client::CaseServiceClient;
use complaints_proto::sla::v1::sla_service_server::SlaServiceServer;
use tokio::net::TcpListener;

use crate::domain::calendar::{BusinessCalendar, WorkRange};

pub const SERVICE_NAME: &str = "sla-timer";
pub const SCHEMA: &str = "sla";
pub const DEFAULT_PORT: u16 = 50053;

pub const MIGRATIONS: &[Migration] = &[
    OUTBOX_MIGRATION,
    OUTBOX_INDEX_MIGRATION,
    OUTBOX_STATISTICS_MIGRATION,
    OUTBOX_POSITION_MIGRATION,
    CURSOR_MIGRATION,
    Migration {
        name: "0001_clocks",
        sql: include_str!("../migrations/0001_clocks.sql"),
    },
    Migration {
        name: "0002_policies_calendars",
        sql: include_str!("../migrations/0002_policies_calendars.sql"),
    },
    Migration {
        name: "0003_case_trace",
        sql: include_str!("../migrations/0003_case_trace.sql"),
    },
    Migration {
        name: "0004_drop_redundant_clock_index",
        sql: include_str!("../migrations/0004_drop_redundant_clock_index.sql"),
    },
    Migration {
        name: "0005_survey_answers",
        sql: include_str!("../migrations/0005_survey_answers.sql"),
    },
    Migration {
        name: "0006_clock_case_check_in_code",
        sql: include_str!("../migrations/0006_clock_case_check_in_code.sql"),
    },
    Migration {
        name: "0007_column_statistics",
        sql: include_str!("../migrations/0007_column_statistics.sql"),
    },
];

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `CASES_URL`, default `http://127.0.0.1:50052`.
    pub cases_url: String,
    /// `SURVEY_URL`, default `http://127.0.0.1:50054`.
    pub survey_url: String,
    /// `ORG_TIMEZONE`, default `Asia/Shanghai`: the time zone of the business calendar.
    pub org_timezone: chrono_tz::Tz,
    /// `SCHEDULER_POLL`, default `200ms`: how often due clocks are looked for.
    pub scheduler_poll: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            cases_url: config::upstream_url("CASES_URL", "http://127.0.0.1:50052")?,
            survey_url: config::upstream_url("SURVEY_URL", "http://127.0.0.1:50054")?,
            org_timezone: config::parse_or("ORG_TIMEZONE", chrono_tz::Asia::Shanghai)?,
            scheduler_poll: config::duration_or("SCHEDULER_POLL", Duration::from_millis(200))?,
        })
    }
}

/// The shipped calendar: Monday to Friday, 09:00–12:00 and 13:00–18:00.
pub fn standard_calendar(time_zone: chrono_tz::Tz) -> BusinessCalendar {
    BusinessCalendar::weekdays(
        "standard",
        time_zone,
        vec![
            WorkRange::new((9, 0), (12, 0)),
            WorkRange::new((13, 0), (18, 0)),
        ],
    )
}

/// The calendar of the shipped default policies: the mainland-China calendar (holidays and 调休)
/// when the organisation runs on China time, else the plain Monday–Friday `standard` calendar.
pub fn default_calendar_id(org_timezone: chrono_tz::Tz) -> &'static str {
    match org_timezone.name() {
        "Asia/Shanghai" | "PRC" | "Asia/Chongqing" | "Asia/Chungking" | "Asia/Harbin" => {
            "cn-mainland"
        }
        _ => "standard",
    }
}

/// Runs the SLA timer on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let context =
        ServiceContext::start(SERVICE_NAME, &config.common, SCHEMA, MIGRATIONS, shutdown).await?;
    let events = EventLog::new(SCHEMA, SERVICE_NAME);
    let engine = engine::Engine::new(events.clone());
    engine
        .seed_defaults(&context.pool, config.org_timezone)
        .await?;
    let handler = Arc::new(consumer::ClockEvents {
        engine: engine.clone(),
    });
    let consumers = [
        Consumer::new(
            &context,
            SCHEMA,
            "case-management",
            &config.cases_url,
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
    let sla_metrics = metrics::SlaMetrics::register(&context.metrics);
    tokio::spawn(sla_metrics.clone().refresh_gauges(
        context.pool.clone(),
        Duration::from_secs(15),
        context.shutdown.clone(),
    ));
    tokio::spawn(scheduler::run_clock_scheduler(
        engine.clone(),
        context.pool.clone(),
        config.scheduler_poll,
        sla_metrics,
        context.shutdown.clone(),
    ));
    let cases = CaseServiceClient::with_interceptor(
        context.channel(&config.cases_url)?,
        context.service_bearer()?,
    );
    tokio::spawn(scheduler::run_escalation_dispatcher(
        context.pool.clone(),
        cases,
        config.scheduler_poll,
        context.shutdown.clone(),
    ));
    let api =
        api::SlaApi::new(context.pool.clone(), engine).with_shutdown(context.shutdown.clone());
    let routes = tonic::service::Routes::new(context.authenticated(SlaServiceServer::new(api)))
        .add_service(events.service(&context));
    context
        .serve(
            listener,
            routes,
            &[
                "complaints.sla.v1.SlaService",
                "complaints.events.v1.EventStream",
            ],
        )
        .await
}
