//! Classification (分类), severity grading (分级), priority (优先级) and complexity, each with
//! the reasons behind it. Matching is by substring over case-folded text, so it works on Chinese
//! text without spaces as well as on English.

use complaints_proto::common::v1::{Channel, Complexity, CustomerTier, Priority, Severity};

/// A category and the keywords that select it.
#[derive(Clone, Debug)]
pub struct CategoryRule {
    pub category: &'static str,
    pub keywords: &'static [&'static str],
}

/// The shipped taxonomy; the first category with the most matched keywords wins.
pub const DEFAULT_TAXONOMY: &[CategoryRule] = &[
    CategoryRule {
        category: "product_quality",
        keywords: &[
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
    },
    CategoryRule {
        category: "service_attitude",
        keywords: &[
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
    },
    CategoryRule {
        category: "after_sales",
        keywords: &[
            "售后", "退货", "换货", "维修", "保修", "退款", "refund", "return", "repair",
            "warranty", "exchange",
        ],
    },
    CategoryRule {
        category: "delivery",
        keywords: &[
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
    },
    CategoryRule {
        category: "billing",
        keywords: &[
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
    },
    CategoryRule {
        category: "privacy",
        keywords: &[
            "隐私",
            "泄露",
            "个人信息",
            "骚扰电话",
            "privacy",
            "data leak",
            "personal data",
            "spam calls",
        ],
    },
];

pub const OTHER_CATEGORY: &str = "other";

/// Signals of a major complaint or a crisis event.
const CRISIS_SIGNALS: &[(&str, &[&str])] = &[
    (
        "media exposure",
        &[
            "媒体",
            "曝光",
            "记者",
            "微博",
            "热搜",
            "journalist",
            "media",
            "go viral",
            "press",
        ],
    ),
    (
        "safety or injury",
        &[
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
        ],
    ),
];
const MAJOR_SIGNALS: &[(&str, &[&str])] = &[
    (
        "legal or regulator threat",
        &[
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
        ],
    ),
    (
        "many customers affected",
        &[
            "很多人",
            "大量用户",
            "所有用户",
            "批量",
            "many customers",
            "everyone",
            "all users",
        ],
    ),
];

/// Words that mark a complaint as complex (needs other departments, investigation).
const COMPLEX_SIGNALS: &[&str] = &[
    "多次",
    "反复",
    "一直没解决",
    "赔偿",
    "鉴定",
    "repeatedly",
    "several times",
    "compensation",
    "investigation",
];
const URGENT_SIGNALS: &[&str] = &[
    "紧急",
    "马上",
    "立即",
    "尽快",
    "urgent",
    "immediately",
    "asap",
];

#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    pub category: String,
    pub matched_terms: Vec<String>,
    pub severity: Severity,
    pub priority: Priority,
    pub complexity: Complexity,
    pub reasons: Vec<String>,
}

fn matches<'a>(text: &str, keywords: &[&'a str]) -> Vec<&'a str> {
    keywords
        .iter()
        .copied()
        .filter(|k| text.contains(&k.to_lowercase()))
        .collect()
}

/// Classifies a complaint from its subject, description and demand.
pub fn classify(
    taxonomy: &[CategoryRule],
    subject: &str,
    description: &str,
    demand: &str,
    tier: CustomerTier,
    channel: Channel,
) -> Classification {
    let text = format!("{subject}\n{description}\n{demand}").to_lowercase();
    let mut reasons = Vec::new();

    let (category, matched_terms) = taxonomy
        .iter()
        .map(|rule| (rule.category, matches(&text, rule.keywords)))
        .filter(|(_, hits)| !hits.is_empty())
        .fold(None::<(&str, Vec<&str>)>, |best, (cat, hits)| match best {
            Some((_, ref b)) if b.len() >= hits.len() => best,
            _ => Some((cat, hits)),
        })
        .unwrap_or((OTHER_CATEGORY, Vec::new()));
    if matched_terms.is_empty() {
        reasons.push("category other: no taxonomy keyword matched".to_owned());
    } else {
        reasons.push(format!(
            "category {category}: matched {}",
            matched_terms.join(", ")
        ));
    }

    let crisis: Vec<String> = CRISIS_SIGNALS
        .iter()
        .filter_map(|(signal, words)| {
            let hits = matches(&text, words);
            (!hits.is_empty()).then(|| format!("{signal} ({})", hits.join(", ")))
        })
        .collect();
    let major: Vec<String> = MAJOR_SIGNALS
        .iter()
        .filter_map(|(signal, words)| {
            let hits = matches(&text, words);
            (!hits.is_empty()).then(|| format!("{signal} ({})", hits.join(", ")))
        })
        .collect();
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

    // Urgency × impact matrix: urgency from the words used, impact from severity.
    let urgent = !matches(&text, URGENT_SIGNALS).is_empty();
    let base = match (severity, urgent) {
        (Severity::Crisis, _) => Priority::P1,
        (Severity::Major, true) => Priority::P1,
        (Severity::Major, false) => Priority::P2,
        (_, true) => Priority::P2,
        _ => Priority::P3,
    };
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

    let complex_hits = matches(&text, COMPLEX_SIGNALS);
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
    let _ = channel;

    Classification {
        category: category.to_owned(),
        matched_terms: matched_terms.into_iter().map(str::to_owned).collect(),
        severity,
        priority,
        complexity,
        reasons,
    }
}

fn raise(p: Priority) -> Priority {
    match p {
        Priority::P4 => Priority::P3,
        Priority::P3 => Priority::P2,
        _ => Priority::P1,
    }
}

fn priority_label(p: Priority) -> &'static str {
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
        classify(DEFAULT_TAXONOMY, "", text, "", tier, Channel::WebForm)
    }

    #[test]
    fn chinese_text_without_spaces_is_classified() {
        let c = run("我买的电水壶用了两天就坏了质量太差", CustomerTier::Regular);
        assert_eq!(c.category, "product_quality");
        assert!(c.matched_terms.contains(&"坏了".to_owned()));
        assert_eq!(c.severity, Severity::General);
        assert_eq!(c.priority, Priority::P3);
        assert_eq!(c.complexity, Complexity::Simple);
    }

    #[test]
    fn english_text_is_classified() {
        let c = run(
            "The courier was late and the parcel has not arrived",
            CustomerTier::Regular,
        );
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
    }

    #[test]
    fn legal_threat_is_major() {
        let c = run(
            "If this is not fixed I will contact my lawyer",
            CustomerTier::Regular,
        );
        assert_eq!(c.severity, Severity::Major);
        assert_eq!(c.priority, Priority::P2);
    }

    #[test]
    fn vip_customers_are_raised_one_level() {
        let c = run("售后维修太慢", CustomerTier::Vip);
        assert_eq!(c.category, "after_sales");
        assert_eq!(c.priority, Priority::P2);
        assert!(c.reasons.iter().any(|r| r.contains("VIP")));
    }
}
