//! How long a command's output runs, for progress: the inputs' durations cut by the `-ss`,
//! `-sseof`, `-t` and `-to` the tree holds, as FFmpeg applies them. Progress divides FFmpeg's
//! `out_time` by this; without it a `-t 5` of a one-hour input would stop at 0.1 %.

use super::{Command, Opt, Target, Value};
use std::collections::BTreeMap;

/// A duration as FFmpeg reads it (`1.5`, `1500ms`, `250us`, `2s`, `01:02:03.5`, a leading `-`),
/// in microseconds; `None` for anything else or out of range.
pub fn duration_us(s: &str) -> Option<i64> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let digits = |p: &str| !p.is_empty() && p.len() <= 12 && p.bytes().all(|b| b.is_ascii_digit());
    // Whole and fractional seconds, the fraction to microseconds.
    let seconds = |int: &str, frac: &str| -> Option<i64> {
        if !digits(int) || !(frac.is_empty() || frac.bytes().all(|b| b.is_ascii_digit())) {
            return None;
        }
        let micros: String = frac.chars().chain("000000".chars()).take(6).collect();
        int.parse::<i64>()
            .ok()?
            .checked_mul(1_000_000)?
            .checked_add(micros.parse::<i64>().ok()?)
    };
    let us = if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        let (last, head) = parts.split_last()?;
        if head.len() > 2 || !head.iter().all(|p| digits(p)) {
            return None;
        }
        let (sec, frac) = last.split_once('.').unwrap_or((last, ""));
        let mut total = seconds(sec, frac)?;
        for (i, p) in head.iter().rev().enumerate() {
            let unit = if i == 0 { 60 } else { 3600 };
            total = total.checked_add(p.parse::<i64>().ok()?.checked_mul(unit * 1_000_000)?)?;
        }
        total
    } else {
        let (body, scale) = if let Some(b) = s.strip_suffix("ms") {
            (b, 1_000)
        } else if let Some(b) = s.strip_suffix("us") {
            (b, 1)
        } else if let Some(b) = s.strip_suffix('s') {
            (b, 1_000_000)
        } else {
            (s, 1_000_000)
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        // In the unit given: scale the microsecond count down from seconds.
        seconds(int, frac)?.checked_mul(scale)? / 1_000_000
    };
    Some(if negative { -us } else { us })
}

/// The first of `name`'s values among `options`, as microseconds.
fn time_of(options: &[Opt], name: &str) -> Option<i64> {
    options
        .iter()
        .find_map(|o| match (&o.value, o.name == name) {
            (Value::Text(v), true) => duration_us(v),
            _ => None,
        })
}

/// What a stretch of `total` µs becomes under `-ss`/`-t`/`-to` (and `-sseof` on an input).
fn cut(total: Option<i64>, options: &[Opt], input: bool) -> Option<i64> {
    let sseof = input.then(|| time_of(options, "sseof")).flatten();
    let start = match (time_of(options, "ss"), sseof, total) {
        (Some(ss), _, _) => ss.max(0),
        (None, Some(from_end), Some(t)) => t.saturating_add(from_end).max(0),
        _ => 0,
    };
    let mut length = total.map(|t| t.saturating_sub(start).max(0));
    if let Some(t) = time_of(options, "t").filter(|t| *t >= 0) {
        length = Some(length.map_or(t, |l| l.min(t)));
    }
    if let Some(to) = time_of(options, "to") {
        let until = to.saturating_sub(start).max(0);
        length = Some(length.map_or(until, |l| l.min(until)));
    }
    length
}

