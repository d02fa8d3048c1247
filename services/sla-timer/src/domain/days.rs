//! Holiday data as text: the shipped mainland-China calendar (a day list with its sources) and
//! iCalendar (.ics) import. Both only yield dates; the calendar decides what they mean.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate};

use super::calendar::{BusinessCalendar, WorkRange};

/// What a listed day is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DayType {
    Holiday,
    /// A make-up working day (调休上班).
    Workday,
}

/// Days read from a list or an .ics file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportedDays {
    pub days: BTreeMap<NaiveDate, (DayType, String)>,
    /// Sources named in the data, e.g. one notice per year.
    pub sources: Vec<String>,
    /// Entries not imported, with the reason.
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct DayListError {
    pub line: usize,
    pub problem: String,
}

fn date(text: &str, line: usize) -> Result<NaiveDate, DayListError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| DayListError {
        line,
        problem: format!("{text:?} is not a YYYY-MM-DD date"),
    })
}

/// Parses `holiday|workday YYYY-MM-DD[..YYYY-MM-DD] name` lines and `source <year> <text>` lines.
pub fn parse_day_list(text: &str) -> Result<ImportedDays, DayListError> {
    let mut out = ImportedDays::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let mut parts = raw.splitn(3, char::is_whitespace);
        let (kind, span, name) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("").trim(),
        );
        let day_type = match kind {
            "source" => {
                out.sources.push(format!("{span}: {name}"));
                continue;
            }
            "holiday" => DayType::Holiday,
            "workday" => DayType::Workday,
            other => {
                return Err(DayListError {
                    line,
                    problem: format!("unknown entry {other:?}"),
                });
            }
        };
        let (first, last) = match span.split_once("..") {
            Some((a, b)) => (date(a, line)?, date(b, line)?),
            None => (date(span, line)?, date(span, line)?),
        };
        if last < first || last - first > Duration::days(31) {
            return Err(DayListError {
                line,
                problem: "a range runs forwards and spans at most a month".into(),
            });
        }
        let mut day = first;
        while day <= last {
            out.days.insert(day, (day_type, name.to_owned()));
            day += Duration::days(1);
        }
    }
    Ok(out)
}

/// Adds imported days to a calendar; returns how many holidays and make-up days were new.
pub fn apply_days(calendar: &mut BusinessCalendar, days: &ImportedDays) -> (usize, usize) {
    let (mut holidays, mut workdays) = (0, 0);
    for (day, (day_type, name)) in &days.days {
        match day_type {
            DayType::Holiday => {
                calendar.makeup_workdays.remove(day);
                if calendar.holidays.insert(*day) {
                    holidays += 1;
                }
            }
            DayType::Workday => {
                calendar.holidays.remove(day);
                if calendar.makeup_workdays.insert(*day) {
                    workdays += 1;
                }
            }
        }
        if !name.is_empty() {
            calendar.day_names.insert(*day, name.clone());
        }
    }
    (holidays, workdays)
}

const CN_MAINLAND_DAYS: &str = include_str!("../../data/cn-mainland-holidays.txt");

/// The shipped mainland-China calendar: Asia/Shanghai, Monday to Friday 09:00–12:00 and
/// 13:00–18:00, public holidays and make-up working days of the years the notices cover.
pub fn cn_mainland_calendar() -> BusinessCalendar {
    let mut calendar = BusinessCalendar::weekdays(
        "cn-mainland",
        chrono_tz::Asia::Shanghai,
        vec![
            WorkRange::new((9, 0), (12, 0)),
            WorkRange::new((13, 0), (18, 0)),
        ],
    );
    calendar.name = "Mainland China working days (法定节假日与调休)".into();
    let days = parse_day_list(CN_MAINLAND_DAYS).expect("the shipped day list parses");
    apply_days(&mut calendar, &days);
    calendar.source = days.sources.join("; ");
    calendar
}

/// Unfolds iCalendar content lines (a line starting with a space continues the previous one).
fn unfold(ics: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in ics.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = raw.strip_prefix([' ', '\t']) {
            if let Some(last) = lines.last_mut() {
                last.push_str(rest);
            }
        } else {
            lines.push(raw.to_owned());
        }
    }
    lines
}

fn ics_date(value: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(value.get(..8)?, "%Y%m%d").ok()
}

fn looks_like_workday(summary: &str, categories: &str, day_type: &str) -> bool {
    let summary_lower = summary.to_lowercase();
    day_type.eq_ignore_ascii_case("workday")
        || categories
            .split(',')
            .any(|c| c.trim().eq_ignore_ascii_case("workday"))
        || summary.contains("补班")
        || summary.contains("上班")
        || summary_lower.contains("working day")
        || summary_lower.contains("make-up")
}

