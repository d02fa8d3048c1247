//! Intake (受理): records, verifies, classifies and grades every complaint from any channel,
//! and announces each accepted complaint as a `ComplaintAccepted` event.

pub mod api;
pub mod consumer;
pub mod domain;
pub mod store;
pub mod submit;
pub mod taxonomy;

use complaints_kit::Shutdown;
use complaints_kit::config::{self, CommonConfig, ConfigError};
use complaints_kit::db::Migration;
use complaints_kit::events::{
    CURSOR_MIGRATION, Consumer, EventLog, OUTBOX_INDEX_MIGRATION, OUTBOX_MIGRATION,
    OUTBOX_POSITION_MIGRATION, OUTBOX_STATISTICS_MIGRATION,
};
use complaints_kit::server::ServiceContext;
use complaints_proto::intake::v1::intake_service_server::IntakeServiceServer;
use tokio::net::TcpListener;

pub const SERVICE_NAME: &str = "intake";
pub const SCHEMA: &str = "intake";
pub const DEFAULT_PORT: u16 = 50051;

pub const MIGRATIONS: &[Migration] = &[
    OUTBOX_MIGRATION,
    OUTBOX_INDEX_MIGRATION,
    OUTBOX_STATISTICS_MIGRATION,
    OUTBOX_POSITION_MIGRATION,
    CURSOR_MIGRATION,
    Migration {
        name: "0001_complaints",
        sql: include_str!("../migrations/0001_complaints.sql"),
    },
    Migration {
        name: "0002_linking_taxonomy_attachments",
        sql: include_str!("../migrations/0002_linking_taxonomy_attachments.sql"),
    },
    Migration {
        name: "0003_complaint_cases",
        sql: include_str!("../migrations/0003_complaint_cases.sql"),
    },
    Migration {
        name: "0004_lock_repeat_candidates",
        sql: include_str!("../migrations/0004_lock_repeat_candidates.sql"),
    },
    Migration {
        name: "0005_column_statistics",
        sql: include_str!("../migrations/0005_column_statistics.sql"),
    },
];

#[derive(Clone, Debug)]
pub struct Config {
    pub common: CommonConfig,
    /// `DEFAULT_PHONE_COUNTRY_CODE`, default `86`: numbers without a country code are read there.
    pub default_country_code: String,
    /// `ORG_TIMEZONE`, default `Asia/Shanghai`: the day in reference numbers.
    pub org_timezone: chrono_tz::Tz,
    /// `REPEAT_CONTACT_WINDOW` (default `30d`) and `REPEAT_CONTACT_RAISES_PRIORITY` (default
    /// `true`): how repeat contacts are recognised and whether each raises priority a level.
    pub repeat_rules: domain::repeat::RepeatRules,
    /// `CASES_URL`, default `http://127.0.0.1:50052`: where intake learns whether cases are open.
    pub cases_url: String,
    /// `SUBMIT_LOCK_TIMEOUT`, default `2s`: how long a submission waits for its customer's lock
    /// (held by another replica's transaction) before the call fails with `ABORTED`.
    pub submit_lock_timeout: std::time::Duration,
    /// `SUBMIT_BATCH_GATHER`, default `1ms` (0–20ms): how long a small batch of submissions
    /// waits for more before it is written.
    pub submit_batch_gather: std::time::Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_env(DEFAULT_PORT)?,
            default_country_code: config::parse_or("DEFAULT_PHONE_COUNTRY_CODE", "86".to_owned())?,
            org_timezone: config::parse_or("ORG_TIMEZONE", chrono_tz::Asia::Shanghai)?,
            repeat_rules: domain::repeat::RepeatRules {
                window: chrono::Duration::from_std(config::duration_or(
                    "REPEAT_CONTACT_WINDOW",
                    std::time::Duration::from_secs(30 * 86_400),
                )?)
                .unwrap_or(chrono::Duration::days(30)),
                raises_priority: config::parse_or("REPEAT_CONTACT_RAISES_PRIORITY", true)?,
            },
            cases_url: config::upstream_url("CASES_URL", "http://127.0.0.1:50052")?,
            submit_lock_timeout: submit_lock_timeout()?,
            submit_batch_gather: submit_batch_gather()?,
        })
    }

    /// Defaults for everything but the common part (cases at the default local address).
    pub fn new(common: CommonConfig) -> Self {
        Self {
            common,
            default_country_code: "86".into(),
            org_timezone: chrono_tz::Asia::Shanghai,
            repeat_rules: Default::default(),
            cases_url: "http://127.0.0.1:50052".into(),
            submit_lock_timeout: submit::DEFAULT_LOCK_TIMEOUT,
            submit_batch_gather: submit::DEFAULT_BATCH_GATHER,
        }
    }
}

