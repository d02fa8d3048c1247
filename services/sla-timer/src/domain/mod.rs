//! SLA rules, free of I/O: calendars and business-time arithmetic, holiday data (shipped and
//! iCalendar), policies (which targets a case gets), and clock planning (deadlines, warnings,
//! breaches, escalation ladder, explanations).

pub mod calendar;
pub mod clock;
pub mod days;
pub mod policy;
