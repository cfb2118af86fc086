//! What FFmpeg's own log says about a job's inputs, read as FFmpeg writes it.
//!
//! Every rendered command runs at the platform's log level (`level+verbose`, see
//! [`mpegflow_domain::command::FORCED_LOG_LEVEL`]; a tenant's `-v` never reaches FFmpeg), so
//! each line FFmpeg starts carries its level tag. From it the worker learns each input's
//! duration (for progress) and, when a run fails or produces nothing, whether an input is why:
//! the validation a separate ffprobe process used to do before the run.
//!
//! Tenant bytes reach this log (metadata, a track's language, printed raw): a line break in them
//! starts a line that looks like FFmpeg's own. So nothing read here is trusted beyond the job
//! itself, and a blame needs evidence a forged line cannot supply alone:
//! - FFmpeg named an input it failed to open, and that input was never described (a forged
//!   line sits inside some opened input's description), and the run never reported progress;
//! - an input described exactly once without a readable stream, or that FFmpeg read to its end
//!   without learning its streams' format, and the run never reported progress (so it failed
//!   while starting: a blame's confirming second run costs a start, not an encode);
//! - the run produced nothing (every output's one end-of-run summary says 0 packets) and an
//!   input's one summary says it gave 0 packets without a seek asking for that.
//!
//! A second summary or description of the same file (a forged one beside FFmpeg's) voids the
//! evidence. Progress comes from stdout, where tenant bytes do not go. At worst a tenant buys
//! its own failing job one more start on a second worker; nothing here strikes a worker or
//! touches another job. Lines come bounded (`super::ffmpeg` reads them with a fixed buffer),
//! and what is kept here is bounded too.

use std::collections::{BTreeMap, VecDeque};

/// Library complaints kept before an input's failure (the demuxer's own words, e.g. "moov atom
/// not found"), and how long each may be.
const COMPLAINTS: usize = 4;
const COMPLAINT_LEN: usize = 300;
/// Output files whose end-of-run summary is followed.
const MAX_OUTPUT_FILES: usize = 64;

/// One `-i` input of the rendered command.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub alias: String,
    /// Its path as in the argv.
    pub path: String,
    /// The command seeks it (`-ss`/`-sseof`): reading nothing of it may be what was asked.
    pub seeks: bool,
}

/// What the log told of one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct InputSeen {
    /// Descriptions (`Input #N, …, from 'path':`) printed: FFmpeg opened it (once, unless forged).
    described: u32,
    duration_us: Option<u64>,
    /// Streams listed in its description that FFmpeg may read: all but data, attachments and
    /// streams of no codec (an MP4 cut inside its index lists its video as `Video: none`).
    streams: u32,
    /// FFmpeg's own words on failing to open it.
    open_failed: Option<String>,
    /// FFmpeg read it to its end without learning a stream's format.
    undetermined: bool,
    /// End-of-run summaries printed, and the packets the first said it gave.
    summaries: u32,
    packets: Option<u64>,
}

/// An input FFmpeg could not use, in its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFailure {
    pub alias: String,
    pub why: String,
}

/// Which block of lines is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    None,
    Description(usize),
    InputSummary(usize),
    OutputSummary(usize),
}

/// The log's account of a job's inputs (the `-i` files, in order).
#[derive(Debug)]
pub struct InputLog {
    /// In `-i` order: FFmpeg's input index.
    inputs: Vec<InputSpec>,
    seen: Vec<InputSeen>,
    /// Output file index → (summaries printed, packets the first said were muxed).
    outputs: BTreeMap<usize, (u32, Option<u64>)>,
    block: Block,
    complaints: VecDeque<String>,
}

