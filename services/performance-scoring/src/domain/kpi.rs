//! KPI formulas over summed counters: rates with the counts behind them, CSAT average,
//! satisfaction rate (share of CSAT 4–5), Net Promoter Score (% promoters 9–10 minus
//! % detractors 0–6), handling time average and p90 (from a histogram), complaint rate.

/// Upper bounds (business seconds) of the handling-time histogram buckets; one more bucket
/// holds everything beyond the last bound.
pub const HANDLING_BOUNDS_SECS: [i64; 16] = [
    900, 1_800, 3_600, 7_200, 10_800, 14_400, 21_600, 28_800, 43_200, 57_600, 86_400, 115_200,
    144_000, 201_600, 288_000, 432_000,
];
pub const HANDLING_BUCKETS: usize = HANDLING_BOUNDS_SECS.len() + 1;

/// The histogram bucket of a handling time.
pub fn handling_bucket(seconds: i64) -> usize {
    HANDLING_BOUNDS_SECS
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(HANDLING_BOUNDS_SECS.len())
}

macro_rules! counters {
    ($($field:ident),* $(,)?) => {
        /// Additive counts of one subject over some days (one case's contribution, a delta,
        /// or a sum). Stored as the columns of `scoring.daily_aggregates` of the same names.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $(pub $field: i64,)*
            pub handling_histogram: [i64; HANDLING_BUCKETS],
        }

        impl Counters {
            pub const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),*];

            pub fn values(&self) -> Vec<i64> {
                vec![$(self.$field),*]
            }

            /// From values in the order of [`Counters::COLUMNS`] and a histogram of any length.
            pub fn from_values(values: &[i64], histogram: &[i64]) -> Self {
                let mut it = values.iter().copied();
                let mut counters = Self {
                    $($field: it.next().unwrap_or(0),)*
                    handling_histogram: [0; HANDLING_BUCKETS],
                };
                for (slot, value) in counters.handling_histogram.iter_mut().zip(histogram) {
                    *slot = *value;
                }
                counters
            }

            /// Adds `sign × other` (sign 1 or −1).
            pub fn add_scaled(&mut self, other: &Self, sign: i64) {
                $(self.$field += sign * other.$field;)*
                for (a, b) in self.handling_histogram.iter_mut().zip(other.handling_histogram) {
                    *a += sign * b;
                }
            }

            pub fn is_zero(&self) -> bool {
                *self == Self::default()
            }
        }
    };
}

counters!(
    cases_opened,
    cases_resolved,
    cases_ever_resolved,
    cases_reopened,
    first_contact_resolved,
    first_response_measured,
    first_response_on_time,
    resolution_measured,
    resolution_on_time,
    handling_samples,
    handling_seconds,
    escalations,
    cases_escalated,
    surveys_invited,
    surveys_answered,
    csat_responses,
    csat_sum,
    csat_satisfied,
    nps_responses,
    nps_promoters,
    nps_detractors,
);

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

/// The 90th percentile as the upper bound of the bucket holding the ⌈0.9·n⌉-th smallest value
/// (the last, open bucket reports its lower bound). `None` when empty.
pub fn p90_seconds(histogram: &[i64]) -> Option<i64> {
    let n: i64 = histogram.iter().map(|c| (*c).max(0)).sum();
    if n == 0 {
        return None;
    }
    let rank = (n * 9 + 9) / 10;
    let mut seen = 0;
    for (bucket, count) in histogram.iter().enumerate() {
        seen += (*count).max(0);
        if seen >= rank {
            return Some(
                HANDLING_BOUNDS_SECS
                    .get(bucket)
                    .copied()
                    .unwrap_or(HANDLING_BOUNDS_SECS[HANDLING_BOUNDS_SECS.len() - 1]),
            );
        }
    }
    None
}

/// Complaints per 10,000 orders; `None` without orders.
pub fn per_10k_orders(complaints: u64, orders: u64) -> Option<f64> {
    (orders > 0).then(|| complaints as f64 * 10_000.0 / orders as f64)
}

/// Every indicator of a subject over a period, derived from its summed counters.
#[derive(Clone, Debug, PartialEq)]
pub struct Indicators {
    pub cases_opened: u64,
    pub cases_resolved: u64,
    pub resolution_rate: Rate,
    pub first_contact_resolution_rate: Rate,
    pub first_response_on_time_rate: Rate,
    pub resolution_on_time_rate: Rate,
    pub handling_time_average_secs: Option<f64>,
    pub handling_time_p90_secs: Option<i64>,
    pub handling_time_samples: u64,
    pub reopen_rate: Rate,
    pub escalations: u64,
    pub escalation_rate: Rate,
    pub survey_response_rate: Rate,
    pub csat_average: Option<f64>,
    pub csat_responses: u64,
    pub satisfaction_rate: Rate,
    pub nps: Option<f64>,
    pub nps_responses: u64,
}

