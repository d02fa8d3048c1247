//! KPI formulas: rates with the counts behind them, CSAT average, satisfaction rate (share of
//! CSAT 4–5) and Net Promoter Score (% promoters 9–10 minus % detractors 0–6).

/// Counts of one subject over one period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub cases_opened: u64,
    pub cases_resolved: u64,
    pub first_response_on_time: u64,
    pub first_response_measured: u64,
    pub csat_sum: u64,
    pub csat_responses: u64,
    pub csat_satisfied: u64,
    pub nps_promoters: u64,
    pub nps_detractors: u64,
    pub nps_responses: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub numerator: u64,
    pub denominator: u64,
    pub value: Option<f64>,
}

pub fn rate(numerator: u64, denominator: u64) -> Rate {
    Rate {
        numerator,
        denominator,
        value: (denominator > 0).then(|| numerator as f64 / denominator as f64),
    }
}

pub fn csat_average(sum: u64, responses: u64) -> Option<f64> {
    (responses > 0).then(|| sum as f64 / responses as f64)
}

/// NPS in points, −100…100; `None` without answers.
pub fn nps(promoters: u64, detractors: u64, responses: u64) -> Option<f64> {
    (responses > 0).then(|| (promoters as f64 - detractors as f64) * 100.0 / responses as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_keep_their_counts_and_are_absent_when_empty() {
        let r = rate(3, 4);
        assert_eq!((r.numerator, r.denominator, r.value), (3, 4, Some(0.75)));
        assert_eq!(rate(0, 0).value, None);
    }

    #[test]
    fn nps_by_hand() {
        // 5 promoters, 2 passives, 3 detractors of 10: 50% − 30% = 20.
        assert_eq!(nps(5, 3, 10), Some(20.0));
        assert_eq!(nps(0, 1, 1), Some(-100.0));
        assert_eq!(nps(0, 0, 0), None);
    }

    #[test]
    fn csat_average_by_hand() {
        assert_eq!(csat_average(4 + 5 + 2, 3), Some(11.0 / 3.0));
        assert_eq!(csat_average(0, 0), None);
    }
}
