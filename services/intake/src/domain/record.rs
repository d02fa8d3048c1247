//! Parsing a submission into a [`NewComplaint`]: text normalised (NFC, trimmed) and never
//! truncated, contact details normalised (E.164 phone, lower-case email domain), and every wrong
//! field reported at once.

use chrono::{DateTime, Duration, Utc};
use complaints_kit::grpc::FieldErrors;
use complaints_proto::common::v1::{Channel, CustomerTier};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

pub const MAX_NAME: usize = 200;
pub const MAX_SUBJECT: usize = 500;
pub const MAX_DESCRIPTION: usize = 20_000;
pub const MAX_DEMAND: usize = 5_000;
pub const MAX_REF: usize = 128;
/// How far in the future `occurred_at` may lie (clock skew between systems).
pub const FUTURE_TOLERANCE_SECONDS: i64 = 300;

pub const MAX_ATTACHMENTS: usize = 10;
pub const MAX_ATTACHMENT_BYTES: u64 = 25 * 1024 * 1024;

/// File metadata; the file itself lives in object storage.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub uri: String,
    pub file_name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub sha256: String,
}

fn check_attachment(errors: &mut FieldErrors, i: usize, raw: &Attachment) -> Attachment {
    let field = |name: &str| format!("content.attachments[{i}].{name}");
    let uri = raw.uri.trim();
    if !(uri.starts_with("https://") || uri.starts_with("s3://"))
        || uri.len() > 2048
        || uri.chars().any(char::is_whitespace)
    {
        errors.add(
            field("uri"),
            "an https:// or s3:// URI of at most 2048 characters",
        );
    }
    let file_name = normalise_text(&raw.file_name);
    if file_name.chars().count() > 255 || has_control_chars(&file_name, false) {
        errors.add(field("file_name"), "at most 255 printable characters");
    }
    let content_type = raw.content_type.trim().to_ascii_lowercase();
    let valid_type = content_type.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && content_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/.+-".contains(c))
    });
    if !valid_type {
        errors.add(field("content_type"), "a MIME type such as image/jpeg");
    }
    if raw.size_bytes == 0 || raw.size_bytes > MAX_ATTACHMENT_BYTES {
        errors.add(
            field("size_bytes"),
            format!("1 byte to {MAX_ATTACHMENT_BYTES} bytes (25 MiB)"),
        );
    }
    let sha256 = raw.sha256.trim().to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        errors.add(field("sha256"), "64 hexadecimal characters");
    }
    Attachment {
        uri: uri.to_owned(),
        file_name,
        content_type,
        size_bytes: raw.size_bytes,
        sha256,
    }
}

/// A submission as it arrives, before any checks.
#[derive(Clone, Debug, Default)]
pub struct Submission {
    pub request_id: String,
    pub channel: i32,
    pub name: String,
    pub phone: String,
    pub email: String,
    pub customer_id: String,
    pub tier: i32,
    pub subject: String,
    pub description: String,
    pub demand: String,
    pub occurred_at: Option<DateTime<Utc>>,
    /// True when the client sent an `occurred_at` that is not a valid instant.
    pub occurred_at_invalid: bool,
    pub order_ref: String,
    pub product_ref: String,
    pub language: String,
    pub recorded_by: String,
    pub attachments: Vec<Attachment>,
}

/// A complaint that passed every check, normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct NewComplaint {
    pub request_id: String,
    pub channel: Channel,
    pub name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub customer_id: Option<String>,
    pub tier: CustomerTier,
    pub subject: String,
    pub description: String,
    pub demand: String,
    pub occurred_at: Option<DateTime<Utc>>,
    pub order_ref: Option<String>,
    pub product_ref: Option<String>,
    pub language: String,
    pub recorded_by: Option<String>,
    pub attachments: Vec<Attachment>,
}

/// NFC-normalised and trimmed.
pub fn normalise_text(text: &str) -> String {
    text.nfc().collect::<String>().trim().to_owned()
}

fn has_control_chars(text: &str, allow_newlines: bool) -> bool {
    text.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\r' || c == '\t')))
}

/// Checks a text field; returns the normalised value.
fn text_field(
    errors: &mut FieldErrors,
    field: &str,
    raw: &str,
    required: bool,
    max_chars: usize,
    multiline: bool,
) -> String {
    let value = normalise_text(raw);
    if value.is_empty() {
        if required {
            errors.add(field, "required");
        }
        return value;
    }
    let chars = value.chars().count();
    if chars > max_chars {
        errors.add(
            field,
            format!("{chars} characters; at most {max_chars} allowed"),
        );
    }
    if has_control_chars(&value, multiline) {
        errors.add(field, "contains control characters");
    }
    value
}

