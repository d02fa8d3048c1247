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
    pub skills: Vec<String>,
    pub languages: Vec<String>,
}

/// What a case asks of its owner.
#[derive(Clone, Debug, Default)]
pub struct Need<'a> {
    /// A senior agent (top-tier customer or crisis).
    pub senior: bool,
    /// The skill the case calls for (its category, or what the skill map says).
    pub skill: Option<&'a str>,
    /// The customer's language (BCP 47), when known.
    pub language: Option<&'a str>,
}

/// The skill a category calls for: the configured mapping, else the category itself.
pub fn skill_for<'a>(
    category: &'a str,
    skill_map: &'a std::collections::BTreeMap<String, String>,
) -> &'a str {
    skill_map
        .get(category)
        .map(String::as_str)
        .unwrap_or(category)
}

/// Whether an agent speaks `language`: "zh" matches "zh-CN" and the other way round.
fn speaks(agent: &AgentLoad, language: &str) -> bool {
    let primary = |tag: &str| tag.split('-').next().unwrap_or("").to_ascii_lowercase();
    agent
        .languages
        .iter()
        .any(|l| l.eq_ignore_ascii_case(language) || primary(l) == primary(language))
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

/// The least-loaded available agent with spare capacity. Preferences, strongest first: a
/// senior agent when needed, an agent with the skill, an agent who speaks the language; each
/// preference narrows the field only when someone meets it. Without any free agent the
/// department's first escalation contact (the supervisor) owns the case.
pub fn choose_owner(department: &Department, agents: &[AgentLoad], need: &Need<'_>) -> String {
    let mut candidates: Vec<&AgentLoad> = agents
        .iter()
        .filter(|a| a.available && a.open_cases < a.capacity)
        .collect();
    let mut prefer = |keep: &dyn Fn(&AgentLoad) -> bool| {
        if candidates.iter().any(|a| keep(a)) {
            candidates.retain(|a| keep(a));
        }
    };
    if need.senior {
        prefer(&|a| a.senior);
    }
    if let Some(skill) = need.skill {
        prefer(&|a| a.skills.iter().any(|s| s == skill));
    }
    if let Some(language) = need.language.filter(|l| !l.is_empty()) {
        prefer(&|a| speaks(a, language));
    }
    candidates
        .into_iter()
        .min_by(|a, b| {
            let la = a.open_cases as f64 / a.capacity.max(1) as f64;
            let lb = b.open_cases as f64 / b.capacity.max(1) as f64;
            la.total_cmp(&lb).then_with(|| a.id.cmp(&b.id))
        })
        .map(|a| a.id.clone())
        .unwrap_or_else(|| supervisor(department))
}

/// Who may own a case of `department` when assigned by hand: one of its agents, or a person
/// of its escalation chain.
pub fn may_own(department: &Department, agents: &[AgentLoad], owner: &str) -> bool {
    agents.iter().any(|a| a.id == owner) || department.escalation_chain.iter().any(|p| p == owner)
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
            skills: vec![],
            languages: vec![],
        }
    }

    fn need(senior: bool) -> Need<'static> {
        Need {
            senior,
            ..Need::default()
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
        assert_eq!(choose_owner(&dept(), &agents, &need(false)), "c");
    }

    #[test]
    fn senior_agents_take_vip_and_crisis_cases() {
        let agents = vec![agent("junior", 0, false), agent("senior", 4, true)];
        assert_eq!(choose_owner(&dept(), &agents, &need(true)), "senior");
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
        assert_eq!(choose_owner(&dept(), &agents, &need(false)), "sup");
    }

    #[test]
    fn escalation_climbs_the_chain_and_stops_at_the_top() {
        assert_eq!(escalation_owner(&dept(), 1), "sup");
        assert_eq!(escalation_owner(&dept(), 2), "mgr");
        assert_eq!(escalation_owner(&dept(), 4), "exec");
        assert_eq!(escalation_owner(&dept(), 9), "exec");
    }

    #[test]
    fn an_agent_with_the_matching_skill_is_preferred_over_a_less_loaded_one() {
        let mut skilled = agent("skilled", 6, false);
        skilled.skills = vec!["product_quality".into()];
        let agents = vec![agent("idle", 0, false), skilled];
        let need = Need {
            skill: Some("product_quality"),
            ..Need::default()
        };
        assert_eq!(choose_owner(&dept(), &agents, &need), "skilled");
        // Nobody has the skill: plain least-loaded routing.
        let need = Need {
            skill: Some("billing"),
            ..Need::default()
        };
        assert_eq!(choose_owner(&dept(), &agents, &need), "idle");
    }

    #[test]
    fn a_full_skilled_agent_does_not_block_routing() {
        let mut skilled = agent("skilled", 10, false);
        skilled.skills = vec!["product_quality".into()];
        let agents = vec![agent("other", 3, false), skilled];
        let need = Need {
            skill: Some("product_quality"),
            ..Need::default()
        };
        assert_eq!(choose_owner(&dept(), &agents, &need), "other");
    }

    #[test]
    fn seniority_outranks_skill_and_language_breaks_ties() {
        let mut senior = agent("senior", 5, true);
        senior.languages = vec!["en".into()];
        let mut skilled = agent("skilled", 0, false);
        skilled.skills = vec!["product_quality".into()];
        let mut senior_zh = agent("senior-zh", 8, true);
        senior_zh.languages = vec!["zh-CN".into()];
        let agents = vec![senior, skilled, senior_zh];
        let need = Need {
            senior: true,
            skill: Some("product_quality"),
            language: Some("zh"),
        };
        assert_eq!(choose_owner(&dept(), &agents, &need), "senior-zh");
        let need = Need {
            senior: true,
            skill: Some("product_quality"),
            language: None,
        };
        assert_eq!(choose_owner(&dept(), &agents, &need), "senior");
    }

    #[test]
    fn the_skill_map_overrides_the_category() {
        let mut map = std::collections::BTreeMap::new();
        map.insert("delivery".to_owned(), "logistics-claims".to_owned());
        assert_eq!(skill_for("delivery", &map), "logistics-claims");
        assert_eq!(skill_for("billing", &map), "billing");
    }

    #[test]
    fn only_department_agents_or_its_chain_may_own_a_case() {
        let agents = vec![agent("a", 0, false)];
        assert!(may_own(&dept(), &agents, "a"));
        assert!(may_own(&dept(), &agents, "mgr"));
        assert!(!may_own(&dept(), &agents, "stranger"));
    }
}
