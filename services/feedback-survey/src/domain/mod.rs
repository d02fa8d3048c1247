//! Survey rules, free of I/O: questionnaire templates and answer validation, the
//! dissatisfaction rule, delivery by channel, figures, and single-use tokens.

pub mod delivery;
pub mod figures;
pub mod invitation;
pub mod questionnaire;
pub mod token;
