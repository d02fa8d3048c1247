//! Which targets a case gets. Policies are data (managed over gRPC, versioned); a case gets the
//! most specific policy whose criteria it matches, and the choice is explained.
//!
//! The shipped defaults come from the requirements: first response within 1 hour (seed 002),
//! resolution within 3 working days for simple and 7 for complex complaints (seed 000 §7.2),
//! follow-up within 48 hours of resolution (seed 002); major and crisis complaints are stricter,
//! crisis ones in calendar time because a crisis does not wait for office hours.

use chrono::Duration;
use complaints_proto::common::v1::{
    Channel, ClockKind, Complexity, CustomerTier, Priority, Severity,
};
use serde::{Deserialize, Serialize};

/// How a target is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "unit", content = "value", rename_all = "snake_case")]
pub enum Measure {
    /// Business time of the policy's calendar, in milliseconds.
    BusinessMs(i64),
    /// A number of working days of the calendar (× its standard working day).
    WorkingDays(i32),
    /// Wall-clock time, in milliseconds.
    CalendarMs(i64),
}

impl Measure {
    pub fn business(d: Duration) -> Self {
        Measure::BusinessMs(d.num_milliseconds())
    }

    pub fn calendar(d: Duration) -> Self {
        Measure::CalendarMs(d.num_milliseconds())
    }

    /// The target length and whether it counts business time, given the calendar's working day.
    pub fn resolve(self, standard_day: Duration) -> (Duration, bool) {
        match self {
            Measure::BusinessMs(ms) => (Duration::milliseconds(ms), true),
            Measure::WorkingDays(n) => (standard_day * n, true),
            Measure::CalendarMs(ms) => (Duration::milliseconds(ms), false),
        }
    }
}

/// When a warning fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "at", content = "value", rename_all = "snake_case")]
pub enum Warning {
    /// When this share of the target is used (1–99).
    Percent(u32),
    /// When this much target time is left, in milliseconds (business time for business targets).
    BeforeDeadlineMs(i64),
}

/// Unset fields match anything. Enum fields hold the protobuf enum numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Criteria {
    pub severity: Option<i32>,
    pub priority: Option<i32>,
    pub complexity: Option<i32>,
    pub customer_tier: Option<i32>,
    pub channel: Option<i32>,
    pub category: Option<String>,
}

/// What is known of a case when choosing its policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaseFacts {
    pub severity: i32,
    pub priority: i32,
    pub complexity: i32,
    pub customer_tier: i32,
    pub channel: i32,
    pub category: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    #[serde(default)]
    pub version: i64,
    pub name: String,
    pub calendar_id: String,
    pub criteria: Criteria,
    pub first_response: Measure,
    pub customer_update: Option<Measure>,
    pub resolution: Measure,
    pub follow_up: Measure,
    pub warnings: Vec<Warning>,
    /// Wall-clock wait after the breach for escalation levels 1, 2, ... (index + 1 = level).
    pub ladder_ms: Vec<i64>,
}

/// The chosen policy and why.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyMatch {
    pub policy: Policy,
    pub matched: Vec<String>,
    pub candidates: Vec<String>,
    pub reason: String,
}

fn enum_name(field: &str, value: i32) -> String {
    let name = match field {
        "severity" => Severity::try_from(value).map(|v| v.as_str_name()).ok(),
        "priority" => Priority::try_from(value).map(|v| v.as_str_name()).ok(),
        "complexity" => Complexity::try_from(value).map(|v| v.as_str_name()).ok(),
        "customer_tier" => CustomerTier::try_from(value).map(|v| v.as_str_name()).ok(),
        "channel" => Channel::try_from(value).map(|v| v.as_str_name()).ok(),
        _ => None,
    };
    name.map(str::to_owned).unwrap_or_else(|| value.to_string())
}

