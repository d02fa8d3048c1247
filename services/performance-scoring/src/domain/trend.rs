//! The trend against the seeds' targets (seed 002): satisfaction ≥ 92 %, complaint rate down
//! at least 40 % against a baseline period, NPS up at least 35 points.

pub const SATISFACTION_TARGET: f64 = 0.92;
pub const COMPLAINT_RATE_CHANGE_TARGET: f64 = -0.40;
pub const NPS_CHANGE_TARGET: f64 = 35.0;

/// Relative change of the complaint rate (−0.4 = down 40 %); `None` without both rates or with
/// a zero baseline.
pub fn complaint_rate_change(rate: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (rate, baseline) {
        (Some(r), Some(b)) if b > 0.0 => Some((r - b) / b),
        _ => None,
    }
}

/// NPS points gained against the baseline.
pub fn nps_change(nps: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    Some(nps? - baseline?)
}

pub fn satisfaction_met(rate: Option<f64>) -> Option<bool> {
    rate.map(|r| r >= SATISFACTION_TARGET)
}

pub fn complaint_rate_met(change: Option<f64>) -> Option<bool> {
    change.map(|c| c <= COMPLAINT_RATE_CHANGE_TARGET + 1e-12)
}

pub fn nps_met(change: Option<f64>) -> Option<bool> {
    change.map(|c| c >= NPS_CHANGE_TARGET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complaint_rate_down_40_percent_meets_the_target() {
        // From 5 to 3 per 10,000 orders: −40 %.
        let change = complaint_rate_change(Some(3.0), Some(5.0));
        assert!((change.unwrap() + 0.4).abs() < 1e-12);
        assert_eq!(complaint_rate_met(change), Some(true));
        assert_eq!(
            complaint_rate_met(complaint_rate_change(Some(3.5), Some(5.0))),
            Some(false)
        );
        assert_eq!(complaint_rate_change(Some(3.0), Some(0.0)), None);
        assert_eq!(complaint_rate_change(None, Some(5.0)), None);
        assert_eq!(complaint_rate_met(None), None);
    }

    #[test]
    fn nps_and_satisfaction_targets_by_hand() {
        assert_eq!(nps_change(Some(40.0), Some(5.0)), Some(35.0));
        assert_eq!(nps_met(Some(35.0)), Some(true));
        assert_eq!(nps_met(Some(34.9)), Some(false));
        assert_eq!(nps_change(None, Some(5.0)), None);
        assert_eq!(satisfaction_met(Some(0.92)), Some(true));
        assert_eq!(satisfaction_met(Some(0.919)), Some(false));
        assert_eq!(satisfaction_met(None), None);
    }
}
