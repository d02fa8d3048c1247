//! Configurable case policy: what a dissatisfied survey answer does, and which agent skill a
//! category calls for. Parsed from text so start-up can name a bad variable.

use std::collections::BTreeMap;

/// What happens to a resolved case when the customer answers the survey dissatisfied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DissatisfactionAction {
    /// The case goes back to investigation (status REOPENED): the owner works it again.
    #[default]
    Reopen,
    /// The case keeps its status; a "dissatisfaction review" sub-task goes to the department's
    /// supervisor and the case is flagged `under_review` until the review is done.
    Review,
}

impl std::str::FromStr for DissatisfactionAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reopen" => Ok(Self::Reopen),
            "review" => Ok(Self::Review),
            _ => Err("expected reopen or review".into()),
        }
    }
}

/// The case policy of one deployment.
#[derive(Clone, Debug, Default)]
pub struct CasePolicy {
    pub dissatisfaction: DissatisfactionAction,
    /// Category → the agent skill it calls for; an unmapped category calls for itself.
    pub skill_map: BTreeMap<String, String>,
}

/// `category=skill` pairs separated by commas, e.g. `delivery=logistics-claims,billing=refunds`.
pub fn parse_skill_map(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (category, skill) = pair
            .split_once('=')
            .map(|(c, s)| (c.trim(), s.trim()))
            .filter(|(c, s)| !c.is_empty() && !s.is_empty())
            .ok_or_else(|| format!("{pair:?} is not category=skill"))?;
        map.insert(category.to_owned(), skill.to_owned());
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dissatisfaction_action_parses_both_words_only() {
        assert_eq!("reopen".parse(), Ok(DissatisfactionAction::Reopen));
        assert_eq!(" Review ".parse(), Ok(DissatisfactionAction::Review));
        assert!("escalate".parse::<DissatisfactionAction>().is_err());
    }

    #[test]
    fn skill_map_reads_pairs_and_names_a_bad_one() {
        let map = parse_skill_map("delivery=logistics-claims, billing = refunds,").unwrap();
        assert_eq!(map["delivery"], "logistics-claims");
        assert_eq!(map["billing"], "refunds");
        assert!(parse_skill_map("").unwrap().is_empty());
        let err = parse_skill_map("delivery").unwrap_err();
        assert!(err.contains("delivery"));
        assert!(parse_skill_map("=x").is_err());
    }
}
