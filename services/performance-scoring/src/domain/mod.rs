//! Scoring rules, free of I/O: periods of the organisation's calendar, what a case contributes
//! to the aggregates, KPI formulas, the scoring model and the trend targets.

pub mod facts;
pub mod kpi;
pub mod model;
pub mod period;
pub mod ranking;
pub mod trend;
