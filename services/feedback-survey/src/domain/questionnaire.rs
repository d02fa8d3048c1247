//! Questionnaire templates and the validation of answers against the version an invitation
//! was issued with. Templates are data (stored as JSON, one row per version); the four standard
//! questions (csat, nps, solved, comment) have fixed ids so figures and events can read them.

use std::collections::BTreeMap;

use complaints_kit::grpc::FieldErrors;
use complaints_proto::survey::v1::{self as pb, Answer, answer::Value};
use serde::{Deserialize, Serialize};

pub const STANDARD_TEMPLATE_ID: &str = "standard";
const DEFAULT_MAX_CHARS: u32 = 2000;
const MAX_QUESTIONS: usize = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum QuestionKind {
    Csat,
    Nps,
    Solved,
    Comment { max_chars: u32 },
    Rating { min: i32, max: i32 },
    YesNo,
    Text { max_chars: u32 },
}

impl QuestionKind {
    /// The id a standard question must carry; `None` for extra questions.
    pub fn standard_id(self) -> Option<&'static str> {
        match self {
            QuestionKind::Csat => Some("csat"),
            QuestionKind::Nps => Some("nps"),
            QuestionKind::Solved => Some("solved"),
            QuestionKind::Comment { .. } => Some("comment"),
            _ => None,
        }
    }

    fn rating_range(self) -> Option<(i32, i32)> {
        match self {
            QuestionKind::Csat => Some((1, 5)),
            QuestionKind::Nps => Some((0, 10)),
            QuestionKind::Rating { min, max } => Some((min, max)),
            _ => None,
        }
    }

    fn text_limit(self) -> Option<u32> {
        match self {
            QuestionKind::Comment { max_chars } | QuestionKind::Text { max_chars } => {
                Some(max_chars)
            }
            _ => None,
        }
    }

    fn is_yes_no(self) -> bool {
        matches!(self, QuestionKind::Solved | QuestionKind::YesNo)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub id: String,
    pub kind: QuestionKind,
    pub required: bool,
    pub text_zh: String,
    pub text_en: String,
}

/// One version of a questionnaire.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub id: String,
    pub version: u32,
    pub questions: Vec<Question>,
}

fn question(id: &str, kind: QuestionKind, required: bool, zh: &str, en: &str) -> Question {
    Question {
        id: id.into(),
        kind,
        required,
        text_zh: zh.into(),
        text_en: en.into(),
    }
}

/// The questions of `standard` v1, which migration 0002 seeds (kept here for unit tests).
pub fn standard_questions() -> Vec<Question> {
    vec![
        question(
            "csat",
            QuestionKind::Csat,
            true,
            "您对本次投诉处理的满意度如何？",
            "How satisfied are you with how we handled your complaint?",
        ),
        question(
            "nps",
            QuestionKind::Nps,
            false,
            "您有多大可能向朋友推荐我们？",
            "How likely are you to recommend us to a friend?",
        ),
        question(
            "solved",
            QuestionKind::Solved,
            false,
            "您的问题解决了吗？",
            "Was your problem solved?",
        ),
        question(
            "comment",
            QuestionKind::Comment {
                max_chars: DEFAULT_MAX_CHARS,
            },
            false,
            "还有什么想告诉我们的？",
            "Anything else you want to tell us?",
        ),
    ]
}

pub fn standard_template() -> Template {
    Template {
        id: STANDARD_TEMPLATE_ID.into(),
        version: 1,
        questions: standard_questions(),
    }
}