impl Criteria {
    /// The criteria a case matches, as readable lines; `None` when one criterion fails.
    pub fn matches(&self, facts: &CaseFacts) -> Option<Vec<String>> {
        let mut matched = Vec::new();
        let enums = [
            ("severity", self.severity, facts.severity),
            ("priority", self.priority, facts.priority),
            ("complexity", self.complexity, facts.complexity),
            ("customer_tier", self.customer_tier, facts.customer_tier),
            ("channel", self.channel, facts.channel),
        ];
        for (field, wanted, actual) in enums {
            if let Some(wanted) = wanted {
                if wanted != actual {
                    return None;
                }
                matched.push(format!("{field} = {}", enum_name(field, wanted)));
            }
        }
        if let Some(category) = &self.category {
            if !category.eq_ignore_ascii_case(&facts.category) {
                return None;
            }
            matched.push(format!("category = {category}"));
        }
        Some(matched)
    }

    pub fn specificity(&self) -> usize {
        [
            self.severity.is_some(),
            self.priority.is_some(),
            self.complexity.is_some(),
            self.customer_tier.is_some(),
            self.channel.is_some(),
            self.category.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count()
    }
}

impl Policy {
    pub fn measure(&self, kind: ClockKind) -> Option<Measure> {
        match kind {
            ClockKind::FirstResponse => Some(self.first_response),
            ClockKind::Resolution => Some(self.resolution),
            ClockKind::FollowUp => Some(self.follow_up),
            ClockKind::CustomerUpdate => self.customer_update,
            ClockKind::Unspecified => None,
        }
    }

    /// The amounts of used target at which warnings fire, ascending, each below the target.
    pub fn warning_thresholds(&self, target: Duration) -> Vec<Duration> {
        let mut thresholds: Vec<Duration> = self
            .warnings
            .iter()
            .map(|w| match *w {
                Warning::Percent(p) => target * p as i32 / 100,
                Warning::BeforeDeadlineMs(ms) => target - Duration::milliseconds(ms),
            })
            .filter(|t| *t > Duration::zero() && *t < target)
            .collect();
        thresholds.sort();
        thresholds.dedup();
        thresholds
    }