/// Reads the all-day events of an iCalendar file: each day an event covers becomes a holiday,
/// or a make-up working day when the event says it is one. Recurring events are reported as
/// ignored rather than guessed at.
pub fn parse_ics(ics: &str) -> Result<ImportedDays, DayListError> {
    let lines = unfold(ics);
    if !lines.iter().any(|l| l.trim() == "BEGIN:VCALENDAR") {
        return Err(DayListError {
            line: 1,
            problem: "not an iCalendar file (no BEGIN:VCALENDAR)".into(),
        });
    }
    let mut out = ImportedDays::default();
    let mut event: Option<BTreeMap<String, String>> = None;
    for (index, line) in lines.iter().enumerate() {
        let line = line.trim_end();
        if line == "BEGIN:VEVENT" {
            event = Some(BTreeMap::new());
            continue;
        }
        if line == "END:VEVENT" {
            let Some(fields) = event.take() else {
                continue;
            };
            let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
            let summary = get("SUMMARY").replace("\\,", ",");
            let label = if summary.is_empty() {
                format!("event ending on line {}", index + 1)
            } else {
                summary.clone()
            };
            if fields.contains_key("RRULE") {
                out.ignored
                    .push(format!("{label}: recurring events are not imported"));
                continue;
            }
            let Some(start) = ics_date(get("DTSTART")) else {
                out.ignored.push(format!("{label}: no DTSTART date"));
                continue;
            };
            // DTEND of an all-day event is exclusive; a timed event covers its start date.
            let end = match ics_date(get("DTEND")) {
                Some(end) if get("DTEND").len() == 8 && end > start => end - Duration::days(1),
                Some(end) if end >= start => end,
                _ => start,
            };
            if end - start > Duration::days(31) {
                out.ignored
                    .push(format!("{label}: spans more than a month"));
                continue;
            }
            let day_type = if looks_like_workday(&summary, get("CATEGORIES"), get("X-SLA-DAY-TYPE"))
            {
                DayType::Workday
            } else {
                DayType::Holiday
            };
            let mut day = start;
            while day <= end {
                out.days.insert(day, (day_type, summary.clone()));
                day += Duration::days(1);
            }
            continue;
        }
        if let Some(fields) = event.as_mut()
            && let Some((name, value)) = line.split_once(':')
        {
            // Drop parameters: "DTSTART;VALUE=DATE" → "DTSTART".
            let key = name.split(';').next().unwrap_or(name).to_ascii_uppercase();
            fields.insert(key, value.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn the_shipped_cn_calendar_knows_spring_festival_and_its_makeup_days() {
        let c = cn_mainland_calendar();
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        // 2025: 28 Jan – 4 Feb off; Sunday 26 Jan and Saturday 8 Feb worked.
        assert!(!c.is_working_day(d(2025, 1, 28)));
        assert!(!c.is_working_day(d(2025, 2, 4)));
        assert!(c.is_working_day(d(2025, 1, 26)));
        assert!(c.is_working_day(d(2025, 2, 8)));
        // 2026 National Day, 2024 Dragon Boat.
        assert!(!c.is_working_day(d(2026, 10, 7)));
        assert!(c.is_working_day(d(2026, 10, 10)));
        assert!(!c.is_working_day(d(2024, 6, 10)));
        assert_eq!(c.day_names.get(&d(2024, 6, 10)).unwrap(), "端午节");
        for year in ["2024", "2025", "2026"] {
            assert!(
                c.source
                    .contains(&format!("{year}: 国务院办公厅关于{year}年"))
            );
        }
        // Every make-up working day is a weekend day.
        use chrono::Datelike;
        for day in &c.makeup_workdays {
            assert!(day.weekday().num_days_from_monday() >= 5, "{day}");
        }
    }

    #[test]
    fn a_complaint_on_national_day_waits_for_the_first_working_minute_after_it() {
        let c = cn_mainland_calendar();
        let national_day = chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(2025, 10, 1, 10, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let (due, _) = c
            .add_business_time(national_day, Duration::hours(1))
            .unwrap();
        // 1–8 October are off; Thursday 9 October 09:00 + 1h.
        assert_eq!(
            due,
            chrono_tz::Asia::Shanghai
                .with_ymd_and_hms(2025, 10, 9, 10, 0, 0)
                .unwrap()
                .with_timezone(&Utc)
        );
    }

    #[test]
    fn day_lists_reject_malformed_lines() {
        assert!(parse_day_list("holiday 2025-13-01 x").is_err());
        assert!(parse_day_list("vacation 2025-01-01 x").is_err());
        let err = parse_day_list("# c\nholiday 2025-02-01..2025-01-01 x").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn ics_all_day_events_become_holidays_and_workday_events_makeup_days() {
        let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20270101\r\n\
                   DTEND;VALUE=DATE:20270104\r\nSUMMARY:元旦\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\n\
                   DTSTART;VALUE=DATE:20270109\r\nSUMMARY:元旦补班\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\n\
                   DTSTART;VALUE=DATE:20271225\r\nRRULE:FREQ=YEARLY\r\nSUMMARY:Christmas\r\nEND:VEVENT\r\n\
                   BEGIN:VEVENT\r\nDTSTART:20270301T090000Z\r\nSUMMARY:Company\r\n  day\r\nCATEGORIES:WORKDAY\r\n\
                   END:VEVENT\r\nEND:VCALENDAR\r\n";
        let days = parse_ics(ics).unwrap();
        let holidays: Vec<_> = days
            .days
            .iter()
            .filter(|(_, (t, _))| *t == DayType::Holiday)
            .map(|(d, _)| *d)
            .collect();
        assert_eq!(holidays, vec![d(2027, 1, 1), d(2027, 1, 2), d(2027, 1, 3)]);
        assert_eq!(days.days[&d(2027, 1, 9)].0, DayType::Workday);
        assert_eq!(
            days.days[&d(2027, 3, 1)],
            (DayType::Workday, "Company day".into())
        );
        assert_eq!(days.ignored.len(), 1);
        assert!(days.ignored[0].contains("Christmas"));
        assert!(parse_ics("hello").is_err());
    }
}
