//! Intake's deeper rules over gRPC against a real Postgres: repeat contacts linked to the open
//! complaint (一次咨询、全程跟进), explicit merge and unlink, audited classification overrides,
//! versioned taxonomy managed over gRPC, customer history across channels, search, attachments.

use complaints_kit::Role;
use complaints_kit::auth::BearerToken;
use complaints_kit::testing::{self, RunningService};
use complaints_proto::common::v1::{Channel, Priority, Severity};
use complaints_proto::intake::v1::intake_service_client::IntakeServiceClient;
use complaints_proto::intake::v1::{
    Attachment, CategoryRule, Complainant, Complaint, ComplaintContent, ComplaintStatus,
    GetComplaintRequest, GetCustomerHistoryRequest, GetTaxonomyRequest, LinkComplaintRequest,
    ListComplaintsRequest, OverrideClassificationRequest, PublishTaxonomyRequest,
    SubmitComplaintRequest, UnlinkComplaintRequest,
};
use sqlx::PgPool;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel as GrpcChannel;
use tonic_types::StatusExt;

type Client = IntakeServiceClient<InterceptedService<GrpcChannel, BearerToken>>;

struct Harness {
    service: RunningService,
    pool: PgPool,
}

async fn start() -> Harness {
    // The held-burst tests hold a customer's lock for a while on purpose.
    start_with_lock_timeout(std::time::Duration::from_secs(60)).await
}

async fn start_with_lock_timeout(lock_timeout: std::time::Duration) -> Harness {
    let db = testing::fresh_database().await;
    let (listener, url) = testing::ephemeral_listener().await;
    let mut config = intake::Config::new(testing::common_config(&db.url));
    config.cases_url = "http://127.0.0.1:9".into();
    config.submit_lock_timeout = lock_timeout;
    let service = RunningService::spawn(listener, url, |l, s| intake::run(config, l, s));
    let pool = PgPool::connect(&db.url).await.unwrap();
    Harness { service, pool }
}

impl Harness {
    fn client(&self, role: Role) -> Client {
        let token = testing::token("agent-1", role, Some("quality"));
        IntakeServiceClient::with_interceptor(
            testing::channel(&self.service.url),
            BearerToken::new(&token).unwrap(),
        )
    }

    async fn events(&self, event_type: &str) -> i64 {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM intake.event_outbox WHERE event_type = $1")
                .bind(event_type)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        n
    }
}

fn contact(
    request_id: &str,
    customer: &str,
    order: &str,
    channel: Channel,
    text: &str,
) -> SubmitComplaintRequest {
    SubmitComplaintRequest {
        request_id: request_id.into(),
        channel: channel as i32,
        complainant: Some(Complainant {
            name: "Wang Fang".into(),
            phone: "13700137000".into(),
            customer_id: customer.into(),
            ..Default::default()
        }),
        content: Some(ComplaintContent {
            description: text.into(),
            order_ref: order.into(),
            ..Default::default()
        }),
        recorded_by: if matches!(channel, Channel::Phone | Channel::InStore) {
            "agent-7".into()
        } else {
            String::new()
        },
    }
}

