//! What one case contributes to the aggregates, and the exact change when its facts change.
//!
//! Invariant: every aggregate row equals the sum of the contributions of the cases' current
//! facts. An event takes the case's old contribution out and puts the new one in, so late or
//! corrected facts (a reopen, a transfer, a survey answer weeks later) stay exact, and the
//! order in which the three event streams arrive does not matter.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use super::kpi::{Counters, handling_bucket};
use super::period::local_day;

pub const AGENT: i16 = 1;
pub const DEPARTMENT: i16 = 2;
pub const TEAM: i16 = 3;
pub const ORGANISATION: i16 = 4;

/// Everything the scoring service knows about one case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaseFacts {
    pub department_id: Option<String>,
    pub owner_id: Option<String>,
    /// The owner's team when the case was opened.
    pub team_id: Option<String>,
    pub category: Option<String>,
    pub severity: Option<i16>,
    pub opened_at: Option<DateTime<Utc>>,
    pub cancelled: bool,
    pub resolved: bool,
    pub ever_resolved: bool,
    pub reopen_count: i32,
    pub escalations: i32,
    /// Moves to another department after opening.
    pub transfers: i32,
    pub first_response_on_time: Option<bool>,
    pub first_response_breached: bool,
    pub resolution_met_count: i32,
    /// A resolution clock breached, or was met after its deadline.
    pub resolution_late: bool,
    /// Business seconds the resolution clocks ran, all cycles.
    pub handling_seconds: i64,
    pub survey_invited: bool,
    pub survey_answered: bool,
    pub csat: Option<i16>,
    pub nps: Option<i16>,
    pub solved: Option<bool>,
}

/// An aggregate row's key without its day.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectKey {
    pub kind: i16,
    pub subject_id: String,
    /// The department of the cases counted ('' for the organisation).
    pub department_id: String,
}

/// One case's share of the aggregates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contribution {
    pub day: NaiveDate,
    pub subjects: Vec<SubjectKey>,
    pub counters: Counters,
    pub category: String,
    pub severity: i16,
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

impl CaseFacts {
    /// First-contact resolution (FCR): resolved without ever being reopened, escalated or
    /// moved to another department.
    pub fn first_contact_resolved(&self) -> bool {
        self.resolved && self.reopen_count == 0 && self.escalations == 0 && self.transfers == 0
    }

