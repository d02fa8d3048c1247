//! Planning one clock: when it is due, when its next warning or escalation fires, how much of
//! its target is used. A clock counts business (or calendar) time while running; pauses stop it
//! and keep what was consumed, so a pause over a weekend subtracts only business time paused.

use chrono::{DateTime, Duration, Utc};

use super::calendar::{BusinessCalendar, CalendarError, Segment};

/// The counting state of a clock.
#[derive(Clone, Debug, PartialEq)]
pub struct ClockTiming {
    pub target: Duration,
    /// True for business time of the calendar, false for wall-clock time.
    pub business: bool,
    /// Time already counted before the current run.
    pub consumed: Duration,
    /// Start of the current run; `None` while paused.
    pub running_since: Option<DateTime<Utc>>,
}

/// An instant and the segments of counted time that lead to it.
pub type Planned = Option<(DateTime<Utc>, Vec<Segment>)>;

/// The firing rules a clock took from its policy.
#[derive(Clone, Copy, Debug)]
pub struct FireRules<'a> {
    /// Amounts of used target at which warnings fire, ascending.
    pub thresholds: &'a [Duration],
    /// Wall-clock wait after the breach for escalation levels 1, 2, ... (index + 1 = level).
    pub ladder: &'a [Duration],
}

/// What a clock has fired so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// The largest warning threshold already fired.
    pub warned: Duration,
    pub breached_at: Option<DateTime<Utc>>,
    pub escalation_level: u32,
}

/// What a clock should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextFire {
    Warning { used: Duration, at: DateTime<Utc> },
    Breach { at: DateTime<Utc> },
    Escalation { level: u32, at: DateTime<Utc> },
}

/// A stretch during which a clock counted: from `start` to `end` (`None`: still counting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

/// A pause as recorded: from `paused_at` to `resumed_at` (`None`: still paused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pause {
    pub paused_at: DateTime<Utc>,
    pub resumed_at: Option<DateTime<Utc>>,
}

/// The runs of a clock that began counting at `start`, was paused as `pauses` say (in order)
/// and stopped at `stopped` (met or cancelled), if it did.
pub fn runs(start: DateTime<Utc>, pauses: &[Pause], stopped: Option<DateTime<Utc>>) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut open = Some(start);
    for pause in pauses {
        if let Some(begin) = open.take() {
            runs.push(Run {
                start: begin,
                end: Some(pause.paused_at.max(begin)),
            });
        }
        open = pause.resumed_at;
    }
    if let Some(begin) = open {
        runs.push(Run {
            start: begin,
            end: stopped.map(|s| s.max(begin)),
        });
    }
    runs
}

/// Time a measure counts between two instants.
pub fn measured(
    calendar: &BusinessCalendar,
    business: bool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Duration {
    if business {
        calendar.business_time_between(from, to)
    } else {
        (to - from).max(Duration::zero())
    }
}

/// The explanation of a deadline: the segments of counted time (closed runs, then the open run
/// up to the deadline) and the deadline itself while running.
pub fn explain_segments(
    calendar: &BusinessCalendar,
    business: bool,
    target: Duration,
    runs: &[Run],
) -> Result<(Vec<Segment>, Option<DateTime<Utc>>), CalendarError> {
    let mut segments = Vec::new();
    let mut used = Duration::zero();
    let mut due = None;
    for run in runs {
        match run.end {
            Some(end) => {
                let part = if business {
                    calendar.segments_between(run.start, end)
                } else if end > run.start {
                    vec![Segment {
                        start: run.start,
                        end,
                    }]
                } else {
                    Vec::new()
                };
                used += part.iter().map(Segment::duration).sum::<Duration>();
                segments.extend(part);
            }
            None => {
                let left = (target - used).max(Duration::zero());
                let (at, part) = if business {
                    calendar.add_business_time(run.start, left)?
                } else {
                    let end = run.start + left;
                    (
                        end,
                        vec![Segment {
                            start: run.start,
                            end,
                        }],
                    )
                };
                segments.extend(part.into_iter().filter(|s| s.end > s.start));
                due = Some(at);
            }
        }
    }
    Ok((segments, due))
}

impl NextFire {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            NextFire::Warning { at, .. }
            | NextFire::Breach { at }
            | NextFire::Escalation { at, .. } => *at,
        }
    }
}

