//! What FFmpeg's own log says about a job's inputs, read as FFmpeg writes it.
//!
//! Every rendered command runs at the platform's log level (`level+info`, see
//! [`mpegflow_domain::command::FORCED_LOG_LEVEL`]; a tenant's `-v` never reaches FFmpeg), so
//! each line carries its level tag. From it the worker learns each input's duration (for
//! progress) and, when FFmpeg fails, whether it failed because an input could not be opened:
//! the validation a second, separate ffprobe process used to do before the run.
//!
//! Tenant bytes (metadata tags) appear in this log. What is read from it decides only things
//! about the tenant's own job: its progress figure and whether its failure is `invalid_input`
//! or `ffmpeg_failed` (both the job's own fault). Lines come bounded ([`super::ffmpeg`] reads
//! them with a fixed-size buffer), and what is kept here is bounded too.

use std::collections::{BTreeMap, VecDeque};

/// Library complaints kept before an input's failure (the demuxer's own words, e.g. "moov atom
/// not found"), and how long each may be.
const COMPLAINTS: usize = 4;
const COMPLAINT_LEN: usize = 300;

/// Failures that say the worker's own file could not be read, not that its bytes are bad.
const OS_ERRORS: &[&str] = &[
    "Permission denied",
    "No such file or directory",
    "Operation not permitted",
    "Is a directory",
    "Too many open files",
    "Input/output error",
];

/// What the log told of one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputSeen {
    /// FFmpeg opened it and printed its description.
    pub opened: bool,
    pub duration_us: Option<u64>,
    /// Streams FFmpeg listed for it that it can read: audio, video or subtitles of a known
    /// codec (an MP4 cut inside its index lists its video as `Video: none`).
    pub streams: u32,
}

/// An input FFmpeg could not open, in its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFailure {
    pub alias: String,
    pub why: String,
    /// The file could not be read at all (the worker's side, not the input's bytes).
    pub os_error: bool,
}

/// The log's account of a job's inputs (the `-i` files, in order).
#[derive(Debug)]
pub struct InputLog {
    /// `(alias, path as in the argv)`, in `-i` order: FFmpeg's input index.
    inputs: Vec<(String, String)>,
    seen: Vec<InputSeen>,
    /// The input whose description is being printed.
    current: Option<usize>,
    complaints: VecDeque<String>,
    failure: Option<InputFailure>,
}

impl InputLog {
    pub fn new(inputs: Vec<(String, String)>) -> Self {
        let seen = vec![InputSeen::default(); inputs.len()];
        InputLog {
            inputs,
            seen,
            current: None,
            complaints: VecDeque::new(),
            failure: None,
        }
    }

    /// Reads one line (without its newline). Returns whether an input's duration was learnt.
    pub fn line(&mut self, raw: &[u8]) -> bool {
        let line = String::from_utf8_lossy(raw);
        let (context, rest) = split_context(&line);
        let Some((level, text)) = split_level(rest) else {
            return false;
        };
        match (level, context) {
            ("info", None) => return self.info(text),
            ("error" | "fatal" | "panic", None) => self.ffmpeg_error(text),
            ("error" | "fatal" | "panic", Some(_)) if self.failure.is_none() => {
                if self.complaints.len() == COMPLAINTS {
                    self.complaints.pop_front();
                }
                self.complaints
                    .push_back(text.chars().take(COMPLAINT_LEN).collect());
            }
            _ => {}
        }
        false
    }

    fn info(&mut self, text: &str) -> bool {
        if let Some(rest) = text.strip_prefix("Input #") {
            // "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'in/in/clip.mp4':"
            self.current = rest
                .split_once(',')
                .and_then(|(n, _)| n.parse::<usize>().ok())
                .filter(|&n| {
                    self.inputs
                        .get(n)
                        .is_some_and(|(_, path)| rest.ends_with(&format!(" from '{path}':")))
                });
            if let Some(n) = self.current {
                self.seen[n].opened = true;
                // What libraries said so far was about this input, which opened.
                self.complaints.clear();
            }
            return false;
        }
        let Some(n) = self.current else {
            return false;
        };
        if let Some(rest) = text.strip_prefix("  Duration: ") {
            if self.seen[n].duration_us.is_none() {
                self.seen[n].duration_us = rest.split(',').next().and_then(parse_clock);
                return self.seen[n].duration_us.is_some();
            }
        } else if let Some(rest) = text.strip_prefix(&format!("  Stream #{n}:")) {
            let known = ["Video: ", "Audio: ", "Subtitle: "].iter().any(|kind| {
                rest.split_once(kind)
                    .is_some_and(|(_, codec)| !codec.starts_with("none"))
            });
            if known {
                self.seen[n].streams += 1;
            }
        } else if !text.starts_with("  ") {
            // "Stream mapping:", "Output #0 …", the next input: this input's description ended.
            self.current = None;
        }
        false
    }

