//! Survey tokens: unguessable, bound to one invitation, and never stored in clear. A token is
//! the invitation id followed by an HMAC of it under a server secret, so delivery adapters can
//! be handed the token again while the database keeps only its SHA-256.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct TokenKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
        }
    }

    fn mac(&self, id: Uuid) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"complaints-survey-token:");
        mac.update(id.as_bytes());
        mac
    }

    /// The token of an invitation.
    pub fn token(&self, id: Uuid) -> String {
        let mut bytes = id.as_bytes().to_vec();
        bytes.extend_from_slice(&self.mac(id).finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The invitation a token belongs to, if it is genuine.
    pub fn verify(&self, token: &str) -> Option<Uuid> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        if bytes.len() != 48 {
            return None;
        }
        let id = Uuid::from_slice(&bytes[..16]).ok()?;
        self.mac(id).verify_slice(&bytes[16..]).ok()?;
        Some(id)
    }
}

/// What the database keeps of a token.
pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.trim().as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_forgeries_do_not() {
        let key = TokenKey::new(b"secret-one");
        let id = Uuid::now_v7();
        let token = key.token(id);
        assert_eq!(key.verify(&token), Some(id));
        assert_eq!(TokenKey::new(b"secret-two").verify(&token), None);
        let mut forged = token.clone();
        forged.replace_range(forged.len() - 2.., "AA");
        assert_eq!(key.verify(&forged), None);
        assert_eq!(key.verify("garbage"), None);
        assert_ne!(hash(&token), token.as_bytes());
    }
}
