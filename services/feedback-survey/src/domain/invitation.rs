//! The life of an invitation: which states accept answers by token, a return-visit call, or a
//! switch from link to call. Pure, so every refusal is unit-tested.

use chrono::{DateTime, Utc};

use crate::domain::delivery::Delivery;

pub const SCHEDULED: i16 = 1;
pub const SENT: i16 = 2;
pub const ANSWERED: i16 = 3;
/// Shown, never stored: a scheduled or sent invitation past its expiry.
pub const EXPIRED: i16 = 4;
pub const OPTED_OUT: i16 = 5;
pub const DECLINED: i16 = 6;

/// Why an invitation cannot take what was asked of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    AlreadyAnswered,
    Expired,
    OptedOut,
    Declined,
    NotAReturnVisit,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::AlreadyAnswered => "this survey was already answered; a token works once",
            Refusal::Expired => "this survey link has expired",
            Refusal::OptedOut => "the customer opted out of surveys",
            Refusal::Declined => "the customer refused the return visit",
            Refusal::NotAReturnVisit => {
                "this invitation is a survey link; turn it into a return visit first (RequestReturnVisit)"
            }
        }
    }

    /// The `PreconditionFailure` type.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::AlreadyAnswered => "ALREADY_ANSWERED",
            Refusal::Expired => "EXPIRED",
            Refusal::OptedOut => "OPTED_OUT",
            Refusal::Declined => "DECLINED",
            Refusal::NotAReturnVisit => "DELIVERY",
        }
    }
}

/// The status a client sees: a waiting invitation past its expiry shows as expired.
pub fn visible_status(status: i16, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> i16 {
    if is_waiting(status) && expires_at.is_some_and(|e| e <= now) {
        EXPIRED
    } else {
        status
    }
}

fn is_waiting(status: i16) -> bool {
    status == SCHEDULED || status == SENT
}

fn closed(status: i16) -> Result<(), Refusal> {
    match status {
        ANSWERED => Err(Refusal::AlreadyAnswered),
        OPTED_OUT => Err(Refusal::OptedOut),
        DECLINED => Err(Refusal::Declined),
        _ => Ok(()),
    }
}

/// Whether the customer may answer through the token now.
pub fn accepts_token_answer(
    status: i16,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    closed(status)?;
    if visible_status(status, expires_at, now) == EXPIRED {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// Whether an agent may record a return-visit call. Calls do not expire: the follow-up clock
/// of the SLA timer watches their timeliness.
pub fn accepts_return_visit(status: i16, delivery: Delivery) -> Result<(), Refusal> {
    closed(status)?;
    if delivery != Delivery::ReturnVisit {
        return Err(Refusal::NotAReturnVisit);
    }
    Ok(())
}

/// Whether a waiting link invitation may become a call because the customer asked for one.
pub fn accepts_switch_to_return_visit(status: i16) -> Result<(), Refusal> {
    closed(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once_and_until_it_expires() {
        let now = Utc::now();
        let later = Some(now + chrono::Duration::hours(1));
        let earlier = Some(now - chrono::Duration::seconds(1));
        assert_eq!(accepts_token_answer(SENT, later, now), Ok(()));
        assert_eq!(
            accepts_token_answer(ANSWERED, later, now),
            Err(Refusal::AlreadyAnswered)
        );
        assert_eq!(
            accepts_token_answer(SENT, earlier, now),
            Err(Refusal::Expired)
        );
        assert_eq!(
            accepts_token_answer(OPTED_OUT, later, now),
            Err(Refusal::OptedOut)
        );
        assert_eq!(visible_status(SENT, earlier, now), EXPIRED);
        assert_eq!(visible_status(ANSWERED, earlier, now), ANSWERED);
        assert_eq!(visible_status(OPTED_OUT, earlier, now), OPTED_OUT);
    }

    #[test]
    fn calls_are_recorded_only_for_open_return_visits() {
        assert_eq!(
            accepts_return_visit(SCHEDULED, Delivery::ReturnVisit),
            Ok(())
        );
        assert_eq!(accepts_return_visit(SENT, Delivery::ReturnVisit), Ok(()));
        assert_eq!(
            accepts_return_visit(SENT, Delivery::Link),
            Err(Refusal::NotAReturnVisit)
        );
        assert_eq!(
            accepts_return_visit(DECLINED, Delivery::ReturnVisit),
            Err(Refusal::Declined)
        );
        assert_eq!(
            accepts_return_visit(ANSWERED, Delivery::ReturnVisit),
            Err(Refusal::AlreadyAnswered)
        );
        assert_eq!(accepts_switch_to_return_visit(SENT), Ok(()));
        assert_eq!(
            accepts_switch_to_return_visit(ANSWERED),
            Err(Refusal::AlreadyAnswered)
        );
    }
}