    /// FFmpeg's own error lines (no library context): the one naming an input is its failure.
    fn ffmpeg_error(&mut self, text: &str) {
        if self.failure.is_some() {
            return;
        }
        for (alias, path) in &self.inputs {
            // FFmpeg ≤ 6.0: "in/in/clip.mp4: Invalid data found when processing input".
            let why = if let Some(why) = text
                .strip_prefix(path.as_str())
                .and_then(|r| r.strip_prefix(": "))
            {
                why.to_owned()
            // FFmpeg ≥ 6.1: "Error opening input file in/in/clip.mp4.", after the reason.
            } else if text == format!("Error opening input file {path}.") {
                String::new()
            } else {
                continue;
            };
            let os_error = OS_ERRORS.iter().any(|e| why.ends_with(e))
                || self
                    .complaints
                    .iter()
                    .any(|c| OS_ERRORS.iter().any(|e| c.ends_with(e)));
            let mut words: Vec<String> = Vec::new();
            for c in self
                .complaints
                .iter()
                .map(String::as_str)
                .chain([why.as_str()])
            {
                let c = c.strip_prefix("Error opening input: ").unwrap_or(c);
                if !c.is_empty() && !words.iter().any(|w| w == c) {
                    words.push(c.chars().take(COMPLAINT_LEN).collect());
                }
            }
            self.failure = Some(InputFailure {
                alias: alias.clone(),
                why: if words.is_empty() {
                    "FFmpeg could not open it".to_owned()
                } else {
                    words.join("; ")
                },
                os_error,
            });
            return;
        }
    }

    /// The input FFmpeg said it could not open, or one it opened without a stream it can read.
    pub fn failure(&self) -> Option<InputFailure> {
        self.failure.clone().or_else(|| {
            self.seen
                .iter()
                .zip(&self.inputs)
                .find(|(s, _)| s.opened && s.streams == 0)
                .map(|(_, (alias, _))| InputFailure {
                    alias: alias.clone(),
                    why: "it holds no audio, video or subtitle stream FFmpeg can read".into(),
                    os_error: false,
                })
        })
    }

    /// Each input's duration as far as the log told it, by alias.
    pub fn durations(&self) -> BTreeMap<String, u64> {
        self.inputs
            .iter()
            .zip(&self.seen)
            .filter_map(|((alias, _), s)| Some((alias.clone(), s.duration_us?)))
            .collect()
    }

    pub fn seen(&self, alias: &str) -> Option<&InputSeen> {
        self.inputs
            .iter()
            .position(|(a, _)| a == alias)
            .map(|i| &self.seen[i])
    }
}

/// `("ctx @ 0x…", rest)` for a line a library context wrote, `(None, line)` otherwise.
fn split_context(line: &str) -> (Option<&str>, &str) {
    if let Some(inner_end) = line.strip_prefix('[').and_then(|r| r.find("] ")) {
        let inner = &line[1..1 + inner_end];
        if inner.contains(" @ 0x") {
            return (Some(inner), &line[inner_end + 3..]);
        }
    }
    (None, line)
}

/// `(level, text)` of a line tagged `[level] text`.
fn split_level(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (level, text) = rest.split_once("] ")?;
    matches!(
        level,
        "panic" | "fatal" | "error" | "warning" | "info" | "verbose" | "debug" | "trace"
    )
    .then_some((level, text))
}

