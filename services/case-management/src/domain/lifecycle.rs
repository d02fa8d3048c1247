//! The one place that knows which status may follow which.
//!
//! 受理 accepted → 调查核实 investigating → 方案 solution proposed (customer accepts → 实施
//! implementing; rejects → back to investigating) → resolved → 回访 follow-up → closed, with
//! waiting-on-customer (pauses the resolution clock), reopened and cancelled.

use complaints_proto::common::v1::CaseStatus;

/// Statuses reachable from `from`.
pub fn allowed_next(from: CaseStatus) -> &'static [CaseStatus] {
    use CaseStatus::*;
    match from {
        Accepted => &[Investigating, WaitingOnCustomer, Cancelled],
        Investigating => &[SolutionProposed, WaitingOnCustomer, Resolved, Cancelled],
        SolutionProposed => &[Implementing, Investigating, WaitingOnCustomer],
        Implementing => &[Resolved, WaitingOnCustomer],
        WaitingOnCustomer => &[Investigating, SolutionProposed, Implementing, Cancelled],
        Resolved => &[FollowUp, Closed, Reopened],
        FollowUp => &[Closed, Reopened],
        Closed => &[Reopened],
        Reopened => &[Investigating, WaitingOnCustomer],
        Cancelled | Unspecified => &[],
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IllegalTransition {
    pub from: CaseStatus,
    pub to: CaseStatus,
    pub allowed: &'static [CaseStatus],
}

impl std::fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allowed: Vec<&str> = self.allowed.iter().map(|s| s.as_str_name()).collect();
        write!(
            f,
            "a case in {} cannot move to {}; allowed: {}",
            self.from.as_str_name(),
            self.to.as_str_name(),
            if allowed.is_empty() {
                "none (final status)".to_owned()
            } else {
                allowed.join(", ")
            }
        )
    }
}

pub fn check_transition(from: CaseStatus, to: CaseStatus) -> Result<(), IllegalTransition> {
    let allowed = allowed_next(from);
    if allowed.contains(&to) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to, allowed })
    }
}

/// Whether the case still counts as open work for its owner.
pub fn is_open(status: CaseStatus) -> bool {
    !matches!(
        status,
        CaseStatus::Resolved | CaseStatus::FollowUp | CaseStatus::Closed | CaseStatus::Cancelled
    )
}

/// Whether the first response can still be given.
pub fn can_acknowledge(status: CaseStatus, already: bool) -> bool {
    !already && !matches!(status, CaseStatus::Cancelled | CaseStatus::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaseStatus::*;

    const ALL: [CaseStatus; 10] = [
        Accepted,
        Investigating,
        SolutionProposed,
        Implementing,
        Resolved,
        FollowUp,
        Closed,
        WaitingOnCustomer,
        Reopened,
        Cancelled,
    ];

    #[test]
    fn the_main_path_is_allowed() {
        let path = [
            Accepted,
            Investigating,
            SolutionProposed,
            Implementing,
            Resolved,
            FollowUp,
            Closed,
        ];
        for pair in path.windows(2) {
            assert!(check_transition(pair[0], pair[1]).is_ok(), "{pair:?}");
        }
    }

    #[test]
    fn every_pair_follows_the_table() {
        let expected_allowed = [
            (Accepted, Investigating),
            (Accepted, WaitingOnCustomer),
            (Accepted, Cancelled),
            (Investigating, SolutionProposed),
            (Investigating, WaitingOnCustomer),
            (Investigating, Resolved),
            (Investigating, Cancelled),
            (SolutionProposed, Implementing),
            (SolutionProposed, Investigating),
            (SolutionProposed, WaitingOnCustomer),
            (Implementing, Resolved),
            (Implementing, WaitingOnCustomer),
            (WaitingOnCustomer, Investigating),
            (WaitingOnCustomer, SolutionProposed),
            (WaitingOnCustomer, Implementing),
            (WaitingOnCustomer, Cancelled),
            (Resolved, FollowUp),
            (Resolved, Closed),
            (Resolved, Reopened),
            (FollowUp, Closed),
            (FollowUp, Reopened),
            (Closed, Reopened),
            (Reopened, Investigating),
            (Reopened, WaitingOnCustomer),
        ];
        for from in ALL {
            for to in ALL {
                let allowed = expected_allowed.contains(&(from, to));
                assert_eq!(
                    check_transition(from, to).is_ok(),
                    allowed,
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn refusal_names_the_allowed_statuses() {
        let err = check_transition(Accepted, Closed).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("CASE_STATUS_INVESTIGATING"), "{text}");
        assert!(text.contains("CASE_STATUS_CANCELLED"), "{text}");
        let err = check_transition(Cancelled, Reopened).unwrap_err();
        assert!(err.to_string().contains("final status"));
    }

    #[test]
    fn resolved_and_later_are_not_open_work() {
        assert!(is_open(Investigating));
        assert!(is_open(WaitingOnCustomer));
        assert!(!is_open(Resolved));
        assert!(!is_open(Cancelled));
    }
}
