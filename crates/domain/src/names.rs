//! Aliases, user file names and object keys.

use uuid::Uuid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("alias {0:?} must be 1-32 characters of a-z, 0-9 and _, starting with a letter")]
    BadAlias(String),
    #[error(
        "file name {0:?} must be 1-128 characters of A-Z a-z 0-9 . _ - and must not start with '.'"
    )]
    BadFileName(String),
    #[error("pool {0:?} must be 1-64 characters of a-z, 0-9, _ and -, starting with a letter")]
    BadPoolName(String),
}

/// Checks an input/output alias (`in`, `out_720p`).
pub fn check_alias(s: &str) -> Result<(), NameError> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::BadAlias(s.to_owned()))
    }
}

/// Checks a worker pool's name (`default`, `gpu-eu`).
pub fn check_pool_name(s: &str) -> Result<(), NameError> {
    let ok = (1..=64).contains(&s.len())
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::BadPoolName(s.to_owned()))
    }
}

/// Checks a plain file name (no directories): what outputs are called inside the job directory.
pub fn check_file_name(s: &str) -> Result<(), NameError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%'));
    if ok {
        Ok(())
    } else {
        Err(NameError::BadFileName(s.to_owned()))
    }
}

/// The extension of a user-supplied file name, lowercased, if it is a short plain one.
/// FFmpeg uses it as a hint when probing; anything odd is dropped.
pub fn safe_extension(filename: &str) -> Option<String> {
    let (_, ext) = filename.rsplit_once('.')?;
    (1..=8)
        .contains(&ext.len())
        .then(|| ext.to_ascii_lowercase())
        .filter(|e| e.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A SHA-256 digest as 64 lowercase hex characters, the form used everywhere here.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Object key of an uploaded asset. Every key lives under its org's prefix.
pub fn asset_key(org: Uuid, asset: Uuid) -> String {
    format!("orgs/{org}/assets/{asset}")
}

/// Object key of one file a job attempt produced. Attempt-scoped, so a fenced-off attempt can
/// never overwrite the objects of the attempt that won. The file's path (up to a 128-character
/// name in a directory output) is named by its SHA-256 (128 bits of it): every key has one
/// short length, which every store can hold (the embedded one keeps each object's metadata in
/// a file named after the whole key, and a file name has at most 255 bytes); the file's name
/// lives in its asset.
pub fn output_key(org: Uuid, job: Uuid, attempt: u32, rel_path: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(rel_path.as_bytes());
    format!(
        "orgs/{org}/jobs/{job}/attempts/{attempt}/{}",
        hex::encode(&digest[..16])
    )
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        for ok in ["in", "out_720p", "a", "x9"] {
            assert!(check_alias(ok).is_ok(), "{ok}");
        }
        for bad in ["", "In", "9x", "a-b", "a/b", "{{a}}", &"a".repeat(33)] {
            assert!(check_alias(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names() {
        for ok in ["out.mp4", "seg_%03d.ts", "index.m3u8", "A-b_c.mkv"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "../x", "a b", "x\0", "c:d"] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_hex() {
        assert!(is_sha256_hex(&"ab".repeat(32)));
        for bad in [
            "",
            &"AB".repeat(32),
            &"ab".repeat(31),
            &"gg".repeat(32),
            &"ab".repeat(33),
        ] {
            assert!(!is_sha256_hex(bad), "{bad}");
        }
    }

    #[test]
    fn extensions() {
        assert_eq!(safe_extension("clip.MOV").as_deref(), Some("mov"));
        assert_eq!(safe_extension("noext"), None);
        assert_eq!(safe_extension("x.a/b"), None);
        assert_eq!(safe_extension("x.verylongext"), None);
    }

    #[test]
    fn output_keys_have_one_short_length_whatever_the_file_name() {
        let (org, job) = (Uuid::nil(), Uuid::max());
        let short = output_key(org, job, 1, "out/o.mp4");
        let long = output_key(org, job, 1, &format!("d/{}.ts", "0".repeat(125)));
        assert_eq!(short.len(), long.len());
        assert_ne!(short, output_key(org, job, 1, "out/o.mkv"));
        assert_ne!(short, output_key(org, job, 2, "out/o.mp4"));
        assert!(short.starts_with(&format!("orgs/{org}/jobs/{job}/attempts/1/")));
        // The embedded store names a metadata file after the base64 of the key, plus 30 bytes.
        assert!(long.len().div_ceil(3) * 4 + 41 < 255, "{}", long.len());
    }
}
