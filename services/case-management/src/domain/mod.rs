//! Case rules, free of I/O: the lifecycle state machine, routing, escalation and access.

pub mod access;
pub mod lifecycle;
pub mod routing;
