//! Signing secrets at rest: the database holds them sealed (authenticated encryption) under keys
//! kept outside it, so a database dump or backup alone does not let anyone forge deliveries.
//!
//! Unlike API keys, signing secrets cannot be stored as hashes: the platform needs them to sign.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use std::fmt;

/// Bytes of a sealing key.
pub const KEY_BYTES: usize = 32;
/// Longest key id.
pub const MAX_KEY_ID_CHARS: usize = 32;
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// Format version of a sealed value, its first dot-separated field.
const SEALED_VERSION: &str = "v1";

/// Standard base64 with or without padding, for keys typed into a file.
const STANDARD_PAD_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Keys for sealing secrets: the first is used to seal, every one can open. Debug never prints keys.
#[derive(Clone)]
pub struct Keyring {
    /// Never empty; the first is the primary.
    keys: Vec<SealingKey>,
}

#[derive(Clone)]
struct SealingKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("the key file has no keys")]
    NoKeys,
    #[error("line {line}: expected ID:BASE64")]
    BadLine { line: usize },
    #[error("line {line}: a key id is 1 to 32 characters of a-z, 0-9 and -")]
    BadId { line: usize },
    // Says nothing about the key text: it is secret even when malformed.
    #[error("line {line}: the key is not 32 bytes in standard base64")]
    BadKey { line: usize },
    #[error("line {line}: key id {id:?} appears twice")]
    DuplicateId { line: usize, id: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed with key {id:?}, which is not in the keyring")]
    UnknownKey { id: String },
    #[error("not a sealed value (expected v1.ID.DATA)")]
    Malformed,
    #[error("the sealed value does not open with key {id:?}: wrong key, altered, or moved from another row")]
    Authentication { id: String },
}

/// Whether `id` can name a key: 1..=32 of `[a-z0-9-]` (no '.', which separates the fields of a
/// sealed value).
pub fn is_valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Keyring {
    /// Text of a key file: one key per line, "ID:BASE64" (ID: 1..=32 of [a-z0-9-], key: 32 bytes standard base64); blank lines and lines starting with '#' ignored; the first key line is the primary. Duplicate ids refused. At least one key.
    ///
    /// Spaces around a line (and a CR of CRLF files) are ignored. Errors give the 1-based line.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys: Vec<SealingKey> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (id, b64) = trimmed
                .split_once(':')
                .ok_or(KeyringError::BadLine { line })?;
            if !is_valid_key_id(id) {
                return Err(KeyringError::BadId { line });
            }
            let key = STANDARD_PAD_OPTIONAL
                .decode(b64)
                .ok()
                .filter(|key| key.len() == KEY_BYTES)
                .ok_or(KeyringError::BadKey { line })?;
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyringError::DuplicateId {
                    line,
                    id: id.to_string(),
                });
            }
            keys.push(SealingKey {
                id: id.to_string(),
                cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
            });
        }
        if keys.is_empty() {
            return Err(KeyringError::NoKeys);
        }
        Ok(Keyring { keys })
    }

    /// "ID:BASE64\n" with 32 random bytes: a line for a key file. `id` should pass
    /// [`is_valid_key_id`]; a line with any other id is refused by [`Keyring::parse`].
    pub fn generate_line(id: &str) -> String {
        let mut key = [0u8; KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        format!(
            "{id}:{}\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    pub fn primary_id(&self) -> &str {
        &self.primary().id
    }

    /// Ids of every key, primary first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    fn primary(&self) -> &SealingKey {
        // `parse` refuses a keyring without keys.
        &self.keys[0]
    }

    /// XChaCha20-Poly1305 with a random 24-byte nonce; `aad` binds the ciphertext to its row (e.g. the endpoint id and the slot), so a ciphertext moved to another row does not open.
    ///
    /// Returns "v1.ID.B64URL(nonce||ciphertext)" (base64 URL-safe, no padding). A 192-bit random
    /// nonce never repeats in practice, so one key can seal any number of values.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let key = self.primary();
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption fails only for plaintexts beyond 256 GiB, far beyond any secret.
        let ciphertext = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any plaintext under 256 GiB");
        let mut data = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        data.extend_from_slice(&nonce);
        data.extend_from_slice(&ciphertext);
        format!(
            "{SEALED_VERSION}.{}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(data)
        )
    }

    /// Opens a value sealed by [`Keyring::seal`] with the same `aad`, under whichever key of the
    /// ring it names.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let (id, data) = split_sealed(sealed).ok_or(SealError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey { id: id.to_string() })?;
        let data = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| SealError::Malformed)?;
        if data.len() < NONCE_BYTES + TAG_BYTES {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_BYTES);
        key.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::Authentication { id: id.to_string() })
    }

    /// false when re-sealing with the primary key is needed (key rotation).
    ///
    /// Reads only the key id (it does not authenticate); a malformed value also answers false.
    pub fn sealed_with_primary(&self, sealed: &str) -> bool {
        split_sealed(sealed).is_some_and(|(id, _)| id == self.primary_id())
    }
}

