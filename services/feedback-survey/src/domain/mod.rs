//! Survey rules, free of I/O: questionnaire templates and answer validation, the
//! dissatisfaction rule, and single-use tokens.

pub mod questionnaire;
pub mod token;
