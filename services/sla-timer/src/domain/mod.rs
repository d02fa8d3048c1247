//! SLA rules, free of I/O: calendars and business-time arithmetic, policies (which targets a
//! case gets), and clock planning (deadlines, warnings, breaches, escalation ladder).

pub mod calendar;
pub mod clock;
pub mod policy;