/// Whether a template id is acceptable: lower snake case, 1–40 characters.
pub fn valid_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= 40
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses the questions of a new template version, naming every bad field.
pub fn parse_questions(questions: &[pb::Question]) -> Result<Vec<Question>, FieldErrors> {
    let mut errors = FieldErrors::new();
    let out = collect_questions(questions, &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Like [`parse_questions`], adding to errors a request already collected.
pub fn collect_questions(questions: &[pb::Question], errors: &mut FieldErrors) -> Vec<Question> {
    let mut out: Vec<Question> = Vec::new();
    if questions.is_empty() {
        errors.add("questions", "at least one question");
    }
    if questions.len() > MAX_QUESTIONS {
        errors.add("questions", format!("at most {MAX_QUESTIONS} questions"));
    }
    for (i, q) in questions.iter().enumerate() {
        let field = |name: &str| format!("questions[{i}].{name}");
        let max_chars = match q.max_chars {
            0 => DEFAULT_MAX_CHARS,
            n if n > 10_000 => {
                errors.add(field("max_chars"), "at most 10000");
                DEFAULT_MAX_CHARS
            }
            n => n,
        };
        let kind = match pb::QuestionKind::try_from(q.kind) {
            Ok(pb::QuestionKind::Csat) => Some(QuestionKind::Csat),
            Ok(pb::QuestionKind::Nps) => Some(QuestionKind::Nps),
            Ok(pb::QuestionKind::Solved) => Some(QuestionKind::Solved),
            Ok(pb::QuestionKind::Comment) => Some(QuestionKind::Comment { max_chars }),
            Ok(pb::QuestionKind::YesNo) => Some(QuestionKind::YesNo),
            Ok(pb::QuestionKind::Text) => Some(QuestionKind::Text { max_chars }),
            Ok(pb::QuestionKind::Rating) => {
                let (min, max) = (q.min_rating, q.max_rating);
                if !(0..=100).contains(&min) || !(0..=100).contains(&max) || min >= max {
                    errors.add(
                        field("max_rating"),
                        "ratings need 0 ≤ min_rating < max_rating ≤ 100",
                    );
                }
                Some(QuestionKind::Rating { min, max })
            }
            Ok(pb::QuestionKind::Unspecified) => {
                errors.add(field("kind"), "required");
                None
            }
            Err(_) => {
                errors.add(field("kind"), format!("unknown value {}", q.kind));
                None
            }
        };
        let id = q.id.trim();
        if !valid_identifier(id) {
            errors.add(field("id"), "lower snake case, 1–40 characters");
        }
        if let Some(kind) = kind {
            match kind.standard_id() {
                Some(standard) if standard != id => errors.add(
                    field("id"),
                    format!("the question of this kind must have the id {standard:?}"),
                ),
                None if ["csat", "nps", "solved", "comment"].contains(&id) => errors.add(
                    field("id"),
                    format!("{id:?} is reserved for the standard question of that name"),
                ),
                _ => {}
            }
        }
        if out.iter().any(|o| o.id == id) {
            errors.add(field("id"), "used twice");
        }
        for (name, text) in [("text_zh", &q.text_zh), ("text_en", &q.text_en)] {
            let text = text.trim();
            if text.is_empty() {
                errors.add(field(name), "required: texts come in Chinese and English");
            } else if text.chars().count() > 500 {
                errors.add(field(name), "at most 500 characters");
            }
        }
        if let Some(kind) = kind {
            out.push(Question {
                id: id.to_owned(),
                kind,
                required: q.required,
                text_zh: q.text_zh.trim().to_owned(),
                text_en: q.text_en.trim().to_owned(),
            });
        }
    }
    if !questions.is_empty()
        && !out
            .iter()
            .any(|q| matches!(q.kind, QuestionKind::Csat | QuestionKind::Solved))
    {
        errors.add(
            "questions",
            "needs a csat or solved question: the dissatisfaction rule reads them",
        );
    }
    out
}

impl Question {
    pub fn to_proto(&self) -> pb::Question {
        let (kind, min_rating, max_rating, max_chars) = match self.kind {
            QuestionKind::Csat => (pb::QuestionKind::Csat, 1, 5, 0),
            QuestionKind::Nps => (pb::QuestionKind::Nps, 0, 10, 0),
            QuestionKind::Solved => (pb::QuestionKind::Solved, 0, 0, 0),
            QuestionKind::Comment { max_chars } => (pb::QuestionKind::Comment, 0, 0, max_chars),
            QuestionKind::Rating { min, max } => (pb::QuestionKind::Rating, min, max, 0),
            QuestionKind::YesNo => (pb::QuestionKind::YesNo, 0, 0, 0),
            QuestionKind::Text { max_chars } => (pb::QuestionKind::Text, 0, 0, max_chars),
        };
        pb::Question {
            id: self.id.clone(),
            kind: kind as i32,
            required: self.required,
            text_zh: self.text_zh.clone(),
            text_en: self.text_en.clone(),
            min_rating,
            max_rating,
            max_chars,
        }
    }
}

/// The value of an extra (non-standard) question.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtraValue {
    Rating(i32),
    YesNo(bool),
    Text(String),
}

/// Answers as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Answers {
    pub csat: Option<u32>,
    pub nps: Option<u32>,
    pub solved: Option<bool>,
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, ExtraValue>,
}

impl Answers {
    pub fn to_proto(&self) -> Vec<Answer> {
        let mut out = Vec::new();
        let mut push = |id: &str, value: Value| {
            out.push(Answer {
                question_id: id.into(),
                value: Some(value),
            })
        };
        if let Some(c) = self.csat {
            push("csat", Value::Rating(c as i32));
        }
        if let Some(n) = self.nps {
            push("nps", Value::Rating(n as i32));
        }
        if let Some(s) = self.solved {
            push("solved", Value::YesNo(s));
        }
        if let Some(t) = &self.comment {
            push("comment", Value::Text(t.clone()));
        }
        for (id, value) in &self.extra {
            push(
                id,
                match value {
                    ExtraValue::Rating(r) => Value::Rating(*r),
                    ExtraValue::YesNo(b) => Value::YesNo(*b),
                    ExtraValue::Text(t) => Value::Text(t.clone()),
                },
            );
        }
        out
    }
}

