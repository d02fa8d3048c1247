//! JWT bearer authentication and the roles behind authorisation.
//!
//! Every RPC except health and reflection passes through [`AuthInterceptor`], which checks the
//! signature (allow-listed algorithm), `iss`, `aud`, `exp` and `nbf`, then hands the handler a
//! [`Principal`]. Handlers decide per RPC and per object what that principal may do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::config::{self, ConfigError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Supervisor,
    Quality,
    Admin,
    /// Another internal service (channel adapters, the platform's own services).
    Service,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Agent,
        Role::Supervisor,
        Role::Quality,
        Role::Admin,
        Role::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Quality => "quality",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}; expected one of agent, supervisor, quality, admin, service"
                )
            })
    }
}

/// The claims we issue and accept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
}

/// Who is calling, as proven by their token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub roles: Vec<Role>,
    pub department: Option<String>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn has_any(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.has(*r))
    }

    /// `PERMISSION_DENIED` unless the principal holds one of `roles`.
    pub fn require_any(&self, roles: &[Role]) -> Result<(), Status> {
        if self.has_any(roles) {
            Ok(())
        } else {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(Status::permission_denied(format!(
                "this call needs one of the roles: {}",
                names.join(", ")
            )))
        }
    }

    /// Roles that see every department's data.
    pub fn sees_everything(&self) -> bool {
        self.has_any(&[Role::Admin, Role::Quality, Role::Service])
    }

    /// Whether personal data (name, phone, email) may be shown unmasked.
    pub fn may_see_personal_data(&self) -> bool {
        self.has_any(&[Role::Agent, Role::Supervisor, Role::Admin, Role::Service])
    }
}

/// The principal the interceptor attached to a request.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing credentials"))
}

#[derive(Clone)]
enum VerificationKey {
    Hs256(Vec<u8>),
    Public { algorithm: Algorithm, pem: Vec<u8> },
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerificationKey::Hs256(_) => f.write_str("Hs256(<secret>)"),
            VerificationKey::Public { algorithm, .. } => write!(f, "Public({algorithm:?})"),
        }
    }
}

/// How tokens are verified, and how this service authenticates its own outgoing calls.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    key: VerificationKey,
    /// Token presented on calls to other services (`SERVICE_TOKEN_FILE`), if not minted.
    service_token: Option<String>,
}

pub const DEV_ISSUER: &str = "complaints-dev";
pub const AUDIENCE: &str = "complaints";

