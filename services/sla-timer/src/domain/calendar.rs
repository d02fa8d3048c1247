//! Business calendars and exact business-time arithmetic.
//!
//! A calendar has an explicit time zone, weekly working hours (several ranges a day), public
//! holidays and make-up working days (调休: a weekend day worked with the hours of a normal
//! weekday). All arithmetic walks the calendar's working intervals in local time and converts
//! each boundary to UTC, so midnight, weekends, holidays and daylight-saving changes are exact,
//! and the intervals used are returned as the explanation of a deadline.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// A working range within a day, local time, `start < end` (an `end` of 00:00 means 24:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkRange {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl WorkRange {
    pub fn new(start: (u32, u32), end: (u32, u32)) -> Self {
        Self {
            start: NaiveTime::from_hms_opt(start.0, start.1, 0).expect("valid start"),
            end: NaiveTime::from_hms_opt(end.0, end.1, 0).expect("valid end"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BusinessCalendar {
    pub id: String,
    /// Bumped by every change; clocks are re-planned when it moves.
    pub version: i64,
    pub name: String,
    pub time_zone: Tz,
    /// Monday first.
    pub weekly: [Vec<WorkRange>; 7],
    pub holidays: BTreeSet<NaiveDate>,
    /// Weekend days worked as a normal weekday (调休).
    pub makeup_workdays: BTreeSet<NaiveDate>,
    /// Hours of a make-up working day.
    pub makeup_hours: Vec<WorkRange>,
    /// Names of holidays and make-up days, for people.
    pub day_names: BTreeMap<NaiveDate, String>,
    /// Where the holiday data comes from.
    pub source: String,
}

/// The stored form of a calendar's rules (everything but id, version, name and zone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarRules {
    pub weekly: [Vec<WorkRange>; 7],
    pub holidays: BTreeSet<NaiveDate>,
    pub makeup_workdays: BTreeSet<NaiveDate>,
    pub makeup_hours: Vec<WorkRange>,
    #[serde(default)]
    pub day_names: BTreeMap<NaiveDate, String>,
}

/// A stretch of business time that counted towards a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Segment {
    pub fn duration(&self) -> Duration {
        self.end - self.start
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("calendar {0} has no working time within ten years")]
    NoWorkingTime(String),
}

/// How far ahead a computation may look before concluding the calendar never works.
const HORIZON_DAYS: i64 = 3660;

impl BusinessCalendar {
    /// Monday to Friday with the given ranges, no holidays.
    pub fn weekdays(id: &str, time_zone: Tz, ranges: Vec<WorkRange>) -> Self {
        let mut weekly: [Vec<WorkRange>; 7] = Default::default();
        for day in weekly.iter_mut().take(5) {
            *day = ranges.clone();
        }
        Self {
            id: id.to_owned(),
            version: 0,
            name: id.to_owned(),
            time_zone,
            weekly,
            holidays: BTreeSet::new(),
            makeup_workdays: BTreeSet::new(),
            makeup_hours: ranges,
            day_names: BTreeMap::new(),
            source: String::new(),
        }
    }

    pub fn rules(&self) -> CalendarRules {
        CalendarRules {
            weekly: self.weekly.clone(),
            holidays: self.holidays.clone(),
            makeup_workdays: self.makeup_workdays.clone(),
            makeup_hours: self.makeup_hours.clone(),
            day_names: self.day_names.clone(),
        }
    }

    pub fn from_rules(
        id: &str,
        version: i64,
        name: &str,
        time_zone: Tz,
        source: &str,
        rules: CalendarRules,
    ) -> Self {
        Self {
            id: id.to_owned(),
            version,
            name: name.to_owned(),
            time_zone,
            weekly: rules.weekly,
            holidays: rules.holidays,
            makeup_workdays: rules.makeup_workdays,
            makeup_hours: rules.makeup_hours,
            day_names: rules.day_names,
            source: source.to_owned(),
        }
    }

    /// Rule violations as (field, problem), fields named as in the `Calendar` message.
    pub fn violations(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut check_ranges = |field: String, ranges: &[WorkRange]| {
            let mut previous_end: Option<NaiveTime> = None;
            for (i, r) in ranges.iter().enumerate() {
                let ends_at_midnight = r.end == NaiveTime::MIN;
                if !ends_at_midnight && r.end <= r.start {
                    errors.push((format!("{field}[{i}]"), "end must be after start".into()));
                }
                if let Some(prev) = previous_end
                    && (prev == NaiveTime::MIN || r.start < prev)
                {
                    errors.push((
                        format!("{field}[{i}]"),
                        "ranges must be in order and must not overlap".into(),
                    ));
                }
                previous_end = Some(r.end);
            }
        };
        const DAYS: [&str; 7] = [
            "MONDAY",
            "TUESDAY",
            "WEDNESDAY",
            "THURSDAY",
            "FRIDAY",
            "SATURDAY",
            "SUNDAY",
        ];
        for (day, ranges) in self.weekly.iter().enumerate() {
            check_ranges(
                format!("calendar.weekly_hours[{}].ranges", DAYS[day]),
                ranges,
            );
        }
        check_ranges("calendar.makeup_hours".into(), &self.makeup_hours);
        if self.weekly.iter().all(Vec::is_empty) {
            errors.push((
                "calendar.weekly_hours".into(),
                "at least one weekday needs working hours".into(),
            ));
        }
        if !self.makeup_workdays.is_empty() && self.makeup_hours.is_empty() {
            errors.push((
                "calendar.makeup_hours".into(),
                "required when there are make-up working days".into(),
            ));
        }
        if let Some(day) = self.holidays.intersection(&self.makeup_workdays).next() {
            errors.push((
                "calendar.makeup_workdays".into(),
                format!("{day} is also a holiday"),
            ));
        }
        errors
    }

    /// Working ranges of a local date.
    pub fn ranges_on(&self, date: NaiveDate) -> &[WorkRange] {
        if self.holidays.contains(&date) {
            &[]
        } else if self.makeup_workdays.contains(&date) {
            &self.makeup_hours
        } else {
            &self.weekly[date.weekday().num_days_from_monday() as usize]
        }
    }

    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        !self.ranges_on(date).is_empty()
    }

    /// Length of an ordinary working day (Monday's hours, else the longest weekday's).
    pub fn standard_day(&self) -> Duration {
        let length = |ranges: &[WorkRange]| {
            ranges
                .iter()
                .map(|r| r.end.signed_duration_since(r.start))
                .fold(Duration::zero(), |a, b| a + b)
        };
        let monday = length(&self.weekly[Weekday::Mon.num_days_from_monday() as usize]);
        if monday > Duration::zero() {
            monday
        } else {
            self.weekly
                .iter()
                .map(|r| length(r))
                .max()
                .unwrap_or_else(Duration::zero)
        }
    }

    /// Converts a local wall time to UTC. In a DST gap the wall time does not exist, so the
    /// instant the clocks jump to is used; in an overlap the earlier instant is used.
    fn to_utc(&self, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        let local = date.and_time(time);
        match self.time_zone.from_local_datetime(&local) {
            chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
            chrono::LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
            chrono::LocalResult::None => {
                // Walk forward minute by minute to the first existing local time (gaps ≤ 2h).
                let mut probe = local;
                for _ in 0..180 {
                    probe += Duration::minutes(1);
                    if let Some(t) = self.time_zone.from_local_datetime(&probe).earliest() {
                        return t.with_timezone(&Utc);
                    }
                }
                Utc.from_utc_datetime(&local)
            }
        }
    }

    /// The working intervals of a local date, in UTC.
    fn intervals_on(&self, date: NaiveDate) -> Vec<Segment> {
        self.ranges_on(date)
            .iter()
            .map(|r| {
                let start = self.to_utc(date, r.start);
                let end = if r.end == NaiveTime::MIN {
                    self.to_utc(date.succ_opt().unwrap_or(date), NaiveTime::MIN)
                } else {
                    self.to_utc(date, r.end)
                };
                Segment { start, end }
            })
            .filter(|s| s.end > s.start)
            .collect()
    }

    /// Working intervals from `from` onwards, clipped at `from`, in order.
    fn intervals_from(&self, from: DateTime<Utc>) -> impl Iterator<Item = Segment> + '_ {
        // Start a day early: a range of the previous local date may still be running.
        let first = from.with_timezone(&self.time_zone).date_naive() - Duration::days(1);
        (0..HORIZON_DAYS)
            .filter_map(move |offset| first.checked_add_signed(Duration::days(offset)))
            .flat_map(move |date| self.intervals_on(date))
            .filter(move |s| s.end > from)
            .map(move |s| Segment {
                start: s.start.max(from),
                end: s.end,
            })
    }

    /// The first working instant at or after `at` (a complaint received at night starts its
    /// business clock here).
    pub fn next_working_instant(&self, at: DateTime<Utc>) -> Result<DateTime<Utc>, CalendarError> {
        self.intervals_from(at)
            .next()
            .map(|s| s.start)
            .ok_or_else(|| CalendarError::NoWorkingTime(self.id.clone()))
    }

    /// The instant when `amount` of business time has passed after `start`, with the
    /// segments that make it up. A zero amount yields the next working instant.
    pub fn add_business_time(
        &self,
        start: DateTime<Utc>,
        amount: Duration,
    ) -> Result<(DateTime<Utc>, Vec<Segment>), CalendarError> {
        let mut left = amount.max(Duration::zero());
        let mut segments = Vec::new();
        for segment in self.intervals_from(start) {
            let length = segment.duration();
            if length >= left {
                let end = segment.start + left;
                if left > Duration::zero() {
                    segments.push(Segment {
                        start: segment.start,
                        end,
                    });
                }
                return Ok((if left.is_zero() { segment.start } else { end }, segments));
            }
            left -= length;
            segments.push(segment);
        }
        Err(CalendarError::NoWorkingTime(self.id.clone()))
    }

    /// The working intervals between two instants, clipped to them.
    pub fn segments_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Segment> {
        if to <= from {
            return Vec::new();
        }
        self.intervals_from(from)
            .take_while(|s| s.start < to)
            .map(|s| Segment {
                start: s.start,
                end: s.end.min(to),
            })
            .collect()
    }

    /// Business time between two instants (zero when `to <= from`).
    pub fn business_time_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        if to <= from {
            return Duration::zero();
        }
        let mut total = Duration::zero();
        for segment in self.intervals_from(from) {
            if segment.start >= to {
                break;
            }
            total += segment.end.min(to) - segment.start;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{Asia::Shanghai, Europe::Berlin};

    fn cal(tz: Tz) -> BusinessCalendar {
        BusinessCalendar::weekdays(
            "test",
            tz,
            vec![
                WorkRange::new((9, 0), (12, 0)),
                WorkRange::new((13, 0), (18, 0)),
            ],
        )
    }

    fn local(tz: Tz, y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        tz.with_ymd_and_hms(y, m, d, h, min, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn complaint_at_night_starts_at_the_next_working_minute() {
        let c = cal(Shanghai);
        // Friday 22:00 → Monday 09:00.
        let friday_night = local(Shanghai, 2026, 11, 20, 22, 0);
        assert_eq!(
            c.next_working_instant(friday_night).unwrap(),
            local(Shanghai, 2026, 11, 23, 9, 0)
        );
        let (due, segments) = c
            .add_business_time(friday_night, Duration::hours(1))
            .unwrap();
        assert_eq!(due, local(Shanghai, 2026, 11, 23, 10, 0));
        assert_eq!(segments.len(), 1);
    }

    #[test]
    fn lunch_break_and_evening_are_skipped() {
        let c = cal(Shanghai);
        let start = local(Shanghai, 2026, 11, 23, 11, 30);
        let (due, segments) = c.add_business_time(start, Duration::hours(1)).unwrap();
        assert_eq!(due, local(Shanghai, 2026, 11, 23, 13, 30));
        assert_eq!(segments.len(), 2);
        let (due, _) = c
            .add_business_time(local(Shanghai, 2026, 11, 23, 17, 0), Duration::hours(2))
            .unwrap();
        assert_eq!(due, local(Shanghai, 2026, 11, 24, 10, 0));
    }

    #[test]
    fn holidays_and_makeup_days_are_honoured() {
        let mut c = cal(Shanghai);
        c.holidays
            .insert(NaiveDate::from_ymd_opt(2026, 11, 23).unwrap());
        c.makeup_workdays
            .insert(NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()); // a Sunday
        let saturday = local(Shanghai, 2026, 11, 21, 12, 0);
        assert_eq!(
            c.next_working_instant(saturday).unwrap(),
            local(Shanghai, 2026, 11, 22, 9, 0)
        );
        let sunday_evening = local(Shanghai, 2026, 11, 22, 18, 0);
        assert_eq!(
            c.next_working_instant(sunday_evening).unwrap(),
            local(Shanghai, 2026, 11, 24, 9, 0)
        );
    }

    #[test]
    fn three_working_days_land_on_the_same_time_three_working_days_later() {
        let c = cal(Shanghai);
        let monday = local(Shanghai, 2026, 11, 23, 10, 0);
        let (due, _) = c.add_business_time(monday, c.standard_day() * 3).unwrap();
        assert_eq!(due, local(Shanghai, 2026, 11, 26, 10, 0));
        let thursday = local(Shanghai, 2026, 11, 26, 10, 0);
        let (due, _) = c.add_business_time(thursday, c.standard_day() * 3).unwrap();
        assert_eq!(due, local(Shanghai, 2026, 12, 1, 10, 0));
    }

    #[test]
    fn daylight_saving_change_is_exact() {
        // Berlin springs forward on Sunday 29 March 2026; a 24h calendar shows the short day.
        let mut c = cal(Berlin);
        let all_day = vec![WorkRange {
            start: NaiveTime::MIN,
            end: NaiveTime::MIN,
        }];
        c.weekly = std::array::from_fn(|_| all_day.clone());
        let saturday_noon = local(Berlin, 2026, 3, 28, 12, 0);
        let sunday_noon = local(Berlin, 2026, 3, 29, 12, 0);
        assert_eq!(
            c.business_time_between(saturday_noon, sunday_noon),
            Duration::hours(23)
        );
        // Weekday hours in UTC move by an hour across the change.
        let c = cal(Berlin);
        let friday = local(Berlin, 2026, 3, 27, 17, 0);
        let (due, _) = c.add_business_time(friday, Duration::hours(2)).unwrap();
        assert_eq!(due, local(Berlin, 2026, 3, 30, 10, 0));
        assert_eq!(due.format("%H:%M").to_string(), "08:00");
    }

    #[test]
    fn business_time_between_matches_addition() {
        let c = cal(Shanghai);
        let start = local(Shanghai, 2026, 11, 20, 16, 45);
        let (due, _) = c.add_business_time(start, Duration::minutes(500)).unwrap();
        assert_eq!(c.business_time_between(start, due), Duration::minutes(500));
    }

    #[test]
    fn calendar_without_hours_is_an_error() {
        let mut c = cal(Shanghai);
        c.weekly = Default::default();
        c.makeup_hours.clear();
        assert!(c.add_business_time(Utc::now(), Duration::hours(1)).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use chrono_tz::{America::New_York, Asia::Shanghai};
    use proptest::prelude::*;

    fn calendar(tz: Tz) -> BusinessCalendar {
        let mut c = BusinessCalendar::weekdays(
            "p",
            tz,
            vec![
                WorkRange::new((8, 30), (12, 0)),
                WorkRange::new((13, 0), (17, 45)),
            ],
        );
        c.holidays
            .insert(NaiveDate::from_ymd_opt(2026, 10, 1).unwrap());
        c.holidays
            .insert(NaiveDate::from_ymd_opt(2026, 11, 26).unwrap());
        c.makeup_workdays
            .insert(NaiveDate::from_ymd_opt(2026, 10, 10).unwrap());
        c
    }

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        // 2026 to 2027, any minute: crosses weekends, holidays and both DST changes in New York.
        (1_767_225_600i64..1_830_297_600i64).prop_map(|s| Utc.timestamp_opt(s - s % 60, 0).unwrap())
    }

    proptest! {
        #[test]
        fn business_time_after_adding_equals_the_amount(start in instant(), minutes in 0i64..20_000, ny in any::<bool>()) {
            let c = calendar(if ny { New_York } else { Shanghai });
            let amount = Duration::minutes(minutes);
            let (due, segments) = c.add_business_time(start, amount).unwrap();
            prop_assert_eq!(c.business_time_between(start, due), amount);
            let total = segments.iter().map(|s| s.duration()).fold(Duration::zero(), |a, b| a + b);
            prop_assert_eq!(total, amount);
        }

        #[test]
        fn deadlines_never_fall_in_non_working_time(start in instant(), minutes in 1i64..20_000, ny in any::<bool>()) {
            let c = calendar(if ny { New_York } else { Shanghai });
            let (due, _) = c.add_business_time(start, Duration::minutes(minutes)).unwrap();
            // The minute before a deadline is working time.
            let before = due - Duration::minutes(1);
            prop_assert_eq!(c.business_time_between(before, due), Duration::minutes(1));
        }

        #[test]
        fn deadlines_are_monotone_in_the_amount(start in instant(), a in 0i64..10_000, b in 0i64..10_000) {
            let c = calendar(Shanghai);
            let (da, _) = c.add_business_time(start, Duration::minutes(a.min(b))).unwrap();
            let (db, _) = c.add_business_time(start, Duration::minutes(a.max(b))).unwrap();
            prop_assert!(da <= db);
        }
    }
}
