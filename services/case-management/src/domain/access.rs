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
}
