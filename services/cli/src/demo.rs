//! Demo traffic: sample complaints (Chinese and English) fed through the whole lifecycle over
//! gRPC, the way channel adapters, agents and customers would.

use std::time::Duration;

use complaints_kit::auth::{AuthConfig, BearerToken, Role};
use complaints_proto::cases::v1::case_service_client::CaseServiceClient;
use complaints_proto::cases::v1::{
    AcknowledgeCaseRequest, Agent, CreateAgentRequest, GetCaseByComplaintRequest,
    TransitionCaseRequest,
};
use complaints_proto::common::v1::{CaseStatus, Channel, CustomerTier};
use complaints_proto::intake::v1::intake_service_client::IntakeServiceClient;
use complaints_proto::intake::v1::{Complainant, ComplaintContent, SubmitComplaintRequest};
use complaints_proto::survey::v1::survey_service_client::SurveyServiceClient;
use complaints_proto::survey::v1::{
    Answer, ClaimDueInvitationsRequest, SubmitSurveyResponseRequest, answer::Value,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel as GrpcChannel, Endpoint};

use crate::suite::SuiteUrls;

type Authed = InterceptedService<GrpcChannel, BearerToken>;

const SAMPLES: &[(&str, &str, Channel, CustomerTier)] = &[
    (
        "电水壶质量问题",
        "我买的电水壶用了两天就坏了，质量太差，要求退货。",
        Channel::WebForm,
        CustomerTier::Regular,
    ),
    (
        "Parcel not arrived",
        "The courier was late and my parcel has still not arrived after ten days.",
        Channel::Email,
        CustomerTier::Vip,
    ),
    (
        "客服态度差",
        "客服电话里态度很不耐烦，还挂了我的电话。",
        Channel::Wechat,
        CustomerTier::HighValue,
    ),
    (
        "Overcharged",
        "I was overcharged on my last invoice and want the difference refunded.",
        Channel::App,
        CustomerTier::Regular,
    ),
];

fn channel(url: &str) -> anyhow::Result<GrpcChannel> {
    Ok(Endpoint::from_shared(url.to_owned())?.connect_lazy())
}

fn bearer(
    auth: &AuthConfig,
    subject: &str,
    role: Role,
    department: Option<&str>,
) -> anyhow::Result<BearerToken> {
    let token = auth.mint(subject, &[role], department, Duration::from_secs(3600))?;
    Ok(BearerToken::new(&token)?)
}

/// Agents of the shipped departments: (id, department, name, senior).
const AGENTS: &[(&str, &str, &str, bool)] = &[
    ("agent-li", "quality", "李娜", true),
    ("agent-wang", "quality", "王伟", false),
    ("agent-zhao", "logistics", "赵敏", false),
    ("agent-chen", "customer-care", "陈静", true),
    ("agent-liu", "after-sales", "刘洋", false),
    ("agent-sun", "billing", "孙磊", false),
];

/// Staffs the shipped departments (idempotent: the same request ids every run).
async fn staff_departments(urls: &SuiteUrls, auth: &AuthConfig) -> anyhow::Result<()> {
    let admin = bearer(auth, "demo-admin", Role::Admin, None)?;
    let mut cases = CaseServiceClient::with_interceptor(channel(&urls.cases)?, admin);
    for (id, department, name, senior) in AGENTS {
        let request = CreateAgentRequest {
            request_id: format!("demo-{id}"),
            agent: Some(Agent {
                id: (*id).into(),
                department_id: (*department).into(),
                display_name: (*name).into(),
                skills: vec![],
                capacity: 25,
                available: true,
                senior: *senior,
                open_cases: 0,
            }),
        };
        match cases.create_agent(request).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) => return Err(status.into()),
        }
    }
    Ok(())
}

