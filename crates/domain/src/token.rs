//! Credentials that clients present: API keys (`mfk_…`) and worker tokens (`mfw_…`).
//!
//! Each is 32 random bytes, hex encoded behind a kind prefix, so a leaked string says what it is
//! (and secret scanners can match it). Only the SHA-256 of the whole string is ever stored.

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    ApiKey,
    WorkerToken,
}

impl TokenKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            TokenKind::ApiKey => "mfk_",
            TokenKind::WorkerToken => "mfw_",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("credential has the wrong prefix (expected {expected})")]
    WrongKind { expected: &'static str },
    #[error("credential is malformed")]
    Malformed,
}

/// A secret credential. `Debug` and `Display` never print it.
#[derive(Clone)]
pub struct Secret {
    kind: TokenKind,
    value: String,
}

/// SHA-256 of a credential: what the database stores and looks up.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// Constant-time equality, for when a hash is compared in memory.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &hex::encode(self.0)[..8])
    }
}

impl Secret {
    /// A fresh random credential of `kind` (256 bits from the OS RNG).
    pub fn generate(kind: TokenKind) -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Secret {
            kind,
            value: format!("{}{}", kind.prefix(), hex::encode(bytes)),
        }
    }

    /// Parses a presented credential, checking its kind and shape (not its validity).
    pub fn parse(kind: TokenKind, s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        let body = s.strip_prefix(kind.prefix()).ok_or(TokenError::WrongKind {
            expected: kind.prefix(),
        })?;
        if body.len() != 64
            || !body
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(TokenError::Malformed);
        }
        Ok(Secret {
            kind,
            value: s.to_owned(),
        })
    }

    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.value.as_bytes()).into())
    }

    /// The secret itself: only for handing it to its owner once, or sending it on the wire.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// A short, non-secret label for logs and listings (`mfk_1a2b…`).
    pub fn display_prefix(&self) -> String {
        self.value[..12].to_owned() + "…"
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?}, <redacted>)", self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back_and_hash_stably() {
        for kind in [TokenKind::ApiKey, TokenKind::WorkerToken] {
            let t = Secret::generate(kind);
            assert!(t.expose().starts_with(kind.prefix()));
            assert_eq!(t.expose().len(), 4 + 64);
            let parsed = Secret::parse(kind, t.expose()).unwrap();
            assert!(parsed.hash().ct_eq(&t.hash()));
        }
        assert_ne!(
            Secret::generate(TokenKind::ApiKey).hash(),
            Secret::generate(TokenKind::ApiKey).hash()
        );
    }

    #[test]
    fn parse_rejects_wrong_kind_and_shape() {
        let api = Secret::generate(TokenKind::ApiKey);
        let cases: &[(&str, TokenKind, TokenError)] = &[
            (
                api.expose(),
                TokenKind::WorkerToken,
                TokenError::WrongKind { expected: "mfw_" },
            ),
            ("mfk_abc", TokenKind::ApiKey, TokenError::Malformed),
            (
                "",
                TokenKind::ApiKey,
                TokenError::WrongKind { expected: "mfk_" },
            ),
            (
                &format!("mfk_{}", "G".repeat(64)),
                TokenKind::ApiKey,
                TokenError::Malformed,
            ),
            (
                &format!("mfk_{}", "A".repeat(64)),
                TokenKind::ApiKey,
                TokenError::Malformed,
            ),
        ];
        for (input, kind, want) in cases {
            assert_eq!(Secret::parse(*kind, input).unwrap_err(), *want, "{input}");
        }
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let t = Secret::generate(TokenKind::WorkerToken);
        assert!(!format!("{t:?}").contains(&t.expose()[4..]));
    }
}