    /// `None` until the case's opening is known, and for cancelled cases (invalid, duplicate,
    /// spam), which are not complaints anyone handled.
    pub fn contribution(&self, tz: Tz) -> Option<Contribution> {
        let opened_at = self.opened_at?;
        if self.cancelled {
            return None;
        }
        let department = non_empty(&self.department_id).unwrap_or("").to_owned();
        let mut subjects = vec![SubjectKey {
            kind: ORGANISATION,
            subject_id: String::new(),
            department_id: String::new(),
        }];
        if !department.is_empty() {
            subjects.push(SubjectKey {
                kind: DEPARTMENT,
                subject_id: department.clone(),
                department_id: department.clone(),
            });
        }
        if let Some(owner) = non_empty(&self.owner_id) {
            subjects.push(SubjectKey {
                kind: AGENT,
                subject_id: owner.to_owned(),
                department_id: department.clone(),
            });
        }
        if let Some(team) = non_empty(&self.team_id) {
            subjects.push(SubjectKey {
                kind: TEAM,
                subject_id: team.to_owned(),
                department_id: department.clone(),
            });
        }
        let flag = |b: bool| i64::from(b);
        let first_response_measured =
            self.first_response_on_time.is_some() || self.first_response_breached;
        let resolution_measured = self.resolution_met_count > 0 || self.resolution_late;
        let handled = self.resolved && self.resolution_met_count > 0;
        let csat = self.csat.map(i64::from);
        let nps = self.nps.map(i64::from);
        let mut counters = Counters {
            cases_opened: 1,
            cases_resolved: flag(self.resolved),
            cases_ever_resolved: flag(self.ever_resolved || self.resolved),
            cases_reopened: flag(self.reopen_count > 0),
            first_contact_resolved: flag(self.first_contact_resolved()),
            first_response_measured: flag(first_response_measured),
            first_response_on_time: flag(
                self.first_response_on_time == Some(true) && !self.first_response_breached,
            ),
            resolution_measured: flag(resolution_measured),
            resolution_on_time: flag(self.resolution_met_count > 0 && !self.resolution_late),
            handling_samples: flag(handled),
            handling_seconds: if handled { self.handling_seconds } else { 0 },
            escalations: i64::from(self.escalations.max(0)),
            cases_escalated: flag(self.escalations > 0),
            surveys_invited: flag(self.survey_invited || self.survey_answered),
            surveys_answered: flag(self.survey_answered),
            csat_responses: flag(csat.is_some()),
            csat_sum: csat.unwrap_or(0),
            csat_satisfied: flag(csat.is_some_and(|v| v >= 4)),
            nps_responses: flag(nps.is_some()),
            nps_promoters: flag(nps.is_some_and(|v| v >= 9)),
            nps_detractors: flag(nps.is_some_and(|v| v <= 6)),
            ..Counters::default()
        };
        if handled {
            counters.handling_histogram[handling_bucket(self.handling_seconds)] = 1;
        }
        Some(Contribution {
            day: local_day(opened_at, tz),
            subjects,
            counters,
            category: self.category.clone().unwrap_or_default(),
            severity: self.severity.unwrap_or(0),
        })
    }
}

/// Changes to apply to the aggregates, keyed and in key order (so concurrent writers lock rows
/// in the same order), without zero entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deltas {
    pub counters: Vec<(SubjectKey, NaiveDate, Counters)>,
    pub categories: Vec<(SubjectKey, NaiveDate, String, i16, i64)>,
}

/// The change from the `before` contribution of a case to its `after` contribution.
pub fn deltas(before: Option<&Contribution>, after: Option<&Contribution>) -> Deltas {
    let mut counters: BTreeMap<(SubjectKey, NaiveDate), Counters> = BTreeMap::new();
    let mut categories: BTreeMap<(SubjectKey, NaiveDate, String, i16), i64> = BTreeMap::new();
    for (contribution, sign) in [(before, -1), (after, 1)] {
        let Some(c) = contribution else { continue };
        for subject in &c.subjects {
            counters
                .entry((subject.clone(), c.day))
                .or_default()
                .add_scaled(&c.counters, sign);
            *categories
                .entry((subject.clone(), c.day, c.category.clone(), c.severity))
                .or_default() += sign;
        }
    }
    Deltas {
        counters: counters
            .into_iter()
            .filter(|(_, c)| !c.is_zero())
            .map(|((k, d), c)| (k, d, c))
            .collect(),
        categories: categories
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|((k, d, cat, sev), n)| (k, d, cat, sev, n))
            .collect(),
    }
}