impl InputLog {
    pub fn new(inputs: Vec<InputSpec>) -> Self {
        let seen = vec![InputSeen::default(); inputs.len()];
        InputLog {
            inputs,
            seen,
            outputs: BTreeMap::new(),
            block: Block::None,
            complaints: VecDeque::new(),
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
            ("verbose", None) => self.verbose(text),
            ("error" | "fatal" | "panic", None) => self.ffmpeg_error(text),
            ("error" | "fatal" | "panic", Some(_)) => {
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

    /// The input index `n` if `path` is its path.
    fn index_of(&self, n: &str, path: &str) -> Option<usize> {
        let n: usize = n.parse().ok()?;
        (self.inputs.get(n)?.path == path).then_some(n)
    }

    fn info(&mut self, text: &str) -> bool {
        // "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'in/in/clip.mp4':"
        if let Some(rest) = text.strip_prefix("Input #") {
            let n = rest.split_once(',').and_then(|(n, _)| {
                let path = rest.rsplit_once(" from '")?.1.strip_suffix("':")?;
                self.index_of(n, path)
            });
            self.block = n.map_or(Block::None, Block::Description);
            if let Some(n) = n {
                self.seen[n].described += 1;
                // What libraries said so far was about this input, which opened.
                self.complaints.clear();
            }
            return false;
        }
        let Block::Description(n) = self.block else {
            return false;
        };
        if let Some(rest) = text.strip_prefix("  Duration: ") {
            if self.seen[n].duration_us.is_none() {
                self.seen[n].duration_us = rest.split(',').next().and_then(parse_clock);
                return self.seen[n].duration_us.is_some();
            }
        } else if let Some(rest) = text.strip_prefix(&format!("  Stream #{n}:")) {
            // Unreadable only on positive evidence: a line a track's language broke up, whose
            // kind and codec are not on it, counts as readable.
            let unreadable = [
                "Video: none",
                "Audio: none",
                "Subtitle: none",
                "Data: ",
                "Attachment: ",
            ]
            .iter()
            .any(|marker| rest.contains(marker));
            if !unreadable {
                self.seen[n].streams += 1;
            }
        } else if !text.starts_with("  ") {
            // "Stream mapping:", "Output #0 …": this input's description ended.
            self.block = Block::None;
        }
        false
    }

    /// FFmpeg's end-of-run summaries: "Input file #0 (in/in/clip.mp4):" then
    /// "  Total: 138 packets (191978 bytes) demuxed"; "Output file #0 (…):", "… muxed".
    fn verbose(&mut self, text: &str) {
        if let Some(rest) = text.strip_prefix("Input file #") {
            let n = rest
                .split_once(" (")
                .and_then(|(n, path)| self.index_of(n, path.strip_suffix("):")?));
            self.block = n.map_or(Block::None, Block::InputSummary);
            if let Some(n) = n {
                self.seen[n].summaries += 1;
            }
        } else if let Some(rest) = text.strip_prefix("Output file #") {
            let n = rest
                .split_once(" (")
                .and_then(|(n, _)| n.parse::<usize>().ok())
                .filter(|n| *n < MAX_OUTPUT_FILES);
            self.block = n.map_or(Block::None, Block::OutputSummary);
            if let Some(n) = n {
                self.outputs.entry(n).or_default().0 += 1;
            }
        } else if let Some(rest) = text.strip_prefix("  Total: ") {
            match self.block {
                Block::InputSummary(n) => {
                    if let Some(p) = rest.strip_suffix(" demuxed").and_then(packets) {
                        self.seen[n].packets.get_or_insert(p);
                    }
                }
                Block::OutputSummary(n) => {
                    if let Some(p) = rest.strip_suffix(" muxed").and_then(packets) {
                        self.outputs.entry(n).or_default().1.get_or_insert(p);
                    }
                }
                _ => {}
            }
        } else if !text.starts_with("  ") {
            self.block = Block::None;
        }
    }

    /// FFmpeg's own error lines (no library context).
    fn ffmpeg_error(&mut self, text: &str) {
        // "Cannot determine format of input stream 0:0 after EOF"
        if let Some(n) = text
            .strip_prefix("Cannot determine format of input stream ")
            .and_then(|r| r.strip_suffix(" after EOF"))
            .and_then(|r| r.split_once(':'))
            .and_then(|(n, _)| n.parse::<usize>().ok())
            .filter(|n| *n < self.seen.len())
        {
            self.seen[n].undetermined = true;
            return;
        }
        for i in 0..self.inputs.len() {
            let path = self.inputs[i].path.as_str();
            // FFmpeg ≤ 6.0: "in/in/clip.mp4: Invalid data found when processing input".
            let why = if let Some(why) = text.strip_prefix(path).and_then(|r| r.strip_prefix(": "))
            {
                why.to_owned()
            // FFmpeg ≥ 6.1: "Error opening input file in/in/clip.mp4.", after the reason.
            } else if text == format!("Error opening input file {path}.") {
                String::new()
            } else {
                continue;
            };
            if self.seen[i].open_failed.is_none() {
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
                self.seen[i].open_failed = Some(if words.is_empty() {
                    "FFmpeg could not open it".to_owned()
                } else {
                    words.join("; ")
                });
            }
            return;
        }
    }

    /// The input to blame for how the run ended, if the log shows one (see the module's
    /// rules): `exited_ok` is a zero exit, `progressed` whether FFmpeg reported any progress.
    pub fn blame(&self, exited_ok: bool, progressed: bool) -> Option<InputFailure> {
        let blame = |i: usize, why: &str| {
            Some(InputFailure {
                alias: self.inputs[i].alias.clone(),
                why: why.to_owned(),
            })
        };
        if !exited_ok && !progressed {
            for (i, s) in self.seen.iter().enumerate() {
                if let (Some(why), 0) = (&s.open_failed, s.described) {
                    return blame(i, why);
                }
            }
            for (i, s) in self.seen.iter().enumerate() {
                if s.described == 1 && s.streams == 0 {
                    return blame(
                        i,
                        "it holds no audio, video or subtitle stream FFmpeg can read",
                    );
                }
                if s.described == 1 && s.undetermined {
                    return blame(
                        i,
                        "FFmpeg read it to its end without learning what its streams hold",
                    );
                }
            }
        }
        let produced_nothing = !self.outputs.is_empty()
            && self.outputs.values().all(|(n, p)| *n == 1 && *p == Some(0));
        if produced_nothing {
            for (i, s) in self.seen.iter().enumerate() {
                if s.summaries == 1 && s.packets == Some(0) && !self.inputs[i].seeks {
                    return blame(i, "FFmpeg read no packet of it: its streams hold no data");
                }
            }
        }
        None
    }

    /// Each input's duration as far as the log told it, by alias.
    pub fn durations(&self) -> BTreeMap<String, u64> {
        self.inputs
            .iter()
            .zip(&self.seen)
            .filter_map(|(input, s)| Some((input.alias.clone(), s.duration_us?)))
            .collect()
    }

    #[cfg(test)]
    fn seen(&self, alias: &str) -> Option<&InputSeen> {
        self.inputs
            .iter()
            .position(|i| i.alias == alias)
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

/// Longest duration believed (a year): a header may claim anything.
const MAX_DURATION_US: u64 = 365 * 24 * 3600 * 1_000_000;

/// FFmpeg's `HH:MM:SS.cc` in microseconds; `None` for "N/A", anything else, or past a year.
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
        .filter(|us| *us <= MAX_DURATION_US)
}

/// `N` of "N packets (…" at the start of `s`.
fn packets(s: &str) -> Option<u64> {
    s.strip_suffix(')')?
        .split_once(" packets (")?
        .0
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> InputLog {
        InputLog::new(vec![
            InputSpec {
                alias: "in".into(),
                path: "in/in/clip.mp4".into(),
                seeks: false,
            },
            InputSpec {
                alias: "logo".into(),
                path: "in/logo/logo".into(),
                seeks: false,
            },
        ])
    }

    fn feed(log: &mut InputLog, text: &str) {
        for l in text.lines() {
            log.line(l.as_bytes());
        }
    }

    const OPENED: &str = "[info] Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'in/in/clip.mp4':\n\
        [info]   Duration: 00:00:01.50, start: 0.000000, bitrate: 82 kb/s\n\
        [info]   Stream #0:0[0x1](und): Video: h264, yuv420p, 640x360\n";

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
        assert_eq!(l.seen("logo").unwrap().described, 1);
        assert_eq!(l.blame(false, false), None);
    }

    #[test]
    fn an_input_ffmpeg_could_not_open_is_named_with_the_demuxers_words() {
        let mut l = log();
        feed(
            &mut l,
            &format!(
                "{OPENED}\
                 [mov,mp4,m4a,3gp,3g2,mj2 @ 0x56005e3749c0] [error] moov atom not found\n\
                 [error] in/logo/logo: Invalid data found when processing input\n"
            ),
        );
        let f = l.blame(false, false).unwrap();
        assert_eq!(f.alias, "logo");
        assert_eq!(
            f.why,
            "moov atom not found; Invalid data found when processing input"
        );
        // Not once FFmpeg reported progress: the run got past opening its inputs.
        assert_eq!(l.blame(false, true), None);
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
        let f = l.blame(false, false).unwrap();
        assert_eq!(f.alias, "in");
        assert_eq!(f.why, "Invalid data found when processing input");
    }

    #[test]
    fn a_failure_line_naming_an_input_ffmpeg_described_is_forged() {
        // A track language with line breaks in input 0's description names input 0 itself
        // and input 1, which then opened too.
        let mut l = log();
        feed(
            &mut l,
            &format!(
                "{OPENED}\
                 [error] in/in/clip.mp4: Permission denied\n\
                 [error] in/logo/logo: Invalid data found when processing input\n\
                 [info] Input #1, png_pipe, from 'in/logo/logo':\n\
                 [info]   Stream #1:0: Video: png, rgba, 64x64\n\
                 [error] Stream map '0:a' matches no streams.\n"
            ),
        );
        assert_eq!(l.blame(false, false), None);
    }

    #[test]
    fn a_second_description_voids_the_evidence() {
        let mut l = log();
        feed(
            &mut l,
            "[info] Input #0, matroska, from 'in/in/clip.mp4':\n\
                 [info]   Stream #0:0(eng\n\
                 [info] Input #1, png_pipe, from 'in/logo/logo':\n\
                 ): Video: h264\n\
                 [info] Input #1, png_pipe, from 'in/logo/logo':\n\
                 [info]   Stream #1:0: Video: png, rgba, 64x64\n",
        );
        assert_eq!(l.seen("logo").unwrap().described, 2);
        assert_eq!(
            l.blame(false, false),
            None,
            "input 0's stream line, broken up, still counts"
        );
        let mut l = log();
        feed(
            &mut l,
            "[info] Input #0, matroska, from 'in/in/clip.mp4':\n\
             [info]   Stream #0:0: Video: h264\n\
             [info] Input #1, png_pipe, from 'in/logo/logo':\n\
             [info] Input #1, png_pipe, from 'in/logo/logo':\n\
             [info]   Stream #1:0: Video: png, rgba, 64x64\n",
        );
        assert_eq!(l.blame(false, false), None);
    }

    #[test]
    fn an_input_whose_streams_have_no_codec_fails_while_starting_only() {
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
        assert_eq!(l.blame(false, false).unwrap().alias, "in");
        assert_eq!(l.blame(false, true), None);
        assert_eq!(l.blame(true, false), None);
    }

    #[test]
    fn an_input_read_to_its_end_without_a_format_fails() {
        let mut l = log();
        feed(
            &mut l,
            &format!(
                "{OPENED}\
                 [error] Cannot determine format of input stream 0:0 after EOF\n\
                 [fatal] Error marking filters as finished\n"
            ),
        );
        assert_eq!(l.blame(false, false).unwrap().alias, "in");
    }

    const EMPTY_RUN: &str = "[verbose] Input file #0 (in/in/clip.mp4):\n\
        [verbose]   Input stream #0:0 (audio): 0 packets read (0 bytes); 0 frames decoded;\n\
        [verbose]   Total: 0 packets (0 bytes) demuxed\n\
        [verbose] Input file #1 (in/logo/logo):\n\
        [verbose]   Total: 1 packets (300 bytes) demuxed\n\
        [verbose] Output file #0 (out/out/o.m4a):\n\
        [verbose]   Total: 0 packets (0 bytes) muxed\n";

    #[test]
    fn an_input_that_gave_no_packet_to_a_run_that_produced_nothing_fails() {
        let mut l = log();
        feed(&mut l, &format!("{OPENED}{EMPTY_RUN}"));
        let f = l.blame(true, true).unwrap();
        assert_eq!(f.alias, "in");
        // Not when the command seeks it, nor when something was produced.
        let mut seeking = log();
        seeking.inputs[0].seeks = true;
        feed(&mut seeking, &format!("{OPENED}{EMPTY_RUN}"));
        assert_eq!(seeking.blame(true, true), None);
        let mut produced = log();
        feed(
            &mut produced,
            &format!(
                "{OPENED}{EMPTY_RUN}[verbose] Output file #1 (out/b/b.mp4):\n\
                 [verbose]   Total: 50 packets (9000 bytes) muxed\n"
            ),
        );
        assert_eq!(produced.blame(true, true), None);
        // A forged summary beside FFmpeg's own voids it.
        let mut forged = log();
        feed(
            &mut forged,
            &format!("{OPENED}[verbose] Input file #0 (in/in/clip.mp4):\n{EMPTY_RUN}"),
        );
        assert_eq!(forged.blame(true, true), None);
    }

    #[test]
    fn lines_that_only_look_like_ffmpegs_are_not_read() {
        let mut l = log();
        feed(
            &mut l,
            // A library's line, an untagged line, another file, a warning, another path.
            "[h264 @ 0x1] [error] in/in/clip.mp4: Invalid data\n\
             in/in/clip.mp4: Invalid data\n\
             [error] in/in/clip.mp4.bak: Invalid data\n\
             [warning] in/in/clip.mp4: Invalid data\n\
             [info] Input #0, mov, from 'in/other.mp4':\n\
             [info]   Duration: 00:00:05.00, start: 0\n",
        );
        assert_eq!(l.blame(false, false), None);
        assert!(l.durations().is_empty());
    }

    #[test]
    fn clocks_parse_as_ffmpeg_prints_them() {
        assert_eq!(parse_clock("00:00:01.00"), Some(1_000_000));
        assert_eq!(parse_clock("01:02:03.5"), Some(3_723_500_000));
        assert_eq!(parse_clock("N/A"), None);
        assert_eq!(parse_clock("00:61:00.00"), None);
        assert_eq!(parse_clock("99999999999999:00:00.00"), None);
        assert_eq!(parse_clock("9000:00:00.00"), None, "past a year");
        assert_eq!(packets("138 packets (191978 bytes)"), Some(138));
    }
}