/// The key id and data of "v1.ID.DATA", when the version and id are well formed.
fn split_sealed(sealed: &str) -> Option<(&str, &str)> {
    let mut fields = sealed.splitn(3, '.');
    let (version, id, data) = (fields.next()?, fields.next()?, fields.next()?);
    (version == SEALED_VERSION && is_valid_key_id(id)).then_some((id, data))
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn line(id: &str, byte: u8) -> String {
        format!("{id}:{}\n", STANDARD.encode([byte; KEY_BYTES]))
    }

    fn ring(text: &str) -> Keyring {
        Keyring::parse(text).unwrap()
    }

    #[test]
    fn round_trip() {
        let ring = ring(&Keyring::generate_line("k1"));
        assert_eq!(ring.primary_id(), "k1");
        let secret = b"whsec_secret bytes";
        let sealed = ring.seal(secret, b"endpoint 42/current");
        assert!(sealed.starts_with("v1.k1."), "{sealed}");
        let data = sealed.strip_prefix("v1.k1.").unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(data).unwrap().len(),
            NONCE_BYTES + secret.len() + TAG_BYTES
        );
        assert!(!sealed.contains("secret"));
        assert_eq!(ring.open(&sealed, b"endpoint 42/current").unwrap(), secret);
        assert!(ring.sealed_with_primary(&sealed));
        // Random nonces: the same plaintext seals differently each time.
        assert_ne!(ring.seal(secret, b"a"), ring.seal(secret, b"a"));
        // Empty plaintext and empty aad work too.
        assert_eq!(ring.open(&ring.seal(b"", b""), b"").unwrap(), b"");
    }

    #[test]
    fn wrong_aad_fails() {
        let ring = ring(&line("k1", 1));
        let sealed = ring.seal(b"secret", b"endpoint 42/current");
        for aad in [&b"endpoint 43/current"[..], b"endpoint 42/previous", b""] {
            assert_eq!(
                ring.open(&sealed, aad),
                Err(SealError::Authentication { id: "k1".into() })
            );
        }
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let ring = ring(&line("k1", 1));
        let sealed = ring.seal(b"secret", b"row");
        let data = URL_SAFE_NO_PAD.decode(&sealed["v1.k1.".len()..]).unwrap();
        for i in 0..data.len() {
            let mut altered = data.clone();
            altered[i] ^= 0x01;
            let forged = format!("v1.k1.{}", URL_SAFE_NO_PAD.encode(&altered));
            assert_eq!(
                ring.open(&forged, b"row"),
                Err(SealError::Authentication { id: "k1".into() }),
                "byte {i}"
            );
        }
        // Truncated to nonce + tag: authenticates nothing, still refused.
        let short = format!(
            "v1.k1.{}",
            URL_SAFE_NO_PAD.encode(&data[..NONCE_BYTES + TAG_BYTES])
        );
        assert_eq!(
            ring.open(&short, b"row"),
            Err(SealError::Authentication { id: "k1".into() })
        );
    }

    #[test]
    fn another_key_with_the_same_id_does_not_open() {
        let a = ring(&line("k1", 1));
        let b = ring(&line("k1", 2));
        let sealed = a.seal(b"secret", b"row");
        assert_eq!(
            b.open(&sealed, b"row"),
            Err(SealError::Authentication { id: "k1".into() })
        );
    }

    #[test]
    fn rotation() {
        let old = ring(&line("old", 1));
        let sealed_old = old.seal(b"secret", b"row");
        let rotated = ring(&format!("{}{}", line("new", 2), line("old", 1)));
        assert_eq!(rotated.primary_id(), "new");
        assert_eq!(rotated.ids().collect::<Vec<_>>(), ["new", "old"]);
        assert_eq!(rotated.open(&sealed_old, b"row").unwrap(), b"secret");
        assert!(!rotated.sealed_with_primary(&sealed_old));
        let resealed = rotated.seal(b"secret", b"row");
        assert!(resealed.starts_with("v1.new."), "{resealed}");
        assert!(rotated.sealed_with_primary(&resealed));
        // The old ring cannot open what the new key sealed.
        assert_eq!(
            old.open(&resealed, b"row"),
            Err(SealError::UnknownKey { id: "new".into() })
        );
    }

    #[test]
    fn malformed_sealed_values() {
        let ring = ring(&line("k1", 1));
        let good = ring.seal(b"secret", b"row");
        let data = &good["v1.k1.".len()..];
        for bad in [
            String::new(),
            "v1".into(),
            "v1.k1".into(),
            format!("v2.k1.{data}"),
            format!("V1.k1.{data}"),
            format!("v1.K1.{data}"),
            format!("v1..{data}"),
            format!("v1.k1.{data}="),
            format!(
                "v1.k1.{}",
                data.replace(|c: char| c.is_ascii_alphanumeric(), "+")
            ),
            "v1.k1.".into(),
            format!(
                "v1.k1.{}",
                URL_SAFE_NO_PAD.encode([0u8; NONCE_BYTES + TAG_BYTES - 1])
            ),
            format!("v1.k1.{data}.extra"),
        ] {
            assert_eq!(
                ring.open(&bad, b"row"),
                Err(SealError::Malformed),
                "{bad:?}"
            );
            assert!(
                !ring.sealed_with_primary(&bad) || bad.starts_with("v1.k1."),
                "{bad:?}"
            );
        }
        assert_eq!(
            ring.open(&format!("v1.k2.{data}"), b"row"),
            Err(SealError::UnknownKey { id: "k2".into() })
        );
    }

    #[test]
    fn parse_skips_comments_blank_lines_and_crlf() {
        let text = format!(
            "# sealing keys for signing secrets\n\n  {}\r\n   \n# retired 2026-01\n{}",
            line("2026-02", 1).trim_end(),
            line("2026-01", 2)
        );
        let ring = ring(&text);
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["2026-02", "2026-01"]);
        // Unpadded base64 is accepted.
        let unpadded = format!(
            "k:{}",
            STANDARD.encode([3u8; KEY_BYTES]).trim_end_matches('=')
        );
        assert!(Keyring::parse(&unpadded).is_ok());
    }

    #[test]
    fn parse_errors() {
        let k = STANDARD.encode([1u8; KEY_BYTES]);
        assert_eq!(Keyring::parse("").unwrap_err(), KeyringError::NoKeys);
        assert_eq!(
            Keyring::parse("# only a comment\n\n").unwrap_err(),
            KeyringError::NoKeys
        );
        assert_eq!(
            Keyring::parse(&format!("\n{k}")).unwrap_err(),
            KeyringError::BadLine { line: 2 }
        );
        for bad_id in ["", "K1", "k.1", "k_1", "k 1", &"a".repeat(33)] {
            assert_eq!(
                Keyring::parse(&format!("{bad_id}:{k}")).unwrap_err(),
                KeyringError::BadId { line: 1 },
                "{bad_id:?}"
            );
        }
        assert!(Keyring::parse(&format!("{}:{k}", "a".repeat(32))).is_ok());
        for bad_key in [
            STANDARD.encode([1u8; 31]),
            STANDARD.encode([1u8; 33]),
            URL_SAFE_NO_PAD.encode([0xffu8; KEY_BYTES]),
            "not base64!".into(),
            String::new(),
            format!("{k} extra"),
        ] {
            let err = Keyring::parse(&format!("k1:{bad_key}")).unwrap_err();
            assert_eq!(err, KeyringError::BadKey { line: 1 }, "{bad_key:?}");
            // The message never repeats key material.
            assert!(bad_key.is_empty() || !err.to_string().contains(&bad_key));
        }
        assert_eq!(
            Keyring::parse(&format!("a:{k}\nb:{k}\na:{k}")).unwrap_err(),
            KeyringError::DuplicateId {
                line: 3,
                id: "a".into()
            }
        );
    }

    #[test]
    fn generated_lines_parse_and_differ() {
        let a = Keyring::generate_line("prod-1");
        let b = Keyring::generate_line("prod-1");
        assert!(a.starts_with("prod-1:") && a.ends_with('\n'), "{a}");
        assert_ne!(a, b);
        let ring = ring(&format!("{a}{}", Keyring::generate_line("prod-0")));
        assert_eq!(ring.primary_id(), "prod-1");
    }

    #[test]
    fn debug_shows_ids_not_keys() {
        let text = line("k1", 0xab);
        let debug = format!("{:?}", ring(&text));
        assert_eq!(debug, "Keyring { key_ids: [\"k1\"], .. }");
        let b64 = text.trim_end().strip_prefix("k1:").unwrap();
        assert!(!debug.contains(b64));
    }
}
