//! Case rules, free of I/O: the lifecycle state machine, routing, escalation, access, the
//! coordination and problem-ledger rules, the customer's view and the configurable policy.

pub mod access;
pub mod coordination;
pub mod customer_view;
pub mod lifecycle;
pub mod policy;
pub mod routing;
