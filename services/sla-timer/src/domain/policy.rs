//! Which targets a case gets. The shipped defaults come from the requirements: first response
//! within 1 hour (seed 002), resolution within 3 working days for simple and 7 for complex
//! complaints (seed 000 §7.2), follow-up within 48 hours of resolution (seed 002); major and
//! crisis complaints are stricter, crisis ones in calendar time because a crisis does not wait
//! for office hours.

use chrono::Duration;
use complaints_proto::common::v1::{ClockKind, Complexity, Severity};

/// How a target is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Business time of the policy's calendar.
    Business(Duration),
    /// A number of working days of the calendar (× its standard working day).
    WorkingDays(i32),
    /// Wall-clock time.
    Calendar(Duration),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub kind: ClockKind,
    pub measure: Measure,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub id: &'static str,
    pub first_response: Measure,
    pub resolution: Measure,
    pub follow_up: Measure,
    /// Percentages of the target at which a warning fires.
    pub warnings: &'static [u32],
    /// Wall-clock interval between escalation levels after a breach.
    pub escalation_interval: Duration,
    pub max_escalation_level: u32,
}

impl Policy {
    pub fn fire_rules(&self) -> super::clock::FireRules<'static> {
        super::clock::FireRules {
            warnings: self.warnings,
            escalation_interval: self.escalation_interval,
            max_escalation_level: self.max_escalation_level,
        }
    }

    pub fn measure(&self, kind: ClockKind) -> Option<Measure> {
        match kind {
            ClockKind::FirstResponse => Some(self.first_response),
            ClockKind::Resolution => Some(self.resolution),
            ClockKind::FollowUp => Some(self.follow_up),
            _ => None,
        }
    }
}

/// The policy for a case, with the reason it was chosen.
pub fn select(severity: Severity, complexity: Complexity) -> (Policy, String) {
    let complex = complexity == Complexity::Complex;
    let policy = match severity {
        Severity::Crisis => Policy {
            id: "crisis",
            first_response: Measure::Calendar(Duration::minutes(15)),
            resolution: Measure::Calendar(Duration::hours(24)),
            follow_up: Measure::Calendar(Duration::hours(24)),
            warnings: &[50, 75, 90],
            escalation_interval: Duration::minutes(30),
            max_escalation_level: 4,
        },
        Severity::Major => Policy {
            id: if complex {
                "major-complex"
            } else {
                "major-simple"
            },
            first_response: Measure::Business(Duration::minutes(30)),
            resolution: Measure::WorkingDays(if complex { 5 } else { 2 }),
            follow_up: Measure::Calendar(Duration::hours(48)),
            warnings: &[50, 75, 90],
            escalation_interval: Duration::hours(2),
            max_escalation_level: 4,
        },
        _ => Policy {
            id: if complex {
                "general-complex"
            } else {
                "general-simple"
            },
            first_response: Measure::Business(Duration::hours(1)),
            resolution: Measure::WorkingDays(if complex { 7 } else { 3 }),
            follow_up: Measure::Calendar(Duration::hours(48)),
            warnings: &[75, 90],
            escalation_interval: Duration::hours(4),
            max_escalation_level: 4,
        },
    };
    let reason = format!(
        "policy {} for severity {} and complexity {}",
        policy.id,
        severity.as_str_name(),
        complexity.as_str_name()
    );
    (policy, reason)
}

/// The policy with a given id (clocks remember theirs).
pub fn by_id(id: &str) -> Option<Policy> {
    [
        (Severity::Crisis, Complexity::Complex),
        (Severity::Major, Complexity::Simple),
        (Severity::Major, Complexity::Complex),
        (Severity::General, Complexity::Simple),
        (Severity::General, Complexity::Complex),
    ]
    .into_iter()
    .map(|(s, c)| select(s, c).0)
    .find(|p| p.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_requirements() {
        let (p, _) = select(Severity::General, Complexity::Simple);
        assert_eq!(p.first_response, Measure::Business(Duration::hours(1)));
        assert_eq!(p.resolution, Measure::WorkingDays(3));
        assert_eq!(p.follow_up, Measure::Calendar(Duration::hours(48)));
        let (p, _) = select(Severity::General, Complexity::Complex);
        assert_eq!(p.resolution, Measure::WorkingDays(7));
        let (p, why) = select(Severity::Crisis, Complexity::Complex);
        assert_eq!(p.first_response, Measure::Calendar(Duration::minutes(15)));
        assert!(why.contains("crisis"));
    }
}
