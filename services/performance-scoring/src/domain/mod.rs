//! Scoring formulas, free of I/O.

pub mod kpi;
