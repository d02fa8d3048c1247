//! The feedback-survey service over gRPC against a real Postgres: invitations on resolution,
//! single-use expiring tokens, versioned questionnaires, reminders, opt-out, return visits,
//! the dissatisfaction rule and the figures.

mod support;

use std::time::Duration;

use complaints_kit::Role;
use complaints_kit::time::to_timestamp;
use complaints_proto::common::v1::Channel;
use complaints_proto::events::v1::event::Payload;
use complaints_proto::survey::v1::{
    CallOutcome, CreateTemplateVersionRequest, Delivery, DeliveryKind, FiguresGrouping,
    GetInvitationRequest, GetSurveyByTokenRequest, GetSurveyFiguresRequest, GetTemplateRequest,
    InvitationStatus, ListInvitationsRequest, ListTemplatesRequest, OptOutRequest, Question,
    QuestionKind, RecordReturnVisitRequest, RequestReturnVisitRequest, SubmitSurveyResponseRequest,
    opt_out_request::Target,
};
use support::{Options, TestCase, bad_fields, count_of, rating, start, text, yes_no};
use tonic::Code;

fn submit(
    token: &str,
    answers: Vec<complaints_proto::survey::v1::Answer>,
) -> SubmitSurveyResponseRequest {
    SubmitSurveyResponseRequest {
        token: token.into(),
        answers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_email_case_gets_a_link_whose_token_works_exactly_once() {
    let h = start(Options::default()).await;
    let case = TestCase::new(Channel::Email);
    let invitation = h.resolve(&case).await;
    assert_eq!(invitation.delivery, Delivery::Link as i32);
    assert_eq!(invitation.status, InvitationStatus::Scheduled as i32);
    assert_eq!(
        (invitation.template_id.as_str(), invitation.template_version),
        ("standard", 1)
    );

    let deliveries = h.claim().await;
    assert_eq!(deliveries.len(), 1);
    let delivery = &deliveries[0];
    assert_eq!(delivery.kind, DeliveryKind::First as i32);
    assert!(
        h.claim().await.is_empty(),
        "a first send is handed out once"
    );
    // Only the hash is stored.
    let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT token_hash FROM survey.invitations")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_ne!(stored, delivery.token.as_bytes());

    let mut web = h.adapter();
    let survey = web
        .get_survey_by_token(GetSurveyByTokenRequest {
            token: delivery.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let template = survey.template.unwrap();
    let csat = template.questions.iter().find(|q| q.id == "csat").unwrap();
    assert_eq!(csat.text_zh, "您对本次投诉处理的满意度如何？");
    assert!(csat.text_en.starts_with("How satisfied"));

    let answered = web
        .submit_survey_response(submit(
            &delivery.token,
            vec![
                rating("csat", 5),
                rating("nps", 10),
                yes_no("solved", true),
                text("comment", "谢谢"),
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(answered.status, InvitationStatus::Answered as i32);
    assert!(!answered.dissatisfied);

    let replay = web
        .submit_survey_response(submit(&delivery.token, vec![rating("csat", 1)]))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::FailedPrecondition);
    assert!(replay.message().contains("already answered"), "{replay:?}");
    let stale_page = web
        .get_survey_by_token(GetSurveyByTokenRequest {
            token: delivery.token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale_page.code(), Code::FailedPrecondition);

    let mut forged = delivery.token.clone();
    forged.replace_range(forged.len() - 3.., "AAA");
    for unknown in [forged.as_str(), "not-a-token"] {
        let err = web
            .submit_survey_response(submit(unknown, vec![rating("csat", 5)]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{unknown}");
    }
    let empty = web
        .submit_survey_response(submit(" ", vec![]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&empty), vec!["token"]);

    let events = h
        .survey_events_when(|e| count_of(e, "SurveyAnswered") >= 1)
        .await;
    let answered_events: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::SurveyAnswered(a)) => Some(a),
            _ => None,
        })
        .collect();
    let answered_event = events
        .iter()
        .find(|e| matches!(e.payload, Some(Payload::SurveyAnswered(_))))
        .unwrap();
    assert_eq!(
        answered_event.traceparent, case.traceparent,
        "the answer continues the complaint's trace"
    );
    assert_eq!(answered_events.len(), 1);
    assert_eq!(answered_events[0].case_id, case.id);
    assert_eq!(answered_events[0].csat, Some(5));
    assert!(!answered_events[0].via_return_visit);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_and_shown_expired() {
    let h = start(Options {
        token_ttl: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let delivery = h.delivered(&TestCase::new(Channel::WebForm)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let err = h
        .adapter()
        .submit_survey_response(submit(&delivery.token, vec![rating("csat", 4)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("expired"), "{err:?}");
    let invitation = delivery.invitation.unwrap();
    let shown = h
        .client("quality-lead", Role::Quality, None)
        .get_invitation(GetInvitationRequest {
            invitation_id: invitation.id,
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(shown.status, InvitationStatus::Expired as i32);
    let events = h
        .survey_events_when(|e| count_of(e, "SurveyInvitationIssued") == 1)
        .await;
    assert_eq!(count_of(&events, "SurveyAnswered"), 0);
    h.stop().await;
}

fn question(id: &str, kind: QuestionKind, required: bool) -> Question {
    Question {
        id: id.into(),
        kind: kind as i32,
        required,
        text_zh: format!("{id} 问题"),
        text_en: format!("{id} question"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_checked_against_the_template_version_the_invitation_pinned() {
    let h = start(Options::default()).await;
    let early = h.delivered(&TestCase::new(Channel::Email)).await;

    let mut quality = h.client("quality-lead", Role::Quality, None);
    let mut v2_questions = vec![
        question("csat", QuestionKind::Csat, true),
        question("solved", QuestionKind::Solved, false),
        Question {
            min_rating: 1,
            max_rating: 3,
            ..question("agent_politeness", QuestionKind::Rating, true)
        },
    ];
    let create =
        |request_id: &str, expected: u32, questions: Vec<Question>| CreateTemplateVersionRequest {
            request_id: request_id.into(),
            template_id: "standard".into(),
            expected_latest_version: expected,
            questions,
        };
    let v2 = quality
        .create_template_version(create("tpl-1", 1, v2_questions.clone()))
        .await
        .unwrap()
        .into_inner()
        .template
        .unwrap();
    assert_eq!(v2.version, 2);
    let retried = quality
        .create_template_version(create("tpl-1", 1, v2_questions.clone()))
        .await
        .unwrap()
        .into_inner()
        .template
        .unwrap();
    assert_eq!(
        retried.version, 2,
        "a retried request_id creates nothing new"
    );
    let stale = quality
        .create_template_version(create("tpl-2", 1, v2_questions.clone()))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    v2_questions[0].text_en.clear();
    v2_questions[1].id = "was_it_solved".into();
    let bad = quality
        .create_template_version(create("tpl-3", 2, v2_questions))
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&bad),
        vec!["questions[0].text_en", "questions[1].id"]
    );
    let agent_create = h
        .client("agent-li", Role::Agent, Some("quality"))
        .create_template_version(create(
            "tpl-4",
            2,
            vec![question("csat", QuestionKind::Csat, true)],
        ))
        .await
        .unwrap_err();
    assert_eq!(agent_create.code(), Code::PermissionDenied);
    let latest = quality
        .get_template(GetTemplateRequest {
            template_id: "standard".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .template
        .unwrap();
    assert_eq!(latest.version, 2);
    let listed = quality
        .list_templates(ListTemplatesRequest {
            template_id: "standard".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.templates[0].version, 1);
    assert!(!listed.next_page_token.is_empty());

    let late = h.delivered(&TestCase::new(Channel::Chat)).await;
    assert_eq!(late.invitation.as_ref().unwrap().template_version, 2);
    assert_eq!(early.invitation.as_ref().unwrap().template_version, 1);

    let mut web = h.adapter();
    // v1 knows no agent_politeness question.
    let err = web
        .submit_survey_response(submit(
            &early.token,
            vec![rating("csat", 4), rating("agent_politeness", 2)],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), vec!["answers[1].question_id"]);
    // v2 requires it, and holds it to 1–3; csat to 1–5.
    let err = web
        .submit_survey_response(submit(&late.token, vec![rating("csat", 4)]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["answers"]);
    assert!(
        err.message().contains("agent_politeness is required"),
        "{err:?}"
    );
    let err = web
        .submit_survey_response(submit(
            &late.token,
            vec![
                rating("csat", 0),
                rating("agent_politeness", 5),
                text("solved", "yes"),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&err),
        vec!["answers[0].rating", "answers[1].rating", "answers[2]"]
    );

    web.submit_survey_response(submit(&early.token, vec![rating("csat", 4)]))
        .await
        .unwrap();
    let answered = web
        .submit_survey_response(submit(
            &late.token,
            vec![rating("csat", 4), rating("agent_politeness", 3)],
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert!(
        answered
            .answers
            .iter()
            .any(|a| a.question_id == "agent_politeness")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reminder_goes_to_a_non_responder_after_the_configured_time() {
    let h = start(Options {
        policy: feedback_survey::Policy {
            reminder_after: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let silent = h.delivered(&TestCase::new(Channel::Email)).await;
    let responder = h.delivered(&TestCase::new(Channel::Email)).await;
    h.adapter()
        .submit_survey_response(submit(&responder.token, vec![rating("csat", 5)]))
        .await
        .unwrap();
    assert!(
        h.claim().await.is_empty(),
        "no reminder before the configured hour"
    );

    // Two hours pass.
    sqlx::query("UPDATE survey.invitations SET sent_at = sent_at - interval '2 hours'")
        .execute(&h.pool)
        .await
        .unwrap();
    let reminders = h.claim().await;
    assert_eq!(reminders.len(), 1, "only the non-responder is reminded");
    assert_eq!(reminders[0].kind, DeliveryKind::Reminder as i32);
    assert_eq!(reminders[0].token, silent.token);
    assert!(
        reminders[0]
            .invitation
            .as_ref()
            .unwrap()
            .reminder_sent_at
            .is_some()
    );
    assert!(h.claim().await.is_empty(), "one reminder, not more");

    h.adapter()
        .submit_survey_response(submit(&silent.token, vec![rating("csat", 3)]))
        .await
        .expect("the reminded token still works");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_who_opts_out_is_not_surveyed_again() {
    let h = start(Options::default()).await;
    let first = h
        .delivered(&TestCase::new(Channel::Email).customer("CUST-OPT"))
        .await;
    let mut web = h.adapter();
    let opted = web
        .opt_out(OptOutRequest {
            target: Some(Target::Token(first.token.clone())),
            reason: "too many emails".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opted.invitations_withdrawn, 1);
    assert!(opted.customer_opted_out);
    let err = web
        .submit_survey_response(submit(&first.token, vec![rating("csat", 5)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("opted out"), "{err:?}");

    let again = h
        .resolve(&TestCase::new(Channel::Email).customer("CUST-OPT"))
        .await;
    assert_eq!(again.status, InvitationStatus::OptedOut as i32);
    let other = h
        .resolve(&TestCase::new(Channel::Email).customer("CUST-OTHER"))
        .await;
    let claimed = h.claim().await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].invitation.as_ref().unwrap().id, other.id);

    // An agent records a customer's wish by id; a pending return visit is withdrawn.
    let call = h
        .resolve(&TestCase::new(Channel::Phone).customer("CUST-PHONE"))
        .await;
    let by_agent = h
        .client("agent-li", Role::Agent, Some("quality"))
        .opt_out(OptOutRequest {
            target: Some(Target::CustomerId("CUST-PHONE".into())),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_agent.invitations_withdrawn, 1);
    let call = h
        .client("quality-lead", Role::Quality, None)
        .get_invitation(GetInvitationRequest {
            invitation_id: call.id,
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(call.status, InvitationStatus::OptedOut as i32);
    let none = web
        .opt_out(OptOutRequest {
            target: None,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&none), vec!["target"]);
    let events = h
        .survey_events_when(|e| count_of(e, "SurveyInvitationIssued") >= 3)
        .await;
    let issued = events
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::SurveyInvitationIssued(_))))
        .count();
    assert_eq!(
        issued, 3,
        "no invitation issued for the opted-out customer's second case"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_records_a_phone_return_visit_with_its_outcome() {
    let h = start(Options::default()).await;
    let case = TestCase::new(Channel::Phone).handled_by("after_sales", "agent-wang");
    let invitation = h.resolve(&case).await;
    assert_eq!(invitation.delivery, Delivery::ReturnVisit as i32);
    assert!(
        h.claim().await.is_empty(),
        "return visits are not for delivery adapters"
    );

    let mut agent = h.client("agent-wang", Role::Agent, Some("after_sales"));
    let worklist = agent
        .list_invitations(ListInvitationsRequest {
            delivery: Delivery::ReturnVisit as i32,
            due_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invitations;
    assert_eq!(worklist.len(), 1);
    let mut stranger = h.client("agent-zhao", Role::Agent, Some("billing"));
    let hidden = stranger
        .get_invitation(GetInvitationRequest {
            invitation_id: invitation.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert!(
        stranger
            .list_invitations(ListInvitationsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .invitations
            .is_empty()
    );

    let call =
        |request_id: &str, version: u64, outcome: CallOutcome, answers| RecordReturnVisitRequest {
            request_id: request_id.into(),
            invitation_id: invitation.id.clone(),
            version,
            outcome: outcome as i32,
            answers,
            note: "called at 10:05".into(),
        };
    let no_answer = agent
        .record_return_visit(call(
            "call-1",
            invitation.version,
            CallOutcome::NoAnswer,
            vec![],
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(no_answer.status, InvitationStatus::Sent as i32);
    assert_eq!(no_answer.return_visit_attempts.len(), 1);
    let retried = agent
        .record_return_visit(call(
            "call-1",
            invitation.version,
            CallOutcome::NoAnswer,
            vec![],
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(
        retried.return_visit_attempts.len(),
        1,
        "a retried call is recorded once"
    );
    let stale = agent
        .record_return_visit(call(
            "call-2",
            invitation.version,
            CallOutcome::Reached,
            vec![rating("csat", 4)],
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let bad = agent
        .record_return_visit(call(
            "call-2",
            no_answer.version,
            CallOutcome::Reached,
            vec![rating("csat", 9)],
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad), vec!["answers[0].rating"]);
    let bad = agent
        .record_return_visit(call(
            "call-2",
            no_answer.version,
            CallOutcome::Unspecified,
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad), vec!["outcome"]);

    let reached = agent
        .record_return_visit(call(
            "call-2",
            no_answer.version,
            CallOutcome::Reached,
            vec![rating("csat", 2), yes_no("solved", true)],
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(reached.status, InvitationStatus::Answered as i32);
    assert!(
        reached.dissatisfied,
        "CSAT 2 is dissatisfied by the default rule"
    );
    assert_eq!(
        reached
            .return_visit_attempts
            .iter()
            .map(|a| a.outcome)
            .collect::<Vec<_>>(),
        vec![CallOutcome::NoAnswer as i32, CallOutcome::Reached as i32]
    );
    let again = agent
        .record_return_visit(call(
            "call-3",
            reached.version,
            CallOutcome::Reached,
            vec![rating("csat", 5)],
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Another phone case: the customer refuses the call.
    let refused_case = TestCase::new(Channel::Phone).handled_by("after_sales", "agent-wang");
    let second = h.resolve(&refused_case).await;
    let refused = agent
        .record_return_visit(RecordReturnVisitRequest {
            request_id: "call-r".into(),
            invitation_id: second.id.clone(),
            version: second.version,
            outcome: CallOutcome::Refused as i32,
            answers: vec![],
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(refused.status, InvitationStatus::Declined as i32);

    let events = h
        .survey_events_when(|e| {
            count_of(e, "SurveyAnswered") >= 1 && count_of(e, "SurveyReturnVisitAttempted") >= 2
        })
        .await;
    let answered: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::SurveyAnswered(a)) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(
        answered.len(),
        1,
        "only the reached call answers the survey"
    );
    assert!(answered[0].via_return_visit);
    assert!(answered[0].dissatisfied);
    assert_eq!(answered[0].recorded_by, "agent-wang");
    assert_eq!(answered[0].case_id, case.id);
    let attempted: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::SurveyReturnVisitAttempted(a)) => {
                Some((a.case_id.clone(), a.outcome.clone(), a.attempt))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        attempted,
        vec![
            (case.id.clone(), "no_answer".to_owned(), 1),
            (refused_case.id.clone(), "refused".to_owned(), 1)
        ]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_who_asks_for_a_call_gets_a_return_visit_instead_of_the_link() {
    let h = start(Options::default()).await;
    let invitation = h.resolve(&TestCase::new(Channel::Email)).await;
    let mut agent = h.client("agent-li", Role::Agent, Some("quality"));
    let switched = agent
        .request_return_visit(RequestReturnVisitRequest {
            invitation_id: invitation.id.clone(),
            version: invitation.version,
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(switched.delivery, Delivery::ReturnVisit as i32);
    let stale = agent
        .request_return_visit(RequestReturnVisitRequest {
            invitation_id: invitation.id.clone(),
            version: invitation.version,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert!(h.claim().await.is_empty(), "no link goes out any more");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dissatisfaction_rule_is_configurable() {
    let h = start(Options {
        policy: feedback_survey::Policy {
            dissatisfaction: feedback_survey::domain::questionnaire::DissatisfactionRule {
                csat_at_most: Some(3),
                when_unsolved: false,
                nps_at_most: None,
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let lukewarm = h.delivered(&TestCase::new(Channel::Email)).await;
    let unsolved = h.delivered(&TestCase::new(Channel::Email)).await;
    let mut web = h.adapter();
    let a = web
        .submit_survey_response(submit(&lukewarm.token, vec![rating("csat", 3)]))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let b = web
        .submit_survey_response(submit(
            &unsolved.token,
            vec![rating("csat", 4), yes_no("solved", false)],
        ))
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert!(a.dissatisfied);
    assert!(!b.dissatisfied);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_count_per_department_and_agent_with_the_counts_behind_each_rate() {
    let h = start(Options::default()).await;
    let start_of_period = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut web = h.adapter();
    // quality/agent-li: CSAT 5 (NPS 10, solved), 4 (NPS 7), 2 (NPS 3, unsolved); one silent.
    for answers in [
        vec![rating("csat", 5), rating("nps", 10), yes_no("solved", true)],
        vec![rating("csat", 4), rating("nps", 7)],
        vec![rating("csat", 2), rating("nps", 3), yes_no("solved", false)],
    ] {
        let d = h.delivered(&TestCase::new(Channel::Email)).await;
        web.submit_survey_response(submit(&d.token, answers))
            .await
            .unwrap();
    }
    h.delivered(&TestCase::new(Channel::Email)).await;
    // billing/agent-zhao: one CSAT 5 by return visit, one call still open.
    let call = h
        .resolve(
            &TestCase::new(Channel::Phone)
                .handled_by("billing", "agent-zhao")
                .category("billing"),
        )
        .await;
    h.resolve(
        &TestCase::new(Channel::Phone)
            .handled_by("billing", "agent-zhao")
            .category("billing"),
    )
    .await;
    h.client("agent-zhao", Role::Agent, Some("billing"))
        .record_return_visit(RecordReturnVisitRequest {
            request_id: "c1".into(),
            invitation_id: call.id,
            version: call.version,
            outcome: CallOutcome::Reached as i32,
            answers: vec![rating("csat", 5), rating("nps", 9)],
            note: String::new(),
        })
        .await
        .unwrap();

    let period = |group_by: FiguresGrouping, department: &str| GetSurveyFiguresRequest {
        period_start: Some(to_timestamp(start_of_period)),
        period_end: Some(to_timestamp(
            chrono::Utc::now() + chrono::Duration::hours(1),
        )),
        group_by: group_by as i32,
        department_id: department.into(),
    };
    let mut quality = h.client("quality-lead", Role::Quality, None);
    let figures = quality
        .get_survey_figures(period(FiguresGrouping::Department, ""))
        .await
        .unwrap()
        .into_inner();
    let targets = figures.targets.unwrap();
    assert_eq!(targets.satisfaction_rate, 0.92);
    assert_eq!(targets.nps_increase, 35.0);
    assert_eq!(
        figures
            .groups
            .iter()
            .map(|g| g.group.as_str())
            .collect::<Vec<_>>(),
        vec!["billing", "quality"]
    );
    let q = &figures.groups[1];
    assert_eq!(
        (q.invitations_issued, q.invitations_sent, q.responses),
        (4, 4, 3)
    );
    let rr = q.response_rate.unwrap();
    assert_eq!((rr.numerator, rr.denominator), (3, 4));
    assert_eq!((q.csat_responses, q.csat_sum), (3, 11));
    assert!((q.csat_average.unwrap() - 11.0 / 3.0).abs() < 1e-9);
    let sat = q.satisfaction_rate.unwrap();
    assert_eq!((sat.numerator, sat.denominator), (2, 3));
    assert_eq!(q.satisfaction_target_met, Some(false));
    assert_eq!(
        (q.promoters, q.passives, q.detractors, q.nps_responses),
        (1, 1, 1, 3)
    );
    assert_eq!(q.nps, Some(0.0));
    let solved = q.solved_rate.unwrap();
    assert_eq!((solved.numerator, solved.denominator), (1, 2));
    assert_eq!(q.dissatisfied, 1);
    let b = &figures.groups[0];
    assert_eq!(
        (
            b.invitations_issued,
            b.invitations_sent,
            b.responses,
            b.return_visit_responses
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(b.nps, Some(100.0));
    assert_eq!(b.satisfaction_target_met, Some(true));
    let total = figures.total.unwrap();
    assert_eq!(
        (total.invitations_issued, total.responses, total.csat_sum),
        (6, 4, 16)
    );

    let by_agent = quality
        .get_survey_figures(period(FiguresGrouping::Agent, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_agent
            .groups
            .iter()
            .map(|g| (g.group.as_str(), g.responses))
            .collect::<Vec<_>>(),
        vec![("agent-li", 3), ("agent-zhao", 1)]
    );
    let by_category = quality
        .get_survey_figures(period(FiguresGrouping::Category, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_category.groups.len(), 2);

    // A supervisor sees their own department only; agents see no figures.
    let own = h
        .client("sup-zhao", Role::Supervisor, Some("billing"))
        .get_survey_figures(period(FiguresGrouping::Unspecified, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.total.unwrap().invitations_issued, 2);
    let other = h
        .client("sup-zhao", Role::Supervisor, Some("billing"))
        .get_survey_figures(period(FiguresGrouping::Unspecified, "quality"))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let agent = h
        .client("agent-li", Role::Agent, Some("quality"))
        .get_survey_figures(period(FiguresGrouping::Unspecified, ""))
        .await
        .unwrap_err();
    assert_eq!(agent.code(), Code::PermissionDenied);
    let backwards = quality
        .get_survey_figures(GetSurveyFiguresRequest {
            period_start: Some(to_timestamp(chrono::Utc::now())),
            period_end: Some(to_timestamp(start_of_period)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&backwards), vec!["period_end"]);
    let missing = quality
        .get_survey_figures(GetSurveyFiguresRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&missing), vec!["period_start", "period_end"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_a_token_and_the_right_role_and_lists_paginate() {
    let h = start(Options::default()).await;
    for _ in 0..3 {
        h.resolve(&TestCase::new(Channel::Email)).await;
    }
    let mut anonymous =
        complaints_proto::survey::v1::survey_service_client::SurveyServiceClient::new(
            complaints_kit::testing::channel(&h.survey.url),
        );
    let err = anonymous
        .list_invitations(ListInvitationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = h
        .client("agent-li", Role::Agent, Some("quality"))
        .claim_due_invitations(complaints_proto::survey::v1::ClaimDueInvitationsRequest {
            limit: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = h
        .adapter()
        .claim_due_invitations(complaints_proto::survey::v1::ClaimDueInvitationsRequest {
            limit: 501,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["limit"]);

    let mut quality = h.client("quality-lead", Role::Quality, None);
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = quality
            .list_invitations(ListInvitationsRequest {
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.invitations.len() <= 2);
        seen.extend(page.invitations.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 3);
    seen.dedup();
    assert_eq!(seen.len(), 3);
    let err = quality
        .list_invitations(ListInvitationsRequest {
            case_id: "nope".into(),
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}
