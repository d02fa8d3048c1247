//! Classification (分类), severity grading (分级), priority (优先级) and complexity, each with
//! the reasons behind it. Keywords of a taxonomy version are compiled into one multi-pattern
//! automaton (Aho–Corasick) over case-folded text, so matching works on Chinese text without
//! spaces as well as on English, in one pass whatever the number of rules.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use complaints_proto::common::v1::{Complexity, CustomerTier, Priority, Severity};
use serde::{Deserialize, Serialize};

/// A category and the keywords that select it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryRule {
    pub category: String,
    pub label_zh: String,
    pub label_en: String,
    pub keywords: Vec<String>,
}

/// A signal that raises severity to major or crisis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeveritySignal {
    pub signal: String,
    /// `Severity` as its number (major or crisis).
    pub severity: i32,
    pub keywords: Vec<String>,
}

/// One version of the classification rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxonomyRules {
    pub categories: Vec<CategoryRule>,
    pub severity_signals: Vec<SeveritySignal>,
    pub complex_keywords: Vec<String>,
    pub urgent_keywords: Vec<String>,
}

pub const OTHER_CATEGORY: &str = "other";

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| (*w).to_owned()).collect()
}

fn category(id: &str, zh: &str, en: &str, keywords: &[&str]) -> CategoryRule {
    CategoryRule {
        category: id.into(),
        label_zh: zh.into(),
        label_en: en.into(),
        keywords: words(keywords),
    }
}

/// The shipped rules (version 1).
pub fn default_rules() -> TaxonomyRules {
    TaxonomyRules {
        categories: vec![
            category(
                "product_quality",
                "产品质量",
                "Product quality",
                &[
                    "质量",
                    "坏了",
                    "损坏",
                    "破损",
                    "故障",
                    "瑕疵",
                    "不能用",
                    "质量问题",
                    "defect",
                    "broken",
                    "faulty",
                    "damaged",
                    "stopped working",
                    "quality",
                ],
            ),
            category(
                "service_attitude",
                "服务态度",
                "Service attitude",
                &[
                    "态度",
                    "不耐烦",
                    "辱骂",
                    "粗鲁",
                    "服务差",
                    "敷衍",
                    "rude",
                    "impolite",
                    "attitude",
                    "unhelpful",
                    "ignored",
                ],
            ),
            category(
                "after_sales",
                "售后服务",
                "After-sales service",
                &[
                    "售后", "退货", "换货", "维修", "保修", "退款", "refund", "return", "repair",
                    "warranty", "exchange",
                ],
            ),
            category(
                "delivery",
                "物流配送",
                "Delivery and logistics",
                &[
                    "物流",
                    "快递",
                    "配送",
                    "送货",
                    "延迟",
                    "没收到",
                    "未收到",
                    "delivery",
                    "shipping",
                    "courier",
                    "late",
                    "not arrived",
                    "lost parcel",
                ],
            ),
            category(
                "billing",
                "价格收费",
                "Billing and price",
                &[
                    "价格",
                    "收费",
                    "扣费",
                    "账单",
                    "多收",
                    "发票",
                    "price",
                    "charge",
                    "billing",
                    "invoice",
                    "overcharged",
                ],
            ),
            category(
                "privacy",
                "隐私",
                "Privacy",
                &[
                    "隐私",
                    "泄露",
                    "个人信息",
                    "骚扰电话",
                    "privacy",
                    "data leak",
                    "personal data",
                    "spam calls",
                ],
            ),
        ],
        severity_signals: vec![
            SeveritySignal {
                signal: "media exposure".into(),
                severity: Severity::Crisis as i32,
                keywords: words(&[
                    "媒体",
                    "曝光",
                    "记者",
                    "微博",
                    "热搜",
                    "journalist",
                    "media",
                    "go viral",
                    "press",
                ]),
            },
            SeveritySignal {
                signal: "safety or injury".into(),
                severity: Severity::Crisis as i32,
                keywords: words(&[
                    "受伤",
                    "爆炸",
                    "起火",
                    "中毒",
                    "安全隐患",
                    "injury",
                    "injured",
                    "explode",
                    "fire",
                    "poison",
                ]),
            },
            SeveritySignal {
                signal: "legal or regulator threat".into(),
                severity: Severity::Major as i32,
                keywords: words(&[
                    "律师",
                    "起诉",
                    "法院",
                    "消协",
                    "投诉到",
                    "市场监管",
                    "lawyer",
                    "sue",
                    "court",
                    "regulator",
                    "legal action",
                ]),
            },
            SeveritySignal {
                signal: "many customers affected".into(),
                severity: Severity::Major as i32,
                keywords: words(&[
                    "很多人",
                    "大量用户",
                    "所有用户",
                    "批量",
                    "many customers",
                    "everyone",
                    "all users",
                ]),
            },
        ],
        complex_keywords: words(&[
            "多次",
            "反复",
            "一直没解决",
            "赔偿",
            "鉴定",
            "repeatedly",
            "several times",
            "compensation",
            "investigation",
        ]),
        urgent_keywords: words(&[
            "紧急",
            "马上",
            "立即",
            "尽快",
            "urgent",
            "immediately",
            "asap",
        ]),
    }
}

