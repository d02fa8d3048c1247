//! Rules for work around a case: sub-tasks requested from other departments, problems of the
//! ledger, and priority raised by a repeat contact.

use complaints_proto::cases::v1::{ProblemStatus, SubTaskStatus};
use complaints_proto::common::v1::Priority;

/// Sub-task statuses reachable from `from`; done and cancelled are final.
pub fn sub_task_next(from: SubTaskStatus) -> &'static [SubTaskStatus] {
    use SubTaskStatus::*;
    match from {
        Open => &[InProgress, Done, Cancelled],
        InProgress => &[Done, Cancelled],
        Done | Cancelled | Unspecified => &[],
    }
}

pub fn sub_task_is_finished(status: SubTaskStatus) -> bool {
    matches!(status, SubTaskStatus::Done | SubTaskStatus::Cancelled)
}

/// Problem statuses reachable from `from` (a problem can go back to analysis while open).
pub fn problem_next(from: ProblemStatus) -> &'static [ProblemStatus] {
    use ProblemStatus::*;
    match from {
        Open => &[Analysing, ActionInProgress, Closed],
        Analysing => &[ActionInProgress, Closed],
        ActionInProgress => &[Fixed, Analysing],
        Fixed => &[Closed, Analysing],
        Closed => &[Analysing],
        Unspecified => &[],
    }
}

/// Why a problem may not take the requested status, if it may not.
pub fn check_problem_status(
    from: ProblemStatus,
    to: ProblemStatus,
    root_cause: &str,
    corrective_action: &str,
) -> Result<(), String> {
    if from != to && !problem_next(from).contains(&to) {
        let allowed: Vec<&str> = problem_next(from).iter().map(|s| s.as_str_name()).collect();
        return Err(format!(
            "a problem in {} cannot move to {}; allowed: {}",
            from.as_str_name(),
            to.as_str_name(),
            allowed.join(", ")
        ));
    }
    let needs_cause = matches!(to, ProblemStatus::ActionInProgress | ProblemStatus::Fixed);
    if needs_cause && root_cause.trim().is_empty() {
        return Err(format!("{} needs a root cause", to.as_str_name()));
    }
    if matches!(to, ProblemStatus::Fixed) && corrective_action.trim().is_empty() {
        return Err(format!("{} needs a corrective action", to.as_str_name()));
    }
    Ok(())
}

/// The priority a repeat contact raises the case to, if it is more urgent (P1 is the most
/// urgent) than the case's own.
pub fn raised_priority(current: Priority, raised: Priority) -> Option<Priority> {
    match (current, raised) {
        (_, Priority::Unspecified) => None,
        (Priority::Unspecified, raised) => Some(raised),
        (current, raised) if (raised as i32) < (current as i32) => Some(raised),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_sub_tasks_stay_finished() {
        use SubTaskStatus::*;
        assert!(sub_task_next(Open).contains(&Done));
        assert!(sub_task_next(InProgress).contains(&Cancelled));
        assert!(!sub_task_next(InProgress).contains(&Open));
        assert!(sub_task_next(Done).is_empty());
        assert!(sub_task_next(Cancelled).is_empty());
        assert!(sub_task_is_finished(Done) && !sub_task_is_finished(InProgress));
    }

    #[test]
    fn a_problem_is_fixed_only_with_root_cause_and_corrective_action() {
        use ProblemStatus::*;
        assert!(check_problem_status(Open, Analysing, "", "").is_ok());
        assert!(check_problem_status(Analysing, ActionInProgress, "", "x").is_err());
        assert!(check_problem_status(Analysing, ActionInProgress, "bad seal", "").is_ok());
        assert!(check_problem_status(ActionInProgress, Fixed, "bad seal", "").is_err());
        assert!(check_problem_status(ActionInProgress, Fixed, "bad seal", "new supplier").is_ok());
        let err = check_problem_status(Open, Fixed, "c", "a").unwrap_err();
        assert!(err.contains("PROBLEM_STATUS_ANALYSING"), "{err}");
        assert!(check_problem_status(Closed, Analysing, "", "").is_ok());
        // Editing the text without moving keeps the status.
        assert!(check_problem_status(Analysing, Analysing, "", "").is_ok());
    }

    #[test]
    fn a_repeat_contact_only_ever_raises_priority() {
        use Priority::*;
        assert_eq!(raised_priority(P3, P2), Some(P2));
        assert_eq!(raised_priority(P2, P3), None);
        assert_eq!(raised_priority(P2, P2), None);
        assert_eq!(raised_priority(P2, Unspecified), None);
        assert_eq!(raised_priority(Unspecified, P4), Some(P4));
    }
}