/// The instant at which `amount` of counted time is reached along `segments`, if it is.
pub fn instant_at(segments: &[Segment], amount: Duration) -> Option<DateTime<Utc>> {
    let mut left = amount;
    for segment in segments {
        let length = segment.duration();
        if length >= left {
            return Some(segment.start + left);
        }
        left -= length;
    }
    None
}

impl ClockTiming {
    /// Time counted up to `now`.
    pub fn used(&self, calendar: &BusinessCalendar, now: DateTime<Utc>) -> Duration {
        self.consumed
            + match self.running_since {
                Some(since) if self.business => calendar.business_time_between(since, now),
                Some(since) => (now - since).max(Duration::zero()),
                None => Duration::zero(),
            }
    }

    /// The instant at which `amount` of the target will have been used, if running.
    pub fn instant_when_used(
        &self,
        calendar: &BusinessCalendar,
        amount: Duration,
    ) -> Result<Planned, CalendarError> {
        let Some(since) = self.running_since else {
            return Ok(None);
        };
        let left = (amount - self.consumed).max(Duration::zero());
        if self.business {
            calendar.add_business_time(since, left).map(Some)
        } else {
            let end = since + left;
            Ok(Some((end, vec![Segment { start: since, end }])))
        }
    }

    /// The deadline (while running) and the segments of time that make it up.
    pub fn due(&self, calendar: &BusinessCalendar) -> Result<Planned, CalendarError> {
        self.instant_when_used(calendar, self.target)
    }

    /// Share of the target used, in percent (can exceed 100).
    pub fn percent_used(&self, calendar: &BusinessCalendar, now: DateTime<Utc>) -> f64 {
        let target = self.target.num_milliseconds().max(1) as f64;
        self.used(calendar, now).num_milliseconds() as f64 * 100.0 / target
    }

    /// The next thing to fire: the first warning threshold above `warned_percent`, else the
    /// breach, else (once breached) the next escalation level of the ladder.
    pub fn next_fire(
        &self,
        calendar: &BusinessCalendar,
        rules: &FireRules<'_>,
        progress: &Progress,
    ) -> Result<Option<NextFire>, CalendarError> {
        if let Some(breached) = progress.breached_at {
            let level = progress.escalation_level as usize;
            // The ladder climbs while the clock still counts (not paused, met or cancelled).
            if self.running_since.is_none() {
                return Ok(None);
            }
            return Ok(rules.ladder.get(level).map(|wait| NextFire::Escalation {
                level: level as u32 + 1,
                at: breached + *wait,
            }));
        }
        if self.running_since.is_none() {
            return Ok(None);
        }
        let next_warning = rules
            .thresholds
            .iter()
            .copied()
            .find(|t| *t > progress.warned && *t < self.target);
        if let Some(used) = next_warning
            && let Some((at, _)) = self.instant_when_used(calendar, used)?
        {
            return Ok(Some(NextFire::Warning { used, at }));
        }
        Ok(self.due(calendar)?.map(|(at, _)| NextFire::Breach { at }))
    }

    /// Stops counting at `now`, keeping what was used.
    pub fn pause(&mut self, calendar: &BusinessCalendar, now: DateTime<Utc>) {
        if self.running_since.is_some() {
            self.consumed = self.used(calendar, now);
            self.running_since = None;
        }
    }