/// Lower-cases the domain; refuses what cannot be an address.
pub fn normalise_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim();
    let (local, domain) = email.rsplit_once('@').ok_or("must contain @")?;
    if local.is_empty() || local.len() > 64 {
        return Err("local part must be 1–64 characters");
    }
    if email.len() > 254 {
        return Err("at most 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) || local.contains('@') {
        return Err("must not contain spaces or a second @");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
    {
        return Err("domain is not valid");
    }
    Ok(format!("{local}@{}", domain.to_lowercase()))
}

/// Normalises a phone number to E.164. Numbers without a country code are read in the default
/// region (mainland China: `+86`). Spaces, dashes, dots and parentheses are ignored.
pub fn normalise_phone(raw: &str, default_country_code: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    let (international, rest) = if let Some(rest) = trimmed.strip_prefix('+') {
        (true, rest)
    } else if let Some(rest) = trimmed.strip_prefix("00") {
        (true, rest)
    } else {
        (false, trimmed)
    };
    let mut digits = String::with_capacity(rest.len());
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => {
                return Err(
                    "may contain only digits, spaces, dashes, dots, parentheses and a leading +",
                );
            }
        }
    }
    let e164 = if international {
        digits
    } else if default_country_code == "86" {
        // Mainland numbers: 11-digit mobiles (1xx…), or landlines with a trunk 0.
        if digits.len() == 11 && digits.starts_with('1') {
            format!("86{digits}")
        } else if digits.starts_with('0') && (10..=12).contains(&digits.len()) {
            format!("86{}", &digits[1..])
        } else {
            return Err(
                "not a mainland China mobile (11 digits) or landline (0 + area code + number)",
            );
        }
    } else {
        let national = digits.strip_prefix('0').unwrap_or(&digits);
        format!("{default_country_code}{national}")
    };
    if !(8..=15).contains(&e164.len()) || e164.starts_with('0') {
        return Err("not a valid international number (E.164 has 8–15 digits)");
    }
    Ok(format!("+{e164}"))
}

/// Fingerprint of the normalised content, to tell a replay from a reuse of a `request_id`.
pub fn fingerprint(complaint: &NewComplaint) -> String {
    let mut hasher = Sha256::new();
    let parts: [&str; 13] = [
        complaint.channel.as_str_name(),
        &complaint.name,
        complaint.phone.as_deref().unwrap_or(""),
        complaint.email.as_deref().unwrap_or(""),
        complaint.customer_id.as_deref().unwrap_or(""),
        complaint.tier.as_str_name(),
        &complaint.subject,
        &complaint.description,
        &complaint.demand,
        complaint.order_ref.as_deref().unwrap_or(""),
        complaint.product_ref.as_deref().unwrap_or(""),
        &complaint.language,
        complaint.recorded_by.as_deref().unwrap_or(""),
    ];
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    for attachment in &complaint.attachments {
        for part in [
            &attachment.uri,
            &attachment.file_name,
            &attachment.content_type,
            &attachment.sha256,
        ] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update(attachment.size_bytes.to_le_bytes());
    }
    hasher.update(
        complaint
            .occurred_at
            .map(|t| t.timestamp_micros())
            .unwrap_or(i64::MIN)
            .to_le_bytes(),
    );
    format!("{:x}", hasher.finalize())
}

