//! Calendar periods of the organisation's time zone: the day a case counts in, and the weeks,
//! months and quarters that are sums of days.

use chrono::{DateTime, Datelike, Days, Duration, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeriodKind {
    Day,
    /// ISO week, Monday to Sunday.
    Week,
    Month,
    Quarter,
}

/// A period as a range of organisation-local days, `first..=last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    pub kind: PeriodKind,
    pub first: NaiveDate,
    pub last: NaiveDate,
}

fn first_of_month(date: NaiveDate) -> NaiveDate {
    date.with_day(1).unwrap_or(date)
}

impl Period {
    /// The period of `kind` that contains `date`.
    pub fn containing(kind: PeriodKind, date: NaiveDate) -> Self {
        let first = match kind {
            PeriodKind::Day => date,
            PeriodKind::Week => date - Days::new(u64::from(date.weekday().num_days_from_monday())),
            PeriodKind::Month => first_of_month(date),
            PeriodKind::Quarter => {
                let month0 = (date.month0() / 3) * 3;
                NaiveDate::from_ymd_opt(date.year(), month0 + 1, 1).unwrap_or(date)
            }
        };
        let after = match kind {
            PeriodKind::Day => first + Days::new(1),
            PeriodKind::Week => first + Days::new(7),
            PeriodKind::Month => first + Months::new(1),
            PeriodKind::Quarter => first + Months::new(3),
        };
        Self {
            kind,
            first,
            last: after - Days::new(1),
        }
    }

    /// The first day after the period.
    pub fn end_exclusive(&self) -> NaiveDate {
        self.last + Days::new(1)
    }

    pub fn next(&self) -> Self {
        Self::containing(self.kind, self.end_exclusive())
    }

    pub fn days(&self) -> i64 {
        (self.end_exclusive() - self.first).num_days()
    }
}

/// The organisation-local day of an instant.
pub fn local_day(at: DateTime<Utc>, tz: Tz) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// The instant an organisation-local day starts (the first valid local time, across DST gaps).
pub fn day_start(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for minutes in (0..=180).step_by(15) {
        if let Some(at) = tz
            .from_local_datetime(&(midnight + Duration::minutes(minutes)))
            .earliest()
        {
            return at.with_timezone(&Utc);
        }
    }
    Utc.from_utc_datetime(&midnight)
}

/// The whole local days `[first, end_exclusive)` that overlap the instant range `[start, end)`.
pub fn days_overlapping(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    tz: Tz,
) -> (NaiveDate, NaiveDate) {
    let first = local_day(start, tz);
    let last = local_day(end - Duration::nanoseconds(1), tz);
    (first, last.max(first) + Days::new(1))
}

/// A calendar quarter of the organisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quarter {
    pub year: i32,
    /// 1–4.
    pub quarter: u32,
}

impl Quarter {
    pub fn new(year: i32, quarter: u32) -> Option<Self> {
        ((1..=4).contains(&quarter) && (1970..=9999).contains(&year))
            .then_some(Self { year, quarter })
    }

    pub fn containing(date: NaiveDate) -> Self {
        Self {
            year: date.year(),
            quarter: date.month0() / 3 + 1,
        }
    }

    pub fn period(&self) -> Period {
        let first = NaiveDate::from_ymd_opt(self.year, (self.quarter - 1) * 3 + 1, 1)
            .unwrap_or(NaiveDate::MIN);
        Period::containing(PeriodKind::Quarter, first)
    }

    pub fn previous(&self) -> Self {
        Self::containing(self.period().first - Days::new(1))
    }

    /// The instant the quarter ends in the organisation's time zone.
    pub fn ends_at(&self, tz: Tz) -> DateTime<Utc> {
        day_start(self.period().end_exclusive(), tz)
    }
}

/// The quarter the scheduler should have evaluated by `now`: the latest one that ended at
/// least `grace` ago (the grace lets the last events of the quarter arrive).
pub fn quarter_due(now: DateTime<Utc>, tz: Tz, grace: Duration) -> Quarter {
    Quarter::containing(local_day(now - grace, tz)).previous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Asia::Shanghai;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn periods_contain_their_day() {
        // 2026-11-25 is a Wednesday.
        let week = Period::containing(PeriodKind::Week, d(2026, 11, 25));
        assert_eq!((week.first, week.last), (d(2026, 11, 23), d(2026, 11, 29)));
        let month = Period::containing(PeriodKind::Month, d(2024, 2, 10));
        assert_eq!((month.first, month.last), (d(2024, 2, 1), d(2024, 2, 29)));
        let quarter = Period::containing(PeriodKind::Quarter, d(2026, 11, 25));
        assert_eq!(
            (quarter.first, quarter.last),
            (d(2026, 10, 1), d(2026, 12, 31))
        );
        assert_eq!(quarter.days(), 92);
        assert_eq!(quarter.next().first, d(2027, 1, 1));
        let day = Period::containing(PeriodKind::Day, d(2026, 1, 1));
        assert_eq!(day.days(), 1);
    }

    #[test]
    fn a_case_opened_late_in_the_utc_evening_counts_on_the_next_shanghai_day() {
        let at = Utc.with_ymd_and_hms(2026, 3, 31, 16, 30, 0).unwrap();
        assert_eq!(local_day(at, Shanghai), d(2026, 4, 1));
        assert_eq!(
            Quarter::containing(local_day(at, Shanghai)),
            Quarter::new(2026, 2).unwrap()
        );
    }

    #[test]
    fn quarters_end_at_local_midnight() {
        let q = Quarter::new(2026, 4).unwrap();
        assert_eq!(
            q.ends_at(Shanghai),
            Utc.with_ymd_and_hms(2026, 12, 31, 16, 0, 0).unwrap()
        );
        assert_eq!(q.previous(), Quarter::new(2026, 3).unwrap());
        assert_eq!(
            Quarter::new(2026, 1).unwrap().previous(),
            Quarter::new(2025, 4).unwrap()
        );
        assert_eq!(Quarter::new(2026, 5), None);
    }

    #[test]
    fn the_due_quarter_waits_for_the_grace_after_quarter_end() {
        let grace = Duration::hours(1);
        let end = Quarter::new(2026, 3).unwrap().ends_at(Shanghai);
        assert_eq!(
            quarter_due(end + Duration::minutes(59), Shanghai, grace),
            Quarter::new(2026, 2).unwrap()
        );
        assert_eq!(
            quarter_due(end + grace, Shanghai, grace),
            Quarter::new(2026, 3).unwrap()
        );
    }

    #[test]
    fn a_time_range_covers_the_local_days_it_overlaps() {
        let start = Utc.with_ymd_and_hms(2026, 11, 22, 16, 0, 0).unwrap(); // 23rd 00:00 local
        let end = Utc.with_ymd_and_hms(2026, 11, 24, 16, 0, 0).unwrap(); // 25th 00:00 local
        assert_eq!(
            days_overlapping(start, end, Shanghai),
            (d(2026, 11, 23), d(2026, 11, 25))
        );
        let end = end + Duration::minutes(1);
        assert_eq!(days_overlapping(start, end, Shanghai).1, d(2026, 11, 26));
    }
}
