//! The versioned scoring model (服务评鉴): which indicators count, their targets, linear
//! normalisation and weights, the five-level grade thresholds and the minimum sample.

use serde::{Deserialize, Serialize};

use super::kpi::Indicators;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Indicator {
    ResolutionRate,
    FirstContactResolutionRate,
    FirstResponseOnTimeRate,
    ResolutionOnTimeRate,
    ReopenRate,
    EscalationRate,
    SatisfactionRate,
    SurveyResponseRate,
    HandlingTimeAverageHours,
    HandlingTimeP90Hours,
    CsatAverage,
    Nps,
}

impl Indicator {
    /// The range a target or floor of this indicator must lie in.
    pub fn range(self) -> (f64, f64) {
        match self {
            Indicator::HandlingTimeAverageHours | Indicator::HandlingTimeP90Hours => {
                (0.0, 10_000.0)
            }
            Indicator::CsatAverage => (1.0, 5.0),
            Indicator::Nps => (-100.0, 100.0),
            _ => (0.0, 1.0),
        }
    }

    /// The subject's value of this indicator; `None` without data.
    pub fn value(self, i: &Indicators) -> Option<f64> {
        match self {
            Indicator::ResolutionRate => i.resolution_rate.value,
            Indicator::FirstContactResolutionRate => i.first_contact_resolution_rate.value,
            Indicator::FirstResponseOnTimeRate => i.first_response_on_time_rate.value,
            Indicator::ResolutionOnTimeRate => i.resolution_on_time_rate.value,
            Indicator::ReopenRate => i.reopen_rate.value,
            Indicator::EscalationRate => i.escalation_rate.value,
            Indicator::SatisfactionRate => i.satisfaction_rate.value,
            Indicator::SurveyResponseRate => i.survey_response_rate.value,
            Indicator::HandlingTimeAverageHours => i.handling_time_average_secs.map(|s| s / 3600.0),
            Indicator::HandlingTimeP90Hours => i.handling_time_p90_secs.map(|s| s as f64 / 3600.0),
            Indicator::CsatAverage => i.csat_average,
            Indicator::Nps => i.nps,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelIndicator {
    pub indicator: Indicator,
    pub target: f64,
    pub floor: f64,
    pub weight: f64,
}

impl ModelDefinition {
    /// Whether scoring needs the handling-time histogram (only the p90 does).
    pub fn uses_histogram(&self) -> bool {
        self.indicators
            .iter()
            .any(|i| i.indicator == Indicator::HandlingTimeP90Hours)
    }
}

/// Minimum total scores of grades A–D; below D is E.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub a: f64,
    pub b: f64,
    pub c: f64,
    pub d: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelDefinition {
    pub indicators: Vec<ModelIndicator>,
    pub thresholds: Thresholds,
    pub minimum_sample: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grade {
    A,
    B,
    C,
    D,
    E,
}

impl Grade {
    pub fn label(self) -> &'static str {
        match self {
            Grade::A => "优秀",
            Grade::B => "良好",
            Grade::C => "合格",
            Grade::D => "待改进",
            Grade::E => "不合格",
        }
    }

    /// 1 (A) … 5 (E), as stored and in the contract.
    pub fn number(self) -> i16 {
        match self {
            Grade::A => 1,
            Grade::B => 2,
            Grade::C => 3,
            Grade::D => 4,
            Grade::E => 5,
        }
    }
}

/// Linear normalisation to 0–100: 100 at (or beyond) the target, 0 at (or beyond) the floor.
/// Works both ways: a target below the floor means lower is better (handling time, reopens).
pub fn normalise(value: f64, target: f64, floor: f64) -> f64 {
    if target == floor {
        return if value == target { 100.0 } else { 0.0 };
    }
    ((value - floor) / (target - floor)).clamp(0.0, 1.0) * 100.0
}

pub fn grade(total: f64, t: &Thresholds) -> Grade {
    if total >= t.a {
        Grade::A
    } else if total >= t.b {
        Grade::B
    } else if total >= t.c {
        Grade::C
    } else if total >= t.d {
        Grade::D
    } else {
        Grade::E
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndicatorLine {
    pub indicator: Indicator,
    pub value: Option<f64>,
    pub target: f64,
    pub floor: f64,
    pub weight: f64,
    pub normalised: Option<f64>,
    pub contribution: Option<f64>,
}

/// A score with its explanation. Grade `None` when not graded (see `not_graded_reason`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreCard {
    pub model_version: u32,
    pub total: Option<f64>,
    #[serde(with = "grade_number")]
    pub grade: Option<Grade>,
    pub not_graded_reason: String,
    pub sample: u64,
    pub lines: Vec<IndicatorLine>,
}

mod grade_number {
    use super::Grade;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(grade: &Option<Grade>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i16(grade.map(Grade::number).unwrap_or(0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Grade>, D::Error> {
        Ok(match i16::deserialize(d)? {
            1 => Some(Grade::A),
            2 => Some(Grade::B),
            3 => Some(Grade::C),
            4 => Some(Grade::D),
            5 => Some(Grade::E),
            _ => None,
        })
    }
}

/// Scores a subject: each indicator with a value is normalised and weighted; the weights of
/// indicators without data are left out (the total is the weighted mean of what is known).
pub fn score(model_version: u32, model: &ModelDefinition, indicators: &Indicators) -> ScoreCard {
    let sample = indicators.cases_opened;
    let known_weight: f64 = model
        .indicators
        .iter()
        .filter(|m| m.indicator.value(indicators).is_some())
        .map(|m| m.weight)
        .sum();
    let lines: Vec<IndicatorLine> = model
        .indicators
        .iter()
        .map(|m| {
            let value = m.indicator.value(indicators);
            let normalised = value.map(|v| normalise(v, m.target, m.floor));
            IndicatorLine {
                indicator: m.indicator,
                value,
                target: m.target,
                floor: m.floor,
                weight: m.weight,
                normalised,
                contribution: normalised.map(|n| n * m.weight / known_weight),
            }
        })
        .collect();
    let total = (known_weight > 0.0).then(|| lines.iter().filter_map(|l| l.contribution).sum());
    let (grade, not_graded_reason) = match total {
        _ if sample < model.minimum_sample => (
            None,
            format!(
                "{sample} cases is below the minimum sample of {}",
                model.minimum_sample
            ),
        ),
        None => (None, "no indicator of the model has data".to_owned()),
        Some(t) => (Some(grade(t, &model.thresholds)), String::new()),
    };
    ScoreCard {
        model_version,
        total,
        grade,
        not_graded_reason,
        sample,
        lines,
    }
}

/// The model used until quality defines its own (version 1): targets from the seeds where they
/// give one (satisfaction ≥ 92 %, response within the limits), house targets otherwise.
pub fn default_model() -> ModelDefinition {
    let line = |indicator, target, floor, weight| ModelIndicator {
        indicator,
        target,
        floor,
        weight,
    };
    ModelDefinition {
        indicators: vec![
            line(Indicator::ResolutionRate, 0.95, 0.60, 20.0),
            line(Indicator::FirstResponseOnTimeRate, 0.98, 0.70, 15.0),
            line(Indicator::ResolutionOnTimeRate, 0.95, 0.60, 15.0),
            line(Indicator::FirstContactResolutionRate, 0.80, 0.40, 10.0),
            line(Indicator::ReopenRate, 0.03, 0.20, 10.0),
            line(Indicator::HandlingTimeAverageHours, 8.0, 40.0, 10.0),
            line(Indicator::SatisfactionRate, 0.92, 0.60, 15.0),
            line(Indicator::Nps, 35.0, -20.0, 5.0),
        ],
        thresholds: Thresholds {
            a: 90.0,
            b: 80.0,
            c: 70.0,
            d: 60.0,
        },
        minimum_sample: 10,
    }
}

/// Every problem of a model definition, as (field, description).
pub fn validate(model: &ModelDefinition) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if model.indicators.is_empty() {
        problems.push((
            "indicators".into(),
            "at least one indicator is required".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, m) in model.indicators.iter().enumerate() {
        let field = |name: &str| format!("indicators[{i}].{name}");
        if !seen.insert(m.indicator) {
            problems.push((field("indicator"), "listed twice".into()));
        }
        if !(m.weight.is_finite() && m.weight > 0.0) {
            problems.push((field("weight"), "must be a positive number".into()));
        }
        let (low, high) = m.indicator.range();
        for (name, v) in [("target", m.target), ("floor", m.floor)] {
            if !(v.is_finite() && (low..=high).contains(&v)) {
                problems.push((field(name), format!("must be between {low} and {high}")));
            }
        }
        if m.target == m.floor {
            problems.push((field("floor"), "must differ from the target".into()));
        }
    }
    let t = model.thresholds;
    let finite = [t.a, t.b, t.c, t.d].iter().all(|v| v.is_finite());
    let ordered = t.a <= 100.0 && t.a > t.b && t.b > t.c && t.c > t.d && t.d > 0.0;
    if !(finite && ordered) {
        problems.push((
            "thresholds".into(),
            "must satisfy 100 ≥ a > b > c > d > 0".into(),
        ));
    }
    if model.minimum_sample == 0 {
        problems.push(("minimum_sample".into(), "must be at least 1".into()));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::kpi::{Counters, Indicators};

    #[test]
    fn normalisation_by_hand_both_ways() {
        // Higher is better: floor 0.6, target 0.95; 0.88 is 0.28/0.35 = 80 %.
        assert!((normalise(0.88, 0.95, 0.60) - 80.0).abs() < 1e-9);
        assert_eq!(normalise(0.99, 0.95, 0.60), 100.0);
        assert_eq!(normalise(0.10, 0.95, 0.60), 0.0);
        // Lower is better: 16 h with target 8 h and floor 40 h is 24/32 = 75 %.
        assert!((normalise(16.0, 8.0, 40.0) - 75.0).abs() < 1e-9);
        assert_eq!(normalise(2.0, 8.0, 40.0), 100.0);
        assert_eq!(normalise(50.0, 8.0, 40.0), 0.0);
    }

    #[test]
    fn grades_at_their_thresholds() {
        let t = default_model().thresholds;
        assert_eq!(grade(90.0, &t), Grade::A);
        assert_eq!(grade(89.99, &t), Grade::B);
        assert_eq!(grade(80.0, &t), Grade::B);
        assert_eq!(grade(70.0, &t), Grade::C);
        assert_eq!(grade(60.0, &t), Grade::D);
        assert_eq!(grade(59.9, &t), Grade::E);
        assert_eq!(Grade::A.label(), "优秀");
        assert_eq!(Grade::E.label(), "不合格");
    }

    fn two_indicator_model(minimum_sample: u64) -> ModelDefinition {
        ModelDefinition {
            indicators: vec![
                ModelIndicator {
                    indicator: Indicator::ResolutionRate,
                    target: 1.0,
                    floor: 0.5,
                    weight: 3.0,
                },
                ModelIndicator {
                    indicator: Indicator::SatisfactionRate,
                    target: 1.0,
                    floor: 0.0,
                    weight: 1.0,
                },
            ],
            thresholds: default_model().thresholds,
            minimum_sample,
        }
    }

    #[test]
    fn a_score_explains_every_indicator() {
        // 10 cases, 9 resolved (0.9 → 80), 4 CSAT answers, 3 satisfied (0.75 → 75).
        // Total = 80·3/4 + 75·1/4 = 60 + 18.75 = 78.75 → C (合格).
        let c = Counters {
            cases_opened: 10,
            cases_resolved: 9,
            csat_responses: 4,
            csat_sum: 16,
            csat_satisfied: 3,
            ..Counters::default()
        };
        let s = score(7, &two_indicator_model(10), &Indicators::from_counters(&c));
        assert_eq!(s.model_version, 7);
        assert!((s.total.unwrap() - 78.75).abs() < 1e-9);
        assert_eq!(s.grade, Some(Grade::C));
        assert!((s.lines[0].contribution.unwrap() - 60.0).abs() < 1e-9);
        assert!((s.lines[1].normalised.unwrap() - 75.0).abs() < 1e-9);
        assert_eq!(s.lines[0].value, Some(0.9));
    }

    #[test]
    fn an_indicator_without_data_leaves_the_score_with_its_weight() {
        // No survey answers: only the resolution rate counts, 0.9 → 80 with all the weight.
        let c = Counters {
            cases_opened: 10,
            cases_resolved: 9,
            ..Counters::default()
        };
        let s = score(1, &two_indicator_model(10), &Indicators::from_counters(&c));
        assert!((s.total.unwrap() - 80.0).abs() < 1e-9);
        assert_eq!(s.lines[1].value, None);
        assert_eq!(s.lines[1].contribution, None);
        assert_eq!(s.grade, Some(Grade::B));
    }

    #[test]
    fn tiny_and_empty_samples_get_no_grade() {
        let c = Counters {
            cases_opened: 3,
            cases_resolved: 3,
            ..Counters::default()
        };
        let s = score(1, &two_indicator_model(10), &Indicators::from_counters(&c));
        assert_eq!(s.total, Some(100.0));
        assert_eq!(s.grade, None);
        assert!(s.not_graded_reason.contains("minimum sample of 10"));
        let empty = score(
            1,
            &two_indicator_model(1),
            &Indicators::from_counters(&Counters::default()),
        );
        assert_eq!(empty.total, None);
        assert_eq!(empty.grade, None);
        assert!(!empty.not_graded_reason.is_empty());
    }

    #[test]
    fn the_default_model_is_valid_and_weighs_100() {
        let m = default_model();
        assert!(validate(&m).is_empty());
        assert_eq!(m.indicators.iter().map(|i| i.weight).sum::<f64>(), 100.0);
    }

    #[test]
    fn invalid_models_name_their_fields() {
        let mut m = default_model();
        m.indicators[1].indicator = Indicator::ResolutionRate;
        m.indicators[2].weight = 0.0;
        m.indicators[3].target = 1.5;
        m.thresholds.b = 95.0;
        m.minimum_sample = 0;
        let fields: Vec<String> = validate(&m).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "indicators[1].indicator",
                "indicators[2].weight",
                "indicators[3].target",
                "thresholds",
                "minimum_sample"
            ]
        );
    }

    #[test]
    fn score_cards_survive_json() {
        let c = Counters {
            cases_opened: 10,
            cases_resolved: 9,
            ..Counters::default()
        };
        let s = score(1, &default_model(), &Indicators::from_counters(&c));
        let back: ScoreCard = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
