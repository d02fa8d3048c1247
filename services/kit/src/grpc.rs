//! Turning domain outcomes into `tonic::Status` with the richer error model
//! (google.rpc `BadRequest`, `PreconditionFailure`, ...). No SQL text or internal detail ever
//! reaches a client: storage errors are logged here and answered as `INTERNAL`/`UNAVAILABLE`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Collects every wrong field of a request so the client learns them all at once.
#[derive(Debug, Default, Clone)]
pub struct FieldErrors {
    violations: Vec<(String, String)>,
}

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push((field.into(), description.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.violations.iter().map(|(f, _)| f.as_str())
    }

    /// `Ok(())` when nothing is wrong, else `INVALID_ARGUMENT` naming every field.
    pub fn into_result(self) -> Result<(), Status> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.into_status())
        }
    }

    pub fn into_status(self) -> Status {
        let summary = self
            .violations
            .iter()
            .map(|(f, d)| format!("{f}: {d}"))
            .collect::<Vec<_>>()
            .join("; ");
        let details = ErrorDetails::with_bad_request(
            self.violations
                .into_iter()
                .map(|(f, d)| FieldViolation::new(f, d))
                .collect::<Vec<_>>(),
        );
        Status::with_error_details(Code::InvalidArgument, summary, details)
    }
}

/// `INVALID_ARGUMENT` for one field.
pub fn invalid_field(field: &str, description: &str) -> Status {
    let mut errors = FieldErrors::new();
    errors.add(field, description);
    errors.into_status()
}

/// `FAILED_PRECONDITION` with a `PreconditionFailure` detail.
pub fn failed_precondition(kind: &str, subject: &str, description: &str) -> Status {
    let details = ErrorDetails::with_precondition_failure_violation(kind, subject, description);
    Status::with_error_details(Code::FailedPrecondition, description, details)
}

/// `ABORTED`: the caller's `version` is stale; re-read and retry.
pub fn stale_version(subject: &str, expected: u64, actual: u64) -> Status {
    let description =
        format!("{subject} is at version {actual}, not {expected}; read it again and retry");
    let details =
        ErrorDetails::with_precondition_failure_violation("VERSION", subject, &description);
    Status::with_error_details(Code::Aborted, description, details)
}

pub fn not_found(what: &str, id: &str) -> Status {
    let details = ErrorDetails::with_resource_info(what, id, "", "not found");
    Status::with_error_details(Code::NotFound, format!("{what} {id} not found"), details)
}

/// Logs a storage error and answers without leaking it.
pub fn storage(error: &sqlx::Error) -> Status {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            tracing::warn!(error = %error, "database unavailable");
            Status::unavailable("database unavailable, retry later")
        }
        _ => {
            tracing::error!(error = %error, "database error");
            Status::internal("internal error")
        }
    }
}

/// Whether a database error is a unique-constraint violation.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Parses a UUID field, naming the field when it is not one.
pub fn parse_uuid(field: &str, value: &str) -> Result<uuid::Uuid, Status> {
    if value.trim().is_empty() {
        return Err(invalid_field(field, "required"));
    }
    uuid::Uuid::parse_str(value.trim()).map_err(|_| invalid_field(field, "must be a UUID"))
}

/// Checks that an enum field holds a known, specified value.
pub fn require_enum<E>(errors: &mut FieldErrors, field: &str, raw: i32) -> Option<E>
where
    E: TryFrom<i32>,
{
    if raw == 0 {
        errors.add(field, "required");
        return None;
    }
    match E::try_from(raw) {
        Ok(value) => Some(value),
        Err(_) => {
            errors.add(field, format!("unknown value {raw}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_violation_is_reported() {
        let mut errors = FieldErrors::new();
        errors.add("complainant.email", "malformed");
        errors.add("content.description", "required");
        let status = errors.into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, vec!["complainant.email", "content.description"]);
    }
}
