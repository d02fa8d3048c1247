//! Questionnaire templates and the validation of answers against the version an invitation
//! was issued with; the dissatisfaction rule (default: CSAT ≤ 2, or the problem not solved).

use complaints_kit::grpc::FieldErrors;
use complaints_proto::survey::v1::{Answer, answer::Value};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuestionKind {
    Rating { min: i32, max: i32 },
    YesNo,
    Text { max_chars: usize },
}

#[derive(Clone, Debug)]
pub struct Question {
    pub id: &'static str,
    pub kind: QuestionKind,
    pub required: bool,
    pub text_zh: &'static str,
    pub text_en: &'static str,
}

#[derive(Clone, Debug)]
pub struct Template {
    pub id: &'static str,
    pub version: u32,
    pub questions: Vec<Question>,
}

pub fn standard_template() -> Template {
    Template {
        id: "standard",
        version: 1,
        questions: vec![
            Question {
                id: "csat",
                kind: QuestionKind::Rating { min: 1, max: 5 },
                required: true,
                text_zh: "您对本次投诉处理的满意度如何？",
                text_en: "How satisfied are you with how we handled your complaint?",
            },
            Question {
                id: "nps",
                kind: QuestionKind::Rating { min: 0, max: 10 },
                required: false,
                text_zh: "您有多大可能向朋友推荐我们？",
                text_en: "How likely are you to recommend us to a friend?",
            },
            Question {
                id: "solved",
                kind: QuestionKind::YesNo,
                required: false,
                text_zh: "您的问题解决了吗？",
                text_en: "Was your problem solved?",
            },
            Question {
                id: "comment",
                kind: QuestionKind::Text { max_chars: 2000 },
                required: false,
                text_zh: "还有什么想告诉我们的？",
                text_en: "Anything else you want to tell us?",
            },
        ],
    }
}

pub fn template(id: &str, version: u32) -> Option<Template> {
    let standard = standard_template();
    (standard.id == id && standard.version == version).then_some(standard)
}

/// Answers as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Answers {
    pub csat: Option<u32>,
    pub nps: Option<u32>,
    pub solved: Option<bool>,
    pub comment: Option<String>,
}

impl Answers {
    /// Dissatisfied when CSAT ≤ 2 or the customer says the problem is not solved.
    pub fn dissatisfied(&self) -> bool {
        self.csat.is_some_and(|c| c <= 2) || self.solved == Some(false)
    }

    pub fn to_proto(&self) -> Vec<Answer> {
        let mut out = Vec::new();
        if let Some(c) = self.csat {
            out.push(Answer {
                question_id: "csat".into(),
                value: Some(Value::Rating(c as i32)),
            });
        }
        if let Some(n) = self.nps {
            out.push(Answer {
                question_id: "nps".into(),
                value: Some(Value::Rating(n as i32)),
            });
        }
        if let Some(s) = self.solved {
            out.push(Answer {
                question_id: "solved".into(),
                value: Some(Value::YesNo(s)),
            });
        }
        if let Some(t) = &self.comment {
            out.push(Answer {
                question_id: "comment".into(),
                value: Some(Value::Text(t.clone())),
            });
        }
        out
    }
}

/// Checks answers against a template, naming every bad one (`answers[i].…`).
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
                format!("unknown question {:?}", answer.question_id),
            );
            continue;
        };
        if seen.contains(&question.id) {
            errors.add(format!("answers[{i}].question_id"), "answered twice");
            continue;
        }
        seen.push(question.id);
        match (question.kind, &answer.value) {
            (QuestionKind::Rating { min, max }, Some(Value::Rating(r))) => {
                if *r < min || *r > max {
                    errors.add(
                        format!("answers[{i}].rating"),
                        format!("{} must be {min}–{max}", question.id),
                    );
                } else if question.id == "csat" {
                    out.csat = Some(*r as u32);
                } else if question.id == "nps" {
                    out.nps = Some(*r as u32);
                }
            }
            (QuestionKind::YesNo, Some(Value::YesNo(b))) => out.solved = Some(*b),
            (QuestionKind::Text { max_chars }, Some(Value::Text(t))) => {
                let t = t.trim();
                if t.chars().count() > max_chars {
                    errors.add(
                        format!("answers[{i}].text"),
                        format!("at most {max_chars} characters"),
                    );
                } else if t.chars().any(|c| c.is_control() && c != '\n') {
                    errors.add(format!("answers[{i}].text"), "contains control characters");
                } else if !t.is_empty() {
                    out.comment = Some(t.to_owned());
                }
            }
            (kind, _) => {
                let expected = match kind {
                    QuestionKind::Rating { .. } => "rating",
                    QuestionKind::YesNo => "yes_no",
                    QuestionKind::Text { .. } => "text",
                };
                errors.add(
                    format!("answers[{i}]"),
                    format!("{} takes a {expected} value", question.id),
                );
            }
        }
    }
    for question in template.questions.iter().filter(|q| q.required) {
        if !seen.contains(&question.id) {
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

    #[test]
    fn valid_answers_are_accepted() {
        let a = validate(&standard_template(), &[rating("csat", 5), rating("nps", 9)]).unwrap();
        assert_eq!(a.csat, Some(5));
        assert_eq!(a.nps, Some(9));
        assert!(!a.dissatisfied());
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
    fn low_csat_or_unsolved_is_dissatisfied() {
        assert!(
            Answers {
                csat: Some(2),
                ..Default::default()
            }
            .dissatisfied()
        );
        assert!(
            Answers {
                csat: Some(5),
                solved: Some(false),
                ..Default::default()
            }
            .dissatisfied()
        );
        assert!(
            !Answers {
                csat: Some(3),
                solved: Some(true),
                ..Default::default()
            }
            .dissatisfied()
        );
    }
}
