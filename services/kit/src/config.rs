//! Configuration from environment variables, with documented defaults. Start-up fails fast
//! and names the variable when a value is missing or malformed.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::auth::AuthConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is required: {hint}")]
    Missing { name: String, hint: &'static str },
    #[error("environment variable {name} has an invalid value {value:?}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("cannot read file {path} named by {name}: {source}")]
    File {
        name: String,
        path: String,
        source: std::io::Error,
    },
}

/// Reads an optional variable; empty counts as unset.
pub fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub fn required(name: &str, hint: &'static str) -> Result<String, ConfigError> {
    optional(name).ok_or_else(|| ConfigError::Missing {
        name: name.to_owned(),
        hint,
    })
}

/// Parses a variable, or returns `default` when unset.
pub fn parse_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match optional(name) {
        None => Ok(default),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                name: name.to_owned(),
                reason: e.to_string(),
                value,
            }),
    }
}

/// Parses a duration written as `250ms`, `30s`, `15m`, `2h` or `7d`.
pub fn duration_or(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    match optional(name) {
        None => Ok(default),
        Some(value) => parse_duration(&value).map_err(|reason| ConfigError::Invalid {
            name: name.to_owned(),
            value,
            reason,
        }),
    }
}

/// A duration setting that must lie in `range` (`shown` names the range in the error, e.g.
/// "1ms to 10m"); unset, `default`.
pub fn duration_within(
    name: &str,
    default: Duration,
    range: &std::ops::RangeInclusive<Duration>,
    shown: &str,
) -> Result<Duration, ConfigError> {
    check_within(name, duration_or(name, default)?, range, shown)
}

/// `value` of setting `name` if it lies in `range`, else the error naming it.
fn check_within(
    name: &str,
    value: Duration,
    range: &std::ops::RangeInclusive<Duration>,
    shown: &str,
) -> Result<Duration, ConfigError> {
    if !range.contains(&value) {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: format!("{value:?}"),
            reason: format!("must be from {shown}"),
        });
    }
    Ok(value)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "expected a number followed by ms, s, m, h or d".to_owned())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a number followed by ms, s, m, h or d".to_owned())?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => return Err(format!("unknown unit {other:?}; use ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(seconds))
}

/// Where a service serves `/metrics`.
#[derive(Clone, Debug)]
pub enum MetricsEndpoint {
    /// Bind this address at start-up.
    Addr(SocketAddr),
    /// Use a listener bound beforehand (tests and the one-process suite bind port 0 first).
    Bound(std::sync::Arc<std::sync::Mutex<Option<std::net::TcpListener>>>),
    Disabled,
}

impl MetricsEndpoint {
    pub fn bound(listener: std::net::TcpListener) -> Self {
        MetricsEndpoint::Bound(std::sync::Arc::new(std::sync::Mutex::new(Some(listener))))
    }
}

/// What every service reads the same way.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    /// `DATABASE_URL` (required).
    pub database_url: String,
    /// `GRPC_LISTEN_ADDR`, default `0.0.0.0:<service default port>`.
    pub listen_addr: SocketAddr,
    /// `METRICS_LISTEN_ADDR`, default `0.0.0.0:<gRPC port + 1000>`; `off` disables it.
    pub metrics: MetricsEndpoint,
    /// `DB_POOL_MAX_CONNECTIONS`, default 10.
    pub db_pool_max: u32,
    /// `EVENT_RETENTION`, default 30d: produced events older than this are deleted; a consumer
    /// whose cursor fell behind gets OUT_OF_RANGE, never a silent gap.
    pub event_retention: Duration,
    /// `EVENT_SETTLE_BUSY` (default 50ms, at most 200ms) and `EVENT_APPLY_CHUNK` (default 128,
    /// 1 to 2000): how long a busy event stream lets commits gather before it reads on, and the
    /// most events a consumer applies per transaction.
    pub event_tuning: crate::events::EventTuning,
    /// `SHUTDOWN_GRACE`, default 25s: how long in-flight calls may take to drain.
    pub shutdown_grace: Duration,
    pub auth: AuthConfig,
}