/// When an answer counts as dissatisfied (不满意). Default: CSAT ≤ 2, or not solved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DissatisfactionRule {
    /// CSAT at or below this is dissatisfied; `None` ignores CSAT.
    pub csat_at_most: Option<u32>,
    /// "Not solved" is dissatisfied.
    pub when_unsolved: bool,
    /// NPS at or below this is dissatisfied; `None` (the default) ignores NPS.
    pub nps_at_most: Option<u32>,
}

impl Default for DissatisfactionRule {
    fn default() -> Self {
        Self {
            csat_at_most: Some(2),
            when_unsolved: true,
            nps_at_most: None,
        }
    }
}

impl DissatisfactionRule {
    pub fn is_dissatisfied(&self, answers: &Answers) -> bool {
        let low = |value: Option<u32>, limit: Option<u32>| matches!((value, limit), (Some(v), Some(l)) if v <= l);
        low(answers.csat, self.csat_at_most)
            || low(answers.nps, self.nps_at_most)
            || (self.when_unsolved && answers.solved == Some(false))
    }
}

/// Checks answers against a template version, naming every bad one (`answers[i].…`).
pub fn validate(template: &Template, answers: &[Answer]) -> Result<Answers, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut out = Answers::default();
    let mut seen: Vec<&str> = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        let Some(question) = template
            .questions
            .iter()
            .find(|q| q.id == answer.question_id)
        else {
            errors.add(
                format!("answers[{i}].question_id"),
                format!(
                    "unknown question {:?} in template {} v{}",
                    answer.question_id, template.id, template.version
                ),
            );
            continue;
        };
        if seen.contains(&question.id.as_str()) {
            errors.add(format!("answers[{i}].question_id"), "answered twice");
            continue;
        }
        seen.push(&question.id);
        let kind = question.kind;
        match &answer.value {
            Some(Value::Rating(r)) if kind.rating_range().is_some() => {
                let (min, max) = kind.rating_range().unwrap_or_default();
                if *r < min || *r > max {
                    errors.add(
                        format!("answers[{i}].rating"),
                        format!("{} must be {min}–{max}", question.id),
                    );
                    continue;
                }
                match kind {
                    QuestionKind::Csat => out.csat = Some(*r as u32),
                    QuestionKind::Nps => out.nps = Some(*r as u32),
                    _ => {
                        out.extra
                            .insert(question.id.clone(), ExtraValue::Rating(*r));
                    }
                }
            }
            Some(Value::YesNo(b)) if kind.is_yes_no() => {
                if kind == QuestionKind::Solved {
                    out.solved = Some(*b);
                } else {
                    out.extra.insert(question.id.clone(), ExtraValue::YesNo(*b));
                }
            }
            Some(Value::Text(t)) if kind.text_limit().is_some() => {
                let max_chars = kind.text_limit().unwrap_or(DEFAULT_MAX_CHARS) as usize;
                let t = t.trim();
                if t.chars().count() > max_chars {
                    errors.add(
                        format!("answers[{i}].text"),
                        format!("at most {max_chars} characters"),
                    );
                } else if t.chars().any(|c| c.is_control() && c != '\n') {
                    errors.add(format!("answers[{i}].text"), "contains control characters");
                } else if !t.is_empty() {
                    if matches!(kind, QuestionKind::Comment { .. }) {
                        out.comment = Some(t.to_owned());
                    } else {
                        out.extra
                            .insert(question.id.clone(), ExtraValue::Text(t.to_owned()));
                    }
                }
            }
            _ => {
                let expected = if kind.rating_range().is_some() {
                    "rating"
                } else if kind.is_yes_no() {
                    "yes_no"
                } else {
                    "text"
                };
                errors.add(
                    format!("answers[{i}]"),
                    format!("{} takes a {expected} value", question.id),
                );
            }
        }
    }
    for question in template.questions.iter().filter(|q| q.required) {
        if !seen.contains(&question.id.as_str()) {
            errors.add("answers", format!("{} is required", question.id));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rating(id: &str, r: i32) -> Answer {
        Answer {
            question_id: id.into(),
            value: Some(Value::Rating(r)),
        }
    }

    fn pb_question(id: &str, kind: pb::QuestionKind) -> pb::Question {
        pb::Question {
            id: id.into(),
            kind: kind as i32,
            text_zh: "问题".into(),
            text_en: "Question".into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_answers_are_accepted() {
        let a = validate(&standard_template(), &[rating("csat", 5), rating("nps", 9)]).unwrap();
        assert_eq!(a.csat, Some(5));
        assert_eq!(a.nps, Some(9));
        assert!(!DissatisfactionRule::default().is_dissatisfied(&a));
    }

    #[test]
    fn bad_answers_are_named() {
        let errors = validate(
            &standard_template(),
            &[
                rating("csat", 6),
                rating("colour", 1),
                Answer {
                    question_id: "solved".into(),
                    value: Some(Value::Rating(1)),
                },
            ],
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.fields().collect();
        assert_eq!(
            fields,
            vec!["answers[0].rating", "answers[1].question_id", "answers[2]"]
        );
    }

    #[test]
    fn csat_is_required() {
        let errors = validate(&standard_template(), &[rating("nps", 3)]).unwrap_err();
        assert!(errors.fields().any(|f| f == "answers"));
    }

    #[test]
    fn extra_questions_are_validated_and_kept() {
        let mut questions = standard_questions();
        questions.push(question(
            "agent_politeness",
            QuestionKind::Rating { min: 1, max: 3 },
            true,
            "客服态度",
            "Agent politeness",
        ));
        let template = Template {
            id: "standard".into(),
            version: 2,
            questions,
        };
        let err = validate(
            &template,
            &[rating("csat", 4), rating("agent_politeness", 4)],
        )
        .unwrap_err();
        assert_eq!(err.fields().collect::<Vec<_>>(), vec!["answers[1].rating"]);
        let err = validate(&template, &[rating("csat", 4)]).unwrap_err();
        assert_eq!(err.fields().collect::<Vec<_>>(), vec!["answers"]);
        let ok = validate(
            &template,
            &[rating("csat", 4), rating("agent_politeness", 3)],
        )
        .unwrap();
        assert_eq!(ok.extra["agent_politeness"], ExtraValue::Rating(3));
        assert_eq!(ok.to_proto().len(), 2);
        // The same answer is unknown to v1, which an older invitation pins.
        let err = validate(
            &standard_template(),
            &[rating("csat", 4), rating("agent_politeness", 3)],
        )
        .unwrap_err();
        assert_eq!(
            err.fields().collect::<Vec<_>>(),
            vec!["answers[1].question_id"]
        );
    }

    #[test]
    fn the_default_rule_is_low_csat_or_unsolved() {
        let rule = DissatisfactionRule::default();
        let answers = |csat, solved, nps| Answers {
            csat,
            solved,
            nps,
            ..Default::default()
        };
        assert!(rule.is_dissatisfied(&answers(Some(2), None, None)));
        assert!(rule.is_dissatisfied(&answers(Some(5), Some(false), None)));
        assert!(!rule.is_dissatisfied(&answers(Some(3), Some(true), Some(0))));
        let strict = DissatisfactionRule {
            csat_at_most: Some(3),
            when_unsolved: false,
            nps_at_most: Some(6),
        };
        assert!(strict.is_dissatisfied(&answers(Some(3), None, None)));
        assert!(!strict.is_dissatisfied(&answers(Some(4), Some(false), Some(7))));
        assert!(strict.is_dissatisfied(&answers(Some(5), None, Some(6))));
    }

    #[test]
    fn templates_need_bilingual_texts_standard_ids_and_a_rule_question() {
        let mut nameless = pb_question("csat", pb::QuestionKind::Csat);
        nameless.text_en.clear();
        let errors = parse_questions(&[
            nameless,
            pb_question("satisfaction", pb::QuestionKind::Nps),
            pb_question("solved", pb::QuestionKind::Text),
            pb_question("Bad Id", pb::QuestionKind::YesNo),
            pb::Question {
                min_rating: 5,
                max_rating: 5,
                ..pb_question("effort", pb::QuestionKind::Rating)
            },
        ])
        .unwrap_err();
        assert_eq!(
            errors.fields().collect::<Vec<_>>(),
            vec![
                "questions[0].text_en",
                "questions[1].id",
                "questions[2].id",
                "questions[3].id",
                "questions[4].max_rating",
            ]
        );
        let errors = parse_questions(&[pb_question("nps", pb::QuestionKind::Nps)]).unwrap_err();
        assert_eq!(errors.fields().collect::<Vec<_>>(), vec!["questions"]);
        let standard: Vec<_> = standard_questions()
            .iter()
            .map(Question::to_proto)
            .collect();
        assert_eq!(parse_questions(&standard).unwrap(), standard_questions());
    }
}