/// `SUBMIT_LOCK_TIMEOUT`: from 1 ms to 10 min (PostgreSQL's `lock_timeout` takes at most
/// 2^31 ms, and 0 would mean waiting for ever, which the setting exists to prevent).
const LOCK_TIMEOUT_RANGE: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::from_millis(1)..=std::time::Duration::from_secs(600);

/// `SUBMIT_BATCH_GATHER`: at most 20 ms, a small part of a submission's latency budget.
const BATCH_GATHER_RANGE: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::ZERO..=std::time::Duration::from_millis(20);

fn submit_lock_timeout() -> Result<std::time::Duration, ConfigError> {
    config::duration_within(
        "SUBMIT_LOCK_TIMEOUT",
        submit::DEFAULT_LOCK_TIMEOUT,
        &LOCK_TIMEOUT_RANGE,
        "1ms to 10m",
    )
}

fn submit_batch_gather() -> Result<std::time::Duration, ConfigError> {
    config::duration_within(
        "SUBMIT_BATCH_GATHER",
        submit::DEFAULT_BATCH_GATHER,
        &BATCH_GATHER_RANGE,
        "0 to 20ms",
    )
}

/// Runs the intake service on `listener` until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    let context =
        ServiceContext::start(SERVICE_NAME, &config.common, SCHEMA, MIGRATIONS, shutdown).await?;
    let events = EventLog::new(SCHEMA, SERVICE_NAME);
    let taxonomy = taxonomy::TaxonomyCache::load(&context.pool).await?;
    tokio::spawn(
        taxonomy
            .clone()
            .refresh(context.pool.clone(), context.shutdown.clone()),
    );
    let cases = Consumer::new(
        &context,
        SCHEMA,
        "case-management",
        &config.cases_url,
        std::sync::Arc::new(consumer::CaseEvents),
    )?;
    tokio::spawn(cases.run());
    let api = api::IntakeApi::new(
        context.pool.clone(),
        events.clone(),
        &config,
        &context.metrics,
        taxonomy,
    );
    let routes = tonic::service::Routes::new(context.authenticated(IntakeServiceServer::new(api)))
        .add_service(events.service(&context));
    context
        .serve(
            listener,
            routes,
            &[
                "complaints.intake.v1.IntakeService",
                "complaints.events.v1.EventStream",
            ],
        )
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_submission_lock_timeout_must_be_one_postgres_accepts_and_not_zero() {
        for ok in [
            Duration::from_millis(1),
            Duration::from_secs(2),
            Duration::from_secs(600),
        ] {
            assert!(super::LOCK_TIMEOUT_RANGE.contains(&ok), "{ok:?}");
        }
        assert!(super::LOCK_TIMEOUT_RANGE.contains(&super::submit::DEFAULT_LOCK_TIMEOUT));
        for bad in [
            Duration::ZERO,
            Duration::from_secs(601),
            Duration::from_secs(25 * 86_400),
        ] {
            assert!(!super::LOCK_TIMEOUT_RANGE.contains(&bad), "{bad:?}");
        }
    }

    #[test]
    fn the_batch_gather_may_be_off_and_is_at_most_twenty_milliseconds() {
        for ok in [
            Duration::ZERO,
            super::submit::DEFAULT_BATCH_GATHER,
            Duration::from_millis(20),
        ] {
            assert!(super::BATCH_GATHER_RANGE.contains(&ok), "{ok:?}");
        }
        assert!(!super::BATCH_GATHER_RANGE.contains(&Duration::from_millis(21)));
    }
}
