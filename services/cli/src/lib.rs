//! The whole suite in one process, for local runs and end-to-end tests: the five services on
//! their own listeners, wired to each other's addresses, sharing one database (each in its own
//! schema). In Kubernetes each service runs as its own binary instead.

pub mod args;
pub mod bench;
pub mod demo;
pub mod histogram;
pub mod seconds;
pub mod suite;
