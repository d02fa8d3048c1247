//! Conversions between chrono and protobuf time types, and an injectable clock so
//! time-dependent logic is testable without sleeping.

use chrono::{DateTime, TimeZone, Utc};
use prost_types::{Duration as PbDuration, Timestamp};

pub fn to_timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub fn opt_timestamp(at: Option<DateTime<Utc>>) -> Option<Timestamp> {
    at.map(to_timestamp)
}

/// `None` for out-of-range values.
pub fn from_timestamp(ts: &Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    Utc.timestamp_opt(ts.seconds, ts.nanos as u32).single()
}

pub fn to_pb_duration(d: chrono::Duration) -> PbDuration {
    let seconds = d.num_seconds();
    let nanos = (d - chrono::Duration::seconds(seconds))
        .num_nanoseconds()
        .unwrap_or(0) as i32;
    PbDuration { seconds, nanos }
}

pub fn from_pb_duration(d: &PbDuration) -> chrono::Duration {
    chrono::Duration::seconds(d.seconds) + chrono::Duration::nanoseconds(d.nanos as i64)
}

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
            + chrono::Duration::milliseconds(123);
        assert_eq!(from_timestamp(&to_timestamp(at)), Some(at));
        assert_eq!(
            from_timestamp(&Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
        let d = chrono::Duration::milliseconds(90_500);
        assert_eq!(from_pb_duration(&to_pb_duration(d)), d);
    }
}
