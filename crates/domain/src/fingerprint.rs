//! Which FFmpeg a worker runs: its version, build configuration and the command grammar it
//! implements. The command validator's tables were verified against one FFmpeg major.minor; a
//! job is only given to a worker whose FFmpeg implements that same grammar, so the program that
//! runs a command parses it the way the validator did.

use sha2::{Digest, Sha256};
use std::fmt;

/// The FFmpeg major.minor the command grammar (option arities, filter options, escaping) was
/// verified against.
pub const COMMAND_GRAMMAR: &str = "5.1";

/// Longest version line or configuration kept.
const MAX_TEXT: usize = 8 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FingerprintError {
    #[error("grammar id {0:?} is not of the form MAJOR.MINOR")]
    BadGrammar(String),
    #[error("cannot tell the FFmpeg release from its version line {0:?}")]
    UnknownVersion(String),
    #[error("the fingerprint claims grammar {claimed} but its FFmpeg version implies {implied}")]
    Inconsistent { claimed: String, implied: String },
}

/// A command grammar: the FFmpeg `major.minor` whose parser it models.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrammarId(String);

impl GrammarId {
    pub fn parse(s: &str) -> Result<Self, FingerprintError> {
        let bad = || FingerprintError::BadGrammar(s.chars().take(32).collect());
        let (major, minor) = s.split_once('.').ok_or_else(bad)?;
        let number =
            |p: &str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
        if !number(major) || !number(minor) {
            return Err(bad());
        }
        Ok(GrammarId(s.to_owned()))
    }

    /// The grammar the validator in this build was verified against.
    pub fn current() -> Self {
        GrammarId(COMMAND_GRAMMAR.to_owned())
    }

    /// The grammar of an FFmpeg from the first line of `ffmpeg -version`, e.g.
    /// `ffmpeg version 5.1.6-0+deb12u1 Copyright …` → `5.1`. Git snapshots (`N-…`) have none.
    pub fn of_version_line(line: &str) -> Result<Self, FingerprintError> {
        let unknown = || FingerprintError::UnknownVersion(line.chars().take(80).collect());
        let rest = line
            .trim()
            .strip_prefix("ffmpeg version ")
            .ok_or_else(unknown)?;
        let v = rest.split_whitespace().next().ok_or_else(unknown)?;
        let v = v.strip_prefix('n').unwrap_or(v);
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        let major = parts.next().filter(|p| !p.is_empty()).ok_or_else(unknown)?;
        let minor = parts.next().filter(|p| !p.is_empty()).unwrap_or("0");
        // "5.1.6" splits on '.', so the separator after the major must be a dot.
        if !v[major.len()..].starts_with('.') && v.len() != major.len() {
            return Err(unknown());
        }
        GrammarId::parse(&format!("{major}.{minor}")).map_err(|_| unknown())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GrammarId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a worker says about its FFmpeg, checked for consistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// First line of `ffmpeg -version`.
    pub version: String,
    /// The `configuration:` part of `ffmpeg -buildconf`, one option per space.
    pub configuration: String,
    pub grammar: GrammarId,
}

impl Fingerprint {
    /// Builds a worker's fingerprint from the output of `ffmpeg -version` and `ffmpeg -buildconf`.
    pub fn from_ffmpeg_output(
        version_out: &str,
        buildconf_out: &str,
    ) -> Result<Self, FingerprintError> {
        let version = truncate(version_out.lines().next().unwrap_or("").trim());
        let grammar = GrammarId::of_version_line(&version)?;
        Ok(Fingerprint {
            version,
            configuration: configuration_of_buildconf(buildconf_out),
            grammar,
        })
    }

    /// Checks a fingerprint received over the wire: the claimed grammar must be the one its
    /// version implies.
    pub fn check(
        version: &str,
        configuration: &str,
        claimed_grammar: &str,
    ) -> Result<Self, FingerprintError> {
        let claimed = GrammarId::parse(claimed_grammar)?;
        let implied = GrammarId::of_version_line(version)?;
        if claimed != implied {
            return Err(FingerprintError::Inconsistent {
                claimed: claimed.0,
                implied: implied.0,
            });
        }
        Ok(Fingerprint {
            version: truncate(version),
            configuration: truncate(configuration),
            grammar: claimed,
        })
    }

    /// SHA-256 (hex) of the build configuration, for provenance.
    pub fn configuration_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.configuration.as_bytes()))
    }
}

/// The configure options of `ffmpeg -buildconf` output, whitespace-normalised.
pub fn configuration_of_buildconf(out: &str) -> String {
    let body = out
        .split_once("configuration:")
        .map_or("", |(_, rest)| rest);
    truncate(&body.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn truncate(s: &str) -> String {
    crate::names::truncate_utf8(s, MAX_TEXT).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar_from_version_lines() {
        let cases = [
            (
                "ffmpeg version 5.1.6-0+deb12u1 Copyright (c) 2000-2024 the FFmpeg developers",
                Some("5.1"),
            ),
            ("ffmpeg version 6.1.1-3ubuntu5 Copyright", Some("6.1")),
            ("ffmpeg version n7.0.2 Copyright", Some("7.0")),
            ("ffmpeg version 7 Copyright", Some("7.0")),
            ("ffmpeg version N-113000-gabcdef Copyright", None),
            ("ffmpeg version 5-1 Copyright", None),
            ("avconv version 12", None),
            ("", None),
        ];
        for (line, want) in cases {
            let got = GrammarId::of_version_line(line).ok();
            assert_eq!(got.as_ref().map(GrammarId::as_str), want, "{line}");
        }
    }

    #[test]
    fn grammar_ids_parse_strictly() {
        for ok in ["5.1", "10.0", "0.12"] {
            assert_eq!(GrammarId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "5", "5.", ".1", "5.1.2", "5.x", " 5.1", "55555.1"] {
            assert!(GrammarId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(GrammarId::current().as_str(), COMMAND_GRAMMAR);
    }

    #[test]
    fn fingerprints_are_built_and_checked() {
        let version = "ffmpeg version 5.1.6-0+deb12u1 Copyright (c) 2000-2024\nbuilt with gcc 12\n";
        let buildconf = "  configuration:\n    --prefix=/usr\n    --enable-gpl\n";
        let fp = Fingerprint::from_ffmpeg_output(version, buildconf).unwrap();
        assert_eq!(fp.grammar.as_str(), "5.1");
        assert_eq!(fp.configuration, "--prefix=/usr --enable-gpl");
        assert_eq!(fp.configuration_sha256().len(), 64);
        let back = Fingerprint::check(&fp.version, &fp.configuration, "5.1").unwrap();
        assert_eq!(back, fp);
        assert_eq!(
            Fingerprint::check(&fp.version, "", "6.1").unwrap_err(),
            FingerprintError::Inconsistent {
                claimed: "6.1".into(),
                implied: "5.1".into()
            }
        );
        assert!(Fingerprint::check("ffmpeg version N-1-g", "", "5.1").is_err());
    }
}
