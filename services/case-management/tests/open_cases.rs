//! Opening a run of cases with set-based statements, against a real Postgres: owners are chosen
//! one after another within the run (each choice counts towards the load the next one sees),
//! a complaint that already has a case is skipped, and each case gets one timeline entry and
//! one `CaseOpened` event, in the order of the complaints. Recording a run of repeat contacts
//! the same way, as one at a time would.

use case_management::store::{self, AgentRow};
use case_management::workflow;
use complaints_kit::events::EventLog;
use complaints_kit::testing;
use complaints_proto::common::v1::{CustomerTier, Priority, Severity};
use complaints_proto::events::v1::{ComplaintAccepted, event::Payload};
use sqlx::Connection;
use uuid::Uuid;

fn accepted(n: usize) -> ComplaintAccepted {
    ComplaintAccepted {
        complaint_id: Uuid::now_v7().to_string(),
        reference: format!("CMP-20261123-{n:07}"),
        category: "product_quality".into(),
        severity: Severity::General as i32,
        customer_tier: CustomerTier::Regular as i32,
        ..Default::default()
    }
}

fn agent(id: &str, capacity: i32) -> AgentRow {
    AgentRow {
        id: id.into(),
        department_id: "quality".into(),
        display_name: id.into(),
        skills: Vec::new(),
        capacity,
        available: true,
        senior: false,
        languages: Vec::new(),
        version: 1,
        open_cases: 0,
    }
}