/// Feeds `count` complaints through submit → case → acknowledge → investigate → propose →
/// implement → resolve → survey answer, printing each step.
pub async fn run(urls: &SuiteUrls, auth: &AuthConfig, count: usize) -> anyhow::Result<()> {
    staff_departments(urls, auth).await?;
    let service = bearer(auth, "demo-channel-adapter", Role::Service, None)?;
    let mut intake = IntakeServiceClient::with_interceptor(channel(&urls.intake)?, service.clone());
    let mut survey = SurveyServiceClient::with_interceptor(channel(&urls.survey)?, service.clone());
    let mut cases_as_service: CaseServiceClient<Authed> =
        CaseServiceClient::with_interceptor(channel(&urls.cases)?, service);
    let run_id = uuid::Uuid::new_v4().simple().to_string();

    for i in 0..count {
        let (subject, description, ch, tier) = SAMPLES[i % SAMPLES.len()];
        let submitted = intake
            .submit_complaint(SubmitComplaintRequest {
                request_id: format!("demo-{run_id}-{i}"),
                channel: ch as i32,
                complainant: Some(Complainant {
                    name: format!("Demo Customer {i}"),
                    phone: format!("1380013{:04}", i % 10_000),
                    email: format!("customer{i}@example.com"),
                    customer_id: format!("CUST-{:05}", i % 50),
                    tier: tier as i32,
                }),
                content: Some(ComplaintContent {
                    subject: subject.into(),
                    description: description.into(),
                    demand: "请尽快处理 / please resolve".into(),
                    order_ref: format!("ORD-{:06}", 100_000 + i),
                    ..Default::default()
                }),
                recorded_by: String::new(),
            })
            .await?
            .into_inner()
            .complaint
            .unwrap_or_default();
        let category = submitted
            .classification
            .as_ref()
            .map(|c| c.category.clone())
            .unwrap_or_default();
        println!("complaint {} ({category}) accepted", submitted.reference);

        let mut case = None;
        for _ in 0..200 {
            match cases_as_service
                .get_case_by_complaint(GetCaseByComplaintRequest {
                    complaint_id: submitted.id.clone(),
                })
                .await
            {
                Ok(found) => {
                    case = found.into_inner().case;
                    break;
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(status) => return Err(status.into()),
            }
        }
        let mut case =
            case.ok_or_else(|| anyhow::anyhow!("no case opened for {}", submitted.reference))?;
        println!(
            "  case opened in {} for {}",
            case.department_id, case.owner_id
        );

        let owner = bearer(auth, &case.owner_id, Role::Agent, Some(&case.department_id))?;
        let mut cases = CaseServiceClient::with_interceptor(channel(&urls.cases)?, owner);
        case = cases
            .acknowledge_case(AcknowledgeCaseRequest {
                case_id: case.id.clone(),
                version: case.version,
                note: "您好，我们已收到您的投诉 / we have your complaint".into(),
            })
            .await?
            .into_inner()
            .case
            .unwrap_or_default();
        for status in [
            CaseStatus::Investigating,
            CaseStatus::SolutionProposed,
            CaseStatus::Implementing,
            CaseStatus::Resolved,
        ] {
            case = cases
                .transition_case(TransitionCaseRequest {
                    case_id: case.id.clone(),
                    version: case.version,
                    to_status: status as i32,
                    note: format!("moved to {}", status.as_str_name()),
                    customer_visible: true,
                })
                .await?
                .into_inner()
                .case
                .unwrap_or_default();
        }
        println!("  acknowledged and resolved");

        let mut answered = false;
        for _ in 0..200 {
            let deliveries = survey
                .claim_due_invitations(ClaimDueInvitationsRequest { limit: 100 })
                .await?
                .into_inner()
                .deliveries;
            for delivery in deliveries {
                let csat = if i % 5 == 4 { 2 } else { 5 };
                survey
                    .submit_survey_response(SubmitSurveyResponseRequest {
                        token: delivery.token,
                        answers: vec![
                            Answer {
                                question_id: "csat".into(),
                                value: Some(Value::Rating(csat)),
                            },
                            Answer {
                                question_id: "nps".into(),
                                value: Some(Value::Rating(if csat > 2 { 9 } else { 3 })),
                            },
                            Answer {
                                question_id: "solved".into(),
                                value: Some(Value::YesNo(csat > 2)),
                            },
                        ],
                    })
                    .await?;
                answered = true;
            }
            if answered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "  survey {}",
            if answered { "answered" } else { "not yet due" }
        );
    }
    Ok(())
}
