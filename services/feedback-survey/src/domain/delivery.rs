//! How a customer is asked: a link for the channels that carry one, a return-visit call (回访)
//! by an agent when the complaint came by phone or through a dedicated advisor.

use complaints_proto::common::v1::Channel;
use complaints_proto::survey::v1 as pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Link,
    ReturnVisit,
}

impl Delivery {
    pub fn for_channel(channel: i32) -> Self {
        match Channel::try_from(channel) {
            Ok(Channel::Phone | Channel::DedicatedAdvisor) => Delivery::ReturnVisit,
            _ => Delivery::Link,
        }
    }

    /// As stored in `survey.invitations.delivery`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Link => "link",
            Delivery::ReturnVisit => "return_visit",
        }
    }

    pub fn parse(stored: &str) -> Self {
        if stored == "return_visit" {
            Delivery::ReturnVisit
        } else {
            Delivery::Link
        }
    }

    pub fn to_proto(self) -> pb::Delivery {
        match self {
            Delivery::Link => pb::Delivery::Link,
            Delivery::ReturnVisit => pb::Delivery::ReturnVisit,
        }
    }
}

/// The outcome of a return-visit call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    Reached,
    NoAnswer,
    Refused,
}

impl CallOutcome {
    pub fn from_proto(outcome: pb::CallOutcome) -> Option<Self> {
        match outcome {
            pb::CallOutcome::Reached => Some(CallOutcome::Reached),
            pb::CallOutcome::NoAnswer => Some(CallOutcome::NoAnswer),
            pb::CallOutcome::Refused => Some(CallOutcome::Refused),
            pb::CallOutcome::Unspecified => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Reached => "reached",
            CallOutcome::NoAnswer => "no_answer",
            CallOutcome::Refused => "refused",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "reached" => Some(CallOutcome::Reached),
            "no_answer" => Some(CallOutcome::NoAnswer),
            "refused" => Some(CallOutcome::Refused),
            _ => None,
        }
    }

    pub fn to_proto(self) -> pb::CallOutcome {
        match self {
            CallOutcome::Reached => pb::CallOutcome::Reached,
            CallOutcome::NoAnswer => pb::CallOutcome::NoAnswer,
            CallOutcome::Refused => pb::CallOutcome::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_complaints_get_a_call_and_the_others_a_link() {
        assert_eq!(
            Delivery::for_channel(Channel::Phone as i32),
            Delivery::ReturnVisit
        );
        assert_eq!(
            Delivery::for_channel(Channel::DedicatedAdvisor as i32),
            Delivery::ReturnVisit
        );
        for channel in [
            Channel::Email,
            Channel::WebForm,
            Channel::Chat,
            Channel::Wechat,
        ] {
            assert_eq!(Delivery::for_channel(channel as i32), Delivery::Link);
        }
        for d in [Delivery::Link, Delivery::ReturnVisit] {
            assert_eq!(Delivery::parse(d.as_str()), d);
        }
        for o in [
            CallOutcome::Reached,
            CallOutcome::NoAnswer,
            CallOutcome::Refused,
        ] {
            assert_eq!(CallOutcome::parse(o.as_str()), Some(o));
        }
    }
}
