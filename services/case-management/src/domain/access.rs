//! Per-object access: agents and supervisors work on their department's cases (or those
//! assigned to them); quality, admin and services see every case. Quality only reads.

use complaints_kit::{Principal, Role};

pub struct CaseScope<'a> {
    pub department_id: &'a str,
    pub owner_id: &'a str,
}

pub fn can_read(principal: &Principal, case: &CaseScope<'_>) -> bool {
    principal.sees_everything() || in_scope(principal, case)
}

pub fn can_change(principal: &Principal, case: &CaseScope<'_>) -> bool {
    principal.has_any(&[Role::Admin, Role::Service]) || in_scope(principal, case)
}

/// Sub-task work: whoever may change the case, plus the people of the department asked to
/// do the sub-task (who need not see the rest of the case).
pub fn can_work_sub_task(
    principal: &Principal,
    case: &CaseScope<'_>,
    sub_task_department: &str,
    sub_task_owner: &str,
) -> bool {
    can_change(principal, case)
        || (principal.has_any(&[Role::Agent, Role::Supervisor])
            && (principal.subject == sub_task_owner
                || principal.department.as_deref() == Some(sub_task_department)))
}

/// The front desk (the fallback department's agents) answers customers about every case, but
/// only through the customer's view, which holds nothing internal (one-stop service).
pub fn can_read_customer_view(principal: &Principal, case: &CaseScope<'_>) -> bool {
    can_read(principal, case)
        || (principal.has_any(&[Role::Agent, Role::Supervisor])
            && principal.department.as_deref() == Some(crate::domain::routing::FALLBACK_DEPARTMENT))
}

/// Assigning a case by hand within its department: its supervisors and admins.
pub fn can_assign(principal: &Principal, case: &CaseScope<'_>) -> bool {
    principal.has(Role::Admin)
        || (principal.has(Role::Supervisor)
            && principal.department.as_deref() == Some(case.department_id))
}

/// Running the problem ledger: quality, supervisors and admins.
pub fn can_manage_problems(principal: &Principal) -> bool {
    principal.has_any(&[Role::Quality, Role::Supervisor, Role::Admin])
}

fn in_scope(principal: &Principal, case: &CaseScope<'_>) -> bool {
    if !principal.has_any(&[Role::Agent, Role::Supervisor]) {
        return false;
    }
    case.owner_id == principal.subject
        || principal.department.as_deref() == Some(case.department_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, dept: Option<&str>) -> Principal {
        Principal {
            subject: "u1".into(),
            roles: vec![role],
            department: dept.map(Into::into),
        }
    }

    #[test]
    fn agent_of_other_department_cannot_see_or_change_case() {
        let case = CaseScope {
            department_id: "quality",
            owner_id: "someone",
        };
        let agent = who(Role::Agent, Some("billing"));
        assert!(!can_read(&agent, &case));
        assert!(!can_change(&agent, &case));
    }

    #[test]
    fn agent_sees_own_department_and_own_cases() {
        let agent = who(Role::Agent, Some("quality"));
        assert!(can_read(
            &agent,
            &CaseScope {
                department_id: "quality",
                owner_id: "x"
            }
        ));
        let elsewhere = who(Role::Agent, Some("billing"));
        assert!(can_change(
            &elsewhere,
            &CaseScope {
                department_id: "quality",
                owner_id: "u1"
            }
        ));
    }

    #[test]
    fn quality_reads_everything_but_changes_nothing() {
        let q = who(Role::Quality, None);
        let case = CaseScope {
            department_id: "quality",
            owner_id: "x",
        };
        assert!(can_read(&q, &case));
        assert!(!can_change(&q, &case));
    }

    #[test]
    fn the_asked_department_works_its_sub_task_without_seeing_the_case() {
        let case = CaseScope {
            department_id: "quality",
            owner_id: "x",
        };
        let logistics = who(Role::Agent, Some("logistics"));
        assert!(!can_read(&logistics, &case));
        assert!(can_work_sub_task(&logistics, &case, "logistics", "y"));
        assert!(!can_work_sub_task(&logistics, &case, "billing", "y"));
    }

    #[test]
    fn the_front_desk_reads_only_the_customer_view() {
        let case = CaseScope {
            department_id: "quality",
            owner_id: "x",
        };
        let desk = who(Role::Agent, Some("customer-care"));
        assert!(can_read_customer_view(&desk, &case));
        assert!(!can_read(&desk, &case));
        assert!(!can_read_customer_view(
            &who(Role::Agent, Some("billing")),
            &case
        ));
    }

    #[test]
    fn only_the_departments_supervisor_or_an_admin_assigns() {
        let case = CaseScope {
            department_id: "quality",
            owner_id: "x",
        };
        assert!(can_assign(&who(Role::Supervisor, Some("quality")), &case));
        assert!(!can_assign(&who(Role::Supervisor, Some("billing")), &case));
        assert!(!can_assign(&who(Role::Agent, Some("quality")), &case));
        assert!(can_assign(&who(Role::Admin, None), &case));
        assert!(can_manage_problems(&who(Role::Quality, None)));
        assert!(!can_manage_problems(&who(Role::Agent, Some("quality"))));
    }
}