#[tokio::test]
async fn a_repeat_contact_about_an_open_matter_is_linked_and_raises_priority() {
    let h = start().await;
    let mut intake = h.client(Role::Service);
    let first = intake
        .submit_complaint(contact("r-1", "C1", "O1", Channel::WebForm, "电视坏了"))
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(
        first.classification.as_ref().unwrap().priority,
        Priority::P3 as i32
    );
    // Same customer, same order, another channel, days later in spirit.
    let again = intake
        .submit_complaint(contact(
            "r-2",
            "C1",
            "O1",
            Channel::Phone,
            "我又打电话了，电视还是坏的",
        ))
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(again.status, ComplaintStatus::Linked as i32);
    assert_eq!(again.linked_to_complaint_id, first.id);
    assert_eq!(again.linked_to_reference, first.reference);
    assert!(
        again
            .classification
            .unwrap()
            .reasons
            .iter()
            .any(|r| r.contains("same customer id and same order"))
    );
    let first_now = intake
        .get_complaint(GetComplaintRequest {
            complaint_id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(first_now.repeat_contacts, 1);
    assert_eq!(
        first_now.classification.unwrap().priority,
        Priority::P2 as i32
    );
    // One case for the matter: one acceptance, one repeat-contact event for the earlier case.
    assert_eq!(h.events("ComplaintAccepted").await, 1);
    assert_eq!(h.events("ComplaintRepeatContact").await, 1);

    // Another order is another matter.
    let other = intake
        .submit_complaint(contact(
            "r-3",
            "C1",
            "O2",
            Channel::WebForm,
            "另一个订单也有问题",
        ))
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(other.status, ComplaintStatus::Received as i32);
    assert_eq!(h.events("ComplaintAccepted").await, 2);
    h.service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_contacts_about_one_matter_open_it_once() {
    let h = start().await;
    let intake = h.client(Role::Service);
    // Eight channels at once, one customer, one order: taken one at a time, the first opens
    // the matter and the other seven are linked to it. Half the contacts give the customer id
    // and the phone, half only the phone: the same customer either way.
    let submissions: Vec<_> = (0..8)
        .map(|i| {
            let mut intake = intake.clone();
            let customer = if i % 2 == 0 { "C9" } else { "" };
            tokio::spawn(async move {
                intake
                    .submit_complaint(contact(
                        &format!("burst-{i}"),
                        customer,
                        "O9",
                        Channel::WebForm,
                        "洗衣机漏水",
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .complaint
                    .unwrap()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for submission in submissions {
        statuses.push(submission.await.unwrap().status);
    }
    let received = statuses
        .iter()
        .filter(|s| **s == ComplaintStatus::Received as i32)
        .count();
    assert_eq!(received, 1, "statuses: {statuses:?}");
    assert_eq!(h.events("ComplaintAccepted").await, 1);
    assert_eq!(h.events("ComplaintRepeatContact").await, 7);

    // The acceptance is written before the row comes back from the database: it must announce
    // exactly what was stored.
    let (payload,): (Vec<u8>,) = sqlx::query_as(
        "SELECT payload FROM intake.event_outbox WHERE event_type = 'ComplaintAccepted'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    use prost::Message as _;
    let event = complaints_proto::events::v1::Event::decode(payload.as_slice()).unwrap();
    let Some(complaints_proto::events::v1::event::Payload::ComplaintAccepted(accepted)) =
        event.payload
    else {
        panic!("not an acceptance: {event:?}");
    };
    let stored = h
        .client(Role::Service)
        .get_complaint(GetComplaintRequest {
            complaint_id: accepted.complaint_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    let classification = stored.classification.unwrap();
    assert_eq!(accepted.reference, stored.reference);
    assert_eq!(
        accepted.received_at, stored.received_at,
        "same receipt time"
    );
    assert_eq!(accepted.category, classification.category);
    assert_eq!(accepted.order_ref, "O9");
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn an_agent_merges_and_unlinks_contacts() {
    let h = start().await;
    let mut intake = h.client(Role::Service);
    let first = intake
        .submit_complaint(contact("m-1", "C9", "O1", Channel::Email, "broken kettle"))
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    // The customer wrote again quoting no order: not recognised automatically.
    let mut loose = contact("m-2", "C9", "", Channel::Chat, "about my kettle again");
    loose.content.as_mut().unwrap().order_ref.clear();
    let second = intake
        .submit_complaint(loose)
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(second.status, ComplaintStatus::Received as i32);

    let mut agent = h.client(Role::Agent);
    let missing_reason = agent
        .link_complaint(LinkComplaintRequest {
            complaint_id: second.id.clone(),
            version: second.version,
            target_complaint_id: first.id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("reason required");
    assert_eq!(missing_reason.code(), Code::InvalidArgument);
    let merged = agent
        .link_complaint(LinkComplaintRequest {
            complaint_id: second.id.clone(),
            version: second.version,
            target_complaint_id: first.id.clone(),
            reason: "same kettle".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(merged.status, ComplaintStatus::Linked as i32);
    assert_eq!(merged.linked_to_complaint_id, first.id);
    // Its own case is cancelled as a duplicate, the earlier case records the contact.
    assert_eq!(h.events("ComplaintRejected").await, 1);
    assert_eq!(h.events("ComplaintRepeatContact").await, 1);

    let unlinked = agent
        .unlink_complaint(UnlinkComplaintRequest {
            complaint_id: merged.id.clone(),
            version: merged.version,
            reason: "different kettle after all".into(),
        })
        .await;
    // It had a case of its own in real life; here intake never heard of one, so it may unlink.
    let unlinked = unlinked.unwrap().into_inner().complaint.unwrap();
    assert_eq!(unlinked.status, ComplaintStatus::Received as i32);
    assert!(unlinked.linked_to_complaint_id.is_empty());
    assert_eq!(h.events("ComplaintAccepted").await, 3);
    let stale = agent
        .unlink_complaint(UnlinkComplaintRequest {
            complaint_id: merged.id,
            version: merged.version,
            reason: "again".into(),
        })
        .await
        .expect_err("stale version");
    assert_eq!(stale.code(), Code::Aborted);
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn an_override_is_audited_and_announced() {
    let h = start().await;
    let created = h
        .client(Role::Service)
        .submit_complaint(contact("o-1", "C2", "O5", Channel::WebForm, "hello there"))
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(created.classification.as_ref().unwrap().category, "other");
    let mut agent = h.client(Role::Agent);
    let refused = agent
        .override_classification(OverrideClassificationRequest {
            complaint_id: created.id.clone(),
            version: created.version,
            category: "no_such_category".into(),
            severity: 42,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    let fields: Vec<String> = refused
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["reason", "category", "severity"]);
    let overridden = agent
        .override_classification(OverrideClassificationRequest {
            complaint_id: created.id.clone(),
            version: created.version,
            category: "billing".into(),
            severity: Severity::Major as i32,
            reason: "customer was charged twice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    let classification = overridden.classification.unwrap();
    assert_eq!(
        (classification.category.as_str(), classification.severity),
        ("billing", Severity::Major as i32)
    );
    assert!(overridden.classification_overridden);
    assert!(classification.reasons.last().unwrap().contains("agent-1"));
    let (audits,): (i64,) = sqlx::query_as("SELECT count(*) FROM intake.classification_overrides WHERE reason = 'customer was charged twice'")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(audits, 1);
    assert_eq!(h.events("ComplaintReclassified").await, 1);
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn a_published_taxonomy_version_classifies_new_complaints() {
    let h = start().await;
    let mut admin = h.client(Role::Admin);
    let active = admin
        .get_taxonomy(GetTaxonomyRequest { version: 0 })
        .await
        .unwrap()
        .into_inner()
        .taxonomy
        .unwrap();
    assert_eq!(active.version, 1);
    assert!(
        active
            .categories
            .iter()
            .any(|c| c.category == "product_quality" && c.label_zh == "产品质量")
    );

    let mut rules = active.clone();
    rules.categories.push(CategoryRule {
        category: "packaging".into(),
        label_zh: "包装".into(),
        label_en: "Packaging".into(),
        keywords: vec!["包装".into(), "packaging".into()],
    });
    let denied = h
        .client(Role::Agent)
        .publish_taxonomy(PublishTaxonomyRequest {
            request_id: "tax-2".into(),
            taxonomy: Some(rules.clone()),
        })
        .await
        .expect_err("agents do not publish");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let published = admin
        .publish_taxonomy(PublishTaxonomyRequest {
            request_id: "tax-2".into(),
            taxonomy: Some(rules.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .taxonomy
        .unwrap();
    assert_eq!(published.version, 2);
    let again = admin
        .publish_taxonomy(PublishTaxonomyRequest {
            request_id: "tax-2".into(),
            taxonomy: Some(rules.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .taxonomy
        .unwrap();
    assert_eq!(again.version, 2, "idempotent on request_id");
    let mut broken = rules.clone();
    broken.categories[0].keywords.clear();
    let invalid = admin
        .publish_taxonomy(PublishTaxonomyRequest {
            request_id: "tax-3".into(),
            taxonomy: Some(broken),
        })
        .await
        .expect_err("invalid rules");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(
        invalid
            .message()
            .contains("taxonomy.categories[0].keywords"),
        "{}",
        invalid.message()
    );

    let classified = h
        .client(Role::Service)
        .submit_complaint(contact("t-1", "C3", "O3", Channel::App, "收到时包装破了"))
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(classified.taxonomy_version, 2);
    assert_eq!(classified.classification.unwrap().category, "packaging");
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn customer_history_spans_channels_and_search_filters() {
    let h = start().await;
    let mut intake = h.client(Role::Service);
    intake
        .submit_complaint(contact("h-1", "C4", "O1", Channel::Wechat, "快递延迟了"))
        .await
        .unwrap();
    intake
        .submit_complaint(contact(
            "h-2",
            "C4",
            "O2",
            Channel::InStore,
            "门店服务态度差",
        ))
        .await
        .unwrap();
    let mut attached = contact("h-3", "C5", "O3", Channel::Email, "invoice overcharged");
    attached.complainant.as_mut().unwrap().phone = "13800000001".into();
    attached.content.as_mut().unwrap().attachments = vec![Attachment {
        uri: "s3://evidence/invoice.pdf".into(),
        file_name: "invoice.pdf".into(),
        content_type: "application/pdf".into(),
        size_bytes: 20_480,
        sha256: "0f".repeat(32),
    }];
    let with_file = intake
        .submit_complaint(attached)
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap();
    assert_eq!(
        with_file.content.unwrap().attachments[0].file_name,
        "invoice.pdf"
    );

    let history = intake
        .get_customer_history(GetCustomerHistoryRequest {
            phone: "137 0013 7000".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.complaints.len(), 2);
    assert_eq!(history.by_channel.get("CHANNEL_WECHAT"), Some(&1));
    assert_eq!(history.by_channel.get("CHANNEL_IN_STORE"), Some(&1));
    let nobody = intake
        .get_customer_history(GetCustomerHistoryRequest::default())
        .await
        .expect_err("who?");
    assert_eq!(nobody.code(), Code::InvalidArgument);

    let found = intake
        .list_complaints(ListComplaintsRequest {
            query: "OVERCHARGED invoice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .complaints;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, with_file.id);
    let delivery = intake
        .list_complaints(ListComplaintsRequest {
            category: "delivery".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .complaints;
    assert_eq!(delivery.len(), 1);
    h.service.stop().await.unwrap();
}

/// A submission from its own customer (own phone) about its own order.
fn own_contact(
    request_id: &str,
    customer: &str,
    order: &str,
    text: &str,
) -> SubmitComplaintRequest {
    let mut request = contact(request_id, customer, order, Channel::App, text);
    let digits: u64 = customer.bytes().map(u64::from).sum::<u64>() * 7919 + customer.len() as u64;
    request.complainant.as_mut().unwrap().phone = format!("139{:08}", digits % 100_000_000);
    request
}

/// Holds customer `HOLD`'s lock from outside, so that both submission writers wait on it (each
/// with one submission of that customer) while whatever is submitted next queues up; the
/// returned connection releases it when told to.
/// Both writers busy: each holds a contact of customer HOLD waiting on its lock (the first
/// becomes a new complaint, the second a repeat contact of it).
struct HeldWriters {
    holder: sqlx::pool::PoolConnection<sqlx::Postgres>,
    contacts: Vec<tokio::task::JoinHandle<()>>,
}

async fn hold_writers(h: &Harness) -> HeldWriters {
    let holder = hold_customer(h, "HOLD").await;
    let mut contacts = Vec::new();
    for i in 1..=2 {
        let mut intake = h.client(Role::Service);
        contacts.push(tokio::spawn(async move {
            let stored = intake
                .submit_complaint(own_contact(&format!("hold-{i}"), "HOLD", "O-HOLD", "held"))
                .await;
            assert!(stored.is_ok(), "held contact {i}: {stored:?}");
        }));
        testing::eventually(
            "a writer waiting on the held lock",
            std::time::Duration::from_secs(10),
            || async {
                let (waiting,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                )
                .fetch_one(&h.pool)
                .await
                .unwrap();
                (waiting == i).then_some(())
            },
        )
        .await;
    }
    HeldWriters { holder, contacts }
}

/// Lets the writers go and waits until both held contacts are stored.
async fn release_writers(held: HeldWriters) {
    release(held.holder).await;
    for contact in held.contacts {
        contact.await.expect("held contact");
    }
}

async fn hold_customer(h: &Harness, customer: &str) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut holder = h.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(intake::store::customer_lock_id(&format!(
            "customer:{customer}"
        )))
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

async fn release(mut holder: sqlx::pool::PoolConnection<sqlx::Postgres>) {
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *holder)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_shares_transactions_and_gets_the_answers_of_one_at_a_time() {
    let h = start().await;
    let held = hold_writers(&h).await;
    // Sixteen new matters; for eight of them a repeat contact and a replay of the same request
    // in the same burst; and one request id used twice for different complaints.
    let mut requests: Vec<(String, SubmitComplaintRequest)> = Vec::new();
    for i in 0..16 {
        let first = own_contact(
            &format!("new-{i}"),
            &format!("B{i}"),
            &format!("O{i}"),
            "空调不制冷",
        );
        if i < 8 {
            requests.push((format!("replay-{i}"), first.clone()));
            requests.push((
                format!("again-{i}"),
                own_contact(
                    &format!("again-{i}"),
                    &format!("B{i}"),
                    &format!("O{i}"),
                    "空调还是不制冷",
                ),
            ));
        }
        requests.push((format!("new-{i}"), first));
    }
    requests.push((
        "clash-a".into(),
        own_contact("clash", "X1", "OX1", "late parcel"),
    ));
    requests.push((
        "clash-b".into(),
        own_contact("clash", "X2", "OX2", "broken screen"),
    ));
    let calls: Vec<_> = requests
        .into_iter()
        .map(|(name, request)| {
            let mut intake = h.client(Role::Service);
            (
                name,
                tokio::spawn(async move { intake.submit_complaint(request).await }),
            )
        })
        .collect();
    // Let every call reach the queue before the writers are let go.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    release_writers(held).await;
    let mut answers = std::collections::HashMap::new();
    for (name, call) in calls {
        answers.insert(name, call.await.unwrap().map(|r| r.into_inner()));
    }

    let complaint = |name: &str| {
        let answer = answers[name].as_ref().unwrap();
        (answer.created, answer.complaint.clone().unwrap())
    };
    for i in 0..8 {
        let (first_created, first) = complaint(&format!("new-{i}"));
        let (replay_created, replayed) = complaint(&format!("replay-{i}"));
        assert!(
            first_created != replay_created,
            "one of the two calls created it"
        );
        assert_eq!(first.id, replayed.id);
        // Whichever of the two contacts came first opened the matter; the other is linked.
        let (_, again) = complaint(&format!("again-{i}"));
        let (root, link) = if again.status == ComplaintStatus::Linked as i32 {
            (&first, &again)
        } else {
            (&again, &first)
        };
        assert_eq!(root.status, ComplaintStatus::Received as i32, "{root:?}");
        assert_eq!(link.status, ComplaintStatus::Linked as i32, "{link:?}");
        assert_eq!(link.linked_to_complaint_id, root.id);
    }
    for i in 8..16 {
        let (created, first) = complaint(&format!("new-{i}"));
        assert!(created);
        assert_eq!(first.status, ComplaintStatus::Received as i32);
    }
    let clashes: Vec<_> = ["clash-a", "clash-b"]
        .iter()
        .map(|name| {
            answers[*name]
                .as_ref()
                .map_err(|s| s.code())
                .map(|r| r.created)
        })
        .collect();
    assert!(
        clashes.contains(&Ok(true)) && clashes.contains(&Err(Code::AlreadyExists)),
        "{clashes:?}"
    );
    let references: std::collections::HashSet<String> = answers
        .values()
        .filter_map(|a| a.as_ref().ok())
        .filter(|a| a.created)
        .map(|a| a.complaint.as_ref().unwrap().reference.clone())
        .collect();
    assert_eq!(
        references.len(),
        16 + 8 + 1,
        "every stored complaint has its own reference"
    );

    // Sixteen matters, the clash and the first held contact were announced; nine repeats.
    assert_eq!(h.events("ComplaintAccepted").await, 18);
    assert_eq!(h.events("ComplaintRepeatContact").await, 9);
    // The burst was written together: many acceptances in one transaction (the one that
    // inserted the rows, `xmin`; positions may differ within a transaction).
    let (largest,): (i64,) = sqlx::query_as(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM intake.event_outbox GROUP BY xmin::text) t",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!(largest >= 10, "largest transaction wrote {largest} events");
    h.service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_the_database_refuses_fails_alone_and_its_batch_is_stored() {
    let h = start().await;
    let held = hold_writers(&h).await;
    sqlx::raw_sql(
        "CREATE FUNCTION intake.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.description LIKE '%poison%' THEN RAISE EXCEPTION 'refused by test'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON intake.complaints
             FOR EACH ROW EXECUTE FUNCTION intake.refuse_poison();",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    let calls: Vec<_> = (0..11)
        .map(|i| {
            let mut intake = h.client(Role::Service);
            let text = if i == 5 {
                "poison pill"
            } else {
                "刷卡被多扣了钱"
            };
            let request = own_contact(
                &format!("good-{i}"),
                &format!("G{i}"),
                &format!("OG{i}"),
                text,
            );
            tokio::spawn(async move { intake.submit_complaint(request).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = intake_backends(&h.pool).await;
    release_writers(held).await;
    for (i, call) in calls.into_iter().enumerate() {
        let answer = call.await.unwrap();
        if i == 5 {
            assert_eq!(answer.unwrap_err().code(), Code::Internal);
        } else {
            assert!(answer.unwrap().into_inner().created, "call {i}");
        }
    }
    // The ten good ones and the first held contact, each announced once.
    assert_eq!(h.events("ComplaintAccepted").await, 11);
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM intake.complaints")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(stored, 12, "ten good ones and both held contacts");
    // The failed transactions were rolled back, not ended by closing their connections.
    let after = intake_backends(&h.pool).await;
    assert!(
        before.iter().all(|pid| after.contains(pid)),
        "{before:?} → {after:?}"
    );
    h.service.stop().await.unwrap();
}

/// Waits (at most 10 s) until a backend of `pg_stat_activity` matches `filter`; panics with
/// `never` if none does.
async fn wait_for_backend(pool: &PgPool, filter: &str, never: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let matching: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {filter}"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        if matching > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{never}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The backends of intake's connections to the test's database.
async fn intake_backends(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE application_name = 'intake' AND datname = current_database() ORDER BY pid",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_case_closes_its_complaint_whether_recorded_now_or_by_an_earlier_release() {
    let h = start().await;
    let mut intake = h.client(Role::Service);
    let mut ids = Vec::new();
    for i in 0..2 {
        let complaint = intake
            .submit_complaint(own_contact(
                &format!("cc-{i}"),
                &format!("CC{i}"),
                "O1",
                "破损",
            ))
            .await
            .unwrap()
            .into_inner()
            .complaint
            .unwrap();
        ids.push(uuid::Uuid::parse_str(&complaint.id).unwrap());
    }
    let (first_case, review_case, legacy_case) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    // The first complaint: its case recorded by an earlier release, then a review case now.
    // The second: only by an earlier release.
    for (id, case) in [(ids[0], first_case), (ids[1], legacy_case)] {
        sqlx::query("UPDATE intake.complaints SET case_id = $2 WHERE id = $1")
            .bind(id)
            .bind(case)
            .execute(&h.pool)
            .await
            .unwrap();
    }
    let mut conn = h.pool.acquire().await.unwrap();
    intake::store::set_cases(&mut conn, &[(ids[0], review_case)])
        .await
        .unwrap();
    let open = |id: uuid::Uuid| {
        let pool = h.pool.clone();
        async move {
            let (open,): (bool,) =
                sqlx::query_as("SELECT case_open FROM intake.complaints WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            open
        }
    };
    // Closing the superseded case leaves the complaint open; closing its current case does not.
    intake::store::set_case_open(&mut conn, first_case, false)
        .await
        .unwrap();
    assert!(open(ids[0]).await);
    intake::store::set_case_open(&mut conn, review_case, false)
        .await
        .unwrap();
    assert!(!open(ids[0]).await);
    intake::store::set_case_open(&mut conn, legacy_case, false)
        .await
        .unwrap();
    assert!(!open(ids[1]).await);
    assert_eq!(
        intake::store::case_of(&mut conn, ids[0]).await.unwrap(),
        Some(review_case)
    );
    assert_eq!(
        intake::store::case_of(&mut conn, ids[1]).await.unwrap(),
        Some(legacy_case)
    );
    drop(conn);
    h.service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_locked_elsewhere_fails_alone_and_everyone_else_is_stored() {
    let h = start_with_lock_timeout(std::time::Duration::from_millis(300)).await;
    // Another replica's transaction holds customer STUCK's lock and does not let go.
    let holder = hold_customer(&h, "STUCK").await;
    let mut calls = Vec::new();
    for (name, customer) in [("stuck", "STUCK"), ("stuck-again", "STUCK")]
        .into_iter()
        .chain((0..8).map(|i| ("free", ["F0", "F1", "F2", "F3", "F4", "F5", "F6", "F7"][i])))
    {
        let mut intake = h.client(Role::Service);
        let request = own_contact(
            &format!("{name}-{customer}"),
            customer,
            &format!("O-{name}-{customer}"),
            "发票金额不对",
        );
        calls.push((
            name,
            tokio::spawn(async move { intake.submit_complaint(request).await }),
        ));
    }
    let mut stuck_answers = Vec::new();
    for (name, call) in calls {
        // Without a lock timeout the stuck calls (and any batch they share) wait forever.
        let answer = tokio::time::timeout(std::time::Duration::from_secs(60), call)
            .await
            .expect("a submission stalled behind a lock held elsewhere")
            .unwrap();
        match name {
            "free" => assert!(answer.unwrap().into_inner().created),
            _ => stuck_answers.push(answer.map(|_| ()).unwrap_err()),
        }
    }
    for status in &stuck_answers {
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert!(status.message().contains("request_id"), "{status:?}");
    }
    // Everyone else was stored while the lock was still held; nothing of STUCK's was.
    let count = |sql: &'static str| {
        let pool = h.pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
            n
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM intake.complaints WHERE customer_id LIKE 'F%'").await,
        8
    );
    assert_eq!(
        count("SELECT count(*) FROM intake.complaints WHERE customer_id = 'STUCK'").await,
        0
    );
    release(holder).await;
    // Retried with the same request id once the lock is free: stored, once.
    let mut intake = h.client(Role::Service);
    let retried = intake
        .submit_complaint(own_contact(
            "stuck-STUCK",
            "STUCK",
            "O-stuck-STUCK",
            "发票金额不对",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.created);
    assert_eq!(
        count("SELECT count(*) FROM intake.complaints WHERE customer_id = 'STUCK'").await,
        1
    );
    h.service.stop().await.unwrap();
}

/// The advisory locks a transaction holds, and its lock timeout.
async fn advisory_locks_and_timeout(tx: &mut sqlx::PgConnection) -> (i64, String) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_locks
                 WHERE pid = pg_backend_pid() AND locktype = 'advisory'),
                current_setting('lock_timeout')",
    )
    .fetch_one(tx)
    .await
    .unwrap()
}

/// Submits a contact that must be stored, and returns the complaint.
async fn stored(intake: &mut Client, request: SubmitComplaintRequest) -> Complaint {
    intake
        .submit_complaint(request)
        .await
        .unwrap()
        .into_inner()
        .complaint
        .unwrap()
}

async fn count_rows(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The server process of a connection.
async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Waits until the server process `pid` has ended (its connection was closed).
async fn wait_backend_gone(pool: &PgPool, pid: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(pool)
                .await
                .unwrap();
        if !alive {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backend {pid} still runs: the connection was not closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_to_begin_is_rolled_back_and_one_dropped_closes_its_connection() {
    use complaints_kit::db::HeldConnection;
    let h = start().await;
    let holder = hold_customer(&h, "HELD").await;
    let mut held = HeldConnection::new(h.pool.clone());
    let first = backend_pid(held.get().await.unwrap()).await;
    let identifiers = ["customer:HELD".to_owned()];
    let timeout = std::time::Duration::from_millis(50);
    let failed = intake::store::begin_for_customer(&mut held, &identifiers, None, 0, timeout).await;
    let error = failed.map(|_| ()).unwrap_err();
    assert_eq!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("55P03"),
        "{error}"
    );
    // The failed transaction was rolled back and the connection kept: no transaction left
    // open (two statements get two transaction ids), no setting of it left behind.
    assert!(held.is_held());
    let conn = held.get().await.unwrap();
    assert_eq!(backend_pid(&mut *conn).await, first);
    let xid = "SELECT pg_current_xact_id()::text, current_setting('lock_timeout')";
    let (a, lock_timeout): (String, String) =
        sqlx::query_as(xid).fetch_one(&mut *conn).await.unwrap();
    let (b, _): (String, String) = sqlx::query_as(xid).fetch_one(&mut *conn).await.unwrap();
    assert_ne!(a, b, "a transaction was left open");
    assert_eq!(lock_timeout, "0");
    release(holder).await;

    // The next batch begins, holds the lock with its timeout, and finds the stored complaints
    // of its customer in the same round trip.
    let mut intake = h.client(Role::Service);
    let stored = stored(
        &mut intake,
        own_contact("held-1", "HELD", "O-held", "发票金额不对"),
    )
    .await;
    let lookup = intake::store::CandidateLookup {
        customer_ids: vec!["HELD"],
        phones: vec![],
        emails: vec![],
        since: chrono::Utc::now() - chrono::Duration::days(1),
    };
    let intake::store::Begun {
        transaction: mut tx,
        candidates,
        reference_numbers: numbers,
    } = intake::store::begin_for_customer(&mut held, &identifiers, Some(&lookup), 3, timeout)
        .await
        .unwrap();
    assert_eq!(
        candidates
            .iter()
            .map(|c| c.id.to_string())
            .collect::<Vec<_>>(),
        vec![stored.id]
    );
    // Three numbers of the sequence, one after another, all after the stored complaint's.
    let stored_number: i64 = stored
        .reference
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(numbers.len(), 3);
    assert!(
        numbers[0] > stored_number && numbers[1] == numbers[0] + 1 && numbers[2] == numbers[1] + 1,
        "{numbers:?}"
    );
    assert_eq!(
        advisory_locks_and_timeout(&mut tx).await,
        (1, "50ms".into())
    );
    tx.commit().await.unwrap();
    // Committed: the connection stays, out of any transaction, its settings gone.
    assert!(held.is_held());
    let xid = "SELECT pg_current_xact_id()::text, current_setting('lock_timeout')";
    let conn = held.get().await.unwrap();
    let (a, lock_timeout): (String, String) =
        sqlx::query_as(xid).fetch_one(&mut *conn).await.unwrap();
    let (b, _): (String, String) = sqlx::query_as(xid).fetch_one(&mut *conn).await.unwrap();
    assert_ne!(a, b, "a transaction was left open");
    assert_eq!(lock_timeout, "0", "the setting ends with its transaction");

    // A batch without identifiers locks no customer, and its waits are bounded all the same.
    let intake::store::Begun {
        transaction: mut tx,
        candidates,
        reference_numbers,
    } = intake::store::begin_for_customer(&mut held, &[], None, 0, timeout)
        .await
        .unwrap();
    assert!(candidates.is_empty() && reference_numbers.is_empty());
    assert_eq!(
        advisory_locks_and_timeout(&mut tx).await,
        (0, "50ms".into())
    );
    tx.commit().await.unwrap();

    // A batch dropped before its commit (an error after it began, a panic) takes its
    // connection with it: nothing it wrote stays, and its lock is free at once.
    let mut tx = intake::store::begin_for_customer(&mut held, &identifiers, None, 0, timeout)
        .await
        .unwrap()
        .transaction;
    sqlx::query(
        "UPDATE intake.complaints SET status_note = 'uncommitted' WHERE customer_id = 'HELD'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let third = backend_pid(&mut tx).await;
    drop(tx);
    assert!(!held.is_held());
    wait_backend_gone(&h.pool, third).await;
    assert_eq!(
        count_rows(
            &h.pool,
            "SELECT count(*) FROM intake.complaints WHERE status_note = 'uncommitted'"
        )
        .await,
        0
    );
    let mut other = h.pool.acquire().await.unwrap();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(intake::store::customer_lock_id("customer:HELD"))
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(free, "the dropped batch's lock is still held");
    release(other).await;
    h.service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_that_look_like_sql_are_matched_exactly() {
    // The batch's lookup writes its identifiers into the text of a simple query (dollar-quoted):
    // quotes, backslashes, dollar quotes and comment marks must match as they are.
    let h = start().await;
    let customer = "O'Brien\\'); DROP TABLE intake.complaints; -- $$ $v$ 客户";
    let mut intake = h.client(Role::Service);
    let first = intake
        .submit_complaint(own_contact("sql-1", customer, "O-sql", "发票金额不对"))
        .await
        .unwrap()
        .into_inner();
    // Another phone: only the customer id can link it.
    let repeat = intake
        .submit_complaint(contact(
            "sql-2",
            customer,
            "O-sql",
            Channel::App,
            "发票金额还是不对",
        ))
        .await
        .unwrap()
        .into_inner();
    let first = first.complaint.unwrap();
    let repeat = repeat.complaint.unwrap();
    assert_eq!(repeat.linked_to_complaint_id, first.id);
    assert_eq!(repeat.complainant.unwrap().customer_id, customer);
    // A customer whose identifier differs by one character is another customer.
    let other = stored(
        &mut intake,
        own_contact(
            "sql-3",
            &customer.replace('\'', "\""),
            "O-sql",
            "发票金额不对",
        ),
    )
    .await;
    assert!(other.linked_to_complaint_id.is_empty());
    assert_eq!(
        count_rows(&h.pool, "SELECT count(*) FROM intake.complaints").await,
        3
    );
    h.service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_repeat_contacts_in_one_batch_count_twice_and_raise_priority_twice() {
    let h = start().await;
    let mut intake = h.client(Role::Service);
    let root = stored(
        &mut intake,
        own_contact("twice-0", "TWICE", "O-twice", "快递丢了"),
    )
    .await;
    let root_id: uuid::Uuid = root.id.parse().unwrap();
    sqlx::query("UPDATE intake.complaints SET priority = 4 WHERE id = $1")
        .bind(root_id)
        .execute(&h.pool)
        .await
        .unwrap();
    let held = hold_writers(&h).await;
    let calls: Vec<_> = (1..=2)
        .map(|i| {
            let mut intake = h.client(Role::Service);
            tokio::spawn(async move {
                intake
                    .submit_complaint(own_contact(
                        &format!("twice-{i}"),
                        "TWICE",
                        "O-twice",
                        "快递还是没有消息",
                    ))
                    .await
            })
        })
        .collect();
    // Both calls reach the queue while the writers are held, so they are one batch.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    release_writers(held).await;
    for call in calls {
        let repeat = call.await.unwrap().unwrap().into_inner().complaint.unwrap();
        assert_eq!(repeat.linked_to_complaint_id, root.id);
    }
    // P4 raised twice, two contacts and two versions more, in the one statement of the batch.
    let (priority, repeats, version): (i16, i32, i64) = sqlx::query_as(
        "SELECT priority, repeat_contacts, version FROM intake.complaints WHERE id = $1",
    )
    .bind(root_id)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(
        (priority, repeats, version),
        (2, 2, root.version as i64 + 2)
    );
    let transactions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT xmin::text, count(*) FROM intake.event_outbox
         WHERE aggregate_id = $1 AND event_type = 'ComplaintRepeatContact' GROUP BY xmin::text",
    )
    .bind(&root.id)
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(transactions.len(), 1, "{transactions:?}");
    assert_eq!(transactions[0].1, 2);
    h.service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_closed_while_a_repeat_contact_waits_for_it_is_not_linked_to() {
    let h = start().await;
    let mut intake = h.client(Role::Service);
    let first = stored(
        &mut intake,
        own_contact("gone-1", "GONE", "O-gone", "屏幕坏了"),
    )
    .await;
    // Its case closes in a transaction that holds the complaint's row meanwhile.
    let mut closing = h.pool.begin().await.unwrap();
    sqlx::query("UPDATE intake.complaints SET case_open = false WHERE id = $1::uuid")
        .bind(&first.id)
        .execute(&mut *closing)
        .await
        .unwrap();
    let mut repeat_client = h.client(Role::Service);
    let repeat = tokio::spawn(async move {
        repeat_client
            .submit_complaint(own_contact("gone-2", "GONE", "O-gone", "屏幕还是坏的"))
            .await
    });
    // The contact's batch found the complaint open and waits for its row.
    wait_for_backend(
        &h.pool,
        "application_name = 'intake' AND datname = current_database()
         AND wait_event_type = 'Lock' AND wait_event = 'transactionid'",
        "no batch waited for the row",
    )
    .await;
    closing.commit().await.unwrap();
    let repeat = repeat.await.unwrap().unwrap().into_inner();
    assert!(repeat.created);
    let repeat = repeat.complaint.unwrap();
    assert!(repeat.linked_to_complaint_id.is_empty(), "{repeat:?}");
    assert_eq!(repeat.status, ComplaintStatus::Received as i32);
    h.service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_submit_transaction_keeps_plans_that_read_by_key_even_from_an_empty_table() {
    // A batch's statements are prepared once per connection and their generic plans kept.
    // Made while `intake.complaints` is empty, a plan of the repeat-contact update that scanned
    // the whole table would be kept while the table grew.
    let h = start().await;
    // The service migrates its schema as it starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sqlx::query_scalar::<_, bool>(
        "SELECT to_regprocedure('intake.lock_repeat_candidates(text[], text[], text[], timestamptz)') IS NOT NULL",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap()
    {
        assert!(std::time::Instant::now() < deadline, "intake never migrated");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut held = complaints_kit::db::HeldConnection::new(h.pool.clone());
    let mut tx = intake::store::begin_for_customer(
        &mut held,
        &[],
        None,
        0,
        std::time::Duration::from_secs(1),
    )
    .await
    .unwrap()
    .transaction;
    sqlx::raw_sql(&format!(
        "PREPARE record_repeats(uuid[], integer[], smallint[], uuid[], text[], text[], \
         timestamptz[], bytea[]) AS {}",
        intake::store::RECORD_REPEATS
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN EXECUTE record_repeats('{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}')",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("complaints_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan on complaints"), "{plan}");
    drop(tx);
    h.service.stop().await.unwrap();
}

/// A `CaseStatusChanged` event of `case_id` to `to`.
fn status_event(
    case_id: uuid::Uuid,
    to: complaints_proto::common::v1::CaseStatus,
) -> complaints_proto::events::v1::Event {
    use complaints_proto::events::v1::{CaseStatusChanged, event::Payload};
    complaints_proto::events::v1::Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        aggregate_id: case_id.to_string(),
        payload: Some(Payload::CaseStatusChanged(CaseStatusChanged {
            case_id: case_id.to_string(),
            to: to as i32,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Two complaints of two customers, stored over gRPC; their ids.
async fn two_complaints(h: &Harness, prefix: &str) -> [uuid::Uuid; 2] {
    let mut intake = h.client(Role::Service);
    let mut ids = [uuid::Uuid::nil(); 2];
    for (i, id) in ids.iter_mut().enumerate() {
        let complaint = stored(
            &mut intake,
            own_contact(
                &format!("{prefix}-{i}"),
                &format!("{prefix}-C{i}"),
                &format!("O-{prefix}"),
                "破损",
            ),
        )
        .await;
        *id = uuid::Uuid::parse_str(&complaint.id).unwrap();
    }
    ids
}

/// Applies `events` as intake's case-event consumer applies a chunk, in `tx`.
async fn apply_chunk(tx: &mut sqlx::PgConnection, events: &[complaints_proto::events::v1::Event]) {
    use complaints_kit::events::{EventHandler, Incoming};
    let handler = intake::consumer::CaseEvents;
    assert!(events.iter().all(|e| handler.in_sets(e)), "one run a chunk");
    let run: Vec<Incoming> = events
        .iter()
        .map(|event| Incoming {
            event,
            span: tracing::Span::none(),
        })
        .collect();
    handler.apply_set(tx, &run).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_events_lock_the_complaints_they_close_in_id_order_like_submission_batches() {
    use complaints_proto::common::v1::CaseStatus;
    let h = start().await;
    let mut ids = two_complaints(&h, "order").await;
    ids.sort();
    let [low, high] = ids;
    let (low_case, high_case) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let mut conn = h.pool.acquire().await.unwrap();
    intake::store::set_cases(&mut conn, &[(low, low_case), (high, high_case)])
        .await
        .unwrap();
    drop(conn);

    // A submission batch holds the lower complaint (it found it as a repeat candidate).
    let mut batch = h.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM intake.complaints WHERE id = $1 FOR NO KEY UPDATE")
        .bind(low)
        .execute(&mut *batch)
        .await
        .unwrap();

    // One chunk closes the higher complaint's case first, then the lower one's.
    let events = [
        status_event(high_case, CaseStatus::Closed),
        status_event(uuid::Uuid::now_v7(), CaseStatus::Investigating),
        status_event(low_case, CaseStatus::Cancelled),
    ];
    let mut consumer = h.pool.begin().await.unwrap();
    let consumer_pid = backend_pid(&mut consumer).await;
    let applying = tokio::spawn(async move {
        apply_chunk(&mut consumer, &events).await;
        consumer.commit().await.unwrap();
    });
    wait_for_backend(
        &h.pool,
        &format!("pid = {consumer_pid} AND wait_event_type = 'Lock'"),
        "the chunk never waited for the lower complaint",
    )
    .await;
    // Waiting for the lower complaint, the chunk holds nothing above it: the batch could go on
    // to lock the higher one (in events' order, the chunk would hold it already: a deadlock).
    sqlx::query("SELECT id FROM intake.complaints WHERE id = $1 FOR NO KEY UPDATE NOWAIT")
        .bind(high)
        .execute(&mut *batch)
        .await
        .expect("the higher complaint is free while the chunk waits for the lower one");
    batch.commit().await.unwrap();
    applying.await.unwrap();
    let open: Vec<(uuid::Uuid, bool)> =
        sqlx::query_as("SELECT id, case_open FROM intake.complaints ORDER BY id")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    assert_eq!(open, vec![(low, false), (high, false)]);
    h.service.stop().await.unwrap();
}

#[tokio::test]
async fn a_chunk_applies_openings_and_closings_in_their_order() {
    use complaints_proto::common::v1::CaseStatus;
    use complaints_proto::events::v1::{CaseOpened, Event, event::Payload};
    let h = start().await;
    let ids = two_complaints(&h, "seq").await;
    let opened = |complaint: uuid::Uuid, case: uuid::Uuid| Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        aggregate_id: case.to_string(),
        payload: Some(Payload::CaseOpened(CaseOpened {
            case_id: case.to_string(),
            complaint_id: complaint.to_string(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let (first, review, second) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    // The first complaint's case opens and closes, then a review case opens for it; the
    // second's case opens, closes and reopens: all in one chunk.
    let events = [
        opened(ids[0], first),
        opened(ids[1], second),
        status_event(first, CaseStatus::Closed),
        status_event(second, CaseStatus::Closed),
        opened(ids[0], review),
        status_event(second, CaseStatus::Reopened),
    ];
    let mut tx = h.pool.begin().await.unwrap();
    apply_chunk(&mut tx, &events).await;
    tx.commit().await.unwrap();
    let open: Vec<(uuid::Uuid, bool)> =
        sqlx::query_as("SELECT id, case_open FROM intake.complaints ORDER BY id")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    let mut expected = vec![(ids[0], false), (ids[1], true)];
    expected.sort();
    // One event at a time: the first complaint was closed with its first case (a review
    // opening does not reopen it); the second was reopened.
    assert_eq!(open, expected);
    let mut conn = h.pool.acquire().await.unwrap();
    assert_eq!(
        intake::store::case_of(&mut conn, ids[0]).await.unwrap(),
        Some(review)
    );
    h.service.stop().await.unwrap();
}