impl CommonConfig {
    pub fn from_env(default_port: u16) -> Result<Self, ConfigError> {
        let listen_addr: SocketAddr = parse_or(
            "GRPC_LISTEN_ADDR",
            SocketAddr::from(([0, 0, 0, 0], default_port)),
        )?;
        let metrics = match optional("METRICS_LISTEN_ADDR").as_deref() {
            Some("off") => MetricsEndpoint::Disabled,
            _ => MetricsEndpoint::Addr(parse_or(
                "METRICS_LISTEN_ADDR",
                SocketAddr::new(listen_addr.ip(), listen_addr.port().wrapping_add(1000)),
            )?),
        };
        Ok(Self {
            metrics,
            database_url: required(
                "DATABASE_URL",
                "a postgres:// URL of the database holding this service's schema",
            )?,
            listen_addr,
            db_pool_max: parse_or("DB_POOL_MAX_CONNECTIONS", 10)?,
            shutdown_grace: duration_or("SHUTDOWN_GRACE", Duration::from_secs(25))?,
            event_retention: duration_or("EVENT_RETENTION", Duration::from_secs(30 * 86_400))?,
            event_tuning: event_tuning_from_env()?,
            auth: AuthConfig::from_env()?,
        })
    }
}

/// `EVENT_SETTLE_BUSY` and `EVENT_APPLY_CHUNK`, checked (see [`CommonConfig::event_tuning`]).
pub fn event_tuning_from_env() -> Result<crate::events::EventTuning, ConfigError> {
    use crate::events::EventTuning;
    let defaults = EventTuning::default();
    let tuning = EventTuning {
        settle_busy: duration_or("EVENT_SETTLE_BUSY", defaults.settle_busy)?,
        apply_chunk: parse_or("EVENT_APPLY_CHUNK", defaults.apply_chunk)?,
    };
    check_event_tuning(&tuning)?;
    Ok(tuning)
}

fn check_event_tuning(tuning: &crate::events::EventTuning) -> Result<(), ConfigError> {
    use crate::events::EventTuning;
    if tuning.settle_busy > EventTuning::MAX_SETTLE {
        return Err(ConfigError::Invalid {
            name: "EVENT_SETTLE_BUSY".into(),
            value: format!("{:?}", tuning.settle_busy),
            reason: format!(
                "at most {:?} (streams poll that often anyway)",
                EventTuning::MAX_SETTLE
            ),
        });
    }
    if !(1..=EventTuning::MAX_CHUNK).contains(&tuning.apply_chunk) {
        return Err(ConfigError::Invalid {
            name: "EVENT_APPLY_CHUNK".into(),
            value: tuning.apply_chunk.to_string(),
            reason: format!("from 1 to {} events", EventTuning::MAX_CHUNK),
        });
    }
    Ok(())
}

/// The gRPC endpoint of another service, e.g. `INTAKE_URL=http://intake:50051`.
pub fn upstream_url(name: &str, default: &str) -> Result<String, ConfigError> {
    let url = optional(name).unwrap_or_else(|| default.to_owned());
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::Invalid {
            name: name.to_owned(),
            value: url,
            reason: "expected an http:// or https:// URL".into(),
        });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_outside_its_range_is_refused_naming_setting_value_and_range() {
        let range = Duration::from_millis(1)..=Duration::from_secs(600);
        for ok in [Duration::from_millis(1), Duration::from_secs(600)] {
            assert_eq!(
                check_within("X_TIMEOUT", ok, &range, "1ms to 10m").unwrap(),
                ok
            );
        }
        for bad in [Duration::ZERO, Duration::from_secs(601)] {
            let error = check_within("X_TIMEOUT", bad, &range, "1ms to 10m")
                .unwrap_err()
                .to_string();
            for part in ["X_TIMEOUT", &format!("{bad:?}"), "1ms to 10m"] {
                assert!(error.contains(part), "{error} lacks {part}");
            }
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn event_tuning_is_bounded_and_names_the_setting_that_is_wrong() {
        use crate::events::EventTuning;
        let ok = EventTuning::default();
        assert!(check_event_tuning(&ok).is_ok());
        let edge = EventTuning {
            settle_busy: EventTuning::MAX_SETTLE,
            apply_chunk: EventTuning::MAX_CHUNK,
        };
        assert!(check_event_tuning(&edge).is_ok());
        let invalid = |tuning| match check_event_tuning(&tuning) {
            Err(ConfigError::Invalid { name, .. }) => name,
            other => panic!("expected an invalid setting, got {other:?}"),
        };
        let slow = EventTuning {
            settle_busy: EventTuning::MAX_SETTLE + Duration::from_millis(1),
            ..ok
        };
        assert_eq!(invalid(slow), "EVENT_SETTLE_BUSY");
        for apply_chunk in [0, EventTuning::MAX_CHUNK + 1] {
            let chunk = EventTuning { apply_chunk, ..ok };
            assert_eq!(invalid(chunk), "EVENT_APPLY_CHUNK");
        }
    }
}
