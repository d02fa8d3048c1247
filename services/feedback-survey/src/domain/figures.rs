//! Survey figures from counts: response rate, CSAT average, satisfaction rate (share of 4–5),
//! NPS (% promoters 9–10 minus % detractors 0–6) and solved rate, each with the counts behind it.

/// What the store counts for one group of invitations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub issued: u64,
    pub sent: u64,
    pub opted_out: u64,
    pub responses: u64,
    pub return_visit_responses: u64,
    pub csat_responses: u64,
    pub csat_sum: u64,
    /// CSAT answers of 4 or 5.
    pub csat_satisfied: u64,
    pub nps_responses: u64,
    pub promoters: u64,
    pub passives: u64,
    pub detractors: u64,
    pub solved_answers: u64,
    pub solved_yes: u64,
    pub dissatisfied: u64,
}

/// A rate and the counts behind it; no value when nothing was counted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub numerator: u64,
    pub denominator: u64,
}

impl Rate {
    pub fn value(self) -> Option<f64> {
        (self.denominator > 0).then(|| self.numerator as f64 / self.denominator as f64)
    }
}

impl Counts {
    pub fn response_rate(&self) -> Rate {
        Rate {
            numerator: self.responses,
            denominator: self.sent,
        }
    }

    pub fn csat_average(&self) -> Option<f64> {
        (self.csat_responses > 0).then(|| self.csat_sum as f64 / self.csat_responses as f64)
    }

    pub fn satisfaction_rate(&self) -> Rate {
        Rate {
            numerator: self.csat_satisfied,
            denominator: self.csat_responses,
        }
    }

    pub fn nps(&self) -> Option<f64> {
        (self.nps_responses > 0).then(|| {
            100.0 * (self.promoters as f64 - self.detractors as f64) / self.nps_responses as f64
        })
    }

    pub fn solved_rate(&self) -> Rate {
        Rate {
            numerator: self.solved_yes,
            denominator: self.solved_answers,
        }
    }

    pub fn meets_satisfaction_target(&self, target: f64) -> Option<bool> {
        // Compare in integers so 92 of 100 meets 0.92 despite floating point.
        let rate = self.satisfaction_rate();
        (rate.denominator > 0).then(|| {
            rate.numerator as f64 * 1e6 >= (target * 1e6).round() * rate.denominator as f64
        })
    }

    pub fn add(&mut self, other: &Counts) {
        self.issued += other.issued;
        self.sent += other.sent;
        self.opted_out += other.opted_out;
        self.responses += other.responses;
        self.return_visit_responses += other.return_visit_responses;
        self.csat_responses += other.csat_responses;
        self.csat_sum += other.csat_sum;
        self.csat_satisfied += other.csat_satisfied;
        self.nps_responses += other.nps_responses;
        self.promoters += other.promoters;
        self.passives += other.passives;
        self.detractors += other.detractors;
        self.solved_answers += other.solved_answers;
        self.solved_yes += other.solved_yes;
        self.dissatisfied += other.dissatisfied;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_carry_their_counts_and_nps_is_promoters_minus_detractors() {
        let counts = Counts {
            issued: 12,
            sent: 10,
            responses: 4,
            csat_responses: 4,
            csat_sum: 15,
            csat_satisfied: 3,
            nps_responses: 4,
            promoters: 2,
            passives: 1,
            detractors: 1,
            solved_answers: 2,
            solved_yes: 1,
            ..Default::default()
        };
        assert_eq!(counts.response_rate().value(), Some(0.4));
        assert_eq!(counts.csat_average(), Some(3.75));
        assert_eq!(counts.satisfaction_rate().value(), Some(0.75));
        assert_eq!(counts.nps(), Some(25.0));
        assert_eq!(counts.solved_rate().value(), Some(0.5));
        assert_eq!(counts.meets_satisfaction_target(0.92), Some(false));
    }

    #[test]
    fn nothing_counted_means_no_value() {
        let counts = Counts::default();
        assert_eq!(counts.response_rate().value(), None);
        assert_eq!(counts.csat_average(), None);
        assert_eq!(counts.nps(), None);
        assert_eq!(counts.meets_satisfaction_target(0.92), None);
    }

    #[test]
    fn exactly_the_target_meets_it() {
        let counts = Counts {
            csat_responses: 100,
            csat_satisfied: 92,
            ..Default::default()
        };
        assert_eq!(counts.meets_satisfaction_target(0.92), Some(true));
        let counts = Counts {
            csat_responses: 100,
            csat_satisfied: 91,
            ..Default::default()
        };
        assert_eq!(counts.meets_satisfaction_target(0.92), Some(false));
    }
}
