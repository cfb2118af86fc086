//! Values that parse at the edge: a request holding one of these has already been checked, and
//! the schema of each says exactly what it accepts.

use mpegflow_domain::command::OutputDecl;
use mpegflow_domain::names::{check_alias, check_pool_name, is_sha256_hex};
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// Why a value did not parse; the message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// A string newtype: `parse` checks it, serde goes through `parse`, and its schema carries the
/// same rule as a pattern and length bounds.
macro_rules! string_newtype {
    ($name:ident, desc = $desc:literal, pattern = $pattern:expr, min = $min:expr, max = $max:expr, check = $check:expr) => {
        #[doc = $desc]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, ParseError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), String> = $check;
                check(&s).map_err(ParseError)?;
                Ok($name(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, ParseError> {
                $name::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                $name::parse(s)
            }
        }

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .min_length(Some($min))
                    .max_length(Some($max))
                    .description(Some($desc))
                    .into()
            }
        }

        impl ToSchema for $name {}
    };
}

string_newtype!(
    Alias,
    desc = "The name of a job's input or output in its command template (`{{in}}`): 1-32 characters of a-z, 0-9 and _, starting with a letter.",
    pattern = "^[a-z][a-z0-9_]{0,31}$",
    min = 1,
    max = 32,
    check = |s| check_alias(s).map_err(|e| e.to_string())
);

string_newtype!(
    FileName,
    desc = "An uploaded file's name as the tenant gave it: 1-255 characters, no control characters. Only its extension is used, as a probing hint.",
    pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,255}$",
    min = 1,
    max = 255,
    check = |s| {
        let n = s.chars().count();
        if (1..=255).contains(&n) && !s.chars().any(char::is_control) {
            Ok(())
        } else {
            Err(format!(
                "file name {s:?} must be 1-255 characters without control characters"
            ))
        }
    }
);

string_newtype!(
    OutputName,
    desc = "A declared output: a file name of 1-128 characters of A-Z a-z 0-9 . _ - % not starting with '.', or such a name with a trailing '/' for a directory of files (HLS, DASH, segments, image sequences).",
    pattern = "^[A-Za-z0-9_%-][A-Za-z0-9._%-]{0,127}/?$",
    min = 1,
    max = 129,
    check = |s| OutputDecl::parse(s).map(|_| ()).map_err(|e| e.to_string())
);

string_newtype!(
    Sha256Hex,
    desc = "A SHA-256 digest: 64 lowercase hex characters.",
    pattern = "^[0-9a-f]{64}$",
    min = 64,
    max = 64,
    check = |s| {
        if is_sha256_hex(s) {
            Ok(())
        } else {
            Err("a SHA-256 must be 64 lowercase hex characters".into())
        }
    }
);

string_newtype!(
    IdempotencyKey,
    desc = "The `Idempotency-Key` header: 1-255 visible ASCII characters. A repeated submission with the same key and body answers the first job; with another body, 409.",
    pattern = "^[\\x21-\\x7e]{1,255}$",
    min = 1,
    max = 255,
    check = |s| {
        if (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(())
        } else {
            Err("Idempotency-Key must be 1-255 visible ASCII characters".into())
        }
    }
);

string_newtype!(
    PoolName,
    desc = "A worker pool's name: 1-64 characters of a-z, 0-9, _ and -, starting with a letter.",
    pattern = "^[a-z][a-z0-9_-]{0,63}$",
    min = 1,
    max = 64,
    check = |s| check_pool_name(s).map_err(|e| e.to_string())
);

/// The most a job may run: 6 hours. The control plane may allow less (`max_timeout_seconds`).
pub const MAX_TIMEOUT_SECONDS: u32 = 21_600;

/// A job's wall-clock limit in seconds: 1 to 21,600.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "crate::whole_number::Whole", into = "u32")]
pub struct TimeoutSeconds(u32);

impl TimeoutSeconds {
    pub fn parse(n: u32) -> Result<Self, ParseError> {
        if (1..=MAX_TIMEOUT_SECONDS).contains(&n) {
            Ok(TimeoutSeconds(n))
        } else {
            Err(ParseError(format!(
                "timeout_seconds must be 1-{MAX_TIMEOUT_SECONDS}"
            )))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for TimeoutSeconds {
    type Error = ParseError;
    fn try_from(n: u32) -> Result<Self, ParseError> {
        TimeoutSeconds::parse(n)
    }
}

impl TryFrom<crate::whole_number::Whole> for TimeoutSeconds {
    type Error = ParseError;
    fn try_from(n: crate::whole_number::Whole) -> Result<Self, ParseError> {
        u32::try_from(n.0)
            .map_err(|_| ParseError(format!("timeout_seconds must be 1-{MAX_TIMEOUT_SECONDS}")))
            .and_then(TimeoutSeconds::parse)
    }
}

impl From<TimeoutSeconds> for u32 {
    fn from(t: TimeoutSeconds) -> u32 {
        t.0
    }
}

impl PartialSchema for TimeoutSeconds {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(MAX_TIMEOUT_SECONDS))
            .description(Some(
                "A job's wall-clock limit in seconds (the control plane may cap it lower).",
            ))
            .into()
    }
}

impl ToSchema for TimeoutSeconds {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newtypes_parse_what_their_rules_allow_and_nothing_else() {
        assert!(Alias::parse("out_720p").is_ok());
        for bad in ["", "In", "1a", "a-b", &"a".repeat(33)] {
            assert!(Alias::parse(bad).is_err(), "{bad:?}");
        }
        assert!(FileName::parse("clip (1).MOV").is_ok());
        assert!(
            FileName::parse("é".repeat(255)).is_ok(),
            "characters, not bytes"
        );
        for bad in ["", "a\nb", "a\u{85}b", &"a".repeat(256)] {
            assert!(FileName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(OutputName::parse("hls/").is_ok());
        assert!(OutputName::parse("frame%04d.png").is_ok());
        for bad in ["", ".hidden", "a/b", "x y.mp4", "/"] {
            assert!(OutputName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Sha256Hex::parse("a".repeat(64)).is_ok());
        assert!(Sha256Hex::parse("A".repeat(64)).is_err());
        assert!(IdempotencyKey::parse("order-42").is_ok());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(TimeoutSeconds::parse(0).is_err());
        assert!(TimeoutSeconds::parse(MAX_TIMEOUT_SECONDS + 1).is_err());
        let err = serde_json::from_str::<Alias>("\"Bad\"").unwrap_err();
        assert!(err.to_string().contains("alias"), "{err}");
    }

    #[test]
    fn schemas_carry_the_rules() {
        let schema = serde_json::to_value(Alias::schema()).unwrap();
        assert_eq!(schema["pattern"], "^[a-z][a-z0-9_]{0,31}$");
        assert_eq!(schema["maxLength"], 32);
        assert!(schema["description"].as_str().unwrap().contains("1-32"));
    }
}
