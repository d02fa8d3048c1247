//! What the front desk reads to the customer: where the case stands, in plain words, and the
//! customer-visible part of its history. Nothing internal (owners, escalations) appears here.

use complaints_proto::cases::v1::SubTaskStatus;
use complaints_proto::common::v1::CaseStatus;

/// Where the case stands, for the customer (Chinese, then English).
pub fn progress(status: CaseStatus, under_review: bool) -> String {
    let text = match status {
        CaseStatus::Accepted => {
            "您的投诉已受理，正在安排专人处理。 / We have received your complaint and assigned a person to it."
        }
        CaseStatus::Investigating => {
            "我们正在调查核实您反映的问题。 / We are looking into what happened."
        }
        CaseStatus::SolutionProposed => {
            "我们已提出解决方案，等待您的确认。 / We have proposed a solution and await your decision."
        }
        CaseStatus::Implementing => {
            "解决方案正在实施中。 / The agreed solution is being carried out."
        }
        CaseStatus::WaitingOnCustomer => {
            "我们在等待您的回复或补充信息。 / We are waiting for information from you."
        }
        CaseStatus::Resolved => {
            "您的问题已处理完毕，我们会进行回访。 / Your complaint is resolved; we will check back with you."
        }
        CaseStatus::FollowUp => {
            "我们正在回访，了解您对处理结果是否满意。 / We are checking whether you are satisfied with the outcome."
        }
        CaseStatus::Closed => "您的投诉已处理完毕并关闭。 / Your complaint is closed.",
        CaseStatus::Reopened => {
            "您的投诉已重新打开，我们将再次核查。 / Your complaint was reopened and is being looked at again."
        }
        CaseStatus::Cancelled => {
            "该投诉未进入处理流程（已撤销）。 / This complaint was withdrawn from handling."
        }
        CaseStatus::Unspecified => "处理中。 / In progress.",
    };
    if under_review {
        format!("{text} 主管正在复核您的反馈。 / A supervisor is reviewing your feedback.")
    } else {
        text.to_owned()
    }
}

/// One timeline entry as the customer hears it; the agent's note when there is one.
pub fn update_text(kind: &str, to_value: &str, note: &str) -> String {
    if !note.trim().is_empty() {
        return note.trim().to_owned();
    }
    match kind {
        "opened" => "投诉已受理。 / Complaint received.".into(),
        "acknowledged" => "已与您联系确认。 / We contacted you.".into(),
        "status_changed" => CaseStatus::from_str_name(to_value)
            .map(|s| progress(s, false))
            .unwrap_or_else(|| "处理进展已更新。 / Progress updated.".into()),
        "transferred" => "已转交相关部门处理。 / Passed to the department that handles it.".into(),
        "contact" => "我们与您进行了沟通。 / We were in touch with you.".into(),
        _ => "处理进展已更新。 / Progress updated.".into(),
    }
}

/// A department's part in the case, for the customer.
pub fn sub_task_text(department_name: &str, status: SubTaskStatus) -> String {
    let state = match status {
        SubTaskStatus::Open => "已接到协办请求 / has been asked to help",
        SubTaskStatus::InProgress => "正在处理 / is working on it",
        SubTaskStatus::Done => "已完成 / has finished its part",
        SubTaskStatus::Cancelled => "不再需要参与 / is no longer needed",
        SubTaskStatus::Unspecified => "参与处理 / is involved",
    };
    format!("{department_name}: {state}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_as_plain_words() {
        for raw in 1..=10 {
            let status = CaseStatus::try_from(raw).unwrap();
            let text = progress(status, false);
            assert!(!text.contains("CASE_STATUS"), "{text}");
            assert!(text.contains(" / "), "{text}");
        }
        assert!(progress(CaseStatus::Resolved, true).contains("supervisor"));
    }

    #[test]
    fn an_agents_note_is_what_the_customer_hears() {
        assert_eq!(
            update_text(
                "status_changed",
                "CASE_STATUS_INVESTIGATING",
                " 我们已联系仓库 "
            ),
            "我们已联系仓库"
        );
        assert!(
            update_text("status_changed", "CASE_STATUS_IMPLEMENTING", "")
                .contains("being carried out")
        );
        assert!(sub_task_text("物流部", SubTaskStatus::InProgress).starts_with("物流部"));
    }
}