/// A fresh case-management schema.
async fn fresh_pool() -> (testing::TestDatabase, sqlx::PgPool) {
    let db = testing::fresh_database().await;
    let pool = complaints_kit::db::connect(&db.url, "open-cases-test", 2)
        .await
        .unwrap();
    complaints_kit::db::migrate(&pool, case_management::SCHEMA, case_management::MIGRATIONS)
        .await
        .unwrap();
    (db, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_complaints_opens_each_case_once_and_spreads_it_by_capacity() {
    let (_db, pool) = fresh_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    for id in ["agent-a", "agent-b", "agent-c"] {
        assert!(
            store::insert_agent(&mut conn, id, &agent(id, 2))
                .await
                .unwrap()
        );
    }
    let log = EventLog::new(case_management::SCHEMA, case_management::SERVICE_NAME);
    let policy = case_management::CasePolicy::default();

    // Eight complaints, one of them twice: six fit the three agents' capacity, the last two
    // go to the department's supervisor.
    let complaints: Vec<ComplaintAccepted> = (1..=7).map(accepted).collect();
    let mut run: Vec<(&ComplaintAccepted, &str)> = complaints.iter().map(|c| (c, "")).collect();
    run.insert(3, (&complaints[0], ""));
    let mut tx = conn.begin().await.unwrap();
    let opened = workflow::open_cases(&mut tx, &log, &run, &policy, chrono::Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(opened.len(), 7, "one case per distinct complaint");
    let owners: Vec<&str> = opened.iter().map(|(_, c)| c.owner_id.as_str()).collect();
    assert_eq!(
        owners,
        [
            "agent-a",
            "agent-b",
            "agent-c",
            "agent-a",
            "agent-b",
            "agent-c",
            "quality-supervisor"
        ],
        "each choice counts towards the next: least loaded first, never over capacity"
    );
    for (i, case) in &opened {
        assert_eq!(run[*i].0.complaint_id, case.complaint_id.to_string());
    }

    // The database agrees: loads as routed, one timeline entry and one event per case.
    let loads: Vec<(String, i64)> = store::agents_in(&mut conn, &["quality".into()])
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.id, a.open_cases))
        .collect();
    assert_eq!(
        loads,
        [
            ("agent-a".to_string(), 2),
            ("agent-b".to_string(), 2),
            ("agent-c".to_string(), 2)
        ]
    );
    let entries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cases.timeline WHERE kind = 'opened'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(entries, 7);
    let announced: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, aggregate_id FROM cases.event_outbox ORDER BY txid, seq",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let expected: Vec<(String, String)> = opened
        .iter()
        .map(|(_, c)| ("CaseOpened".to_string(), c.id.to_string()))
        .collect();
    assert_eq!(
        announced, expected,
        "one CaseOpened per case, in complaint order"
    );

    // The same run again (a redelivery) opens nothing and announces nothing.
    let mut tx = conn.begin().await.unwrap();
    let again = workflow::open_cases(&mut tx, &log, &run, &policy, chrono::Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(again.is_empty());
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM cases.event_outbox")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(events, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_repeat_contacts_is_recorded_as_one_at_a_time_would() {
    let (_db, pool) = fresh_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let log = EventLog::new(case_management::SCHEMA, case_management::SERVICE_NAME);
    let complaints: Vec<ComplaintAccepted> = (1..=2)
        .map(|n| ComplaintAccepted {
            priority: Priority::P4 as i32,
            ..accepted(n)
        })
        .collect();
    let run: Vec<(&ComplaintAccepted, &str)> = complaints.iter().map(|c| (c, "")).collect();
    let policy = case_management::CasePolicy::default();
    let mut tx = conn.begin().await.unwrap();
    let opened = workflow::open_cases(&mut tx, &log, &run, &policy, chrono::Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (first, second) = (&opened[0].1, &opened[1].1);
    assert!(
        first.priority > Priority::P2 as i16,
        "room to raise it twice"
    );

    // The first complaint's customer calls three times (asking for P2, then P1, then P3:
    // the last raises nothing); the second's once, asking for nothing; a complaint without
    // a case is left alone.
    let contact =
        |complaint: &ComplaintAccepted, n: usize, raised: Priority| workflow::RepeatContact {
            complaint_id: Uuid::parse_str(&complaint.complaint_id).unwrap(),
            reference: ["CMP-R-1", "CMP-R-2", "CMP-R-3", "CMP-R-4", "CMP-R-5"][n],
            raised,
            traceparent: "",
        };
    let nobody = accepted(9);
    let contacts = [
        contact(&complaints[0], 0, Priority::P2),
        contact(&complaints[1], 1, Priority::Unspecified),
        contact(&nobody, 2, Priority::P1),
        contact(&complaints[0], 3, Priority::P1),
        contact(&complaints[0], 4, Priority::P3),
    ];
    let mut tx = conn.begin().await.unwrap();
    workflow::record_repeat_contacts(&mut tx, &log, &contacts, chrono::Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let now = |id: Uuid| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            store::lock(&mut conn, id).await.unwrap().unwrap()
        }
    };
    let raised = now(first.id).await;
    assert_eq!(raised.priority, Priority::P1 as i16);
    assert_eq!(raised.version, first.version + 2, "one version per change");
    let untouched = now(second.id).await;
    assert_eq!(
        (untouched.priority, untouched.version),
        (second.priority, second.version)
    );
    let timeline = |id: Uuid| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT kind, to_value FROM cases.timeline WHERE case_id = $1 AND kind <> 'opened'
                 ORDER BY at, id",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows.into_iter()
                .map(|(kind, to)| format!("{kind} {to}"))
                .collect::<Vec<_>>()
        }
    };
    let classification = |priority: Priority| {
        format!(
            "reclassified {} / {} / {} / {}",
            first.category, first.severity, priority as i16, first.complexity
        )
    };
    assert_eq!(
        timeline(first.id).await,
        [
            "repeat_contact CMP-R-1".to_string(),
            classification(Priority::P2),
            "repeat_contact CMP-R-4".to_string(),
            classification(Priority::P1),
            "repeat_contact CMP-R-5".to_string(),
        ]
    );
    assert_eq!(timeline(second.id).await, ["repeat_contact CMP-R-2"]);
    let announced: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM cases.event_outbox WHERE event_type = 'CaseReclassified'
         ORDER BY txid, seq",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let priorities: Vec<(String, i32)> = announced
        .iter()
        .map(|bytes| {
            use prost::Message as _;
            match complaints_proto::events::v1::Event::decode(bytes.as_slice())
                .unwrap()
                .payload
            {
                Some(Payload::CaseReclassified(r)) => (r.case_id, r.priority),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    let id = first.id.to_string();
    assert_eq!(
        priorities,
        [(id.clone(), Priority::P2 as i32), (id, Priority::P1 as i32)],
        "one CaseReclassified per raise, in order"
    );
}