impl Indicators {
    pub fn from_counters(c: &Counters) -> Self {
        let n = |v: i64| v.max(0) as u64;
        Self {
            cases_opened: n(c.cases_opened),
            cases_resolved: n(c.cases_resolved),
            resolution_rate: rate(n(c.cases_resolved), n(c.cases_opened)),
            first_contact_resolution_rate: rate(n(c.first_contact_resolved), n(c.cases_opened)),
            first_response_on_time_rate: rate(
                n(c.first_response_on_time),
                n(c.first_response_measured),
            ),
            resolution_on_time_rate: rate(n(c.resolution_on_time), n(c.resolution_measured)),
            handling_time_average_secs: (c.handling_samples > 0)
                .then(|| c.handling_seconds as f64 / c.handling_samples as f64),
            handling_time_p90_secs: p90_seconds(&c.handling_histogram),
            handling_time_samples: n(c.handling_samples),
            reopen_rate: rate(n(c.cases_reopened), n(c.cases_ever_resolved)),
            escalations: n(c.escalations),
            escalation_rate: rate(n(c.cases_escalated), n(c.cases_opened)),
            survey_response_rate: rate(n(c.surveys_answered), n(c.surveys_invited)),
            csat_average: csat_average(n(c.csat_sum), n(c.csat_responses)),
            csat_responses: n(c.csat_responses),
            satisfaction_rate: rate(n(c.csat_satisfied), n(c.csat_responses)),
            nps: nps(n(c.nps_promoters), n(c.nps_detractors), n(c.nps_responses)),
            nps_responses: n(c.nps_responses),
        }
    }
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

    #[test]
    fn handling_times_fall_in_the_bucket_of_their_upper_bound() {
        assert_eq!(handling_bucket(0), 0);
        assert_eq!(handling_bucket(900), 0);
        assert_eq!(handling_bucket(901), 1);
        assert_eq!(handling_bucket(28_800), 7);
        assert_eq!(handling_bucket(10_000_000), 16);
    }

    #[test]
    fn p90_by_hand() {
        // Ten cases: nine within 1 h (bucket 2), one of 3 days (bucket 10). ⌈0.9·10⌉ = 9th value
        // lies in the 1 h bucket.
        let mut h = [0i64; HANDLING_BUCKETS];
        h[2] = 9;
        h[10] = 1;
        assert_eq!(p90_seconds(&h), Some(3_600));
        // Eleven cases: ⌈9.9⌉ = 10th value is the long one.
        h[2] = 8;
        h[10] = 3;
        assert_eq!(p90_seconds(&h), Some(86_400));
        // One case: its own bucket; none: absent; beyond the last bound: the last bound.
        let mut one = [0i64; HANDLING_BUCKETS];
        one[5] = 1;
        assert_eq!(p90_seconds(&one), Some(14_400));
        assert_eq!(p90_seconds(&[0; HANDLING_BUCKETS]), None);
        let mut long = [0i64; HANDLING_BUCKETS];
        long[16] = 2;
        assert_eq!(p90_seconds(&long), Some(432_000));
    }

    #[test]
    fn complaint_rate_by_hand() {
        // 36 complaints on 120,000 orders = 3 per 10,000.
        assert_eq!(per_10k_orders(36, 120_000), Some(3.0));
        assert_eq!(per_10k_orders(5, 0), None);
        assert_eq!(per_10k_orders(0, 10), Some(0.0));
    }

    #[test]
    fn indicators_from_counters_by_hand() {
        let c = Counters {
            cases_opened: 4,
            cases_resolved: 3,
            cases_ever_resolved: 4,
            cases_reopened: 1,
            first_contact_resolved: 2,
            first_response_measured: 4,
            first_response_on_time: 3,
            resolution_measured: 4,
            resolution_on_time: 2,
            handling_samples: 3,
            handling_seconds: 3_600 + 7_200 + 10_800,
            escalations: 3,
            cases_escalated: 1,
            surveys_invited: 4,
            surveys_answered: 2,
            csat_responses: 2,
            csat_sum: 9,
            csat_satisfied: 2,
            nps_responses: 2,
            nps_promoters: 1,
            nps_detractors: 1,
            ..Counters::default()
        };
        let i = Indicators::from_counters(&c);
        assert_eq!(i.resolution_rate.value, Some(0.75));
        assert_eq!(i.first_contact_resolution_rate.value, Some(0.5));
        assert_eq!(i.first_response_on_time_rate.value, Some(0.75));
        assert_eq!(i.resolution_on_time_rate.value, Some(0.5));
        assert_eq!(i.handling_time_average_secs, Some(7_200.0));
        assert_eq!(i.reopen_rate.value, Some(0.25));
        assert_eq!(i.escalation_rate.value, Some(0.25));
        assert_eq!(i.survey_response_rate.value, Some(0.5));
        assert_eq!(i.csat_average, Some(4.5));
        assert_eq!(i.satisfaction_rate.value, Some(1.0));
        assert_eq!(i.nps, Some(0.0));
        let empty = Indicators::from_counters(&Counters::default());
        assert_eq!(empty.resolution_rate.value, None);
        assert_eq!(empty.handling_time_average_secs, None);
        assert_eq!(empty.handling_time_p90_secs, None);
        assert_eq!(empty.nps, None);
    }

    #[test]
    fn counters_add_and_subtract_back_to_zero() {
        let mut a = Counters {
            cases_opened: 1,
            csat_sum: 5,
            ..Counters::default()
        };
        a.handling_histogram[3] = 1;
        let mut sum = Counters::default();
        sum.add_scaled(&a, 1);
        sum.add_scaled(&a, 1);
        assert_eq!(sum.cases_opened, 2);
        assert_eq!(sum.handling_histogram[3], 2);
        sum.add_scaled(&a, -1);
        sum.add_scaled(&a, -1);
        assert!(sum.is_zero());
        let round = Counters::from_values(&a.values(), &a.handling_histogram);
        assert_eq!(round, a);
    }
}
