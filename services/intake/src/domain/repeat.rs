//! One contact, followed to the end (一次咨询、全程跟进): recognising a repeat contact from the
//! same customer about the same matter while an earlier complaint is still open.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

/// How repeat contacts are recognised (configurable).
#[derive(Clone, Debug)]
pub struct RepeatRules {
    /// `REPEAT_CONTACT_WINDOW`, default 30 days: how far back an earlier complaint may lie.
    pub window: Duration,
    /// `REPEAT_CONTACT_RAISES_PRIORITY`, default true: each repeat raises priority one level.
    pub raises_priority: bool,
}

impl Default for RepeatRules {
    fn default() -> Self {
        Self {
            window: Duration::days(30),
            raises_priority: true,
        }
    }
}

/// What identifies the customer and the matter of a contact.
#[derive(Clone, Debug, Default)]
pub struct ContactKey {
    pub customer_id: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub order_ref: Option<String>,
    pub product_ref: Option<String>,
}

impl ContactKey {
    /// A repeat can only be recognised when both the customer and the matter are identified.
    pub fn is_matchable(&self) -> bool {
        (self.customer_id.is_some() || self.phone.is_some() || self.email.is_some())
            && (self.order_ref.is_some() || self.product_ref.is_some())
    }
}

/// An earlier complaint that might be the same matter.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: Uuid,
    pub key: ContactKey,
    pub received_at: DateTime<Utc>,
    /// Its case is neither closed nor cancelled, and it was not rejected.
    pub open: bool,
    /// It is itself a linked repeat (never link to a link; link to its root).
    pub linked: bool,
}

fn same(a: &Option<String>, b: &Option<String>) -> bool {
    matches!((a, b), (Some(x), Some(y)) if x == y)
}

/// The earlier complaint this contact repeats, with the reason, if any: the most recent open,
/// unlinked complaint within the window from the same customer (same customer id, phone or
/// email) about the same order or product.
pub fn find_repeat_of(
    contact: &ContactKey,
    candidates: &[Candidate],
    rules: &RepeatRules,
    now: DateTime<Utc>,
) -> Option<(Uuid, String)> {
    if !contact.is_matchable() {
        return None;
    }
    candidates
        .iter()
        .filter(|c| c.open && !c.linked && c.received_at >= now - rules.window)
        .filter_map(|c| {
            let customer = if same(&contact.customer_id, &c.key.customer_id) {
                "customer id"
            } else if same(&contact.phone, &c.key.phone) {
                "phone"
            } else if same(&contact.email, &c.key.email) {
                "email"
            } else {
                return None;
            };
            let matter = if same(&contact.order_ref, &c.key.order_ref) {
                "order"
            } else if same(&contact.product_ref, &c.key.product_ref) {
                "product"
            } else {
                return None;
            };
            Some((
                c,
                format!("same {customer} and same {matter} as an open complaint"),
            ))
        })
        .max_by_key(|(c, _)| c.received_at)
        .map(|(c, why)| (c.id, why))
}

/// A contact of a batch of submissions taken together, in arrival order.
#[derive(Clone, Debug)]
pub struct BatchContact {
    /// The id the complaint will be stored under.
    pub id: Uuid,
    pub key: ContactKey,
    pub received_at: DateTime<Utc>,
}

/// What a repeat contact of a batch is linked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// A complaint stored before the batch.
    Stored(Uuid),
    /// An earlier first contact of the same batch (its index).
    Earlier(usize),
}

