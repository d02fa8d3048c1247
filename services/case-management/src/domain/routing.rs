//! Who owns a new case (责任到人: always exactly one owner) and who an escalation goes to.

use complaints_proto::common::v1::{CustomerTier, Severity};

#[derive(Clone, Debug)]
pub struct Department {
    pub id: String,
    pub categories: Vec<String>,
    pub escalation_chain: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct AgentLoad {
    pub id: String,
    pub available: bool,
    pub senior: bool,
    pub capacity: u32,
    pub open_cases: u32,
}

pub const FALLBACK_DEPARTMENT: &str = "customer-care";

/// The department whose categories contain `category`, else the fallback (or the first).
pub fn department_for<'a>(departments: &'a [Department], category: &str) -> Option<&'a Department> {
    departments
        .iter()
        .find(|d| d.categories.iter().any(|c| c == category))
        .or_else(|| departments.iter().find(|d| d.id == FALLBACK_DEPARTMENT))
        .or_else(|| departments.first())
}

/// Whether the case should go to a senior agent.
pub fn needs_senior(tier: CustomerTier, severity: Severity) -> bool {
    matches!(tier, CustomerTier::Vip) || matches!(severity, Severity::Crisis)
}

/// The least-loaded available agent with spare capacity (senior ones first when needed);
/// without one, the department's first escalation contact (the supervisor) owns the case.
pub fn choose_owner(department: &Department, agents: &[AgentLoad], senior: bool) -> String {
    let candidates = agents
        .iter()
        .filter(|a| a.available && a.open_cases < a.capacity);
    let pick = |only_senior: bool| {
        candidates
            .clone()
            .filter(|a| !only_senior || a.senior)
            .min_by(|a, b| {
                let la = a.open_cases as f64 / a.capacity.max(1) as f64;
                let lb = b.open_cases as f64 / b.capacity.max(1) as f64;
                la.total_cmp(&lb).then_with(|| a.id.cmp(&b.id))
            })
            .map(|a| a.id.clone())
    };
    let chosen = if senior {
        pick(true).or_else(|| pick(false))
    } else {
        pick(false)
    };
    chosen.unwrap_or_else(|| supervisor(department))
}

pub fn supervisor(department: &Department) -> String {
    department
        .escalation_chain
        .first()
        .cloned()
        .unwrap_or_else(|| format!("{}-supervisor", department.id))
}

/// Who holds the case at escalation `level` (1 = supervisor … the chain's last stays last).
pub fn escalation_owner(department: &Department, level: u32) -> String {
    let chain = &department.escalation_chain;
    if chain.is_empty() {
        return supervisor(department);
    }
    let index = (level.max(1) as usize - 1).min(chain.len() - 1);
    chain[index].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dept() -> Department {
        Department {
            id: "quality".into(),
            categories: vec!["product_quality".into()],
            escalation_chain: vec!["sup".into(), "mgr".into(), "dir".into(), "exec".into()],
        }
    }

    fn agent(id: &str, open: u32, senior: bool) -> AgentLoad {
        AgentLoad {
            id: id.into(),
            available: true,
            senior,
            capacity: 10,
            open_cases: open,
        }
    }

    #[test]
    fn category_routes_to_its_department_or_the_fallback() {
        let depts = vec![
            Department {
                id: "customer-care".into(),
                categories: vec![],
                escalation_chain: vec![],
            },
            dept(),
        ];
        assert_eq!(
            department_for(&depts, "product_quality").unwrap().id,
            "quality"
        );
        assert_eq!(
            department_for(&depts, "unknown").unwrap().id,
            "customer-care"
        );
    }

    #[test]
    fn least_loaded_available_agent_wins() {
        let mut busy = agent("a", 1, false);
        busy.available = false;
        let agents = vec![busy, agent("b", 5, false), agent("c", 2, false)];
        assert_eq!(choose_owner(&dept(), &agents, false), "c");
    }

    #[test]
    fn senior_agents_take_vip_and_crisis_cases() {
        let agents = vec![agent("junior", 0, false), agent("senior", 4, true)];
        assert_eq!(choose_owner(&dept(), &agents, true), "senior");
        assert!(needs_senior(CustomerTier::Vip, Severity::General));
        assert!(needs_senior(CustomerTier::Regular, Severity::Crisis));
        assert!(!needs_senior(CustomerTier::Regular, Severity::Major));
    }

    #[test]
    fn without_free_agents_the_supervisor_owns_the_case() {
        let agents = vec![AgentLoad {
            capacity: 1,
            open_cases: 1,
            ..agent("full", 0, false)
        }];
        assert_eq!(choose_owner(&dept(), &agents, false), "sup");
    }

    #[test]
    fn escalation_climbs_the_chain_and_stops_at_the_top() {
        assert_eq!(escalation_owner(&dept(), 1), "sup");
        assert_eq!(escalation_owner(&dept(), 2), "mgr");
        assert_eq!(escalation_owner(&dept(), 4), "exec");
        assert_eq!(escalation_owner(&dept(), 9), "exec");
    }
}