    /// Rule violations as (field, problem); empty when the policy is valid.
    pub fn violations(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut add = |f: &str, m: &str| errors.push((format!("policy.{f}"), m.to_owned()));
        if !is_slug(&self.id) {
            add("id", "required: 1–64 lower-case letters, digits or '-'");
        }
        if self.name.trim().is_empty() || self.name.len() > 200 {
            add("name", "required, at most 200 characters");
        }
        if self.calendar_id.trim().is_empty() {
            add("calendar_id", "required");
        }
        let measures = [
            ("first_response", Some(self.first_response)),
            ("customer_update", self.customer_update),
            ("resolution", Some(self.resolution)),
            ("follow_up", Some(self.follow_up)),
        ];
        for (field, measure) in measures {
            let ok = match measure {
                None => true,
                Some(Measure::BusinessMs(ms)) | Some(Measure::CalendarMs(ms)) => {
                    (60_000..=366 * 86_400_000).contains(&ms)
                }
                Some(Measure::WorkingDays(n)) => (1..=250).contains(&n),
            };
            if !ok {
                add(
                    field,
                    "must be between 1 minute and 366 days (or 1–250 working days)",
                );
            }
        }
        for (i, w) in self.warnings.iter().enumerate() {
            let ok = match *w {
                Warning::Percent(p) => (1..=99).contains(&p),
                Warning::BeforeDeadlineMs(ms) => ms >= 60_000,
            };
            if !ok {
                add(
                    &format!("warnings[{i}]"),
                    "percent_used must be 1–99; before_deadline at least 1 minute",
                );
            }
        }
        if self.ladder_ms.len() > 10 {
            add("escalation_ladder", "at most 10 levels");
        }
        for (i, pair) in self.ladder_ms.windows(2).enumerate() {
            if pair[1] < pair[0] {
                add(
                    &format!("escalation_ladder[{}].after_breach", i + 1),
                    "must not be shorter than the previous level's",
                );
            }
        }
        if self.ladder_ms.iter().any(|ms| *ms < 0) {
            add("escalation_ladder", "after_breach must not be negative");
        }
        errors
    }
}

/// Lower-case letters, digits and '-', 1–64 characters.
pub fn is_slug(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The most specific matching policy (ties: the lower id), with the explanation.
pub fn select(policies: &[Policy], facts: &CaseFacts) -> Option<PolicyMatch> {
    let mut matching: Vec<(&Policy, Vec<String>)> = policies
        .iter()
        .filter_map(|p| p.criteria.matches(facts).map(|m| (p, m)))
        .collect();
    matching.sort_by(|(a, _), (b, _)| {
        b.criteria
            .specificity()
            .cmp(&a.criteria.specificity())
            .then_with(|| a.id.cmp(&b.id))
    });
    let candidates: Vec<String> = matching.iter().map(|(p, _)| p.id.clone()).collect();
    let (policy, matched) = matching.into_iter().next()?;
    let because = if matched.is_empty() {
        "it has no criteria (catch-all)".to_owned()
    } else {
        format!("the case matches {}", matched.join(", "))
    };
    let others = candidates.len() - 1;
    let reason = format!(
        "policy {} v{} because {because}; {} other matching polic{} less specific",
        policy.id,
        policy.version,
        others,
        if others == 1 { "y was" } else { "ies were" }
    );
    Some(PolicyMatch {
        policy: policy.clone(),
        matched,
        candidates,
        reason,
    })
}

/// The shipped policies (version 1), on the given calendar.
pub fn defaults(calendar_id: &str) -> Vec<Policy> {
    let minutes = |m: i64| Measure::business(Duration::minutes(m));
    let hours = |h: i64| Measure::calendar(Duration::hours(h));
    let ladder = |step: Duration| (0..4).map(|i| (step * i).num_milliseconds()).collect();
    let policy = |id: &str, name: &str, criteria: Criteria| Policy {
        id: id.to_owned(),
        version: 1,
        name: name.to_owned(),
        calendar_id: calendar_id.to_owned(),
        criteria,
        first_response: minutes(60),
        customer_update: Some(Measure::WorkingDays(1)),
        resolution: Measure::WorkingDays(3),
        follow_up: hours(48),
        warnings: vec![Warning::Percent(75), Warning::Percent(90)],
        ladder_ms: ladder(Duration::hours(4)),
    };
    let severity = |s: Severity, c: Option<Complexity>| Criteria {
        severity: Some(s as i32),
        complexity: c.map(|c| c as i32),
        ..Criteria::default()
    };
    vec![
        policy(
            "default",
            "Any complaint not matched otherwise",
            Criteria::default(),
        ),
        policy(
            "general-simple",
            "General complaint, simple",
            severity(Severity::General, Some(Complexity::Simple)),
        ),
        Policy {
            resolution: Measure::WorkingDays(7),
            ..policy(
                "general-complex",
                "General complaint, complex",
                severity(Severity::General, Some(Complexity::Complex)),
            )
        },
        Policy {
            first_response: minutes(30),
            customer_update: Some(minutes(4 * 60)),
            resolution: Measure::WorkingDays(2),
            warnings: vec![
                Warning::Percent(50),
                Warning::Percent(75),
                Warning::Percent(90),
            ],
            ladder_ms: ladder(Duration::hours(2)),
            ..policy(
                "major-simple",
                "Major complaint (重大投诉), simple",
                severity(Severity::Major, Some(Complexity::Simple)),
            )
        },
        Policy {
            first_response: minutes(30),
            customer_update: Some(minutes(4 * 60)),
            resolution: Measure::WorkingDays(5),
            warnings: vec![
                Warning::Percent(50),
                Warning::Percent(75),
                Warning::Percent(90),
            ],
            ladder_ms: ladder(Duration::hours(2)),
            ..policy(
                "major-complex",
                "Major complaint (重大投诉), complex",
                severity(Severity::Major, Some(Complexity::Complex)),
            )
        },
        Policy {
            first_response: Measure::calendar(Duration::minutes(15)),
            customer_update: Some(hours(2)),
            resolution: hours(24),
            follow_up: hours(24),
            warnings: vec![
                Warning::Percent(50),
                Warning::Percent(75),
                Warning::Percent(90),
            ],
            ladder_ms: ladder(Duration::minutes(30)),
            ..policy(
                "crisis",
                "Crisis event (危机事件), around the clock",
                severity(Severity::Crisis, None),
            )
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(severity: Severity, complexity: Complexity) -> CaseFacts {
        CaseFacts {
            severity: severity as i32,
            priority: Priority::P3 as i32,
            complexity: complexity as i32,
            customer_tier: CustomerTier::Regular as i32,
            channel: Channel::Phone as i32,
            category: "product_quality".into(),
        }
    }

    #[test]
    fn defaults_follow_the_requirements() {
        let policies = defaults("standard");
        let pick = |s, c| select(&policies, &facts(s, c)).unwrap().policy;
        let p = pick(Severity::General, Complexity::Simple);
        assert_eq!(p.id, "general-simple");
        assert_eq!(p.first_response, Measure::business(Duration::hours(1)));
        assert_eq!(p.resolution, Measure::WorkingDays(3));
        assert_eq!(p.follow_up, Measure::calendar(Duration::hours(48)));
        assert_eq!(
            pick(Severity::General, Complexity::Complex).resolution,
            Measure::WorkingDays(7)
        );
        let crisis = pick(Severity::Crisis, Complexity::Complex);
        assert_eq!(
            crisis.first_response,
            Measure::calendar(Duration::minutes(15))
        );
        assert_eq!(
            pick(Severity::Unspecified, Complexity::Unspecified).id,
            "default"
        );
        for p in &policies {
            assert!(p.violations().is_empty(), "{}: {:?}", p.id, p.violations());
        }
    }

    #[test]
    fn the_most_specific_policy_wins_and_says_why() {
        let mut policies = defaults("standard");
        policies.push(Policy {
            id: "vip-phone-major".into(),
            criteria: Criteria {
                severity: Some(Severity::Major as i32),
                customer_tier: Some(CustomerTier::Vip as i32),
                channel: Some(Channel::Phone as i32),
                ..Criteria::default()
            },
            first_response: Measure::business(Duration::minutes(10)),
            ..policies[0].clone()
        });
        let mut vip = facts(Severity::Major, Complexity::Simple);
        vip.customer_tier = CustomerTier::Vip as i32;
        let chosen = select(&policies, &vip).unwrap();
        assert_eq!(chosen.policy.id, "vip-phone-major");
        assert_eq!(
            chosen.matched,
            vec![
                "severity = SEVERITY_MAJOR",
                "customer_tier = CUSTOMER_TIER_VIP",
                "channel = CHANNEL_PHONE"
            ]
        );
        assert_eq!(
            chosen.candidates,
            vec!["vip-phone-major", "major-simple", "default"]
        );
        assert!(chosen.reason.contains("2 other matching policies"));
        // A regular customer does not match the VIP policy.
        let regular = select(&policies, &facts(Severity::Major, Complexity::Simple)).unwrap();
        assert_eq!(regular.policy.id, "major-simple");
    }

    #[test]
    fn ties_go_to_the_lower_id_and_categories_match_case_insensitively() {
        let base = defaults("standard")[0].clone();
        let by_category = |id: &str| Policy {
            id: id.into(),
            criteria: Criteria {
                category: Some("Billing".into()),
                ..Criteria::default()
            },
            ..base.clone()
        };
        let policies = vec![by_category("b"), by_category("a"), base.clone()];
        let mut f = facts(Severity::General, Complexity::Simple);
        f.category = "billing".into();
        assert_eq!(select(&policies, &f).unwrap().policy.id, "a");
    }

    #[test]
    fn warning_thresholds_mix_percentages_and_time_before_the_deadline() {
        let mut p = defaults("standard")[0].clone();
        p.warnings = vec![
            Warning::Percent(50),
            Warning::BeforeDeadlineMs(Duration::hours(1).num_milliseconds()),
            Warning::BeforeDeadlineMs(Duration::hours(9).num_milliseconds()),
        ];
        // 8h target: 50 % = 4h used, "1h before" = 7h used; "9h before" is before the start.
        assert_eq!(
            p.warning_thresholds(Duration::hours(8)),
            vec![Duration::hours(4), Duration::hours(7)]
        );
    }

    #[test]
    fn invalid_policies_name_their_fields() {
        let mut p = defaults("standard")[0].clone();
        p.id = "Not A Slug".into();
        p.resolution = Measure::WorkingDays(0);
        p.warnings = vec![Warning::Percent(100)];
        p.ladder_ms = vec![3_600_000, 0];
        let fields: Vec<String> = p.violations().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "policy.id",
                "policy.resolution",
                "policy.warnings[0]",
                "policy.escalation_ladder[1].after_breach"
            ]
        );
    }
}