impl AuthConfig {
    /// `JWT_ISSUER` (default `complaints-dev`), `JWT_AUDIENCE` (default `complaints`), and either
    /// `JWT_HS256_SECRET` (local development only) or `JWT_PUBLIC_KEY_FILE` with `JWT_ALGORITHM`
    /// (RS256, ES256 or EdDSA; default RS256). `SERVICE_TOKEN_FILE` holds the token this service
    /// presents to others; with an HS256 secret one is minted when it is absent.
    pub fn from_env() -> Result<Self, ConfigError> {
        let issuer = config::optional("JWT_ISSUER").unwrap_or_else(|| DEV_ISSUER.into());
        let audience = config::optional("JWT_AUDIENCE").unwrap_or_else(|| AUDIENCE.into());
        let key = if let Some(secret) = config::optional("JWT_HS256_SECRET") {
            if secret.len() < 32 {
                return Err(ConfigError::Invalid {
                    name: "JWT_HS256_SECRET".into(),
                    value: "<hidden>".into(),
                    reason: "must be at least 32 characters".into(),
                });
            }
            VerificationKey::Hs256(secret.into_bytes())
        } else if let Some(path) = config::optional("JWT_PUBLIC_KEY_FILE") {
            let algorithm = match config::optional("JWT_ALGORITHM").as_deref() {
                None | Some("RS256") => Algorithm::RS256,
                Some("ES256") => Algorithm::ES256,
                Some("EdDSA") => Algorithm::EdDSA,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        name: "JWT_ALGORITHM".into(),
                        value: other.into(),
                        reason: "allowed: RS256, ES256, EdDSA".into(),
                    });
                }
            };
            let pem = read_file("JWT_PUBLIC_KEY_FILE", &path)?;
            public_decoding_key(algorithm, &pem).map_err(|e| ConfigError::Invalid {
                name: "JWT_PUBLIC_KEY_FILE".into(),
                value: path.clone(),
                reason: e.to_string(),
            })?;
            VerificationKey::Public { algorithm, pem }
        } else {
            return Err(ConfigError::Missing {
                name: "JWT_PUBLIC_KEY_FILE".into(),
                hint: "set JWT_PUBLIC_KEY_FILE (PEM) or, for local development only, JWT_HS256_SECRET",
            });
        };
        let service_token = match config::optional("SERVICE_TOKEN_FILE") {
            Some(path) => Some(
                String::from_utf8_lossy(&read_file("SERVICE_TOKEN_FILE", &path)?)
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        if service_token.is_none() && !matches!(key, VerificationKey::Hs256(_)) {
            return Err(ConfigError::Missing {
                name: "SERVICE_TOKEN_FILE".into(),
                hint: "a token with the `service` role that this service presents to the others",
            });
        }
        Ok(Self {
            issuer,
            audience,
            key,
            service_token,
        })
    }

    /// Development configuration with a shared HS256 secret.
    pub fn development(secret: &str) -> Self {
        Self {
            issuer: DEV_ISSUER.into(),
            audience: AUDIENCE.into(),
            key: VerificationKey::Hs256(secret.as_bytes().to_vec()),
            service_token: None,
        }
    }

    /// Mints a token; only possible with the development HS256 secret.
    pub fn mint(
        &self,
        subject: &str,
        roles: &[Role],
        department: Option<&str>,
        ttl: std::time::Duration,
    ) -> Result<String, AuthError> {
        let VerificationKey::Hs256(secret) = &self.key else {
            return Err(AuthError::CannotMint);
        };
        let now = unix_now();
        let claims = Claims {
            sub: subject.to_owned(),
            roles: roles.to_vec(),
            department: department.map(str::to_owned),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now.saturating_sub(5),
            exp: now + ttl.as_secs(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// The token this service presents when it calls another service.
    pub fn service_token(&self, service_name: &str) -> Result<String, AuthError> {
        match &self.service_token {
            Some(token) => Ok(token.clone()),
            None => self.mint(
                service_name,
                &[Role::Service],
                None,
                std::time::Duration::from_secs(365 * 86_400),
            ),
        }
    }

    pub fn verifier(&self) -> Result<Verifier, AuthError> {
        let (key, algorithm) = match &self.key {
            VerificationKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            VerificationKey::Public { algorithm, pem } => {
                (public_decoding_key(*algorithm, pem)?, *algorithm)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(&[self.audience.as_str()]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Ok(Verifier {
            inner: Arc::new((key, validation)),
            verified: Arc::default(),
        })
    }
}

fn public_decoding_key(algorithm: Algorithm, pem: &[u8]) -> Result<DecodingKey, AuthError> {
    let key = match algorithm {
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    };
    key.map_err(|e| AuthError::Invalid(e.to_string()))
}

fn read_file(name: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::File {
        name: name.into(),
        path: path.into(),
        source,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("tokens can only be minted with the development HS256 secret")]
    CannotMint,
    #[error("{0}")]
    Invalid(String),
}

/// Checks bearer tokens; cheap to clone (clones share the cache of tokens already verified).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<(DecodingKey, Validation)>,
    verified: Arc<Mutex<HashMap<Box<str>, Verified>>>,
}

/// A token whose signature and claims were checked once: what it proves, and until when.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    exp: u64,
}

/// Most tokens remembered as verified. A caller presents the same token on every call until
/// it renews it, so a few thousand cover every caller of a replica; past that the memory is
/// emptied and refilled by the next calls.
const VERIFIED_TOKENS: usize = 4096;

impl Verifier {
    /// The caller a token proves. A token already verified (the same bytes, so the same
    /// signature) is not decoded and checked again, only its expiry (the HMAC and JSON of
    /// every call were 5.5 % of intake's CPU under the bench); the key never
    /// changes while the process lives, so nothing else about it can change.
    pub fn verify(&self, token: &str) -> Result<Principal, Status> {
        self.verify_at(token, unix_now())
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Principal, Status> {
        let leeway = self.inner.1.leeway;
        let known = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        if let Some(known) = known {
            // The same rule as the first check: expired once `exp + leeway` has passed.
            if known.exp.saturating_add(leeway) < now {
                return Err(Status::unauthenticated("token expired"));
            }
            return Ok(known.principal);
        }
        let (principal, exp) = self.decode(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(
            token.into(),
            Verified {
                principal: principal.clone(),
                exp,
            },
        );
        Ok(principal)
    }

    fn decode(&self, token: &str) -> Result<(Principal, u64), Status> {
        let (key, validation) = &*self.inner;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet",
                ErrorKind::InvalidSignature => "invalid token signature",
                ErrorKind::InvalidIssuer => "token issuer not accepted",
                ErrorKind::InvalidAudience => "token audience not accepted",
                ErrorKind::InvalidAlgorithm => "token algorithm not accepted",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                _ => "malformed token",
            };
            Status::unauthenticated(why)
        })?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(Status::unauthenticated("token has an empty subject"));
        }
        let principal = Principal {
            subject: claims.sub,
            roles: claims.roles,
            department: claims.department.filter(|d| !d.is_empty()),
        };
        Ok((principal, claims.exp))
    }
}

/// Tonic interceptor that requires a valid bearer token and attaches the [`Principal`].
#[derive(Clone)]
pub struct AuthInterceptor {
    verifier: Verifier,
}

impl AuthInterceptor {
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| Status::unauthenticated("authorization must be: Bearer <token>"))?;
        let principal = self.verifier.verify(token.trim())?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// Adds `authorization: Bearer <token>` to outgoing calls.
#[derive(Clone)]
pub struct BearerToken {
    value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl BearerToken {
    pub fn new(token: &str) -> Result<Self, AuthError> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| AuthError::Invalid("token is not valid header text".into()))?;
        Ok(Self { value })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        // Carry the caller's trace to the callee.
        let traceparent = crate::telemetry::current_traceparent();
        if !traceparent.is_empty()
            && let Ok(value) = traceparent.parse()
        {
            request.metadata_mut().insert("traceparent", value);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn minted_token_verifies_with_roles_and_department() {
        let config = AuthConfig::development(SECRET);
        let token = config
            .mint(
                "alice",
                &[Role::Agent],
                Some("quality"),
                Duration::from_secs(60),
            )
            .unwrap();
        let principal = config.verifier().unwrap().verify(&token).unwrap();
        assert_eq!(principal.subject, "alice");
        assert_eq!(principal.roles, vec![Role::Agent]);
        assert_eq!(principal.department.as_deref(), Some("quality"));
    }

    #[test]
    fn token_signed_with_another_secret_is_refused() {
        let other = AuthConfig::development("ffffffffffffffffffffffffffffffff");
        let token = other
            .mint("mallory", &[Role::Admin], None, Duration::from_secs(60))
            .unwrap();
        let err = AuthConfig::development(SECRET)
            .verifier()
            .unwrap()
            .verify(&token)
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("signature"));
    }

    #[test]
    fn token_of_another_issuer_is_refused() {
        let mut other = AuthConfig::development(SECRET);
        other.issuer = "someone-else".into();
        let token = other
            .mint("bob", &[Role::Agent], None, Duration::from_secs(60))
            .unwrap();
        let err = AuthConfig::development(SECRET)
            .verifier()
            .unwrap()
            .verify(&token)
            .unwrap_err();
        assert!(err.message().contains("issuer"));
    }

    #[test]
    fn a_token_verified_once_is_still_refused_once_expired_and_a_changed_one_is_checked_again() {
        let config = AuthConfig::development(SECRET);
        let verifier = config.verifier().unwrap();
        let token = config
            .mint("carol", &[Role::Supervisor], None, Duration::from_secs(60))
            .unwrap();
        let first = verifier.verify(&token).unwrap();
        // Remembered: the same principal again, from a clone too.
        assert_eq!(verifier.clone().verify(&token).unwrap(), first);
        let exp = unix_now() + 60;
        // Within the leeway past its expiry it still passes; beyond, it does not, remembered
        // or not.
        assert!(verifier.verify_at(&token, exp + 20).is_ok());
        let err = verifier.verify_at(&token, exp + 31 + 5).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert_eq!(err.message(), "token expired");
        // A token differing in one byte of its signature is checked, not taken as known.
        let mut forged = token.clone().into_bytes();
        let at = forged.len() - 10;
        forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let err = verifier.verify(&forged).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        // The memory stays bounded.
        for n in 0..VERIFIED_TOKENS + 10 {
            let token = config
                .mint(
                    &format!("agent-{n}"),
                    &[Role::Agent],
                    None,
                    Duration::from_secs(60),
                )
                .unwrap();
            verifier.verify(&token).unwrap();
        }
        assert!(verifier.verified.lock().unwrap().len() <= VERIFIED_TOKENS);
    }

    #[test]
    fn roles_parse_by_name() {
        assert_eq!("supervisor".parse::<Role>().unwrap(), Role::Supervisor);
        assert!("root".parse::<Role>().is_err());
    }
}