/// The sum of several changes, one row per key in key order: what applying them one after
/// another does to the aggregates, in as few row updates as there are keys.
pub fn combined(parts: impl IntoIterator<Item = Deltas>) -> Deltas {
    let mut counters: BTreeMap<(SubjectKey, NaiveDate), Counters> = BTreeMap::new();
    let mut categories: BTreeMap<(SubjectKey, NaiveDate, String, i16), i64> = BTreeMap::new();
    for part in parts {
        for (key, day, c) in part.counters {
            counters.entry((key, day)).or_default().add_scaled(&c, 1);
        }
        for (key, day, category, severity, n) in part.categories {
            *categories
                .entry((key, day, category, severity))
                .or_default() += n;
        }
    }
    Deltas {
        counters: counters
            .into_iter()
            .filter(|(_, c)| !c.is_zero())
            .map(|((k, d), c)| (k, d, c))
            .collect(),
        categories: categories
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|((k, d, cat, sev), n)| (k, d, cat, sev, n))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono_tz::Asia::Shanghai;

    fn opened() -> CaseFacts {
        CaseFacts {
            department_id: Some("quality".into()),
            owner_id: Some("agent-li".into()),
            team_id: Some("team-a".into()),
            category: Some("product_quality".into()),
            severity: Some(1),
            opened_at: Some(Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap()),
            ..CaseFacts::default()
        }
    }

    #[test]
    fn a_case_counts_for_its_agent_team_department_and_the_organisation() {
        let c = opened().contribution(Shanghai).unwrap();
        let kinds: Vec<i16> = c.subjects.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, vec![ORGANISATION, DEPARTMENT, AGENT, TEAM]);
        assert_eq!(c.day, NaiveDate::from_ymd_opt(2026, 11, 23).unwrap());
        assert_eq!(c.counters.cases_opened, 1);
        assert_eq!(c.counters.cases_resolved, 0);
    }

    #[test]
    fn without_an_opening_or_when_cancelled_a_case_counts_nowhere() {
        let mut f = opened();
        f.opened_at = None;
        assert_eq!(f.contribution(Shanghai), None);
        let mut f = opened();
        f.cancelled = true;
        assert_eq!(f.contribution(Shanghai), None);
    }

    #[test]
    fn first_contact_resolution_excludes_reopens_escalations_and_transfers() {
        let mut f = opened();
        f.resolved = true;
        assert!(f.first_contact_resolved());
        for change in [
            |f: &mut CaseFacts| f.reopen_count = 1,
            |f: &mut CaseFacts| f.escalations = 1,
            |f: &mut CaseFacts| f.transfers = 1,
        ] {
            let mut g = f.clone();
            change(&mut g);
            assert!(!g.first_contact_resolved());
        }
    }

    #[test]
    fn clocks_and_surveys_by_hand() {
        let mut f = opened();
        f.resolved = true;
        f.ever_resolved = true;
        f.first_response_on_time = Some(true);
        f.first_response_breached = true; // breached, then met late: not on time
        f.resolution_met_count = 1;
        f.handling_seconds = 5_000;
        f.survey_invited = true;
        f.survey_answered = true;
        f.csat = Some(4);
        f.nps = Some(6);
        let c = f.contribution(Shanghai).unwrap().counters;
        assert_eq!(
            (c.first_response_measured, c.first_response_on_time),
            (1, 0)
        );
        assert_eq!((c.resolution_measured, c.resolution_on_time), (1, 1));
        assert_eq!((c.handling_samples, c.handling_seconds), (1, 5_000));
        assert_eq!(c.handling_histogram[3], 1);
        assert_eq!((c.csat_responses, c.csat_sum, c.csat_satisfied), (1, 4, 1));
        assert_eq!(
            (c.nps_responses, c.nps_promoters, c.nps_detractors),
            (1, 0, 1)
        );
        // Reopened: no longer resolved, handling time no longer counted until resolved again.
        f.resolved = false;
        f.reopen_count = 1;
        let c = f.contribution(Shanghai).unwrap().counters;
        assert_eq!(
            (c.cases_resolved, c.cases_reopened, c.cases_ever_resolved),
            (0, 1, 1)
        );
        assert_eq!((c.handling_samples, c.handling_seconds), (0, 0));
    }

    #[test]
    fn a_reopen_moves_only_what_changed() {
        let mut before = opened();
        before.resolved = true;
        before.ever_resolved = true;
        let mut after = before.clone();
        after.resolved = false;
        after.reopen_count = 1;
        let d = deltas(
            before.contribution(Shanghai).as_ref(),
            after.contribution(Shanghai).as_ref(),
        );
        assert_eq!(d.counters.len(), 4);
        for (_, _, c) in &d.counters {
            assert_eq!(c.cases_resolved, -1);
            assert_eq!(c.first_contact_resolved, -1);
            assert_eq!(c.cases_reopened, 1);
            assert_eq!(c.cases_opened, 0);
        }
        assert!(d.categories.is_empty(), "category unchanged");
    }

    #[test]
    fn a_transfer_moves_the_case_between_departments() {
        let before = opened();
        let mut after = before.clone();
        after.department_id = Some("logistics".into());
        after.owner_id = Some("agent-wu".into());
        after.team_id = None;
        after.transfers = 1;
        let d = deltas(
            before.contribution(Shanghai).as_ref(),
            after.contribution(Shanghai).as_ref(),
        );
        let opened: Vec<(i16, &str, i64)> = d
            .counters
            .iter()
            .map(|(k, _, c)| (k.kind, k.subject_id.as_str(), c.cases_opened))
            .collect();
        assert_eq!(
            opened,
            vec![
                (AGENT, "agent-li", -1),
                (AGENT, "agent-wu", 1),
                (DEPARTMENT, "logistics", 1),
                (DEPARTMENT, "quality", -1),
                (TEAM, "team-a", -1),
            ]
        );
    }

    #[test]
    fn applying_every_delta_sums_to_the_final_contribution() {
        let steps: Vec<fn(&mut CaseFacts)> = vec![
            |f| f.escalations += 1,
            |f| {
                f.resolved = true;
                f.ever_resolved = true;
                f.resolution_met_count += 1;
                f.handling_seconds += 7_000;
            },
            |f| f.category = Some("billing".into()),
            |f| {
                f.resolved = false;
                f.reopen_count += 1;
            },
            |f| {
                f.resolved = true;
                f.resolution_met_count += 1;
                f.handling_seconds += 90_000;
            },
        ];
        let mut facts = CaseFacts::default();
        let mut sums: BTreeMap<(SubjectKey, NaiveDate), Counters> = BTreeMap::new();
        let mut apply = |before: &CaseFacts, after: &CaseFacts| {
            let d = deltas(
                before.contribution(Shanghai).as_ref(),
                after.contribution(Shanghai).as_ref(),
            );
            for (k, day, c) in d.counters {
                sums.entry((k, day)).or_default().add_scaled(&c, 1);
            }
        };
        let first = opened();
        apply(&facts, &first);
        facts = first;
        for step in steps {
            let mut next = facts.clone();
            step(&mut next);
            apply(&facts, &next);
            facts = next;
        }
        let expected = facts.contribution(Shanghai).unwrap();
        for subject in &expected.subjects {
            assert_eq!(sums[&(subject.clone(), expected.day)], expected.counters);
        }
        assert_eq!(expected.counters.handling_seconds, 97_000);
        // 97,000 s lies in (86,400, 115,200]: bucket 11.
        assert_eq!(expected.counters.handling_histogram[11], 1);
    }

    #[test]
    fn combined_steps_equal_the_change_from_first_to_last() {
        let opened = opened();
        let mut resolved = opened.clone();
        resolved.resolved = true;
        resolved.ever_resolved = true;
        resolved.resolution_met_count = 1;
        resolved.handling_seconds = 7_000;
        let mut moved = resolved.clone();
        moved.department_id = Some("billing".into());
        moved.transfers = 1;
        let step = |a: &CaseFacts, b: &CaseFacts| {
            deltas(
                a.contribution(Shanghai).as_ref(),
                b.contribution(Shanghai).as_ref(),
            )
        };
        let none = CaseFacts::default();
        let parts = vec![
            step(&none, &opened),
            step(&opened, &resolved),
            step(&resolved, &moved),
        ];
        assert_eq!(combined(parts), step(&none, &moved));
        // A case opened and cancelled within one batch leaves no trace at all.
        let mut cancelled = opened.clone();
        cancelled.cancelled = true;
        let parts = vec![step(&none, &opened), step(&opened, &cancelled)];
        assert_eq!(combined(parts), Deltas::default());
    }
}
