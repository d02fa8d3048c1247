//! Folding per-department figures into one figure per subject, and ranking subjects by score.

use std::collections::BTreeMap;

use super::kpi::Counters;
use super::model::ScoreCard;

/// One subject's figures summed over every department it worked in, with the department of
/// most of its cases (ties: the first by name) as its home department.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectFigures {
    pub kind: i16,
    pub subject_id: String,
    pub department_id: String,
    pub counters: Counters,
}

/// Folds rows of (kind, subject, department, counters), sorted or not, per (kind, subject).
pub fn fold_subjects(rows: Vec<(i16, String, String, Counters)>) -> Vec<SubjectFigures> {
    let mut folded: BTreeMap<(i16, String), (SubjectFigures, i64)> = BTreeMap::new();
    for (kind, subject_id, department_id, counters) in rows {
        let cases = counters.cases_opened;
        let entry = folded.entry((kind, subject_id.clone())).or_insert_with(|| {
            (
                SubjectFigures {
                    kind,
                    subject_id,
                    department_id: department_id.clone(),
                    counters: Counters::default(),
                },
                i64::MIN,
            )
        });
        entry.0.counters.add_scaled(&counters, 1);
        if cases > entry.1 || (cases == entry.1 && department_id < entry.0.department_id) {
            entry.0.department_id = department_id;
            entry.1 = cases;
        }
    }
    folded.into_values().map(|(f, _)| f).collect()
}

/// A ranked subject: rank 1 is the best graded score; subjects without a grade are unranked
/// (rank 0) and listed after the ranked ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    pub rank: u32,
    pub subject_id: String,
    pub cases_opened: u64,
    pub score: ScoreCard,
}

pub fn rank(mut entries: Vec<(String, u64, ScoreCard)>) -> Vec<Ranked> {
    entries.sort_by(|a, b| {
        let graded = |s: &ScoreCard| s.grade.is_some();
        graded(&b.2)
            .cmp(&graded(&a.2))
            .then_with(|| {
                b.2.total
                    .unwrap_or(f64::MIN)
                    .total_cmp(&a.2.total.unwrap_or(f64::MIN))
            })
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut ranked = Vec::with_capacity(entries.len());
    let mut rank = 0;
    let mut previous: Option<f64> = None;
    for (position, (subject_id, cases_opened, score)) in entries.into_iter().enumerate() {
        let this_rank = if score.grade.is_none() {
            0
        } else {
            // Equal totals share a rank (1, 2, 2, 4).
            if previous != score.total {
                rank = position as u32 + 1;
                previous = score.total;
            }
            rank
        };
        ranked.push(Ranked {
            rank: this_rank,
            subject_id,
            cases_opened,
            score,
        });
    }
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Grade;

    fn card(total: Option<f64>, grade: Option<Grade>) -> ScoreCard {
        ScoreCard {
            model_version: 1,
            total,
            grade,
            not_graded_reason: String::new(),
            sample: 10,
            lines: vec![],
        }
    }

    #[test]
    fn ranks_best_first_ties_share_and_ungraded_last() {
        let ranked = rank(vec![
            ("wu".into(), 3, card(Some(99.0), None)),
            ("li".into(), 10, card(Some(81.0), Some(Grade::B))),
            ("chen".into(), 12, card(Some(92.0), Some(Grade::A))),
            ("zhao".into(), 11, card(Some(81.0), Some(Grade::B))),
            ("sun".into(), 15, card(Some(40.0), Some(Grade::E))),
        ]);
        let order: Vec<(u32, &str)> = ranked
            .iter()
            .map(|r| (r.rank, r.subject_id.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![(1, "chen"), (2, "li"), (2, "zhao"), (4, "sun"), (0, "wu")]
        );
        assert!(rank(vec![]).is_empty());
    }

    #[test]
    fn an_agent_is_folded_over_departments_with_the_busiest_as_home() {
        let c = |n| Counters {
            cases_opened: n,
            ..Counters::default()
        };
        let folded = fold_subjects(vec![
            (1, "li".into(), "billing".into(), c(2)),
            (1, "li".into(), "quality".into(), c(5)),
            (2, "quality".into(), "quality".into(), c(5)),
        ]);
        assert_eq!(folded.len(), 2);
        assert_eq!(folded[0].subject_id, "li");
        assert_eq!(folded[0].department_id, "quality");
        assert_eq!(folded[0].counters.cases_opened, 7);
        assert_eq!(folded[1].kind, 2);
    }
}