    /// Counts again from `now`.
    pub fn resume(&mut self, now: DateTime<Utc>) {
        if self.running_since.is_none() {
            self.running_since = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::calendar::WorkRange;
    use chrono::TimeZone;
    use chrono_tz::Asia::Shanghai;

    fn cal() -> BusinessCalendar {
        BusinessCalendar::weekdays("t", Shanghai, vec![WorkRange::new((9, 0), (18, 0))])
    }

    fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Shanghai
            .with_ymd_and_hms(2026, 11, d, h, m, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn running(target: Duration, since: DateTime<Utc>) -> ClockTiming {
        ClockTiming {
            target,
            business: true,
            consumed: Duration::zero(),
            running_since: Some(since),
        }
    }

    #[test]
    fn warning_one_hour_before_fires_one_business_hour_before() {
        // Tuesday 11:00 deadline for an 8h target started Monday 12:00; 7/8 of it is Tue 10:00.
        let c = cal();
        let clock = running(Duration::hours(8), at(23, 12, 0));
        let (due, _) = clock.due(&c).unwrap().unwrap();
        assert_eq!(due, at(24, 11, 0));
        let warn = clock
            .instant_when_used(&c, Duration::hours(7))
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(warn, at(24, 10, 0));
    }

    #[test]
    fn pause_over_a_weekend_subtracts_only_business_time() {
        let c = cal();
        // Started Friday 09:00 with a 16h target; paused Friday 17:00 (8h used), resumed Monday 09:00.
        let mut clock = running(Duration::hours(16), at(20, 9, 0));
        clock.pause(&c, at(20, 17, 0));
        assert_eq!(clock.consumed, Duration::hours(8));
        clock.resume(at(23, 9, 0));
        let (due, segments) = clock.due(&c).unwrap().unwrap();
        assert_eq!(due, at(23, 17, 0));
        assert_eq!(segments.len(), 1);
        // A pause from Friday 17:00 to Saturday would have subtracted only the hour of Friday.
        let mut other = running(Duration::hours(16), at(20, 9, 0));
        other.pause(&c, at(20, 17, 0));
        other.resume(at(21, 12, 0)); // Saturday noon: no business time passes until Monday
        assert_eq!(other.due(&c).unwrap().unwrap().0, at(23, 17, 0));
    }

    #[test]
    fn next_fire_walks_warnings_then_breach_then_ladder() {
        let c = cal();
        let clock = running(Duration::hours(4), at(23, 9, 0));
        let thresholds = [Duration::hours(2), Duration::hours(3)];
        let ladder = [Duration::zero(), Duration::hours(1), Duration::hours(2)];
        let rules = FireRules {
            thresholds: &thresholds,
            ladder: &ladder,
        };
        let next = |warned_hours: i64, breached_at, escalation_level| {
            let progress = Progress {
                warned: Duration::hours(warned_hours),
                breached_at,
                escalation_level,
            };
            clock.next_fire(&c, &rules, &progress).unwrap()
        };
        assert_eq!(
            next(0, None, 0),
            Some(NextFire::Warning {
                used: Duration::hours(2),
                at: at(23, 11, 0)
            })
        );
        assert_eq!(
            next(2, None, 0),
            Some(NextFire::Warning {
                used: Duration::hours(3),
                at: at(23, 12, 0)
            })
        );
        assert_eq!(
            next(3, None, 0),
            Some(NextFire::Breach { at: at(23, 13, 0) })
        );
        let breached = Some(at(23, 13, 0));
        assert_eq!(
            next(3, breached, 0),
            Some(NextFire::Escalation {
                level: 1,
                at: at(23, 13, 0)
            })
        );
        assert_eq!(
            next(3, breached, 1),
            Some(NextFire::Escalation {
                level: 2,
                at: at(23, 14, 0)
            })
        );
        assert_eq!(
            next(3, breached, 2),
            Some(NextFire::Escalation {
                level: 3,
                at: at(23, 15, 0)
            })
        );
        assert_eq!(next(3, breached, 3), None);
    }

    #[test]
    fn explanation_of_a_paused_clock_lists_only_counted_business_time() {
        let c = cal();
        // 16h target from Friday 09:00; paused Friday 17:00 until Tuesday 09:00 (Monday lost).
        let pauses = [Pause {
            paused_at: at(20, 17, 0),
            resumed_at: Some(at(24, 9, 0)),
        }];
        let runs = runs(at(20, 9, 0), &pauses, None);
        assert_eq!(runs.len(), 2);
        let (segments, due) = explain_segments(&c, true, Duration::hours(16), &runs).unwrap();
        assert_eq!(due, Some(at(24, 17, 0)));
        assert_eq!(
            segments,
            vec![
                Segment {
                    start: at(20, 9, 0),
                    end: at(20, 17, 0)
                },
                Segment {
                    start: at(24, 9, 0),
                    end: at(24, 17, 0)
                },
            ]
        );
        // Still paused: no deadline, only what was used.
        let paused = runs_of_open_pause();
        let (segments, due) = explain_segments(&c, true, Duration::hours(16), &paused).unwrap();
        assert_eq!(due, None);
        assert_eq!(segments.len(), 1);
    }

    fn runs_of_open_pause() -> Vec<Run> {
        runs(
            at(20, 9, 0),
            &[Pause {
                paused_at: at(20, 17, 0),
                resumed_at: None,
            }],
            None,
        )
    }

    #[test]
    fn percent_used_counts_business_time() {
        let c = cal();
        let clock = running(Duration::hours(2), at(23, 9, 0));
        assert!((clock.percent_used(&c, at(23, 10, 0)) - 50.0).abs() < 1e-9);
        // Evening adds nothing.
        assert!((clock.percent_used(&c, at(23, 20, 0)) - 450.0).abs() < 1e-9);
    }
}
