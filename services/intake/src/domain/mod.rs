//! Intake rules, free of I/O: turning a submitted complaint into a normalised record, and
//! classifying, grading and prioritising it with reasons an agent can read.

pub mod classify;
pub mod record;
pub mod repeat;