/// FFmpeg's `HH:MM:SS.cc` in microseconds; `None` for "N/A" or anything else.
fn parse_clock(s: &str) -> Option<u64> {
    let mut parts = s.trim().split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let h: u64 = h.parse().ok()?;
    let m: u64 = m.parse().ok()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let whole: u64 = whole.parse().ok()?;
    if m >= 60 || whole >= 60 || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_us = format!("{frac:0<6}").parse::<u64>().ok()?;
    h.checked_mul(3600)?
        .checked_add(m * 60 + whole)?
        .checked_mul(1_000_000)?
        .checked_add(frac_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> InputLog {
        InputLog::new(vec![
            ("in".into(), "in/in/clip.mp4".into()),
            ("logo".into(), "in/logo/logo".into()),
        ])
    }

    fn feed(log: &mut InputLog, text: &str) {
        for l in text.lines() {
            log.line(l.as_bytes());
        }
    }

    #[test]
    fn durations_and_streams_come_from_each_inputs_own_description() {
        let mut l = log();
        feed(
            &mut l,
            "[info] Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'in/in/clip.mp4':\n\
             [info]   Metadata:\n\
             [info]     title           : x\n\
             [info]                     : [info]   Duration: 09:00:00.00, start: 0\n\
             [info]   Duration: 00:00:01.50, start: 0.000000, bitrate: 82 kb/s\n\
             [info]   Duration: 00:10:00.00, start: 0.000000, bitrate: 82 kb/s\n\
             [info]   Stream #0:0[0x1](und): Video: h264, yuv420p, 640x360\n\
             [info]   Stream #0:1[0x2](und): Audio: aac, 48000 Hz\n\
             [info] Input #1, png_pipe, from 'in/logo/logo':\n\
             [info]   Duration: N/A, bitrate: N/A\n\
             [info]   Stream #1:0: Video: png, rgba, 64x64\n\
             [info] Stream mapping:\n\
             [info]   Stream #0:0 -> #0:0 (h264 (native) -> h264 (libx264))\n",
        );
        assert_eq!(
            l.durations(),
            BTreeMap::from([("in".to_owned(), 1_500_000)])
        );
        assert_eq!(l.seen("in").unwrap().streams, 2);
        assert_eq!(l.seen("logo").unwrap().streams, 1);
        assert!(l.seen("logo").unwrap().opened);
        assert_eq!(l.failure(), None);
    }

    #[test]
    fn an_input_ffmpeg_could_not_open_is_named_with_the_demuxers_words() {
        let mut l = log();
        feed(
            &mut l,
            "[info] Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'in/in/clip.mp4':\n\
             [info]   Stream #0:0: Video: h264\n\
             [mov,mp4,m4a,3gp,3g2,mj2 @ 0x56005e3749c0] [error] moov atom not found\n\
             [error] in/logo/logo: Invalid data found when processing input\n\
             [error] in/in/clip.mp4: Invalid data found when processing input\n",
        );
        let f = l.failure().unwrap();
        assert_eq!(f.alias, "logo");
        assert_eq!(
            f.why,
            "moov atom not found; Invalid data found when processing input"
        );
        assert!(!f.os_error);
    }

    #[test]
    fn the_newer_ffmpeg_wording_is_read_too() {
        let mut l = log();
        feed(
            &mut l,
            "[in#0 @ 0x5581] [error] Error opening input: Invalid data found when processing input\n\
             [fatal] Error opening input file in/in/clip.mp4.\n\
             [fatal] Error opening input files: Invalid data found when processing input\n",
        );
        let f = l.failure().unwrap();
        assert_eq!(f.alias, "in");
        assert_eq!(f.why, "Invalid data found when processing input");
    }

    #[test]
    fn unreadable_files_are_not_the_inputs_fault() {
        let mut l = log();
        feed(&mut l, "[error] in/in/clip.mp4: Permission denied\n");
        assert!(l.failure().unwrap().os_error);
    }

    #[test]
    fn lines_that_only_look_like_ffmpegs_are_not_read() {
        let mut l = log();
        feed(
            &mut l,
            // A library's line, a tenant's path lookalike, an untagged line, another file.
            "[h264 @ 0x1] [error] in/in/clip.mp4: Invalid data\n\
             in/in/clip.mp4: Invalid data\n\
             [error] in/in/clip.mp4.bak: Invalid data\n\
             [warning] in/in/clip.mp4: Invalid data\n\
             [info] Input #0, mov, from 'in/other.mp4':\n\
             [info]   Duration: 00:00:05.00, start: 0\n",
        );
        assert_eq!(l.failure(), None);
        assert!(l.durations().is_empty());
    }

    #[test]
    fn an_input_whose_streams_have_no_codec_fails() {
        let mut l = log();
        feed(
            &mut l,
            "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5] [warning] Could not find codec parameters for stream 0 (Video: none, none): unknown codec\n\
             [info] Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'in/in/clip.mp4':\n\
             [info]   Duration: 00:00:02.00, bitrate: 1 kb/s\n\
             [info]   Stream #0:0[0x1](und): Video: none, none, 12800 tbr, 12800 tbn (default)\n\
             [info]   Stream #0:1[0x2](und): Data: none (tmcd / 0x64636D74)\n\
             [info] Output #0, mp4, to 'out/out/o.mp4':\n\
             [error] Output file #0 does not contain any stream\n",
        );
        assert_eq!(l.seen("in").unwrap().streams, 0);
        assert_eq!(l.failure().unwrap().alias, "in");
    }

    #[test]
    fn an_opened_input_without_streams_fails() {
        let mut l = log();
        feed(
            &mut l,
            "[info] Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'in/in/clip.mp4':\n\
             [info]   Duration: 00:00:01.00, start: 0\n\
             [error] Output file #0 does not contain any stream\n",
        );
        assert_eq!(l.failure().unwrap().alias, "in");
    }

    #[test]
    fn clocks_parse_as_ffmpeg_prints_them() {
        assert_eq!(parse_clock("00:00:01.00"), Some(1_000_000));
        assert_eq!(parse_clock("01:02:03.5"), Some(3_723_500_000));
        assert_eq!(parse_clock("N/A"), None);
        assert_eq!(parse_clock("00:61:00.00"), None);
        assert_eq!(parse_clock("99999999999999:00:00.00"), None);
    }
}