/// What a keyword belongs to.
#[derive(Clone, Copy, Debug)]
enum Owner {
    Category(usize),
    Signal(usize),
    Complex,
    Urgent,
}

/// A taxonomy version ready to classify.
#[derive(Clone, Debug)]
pub struct Taxonomy {
    pub version: u32,
    pub rules: TaxonomyRules,
    matcher: AhoCorasick,
    owners: Vec<(Owner, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TaxonomyError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl Taxonomy {
    /// Checks and compiles rules.
    pub fn compile(version: u32, rules: TaxonomyRules) -> Result<Self, TaxonomyError> {
        let invalid = |field: String, reason: &str| TaxonomyError::Invalid {
            field,
            reason: reason.into(),
        };
        if rules.categories.is_empty() {
            return Err(invalid(
                "taxonomy.categories".into(),
                "at least one category",
            ));
        }
        let mut owners = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, rule) in rules.categories.iter().enumerate() {
            let id = &rule.category;
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(invalid(
                    format!("taxonomy.categories[{i}].category"),
                    "1–64 of a–z, 0–9, _",
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(invalid(
                    format!("taxonomy.categories[{i}].category"),
                    "duplicate category",
                ));
            }
            if rule.keywords.is_empty() {
                return Err(invalid(
                    format!("taxonomy.categories[{i}].keywords"),
                    "at least one keyword",
                ));
            }
            owners.extend(
                rule.keywords
                    .iter()
                    .map(|k| (Owner::Category(i), k.clone())),
            );
        }
        for (i, signal) in rules.severity_signals.iter().enumerate() {
            if signal.severity != Severity::Major as i32
                && signal.severity != Severity::Crisis as i32
            {
                return Err(invalid(
                    format!("taxonomy.severity_signals[{i}].severity"),
                    "SEVERITY_MAJOR or SEVERITY_CRISIS",
                ));
            }
            if signal.keywords.is_empty() || signal.signal.trim().is_empty() {
                return Err(invalid(
                    format!("taxonomy.severity_signals[{i}]"),
                    "a name and at least one keyword",
                ));
            }
            owners.extend(
                signal
                    .keywords
                    .iter()
                    .map(|k| (Owner::Signal(i), k.clone())),
            );
        }
        owners.extend(
            rules
                .complex_keywords
                .iter()
                .map(|k| (Owner::Complex, k.clone())),
        );
        owners.extend(
            rules
                .urgent_keywords
                .iter()
                .map(|k| (Owner::Urgent, k.clone())),
        );
        for (owner, keyword) in &owners {
            if keyword.trim().is_empty() || keyword.chars().count() > 64 {
                return Err(invalid(
                    format!("taxonomy keyword {keyword:?} ({owner:?})"),
                    "1–64 characters",
                ));
            }
        }
        let patterns: Vec<String> = owners.iter().map(|(_, k)| k.to_lowercase()).collect();
        let matcher = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            .map_err(|e| invalid("taxonomy".into(), &e.to_string()))?;
        Ok(Self {
            version,
            rules,
            matcher,
            owners,
        })
    }

    pub fn default_version() -> Self {
        Self::compile(1, default_rules()).expect("shipped rules compile")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    pub category: String,
    pub matched_terms: Vec<String>,
    pub severity: Severity,
    pub priority: Priority,
    pub complexity: Complexity,
    pub reasons: Vec<String>,
    pub taxonomy_version: u32,
}

/// Classifies a complaint from its subject, description and demand.
pub fn classify(
    taxonomy: &Taxonomy,
    subject: &str,
    description: &str,
    demand: &str,
    tier: CustomerTier,
) -> Classification {
    let text = format!("{subject}\n{description}\n{demand}").to_lowercase();
    let rules = &taxonomy.rules;
    let mut category_hits: Vec<Vec<&str>> = vec![Vec::new(); rules.categories.len()];
    let mut signal_hits: Vec<Vec<&str>> = vec![Vec::new(); rules.severity_signals.len()];
    let mut complex_hits = Vec::new();
    let mut urgent = false;
    for found in taxonomy.matcher.find_overlapping_iter(&text) {
        let (owner, keyword) = &taxonomy.owners[found.pattern().as_usize()];
        let list = match owner {
            Owner::Category(i) => &mut category_hits[*i],
            Owner::Signal(i) => &mut signal_hits[*i],
            Owner::Complex => &mut complex_hits,
            Owner::Urgent => {
                urgent = true;
                continue;
            }
        };
        if !list.contains(&keyword.as_str()) {
            list.push(keyword.as_str());
        }
    }
    let mut reasons = Vec::new();
    // The category with the most distinct matched keywords; ties go to the earlier rule.
    let best = category_hits
        .iter()
        .enumerate()
        .filter(|(_, hits)| !hits.is_empty())
        .max_by(|(ia, a), (ib, b)| a.len().cmp(&b.len()).then(ib.cmp(ia)));
    let (category, matched_terms) = match best {
        Some((i, hits)) => {
            reasons.push(format!(
                "category {}: matched {}",
                rules.categories[i].category,
                hits.join(", ")
            ));
            (
                rules.categories[i].category.clone(),
                hits.iter().map(|s| (*s).to_owned()).collect(),
            )
        }
        None => {
            reasons.push("category other: no taxonomy keyword matched".to_owned());
            (OTHER_CATEGORY.to_owned(), Vec::new())
        }
    };

    let signals_at = |level: Severity| -> Vec<String> {
        rules
            .severity_signals
            .iter()
            .zip(&signal_hits)
            .filter(|(s, hits)| s.severity == level as i32 && !hits.is_empty())
            .map(|(s, hits)| format!("{} ({})", s.signal, hits.join(", ")))
            .collect()
    };
    let (crisis, major) = (signals_at(Severity::Crisis), signals_at(Severity::Major));
    let severity = if !crisis.is_empty() {
        reasons.push(format!("severity crisis: {}", crisis.join("; ")));
        Severity::Crisis
    } else if !major.is_empty() {
        reasons.push(format!("severity major: {}", major.join("; ")));
        Severity::Major
    } else {
        reasons.push("severity general: no major or crisis signal".to_owned());
        Severity::General
    };

    let base = priority_matrix(severity, urgent);
    reasons.push(format!(
        "priority {}: impact {} × urgency {}",
        priority_label(base),
        severity_label(severity),
        if urgent { "high" } else { "normal" }
    ));
    let priority =
        if matches!(tier, CustomerTier::Vip | CustomerTier::HighValue) && base != Priority::P1 {
            let raised = raise(base);
            reasons.push(format!(
                "priority raised to {} for a {} customer",
                priority_label(raised),
                if tier == CustomerTier::Vip {
                    "VIP"
                } else {
                    "high-value"
                }
            ));
            raised
        } else {
            base
        };

    let complexity = if severity != Severity::General {
        reasons
            .push("complexity complex: major or crisis complaints need investigation".to_owned());
        Complexity::Complex
    } else if !complex_hits.is_empty() {
        reasons.push(format!("complexity complex: {}", complex_hits.join(", ")));
        Complexity::Complex
    } else {
        reasons.push("complexity simple".to_owned());
        Complexity::Simple
    };

    Classification {
        category,
        matched_terms,
        severity,
        priority,
        complexity,
        reasons,
        taxonomy_version: taxonomy.version,
    }
}

/// Urgency × impact: impact from severity, urgency from the words used.
pub fn priority_matrix(severity: Severity, urgent: bool) -> Priority {
    match (severity, urgent) {
        (Severity::Crisis, _) | (Severity::Major, true) => Priority::P1,
        (Severity::Major, false) | (_, true) => Priority::P2,
        _ => Priority::P3,
    }
}

/// One level more urgent (P1 stays P1).
pub fn raise(p: Priority) -> Priority {
    match p {
        Priority::P4 => Priority::P3,
        Priority::P3 => Priority::P2,
        _ => Priority::P1,
    }
}

pub fn priority_label(p: Priority) -> &'static str {
    match p {
        Priority::P1 => "P1",
        Priority::P2 => "P2",
        Priority::P3 => "P3",
        Priority::P4 => "P4",
        Priority::Unspecified => "unspecified",
    }
}

fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Crisis => "crisis",
        Severity::Major => "major",
        Severity::General => "general",
        Severity::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, tier: CustomerTier) -> Classification {
        classify(&Taxonomy::default_version(), "", text, "", tier)
    }