/// The repeat decision of every contact of a batch, as if they had been taken one at a time in
/// order: a first contact of the batch is a candidate for the contacts after it, a repeat is
/// not (repeats link to the root, never to a link).
pub fn decide_batch(
    contacts: &[BatchContact],
    stored: &[Candidate],
    rules: &RepeatRules,
) -> Vec<Option<(Root, String)>> {
    let mut candidates = stored.to_vec();
    let mut earlier = std::collections::HashMap::new();
    contacts
        .iter()
        .enumerate()
        .map(|(i, contact)| {
            let found = find_repeat_of(&contact.key, &candidates, rules, contact.received_at);
            match found {
                Some((id, why)) => Some((
                    earlier
                        .get(&id)
                        .map(|&index| Root::Earlier(index))
                        .unwrap_or(Root::Stored(id)),
                    why,
                )),
                None => {
                    if contact.key.is_matchable() {
                        earlier.insert(contact.id, i);
                        candidates.push(Candidate {
                            id: contact.id,
                            key: contact.key.clone(),
                            received_at: contact.received_at,
                            open: true,
                            linked: false,
                        });
                    }
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(customer: &str, order: &str) -> ContactKey {
        ContactKey {
            customer_id: Some(customer.into()),
            order_ref: Some(order.into()),
            ..Default::default()
        }
    }

    fn candidate(key: ContactKey, days_ago: i64) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            key,
            received_at: now() - Duration::days(days_ago),
            open: true,
            linked: false,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn same_customer_and_order_within_the_window_is_a_repeat() {
        let earlier = candidate(key("C1", "O1"), 3);
        let found = find_repeat_of(
            &key("C1", "O1"),
            std::slice::from_ref(&earlier),
            &RepeatRules::default(),
            now(),
        );
        assert_eq!(found.map(|f| f.0), Some(earlier.id));
    }

    #[test]
    fn other_order_closed_or_old_complaints_are_not() {
        let rules = RepeatRules::default();
        assert!(
            find_repeat_of(
                &key("C1", "O2"),
                &[candidate(key("C1", "O1"), 1)],
                &rules,
                now()
            )
            .is_none()
        );
        let mut closed = candidate(key("C1", "O1"), 1);
        closed.open = false;
        assert!(find_repeat_of(&key("C1", "O1"), &[closed], &rules, now()).is_none());
        assert!(
            find_repeat_of(
                &key("C1", "O1"),
                &[candidate(key("C1", "O1"), 31)],
                &rules,
                now()
            )
            .is_none()
        );
        let mut linked = candidate(key("C1", "O1"), 1);
        linked.linked = true;
        assert!(find_repeat_of(&key("C1", "O1"), &[linked], &rules, now()).is_none());
    }

    #[test]
    fn the_customer_is_recognised_by_phone_across_channels() {
        let earlier = ContactKey {
            phone: Some("+8613800138000".into()),
            product_ref: Some("P9".into()),
            ..Default::default()
        };
        let again = ContactKey {
            phone: Some("+8613800138000".into()),
            product_ref: Some("P9".into()),
            customer_id: Some("NEW".into()),
            ..Default::default()
        };
        let (_, why) = find_repeat_of(
            &again,
            &[candidate(earlier, 2)],
            &RepeatRules::default(),
            now(),
        )
        .unwrap();
        assert_eq!(why, "same phone and same product as an open complaint");
    }

    #[test]
    fn the_most_recent_open_complaint_wins_and_anonymous_contacts_never_match() {
        let older = candidate(key("C1", "O1"), 10);
        let newer = candidate(key("C1", "O1"), 2);
        let found = find_repeat_of(
            &key("C1", "O1"),
            &[older, newer.clone()],
            &RepeatRules::default(),
            now(),
        );
        assert_eq!(found.unwrap().0, newer.id);
        let anonymous = ContactKey {
            order_ref: Some("O1".into()),
            ..Default::default()
        };
        assert!(
            find_repeat_of(
                &anonymous,
                &[candidate(key("C1", "O1"), 1)],
                &RepeatRules::default(),
                now()
            )
            .is_none()
        );
    }

    fn contact(key: ContactKey, minutes_ago: i64) -> BatchContact {
        BatchContact {
            id: Uuid::now_v7(),
            key,
            received_at: now() - Duration::minutes(minutes_ago),
        }
    }

    #[test]
    fn a_batch_decides_as_if_its_contacts_came_one_at_a_time() {
        let rules = RepeatRules::default();
        let stored = candidate(key("C1", "O1"), 3);
        let batch = [
            // A new matter of C2, then C2 again about it: linked to the first of the batch.
            contact(key("C2", "O7"), 3),
            contact(key("C2", "O7"), 2),
            // C1 about a stored open complaint, twice: both linked to the stored one (the
            // first repeat is a link itself, never a root).
            contact(key("C1", "O1"), 2),
            contact(key("C1", "O1"), 1),
            // C2 about another order: a first contact.
            contact(key("C2", "O8"), 0),
        ];
        let decided = decide_batch(&batch, std::slice::from_ref(&stored), &rules);
        let roots: Vec<Option<Root>> = decided.iter().map(|d| d.clone().map(|d| d.0)).collect();
        assert_eq!(
            roots,
            vec![
                None,
                Some(Root::Earlier(0)),
                Some(Root::Stored(stored.id)),
                Some(Root::Stored(stored.id)),
                None,
            ]
        );
        assert_eq!(
            decided[1].as_ref().unwrap().1,
            "same customer id and same order as an open complaint"
        );
    }

    #[test]
    fn anonymous_contacts_of_a_batch_are_never_roots() {
        let anonymous = ContactKey {
            order_ref: Some("O1".into()),
            ..Default::default()
        };
        let batch = [contact(anonymous.clone(), 2), contact(anonymous, 1)];
        assert_eq!(
            decide_batch(&batch, &[], &RepeatRules::default()),
            vec![None, None]
        );
    }
}