fn optional(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// Checks and normalises a submission, reporting every wrong field.
pub fn parse_submission(
    submission: Submission,
    now: DateTime<Utc>,
    default_country_code: &str,
) -> Result<NewComplaint, FieldErrors> {
    let mut errors = FieldErrors::new();
    let request_id = submission.request_id.trim().to_owned();
    if request_id.is_empty() {
        errors.add("request_id", "required");
    } else if request_id.len() > 128 || has_control_chars(&request_id, false) {
        errors.add("request_id", "1–128 printable characters");
    }
    let channel =
        complaints_kit::grpc::require_enum::<Channel>(&mut errors, "channel", submission.channel);
    let tier = match submission.tier {
        0 => Some(CustomerTier::Regular),
        raw => match CustomerTier::try_from(raw) {
            Ok(tier) => Some(tier),
            Err(_) => {
                errors.add("complainant.tier", format!("unknown value {raw}"));
                None
            }
        },
    };
    let name = text_field(
        &mut errors,
        "complainant.name",
        &submission.name,
        true,
        MAX_NAME,
        false,
    );
    let phone = if submission.phone.trim().is_empty() {
        None
    } else {
        match normalise_phone(&submission.phone, default_country_code) {
            Ok(phone) => Some(phone),
            Err(why) => {
                errors.add("complainant.phone", why);
                None
            }
        }
    };
    let email = if submission.email.trim().is_empty() {
        None
    } else {
        match normalise_email(&submission.email) {
            Ok(email) => Some(email),
            Err(why) => {
                errors.add("complainant.email", why);
                None
            }
        }
    };
    if submission.phone.trim().is_empty() && submission.email.trim().is_empty() {
        errors.add(
            "complainant.phone",
            "a phone or an email is required to reach the customer",
        );
    }
    let customer_id = text_field(
        &mut errors,
        "complainant.customer_id",
        &submission.customer_id,
        false,
        MAX_REF,
        false,
    );
    let subject = text_field(
        &mut errors,
        "content.subject",
        &submission.subject,
        false,
        MAX_SUBJECT,
        false,
    );
    let description = text_field(
        &mut errors,
        "content.description",
        &submission.description,
        true,
        MAX_DESCRIPTION,
        true,
    );
    let demand = text_field(
        &mut errors,
        "content.demand",
        &submission.demand,
        false,
        MAX_DEMAND,
        true,
    );
    let order_ref = text_field(
        &mut errors,
        "content.order_ref",
        &submission.order_ref,
        false,
        MAX_REF,
        false,
    );
    let product_ref = text_field(
        &mut errors,
        "content.product_ref",
        &submission.product_ref,
        false,
        MAX_REF,
        false,
    );
    let language = text_field(
        &mut errors,
        "content.language",
        &submission.language,
        false,
        35,
        false,
    );
    let recorded_by = text_field(
        &mut errors,
        "recorded_by",
        &submission.recorded_by,
        false,
        MAX_REF,
        false,
    );
    if submission.occurred_at_invalid {
        errors.add("content.occurred_at", "not a valid timestamp");
    } else if let Some(at) = submission.occurred_at
        && at > now + Duration::seconds(FUTURE_TOLERANCE_SECONDS)
    {
        errors.add("content.occurred_at", "lies in the future");
    }
    if submission.attachments.len() > MAX_ATTACHMENTS {
        errors.add(
            "content.attachments",
            format!(
                "{} attachments; at most {MAX_ATTACHMENTS}",
                submission.attachments.len()
            ),
        );
    }
    let attachments: Vec<Attachment> = submission
        .attachments
        .iter()
        .take(MAX_ATTACHMENTS)
        .enumerate()
        .map(|(i, a)| check_attachment(&mut errors, i, a))
        .collect();
    if matches!(channel, Some(Channel::Phone | Channel::InStore)) && recorded_by.is_empty() {
        errors.add(
            "recorded_by",
            "the agent who took a phone or in-store complaint is required",
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(channel), Some(tier)) = (channel, tier) else {
        return Err(errors);
    };
    let language = if language.is_empty() {
        guess_language(&description).to_owned()
    } else {
        language
    };
    Ok(NewComplaint {
        request_id,
        channel,
        name,
        phone,
        email,
        customer_id: optional(customer_id),
        tier,
        subject,
        description,
        demand,
        occurred_at: submission.occurred_at,
        order_ref: optional(order_ref),
        product_ref: optional(product_ref),
        language,
        recorded_by: optional(recorded_by),
        attachments,
    })
}

/// "zh" when the text holds CJK ideographs, else "en".
pub fn guess_language(text: &str) -> &'static str {
    if text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)) {
        "zh"
    } else {
        "en"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Submission {
        Submission {
            request_id: "req-1".into(),
            channel: Channel::WebForm as i32,
            name: " 张三 ".into(),
            phone: "138 0013 8000".into(),
            description: "收到的商品有质量问题".into(),
            ..Default::default()
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn valid_submission_is_normalised() {
        let c = parse_submission(valid(), now(), "86").unwrap();
        assert_eq!(c.name, "张三");
        assert_eq!(c.phone.as_deref(), Some("+8613800138000"));
        assert_eq!(c.tier, CustomerTier::Regular);
        assert_eq!(c.language, "zh");
    }

    #[test]
    fn every_wrong_field_is_named() {
        let s = Submission {
            request_id: "".into(),
            channel: 99,
            name: "".into(),
            email: "not-an-email".into(),
            description: "bad\u{0007}text".into(),
            occurred_at: Some(now() + Duration::hours(2)),
            ..Default::default()
        };
        let errors = parse_submission(s, now(), "86").unwrap_err();
        let fields: Vec<&str> = errors.fields().collect();
        for f in [
            "request_id",
            "channel",
            "complainant.name",
            "complainant.email",
            "content.description",
            "content.occurred_at",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn missing_contact_is_refused() {
        let s = Submission {
            phone: "".into(),
            ..valid()
        };
        let errors = parse_submission(s, now(), "86").unwrap_err();
        assert!(errors.fields().any(|f| f == "complainant.phone"));
    }

    #[test]
    fn phone_and_in_store_need_the_recording_agent() {
        let s = Submission {
            channel: Channel::Phone as i32,
            ..valid()
        };
        let errors = parse_submission(s, now(), "86").unwrap_err();
        assert!(errors.fields().any(|f| f == "recorded_by"));
    }

    #[test]
    fn oversized_text_is_refused_not_truncated() {
        let s = Submission {
            description: "长".repeat(MAX_DESCRIPTION + 1),
            ..valid()
        };
        let errors = parse_submission(s, now(), "86").unwrap_err();
        assert!(errors.fields().any(|f| f == "content.description"));
    }

    #[test]
    fn attachments_are_checked_field_by_field() {
        let good = Attachment {
            uri: "https://files.example.com/a.jpg".into(),
            file_name: "发票.jpg".into(),
            content_type: "image/JPEG".into(),
            size_bytes: 1024,
            sha256: "a".repeat(64),
        };
        let s = Submission {
            attachments: vec![good.clone()],
            ..valid()
        };
        let c = parse_submission(s, now(), "86").unwrap();
        assert_eq!(c.attachments[0].content_type, "image/jpeg");
        let bad = Attachment {
            uri: "ftp://x".into(),
            size_bytes: MAX_ATTACHMENT_BYTES + 1,
            sha256: "xyz".into(),
            ..good.clone()
        };
        let s = Submission {
            attachments: vec![good.clone(), bad],
            ..valid()
        };
        let errors = parse_submission(s, now(), "86").unwrap_err();
        let fields: Vec<&str> = errors.fields().collect();
        assert_eq!(
            fields,
            [
                "content.attachments[1].uri",
                "content.attachments[1].size_bytes",
                "content.attachments[1].sha256"
            ]
        );
        let s = Submission {
            attachments: vec![good; MAX_ATTACHMENTS + 1],
            ..valid()
        };
        assert!(
            parse_submission(s, now(), "86")
                .unwrap_err()
                .fields()
                .any(|f| f == "content.attachments")
        );
    }

    #[test]
    fn nfc_normalisation_composes_characters() {
        assert_eq!(normalise_text("  Cafe\u{301} "), "Caf\u{e9}");
    }

    #[test]
    fn phones_normalise_to_e164() {
        assert_eq!(
            normalise_phone("+1 (415) 555-0100", "86").unwrap(),
            "+14155550100"
        );
        assert_eq!(
            normalise_phone("0086 138-0013-8000", "86").unwrap(),
            "+8613800138000"
        );
        assert_eq!(
            normalise_phone("010 6552 9988", "86").unwrap(),
            "+861065529988"
        );
        assert!(normalise_phone("12345", "86").is_err());
        assert!(normalise_phone("call me", "86").is_err());
    }

    #[test]
    fn emails_are_checked_and_domain_lowercased() {
        assert_eq!(
            normalise_email("Li.Lei@Example.COM").unwrap(),
            "Li.Lei@example.com"
        );
        assert!(normalise_email("a@b").is_err());
        assert!(normalise_email("a b@example.com").is_err());
        assert!(normalise_email("@example.com").is_err());
    }

    #[test]
    fn fingerprint_tells_content_apart() {
        let a = parse_submission(valid(), now(), "86").unwrap();
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.description.push('!');
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn normalised_text_is_stable_and_trimmed(s in "\\PC{0,64}") {
            let once = normalise_text(&s);
            prop_assert_eq!(normalise_text(&once), once.clone());
            prop_assert_eq!(once.trim(), once.as_str());
        }

        #[test]
        fn normalised_phones_are_e164_and_stable(digits in "1[3-9][0-9]{9}") {
            let phone = normalise_phone(&digits, "86").unwrap();
            prop_assert!(phone.starts_with("+86"));
            prop_assert!(phone[1..].chars().all(|c| c.is_ascii_digit()));
            prop_assert_eq!(normalise_phone(&phone, "86").unwrap(), phone);
        }

        #[test]
        fn normalised_emails_are_stable(local in "[a-z0-9._]{1,20}", domain in "[a-z]{1,10}\\.[a-z]{2,5}") {
            let email = normalise_email(&format!("{local}@{}", domain.to_uppercase())).unwrap();
            prop_assert_eq!(normalise_email(&email).unwrap(), email.clone());
            prop_assert!(email.ends_with(&domain));
        }
    }
}