    #[test]
    fn chinese_text_without_spaces_is_classified() {
        let c = run("我买的电水壶用了两天就坏了质量太差", CustomerTier::Regular);
        assert_eq!(c.category, "product_quality");
        assert!(c.matched_terms.contains(&"坏了".to_owned()));
        assert!(c.matched_terms.contains(&"质量".to_owned()));
        assert_eq!(c.severity, Severity::General);
        assert_eq!(c.priority, Priority::P3);
        assert_eq!(c.complexity, Complexity::Simple);
        assert_eq!(c.taxonomy_version, 1);
    }

    #[test]
    fn english_text_is_classified_case_insensitively() {
        let c = run(
            "The COURIER was late and the parcel has not arrived",
            CustomerTier::Regular,
        );
        assert_eq!(c.category, "delivery");
        assert_eq!(c.matched_terms, vec!["courier", "late", "not arrived"]);
    }

    #[test]
    fn the_category_with_most_matches_wins() {
        // One after-sales word, two delivery words.
        let c = run("快递延迟了，我要退款", CustomerTier::Regular);
        assert_eq!(c.category, "delivery");
    }

    #[test]
    fn unmatched_text_is_other_with_a_reason() {
        let c = run("hello", CustomerTier::Regular);
        assert_eq!(c.category, OTHER_CATEGORY);
        assert!(c.reasons[0].contains("no taxonomy keyword"));
    }