/// The output's running time in microseconds: each input's duration (`inputs`, by alias, as
/// probed) cut by its options, then each output's cut of the longest input; FFmpeg's progress
/// reports the furthest output, so the longest output counts. `None` when unknown or zero.
pub fn expected_output_us(cmd: &Command, inputs: &BTreeMap<String, u64>) -> Option<u64> {
    let mut longest_input: Option<i64> = None;
    let mut longest_output: Option<i64> = None;
    for file in &cmd.files {
        match &file.target {
            Target::Input { alias } => {
                let probed = inputs.get(alias).and_then(|d| i64::try_from(*d).ok());
                if let Some(d) = cut(probed, &file.options, true) {
                    longest_input = Some(longest_input.map_or(d, |l| l.max(d)));
                }
            }
            Target::Output { .. } => {
                if let Some(d) = cut(longest_input, &file.options, false) {
                    longest_output = Some(longest_output.map_or(d, |l| l.max(d)));
                }
            }
        }
    }
    longest_output
        .or(longest_input)
        .and_then(|d| u64::try_from(d).ok())
        .filter(|d| *d > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{validate, IoSpec};

    #[test]
    fn durations_read_as_ffmpeg_reads_them() {
        for (s, us) in [
            ("1.5", 1_500_000),
            ("2", 2_000_000),
            ("2s", 2_000_000),
            ("1500ms", 1_500_000),
            ("250us", 250),
            ("0.0000019", 1),
            ("01:02:03.5", 3_723_500_000),
            ("02:03", 123_000_000),
            ("-2", -2_000_000),
        ] {
            assert_eq!(duration_us(s), Some(us), "{s}");
        }
        for s in [
            "",
            "x",
            "1:2:3:4",
            "1.2.3",
            "99999999999999999999",
            "1e3",
            "--1",
        ] {
            assert_eq!(duration_us(s), None, "{s}");
        }
    }

    fn expected(cmd: &str, input_seconds: u64) -> Option<u64> {
        let mut spec = IoSpec::default();
        spec.add_input("in", "in.mp4").unwrap();
        spec.add_output("out", "out.mp4").unwrap();
        if cmd.contains("{{thumb}}") {
            spec.add_output("thumb", "thumb.png").unwrap();
        }
        let cmd = validate(cmd, &spec).unwrap();
        expected_output_us(
            &cmd,
            &BTreeMap::from([("in".to_owned(), input_seconds * 1_000_000)]),
        )
        .map(|us| us / 1000)
    }

    #[test]
    fn the_output_runs_as_long_as_the_cuts_allow() {
        assert_eq!(expected("-i {{in}} {{out}}", 60), Some(60_000));
        assert_eq!(expected("-i {{in}} -t 5 {{out}}", 60), Some(5_000));
        assert_eq!(expected("-t 5 -i {{in}} {{out}}", 60), Some(5_000));
        assert_eq!(expected("-ss 50 -i {{in}} {{out}}", 60), Some(10_000));
        assert_eq!(expected("-i {{in}} -ss 50 {{out}}", 60), Some(10_000));
        assert_eq!(
            expected("-ss 10 -to 25 -i {{in}} {{out}}", 60),
            Some(15_000)
        );
        assert_eq!(expected("-sseof -3 -i {{in}} {{out}}", 60), Some(3_000));
        assert_eq!(expected("-i {{in}} -t 100 {{out}}", 60), Some(60_000));
        // The longest output counts (a one-frame thumbnail beside the full encode).
        assert_eq!(
            expected("-i {{in}} -t 1 {{thumb}} -map 0 {{out}}", 60),
            Some(60_000)
        );
        // Past the end: nothing to show progress against.
        assert_eq!(expected("-ss 70 -i {{in}} {{out}}", 60), None);
    }
    /// The worker now learns each input's duration from FFmpeg's log while it runs: a header
    /// claiming a very long duration (or a line a tenant forged) gives any value up to
    /// `i64::MAX` µs. With `-sseof` positive (the grammar allows it), `t + from_end` overflows:
    /// a panic in a debug build (in the worker's stderr reader, which then stops reading).
    #[test]
    fn a_huge_logged_duration_with_sseof_never_panics() {
        let mut spec = IoSpec::default();
        spec.add_input("in", "in.mp4").unwrap();
        spec.add_output("out", "out.mp4").unwrap();
        let cmd = validate("-sseof 1000 -i {{in}} {{out}}", &spec).unwrap();
        let long = BTreeMap::from([("in".to_owned(), i64::MAX as u64 - 1)]);
        let got = std::panic::catch_unwind(|| expected_output_us(&cmd, &long));
        assert!(
            got.is_ok(),
            "expected_output_us panicked on a logged duration"
        );
    }
}
