//! Integers as JSON Schema means them: `"type": "integer"` admits any number whose value is whole,
//! so `5.0` is the integer 5 and a client (Python's `json`, JavaScript) may well send it that way.
//! serde's integer types refuse it; request fields declared `integer` read through [`Whole`].

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A non-negative whole number, written as `5` or `5.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub u64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WholeVisitor)
    }
}

struct WholeVisitor;

impl Visitor<'_> for WholeVisitor {
    type Value = Whole;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a non-negative whole number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole, E> {
        Ok(Whole(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole, E> {
        u64::try_from(v)
            .map(Whole)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole, E> {
        // Through text, so no float-to-integer cast can truncate or wrap: a whole, finite,
        // non-negative value below 2^64 prints as the digits of exactly that integer.
        if v.is_finite() && v.fract() == 0.0 && v >= 0.0 {
            // -0.0 is zero (and would print as "-0").
            let v = v.abs();
            if let Ok(n) = format!("{v:.0}").parse::<u64>() {
                return Ok(Whole(n));
            }
        }
        Err(E::invalid_value(de::Unexpected::Float(v), &self))
    }
}

/// For `#[serde(deserialize_with = "whole_number::u64")]`.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Whole::deserialize(d).map(|w| w.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_read_however_they_are_written() {
        for (text, n) in [("5", 5), ("5.0", 5), ("0", 0), ("-0.0", 0), ("1e3", 1000)] {
            assert_eq!(
                serde_json::from_str::<Whole>(text).unwrap(),
                Whole(n),
                "{text}"
            );
        }
        assert_eq!(
            serde_json::from_str::<Whole>("18446744073709551615").unwrap(),
            Whole(u64::MAX)
        );
        for text in ["5.5", "-1", "-1.0", "1e20", "\"5\"", "null", "true"] {
            assert!(serde_json::from_str::<Whole>(text).is_err(), "{text}");
        }
    }
}