    #[test]
    fn injury_and_media_make_a_crisis() {
        let c = run(
            "充电器起火，孩子受伤了，我要找媒体曝光",
            CustomerTier::Regular,
        );
        assert_eq!(c.severity, Severity::Crisis);
        assert_eq!(c.priority, Priority::P1);
        assert_eq!(c.complexity, Complexity::Complex);
        assert!(c.reasons.iter().any(|r| r.contains("safety or injury")));
        assert!(c.reasons.iter().any(|r| r.contains("media exposure")));
    }

    #[test]
    fn legal_threat_is_major_and_urgent_major_is_p1() {
        let c = run(
            "If this is not fixed I will contact my lawyer",
            CustomerTier::Regular,
        );
        assert_eq!(c.severity, Severity::Major);
        assert_eq!(c.priority, Priority::P2);
        let c = run("律师函马上就到", CustomerTier::Regular);
        assert_eq!((c.severity, c.priority), (Severity::Major, Priority::P1));
    }

    #[test]
    fn the_priority_matrix_by_hand() {
        assert_eq!(priority_matrix(Severity::General, false), Priority::P3);
        assert_eq!(priority_matrix(Severity::General, true), Priority::P2);
        assert_eq!(priority_matrix(Severity::Major, false), Priority::P2);
        assert_eq!(priority_matrix(Severity::Major, true), Priority::P1);
        assert_eq!(priority_matrix(Severity::Crisis, false), Priority::P1);
        assert_eq!(raise(Priority::P1), Priority::P1);
        assert_eq!(raise(Priority::P4), Priority::P3);
    }

    #[test]
    fn vip_customers_are_raised_one_level() {
        let c = run("售后维修太慢", CustomerTier::Vip);
        assert_eq!(c.category, "after_sales");
        assert_eq!(c.priority, Priority::P2);
        assert!(c.reasons.iter().any(|r| r.contains("VIP")));
        let c = run("售后维修太慢", CustomerTier::HighValue);
        assert_eq!(c.priority, Priority::P2);
        let c = run("售后维修太慢", CustomerTier::New);
        assert_eq!(c.priority, Priority::P3);
    }

    #[test]
    fn repeated_complaints_are_complex() {
        let c = run("我已经多次反映这个问题了", CustomerTier::Regular);
        assert_eq!(c.complexity, Complexity::Complex);
    }

    #[test]
    fn a_new_taxonomy_version_changes_the_outcome() {
        let mut rules = default_rules();
        rules.categories.push(category(
            "packaging",
            "包装",
            "Packaging",
            &["包装", "packaging"],
        ));
        let taxonomy = Taxonomy::compile(2, rules).unwrap();
        let c = classify(&taxonomy, "", "包装破了", "", CustomerTier::Regular);
        assert_eq!(c.category, "packaging");
        assert_eq!(c.taxonomy_version, 2);
    }

    #[test]
    fn invalid_rules_are_refused_naming_the_field() {
        let mut rules = default_rules();
        rules.categories[1].category = "Bad Id".into();
        let err = Taxonomy::compile(2, rules).unwrap_err();
        assert!(
            err.to_string().contains("taxonomy.categories[1].category"),
            "{err}"
        );
        let mut rules = default_rules();
        rules.severity_signals[0].severity = Severity::General as i32;
        assert!(Taxonomy::compile(2, rules).is_err());
        let mut rules = default_rules();
        rules.categories.push(rules.categories[0].clone());
        assert!(
            Taxonomy::compile(2, rules)
                .unwrap_err()
                .to_string()
                .contains("duplicate")
        );
    }
}
