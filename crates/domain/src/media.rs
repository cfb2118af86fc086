//! What a media file is, as ffprobe reads it: format, duration, bit rate and streams.
//!
//! The worker measures each output with a jailed ffprobe and reports it; the control plane
//! shows it on the job. ffprobe runs on the job's own bytes, so its output is untrusted: it is
//! read into these types (never passed on as text), every number must be finite and in range,
//! and every name short and plain. [`MediaInfo::check`] is the one rule both sides apply.

use serde::{Deserialize, Serialize};

/// Streams kept per file.
pub const MAX_STREAMS: usize = 32;
/// Longest name kept (format, codec, profile, pixel format, channel layout).
pub const MAX_NAME: usize = 64;
/// The ffprobe arguments that print what [`MediaInfo::from_ffprobe_json`] reads.
pub const FFPROBE_ENTRIES: &str = "format=format_name,duration,bit_rate:\
stream=index,codec_type,codec_name,profile,width,height,pix_fmt,avg_frame_rate,bit_rate,\
sample_rate,channels,channel_layout,duration";

const MAX_SECONDS: f64 = 1e7;
const MAX_BIT_RATE: u64 = 1_000_000_000_000;
const MAX_DIMENSION: u32 = 1 << 16;
const MAX_SAMPLE_RATE: u32 = 10_000_000;
const MAX_CHANNELS: u32 = 1024;

/// A media file: its container and streams. Unknown values are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MediaInfo {
    /// The container as FFmpeg names its demuxer, e.g. `mov,mp4,m4a,3gp,3g2,mj2`, `mpegts`.
    pub format: String,
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub duration_seconds: Option<f64>,
    /// Overall bit rate, bits per second.
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub bit_rate: Option<u64>,
    /// At most 32, in file order.
    pub streams: Vec<MediaStream>,
}

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Video,
    Audio,
    Subtitle,
    Data,
    Attachment,
}

impl StreamKind {
    pub const ALL: [StreamKind; 5] = [
        StreamKind::Video,
        StreamKind::Audio,
        StreamKind::Subtitle,
        StreamKind::Data,
        StreamKind::Attachment,
    ];

    /// FFmpeg's name for it (`codec_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Video => "video",
            StreamKind::Audio => "audio",
            StreamKind::Subtitle => "subtitle",
            StreamKind::Data => "data",
            StreamKind::Attachment => "attachment",
        }
    }

    pub fn parse(s: &str) -> Option<StreamKind> {
        StreamKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One stream of a media file. Fields that do not apply to its kind are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MediaStream {
    /// Its index in the file.
    pub index: u32,
    pub kind: StreamKind,
    /// FFmpeg's codec name, e.g. `h264`, `aac`, `png`.
    pub codec: String,
    /// e.g. `High`, `LC`.
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub profile: Option<String>,
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub width: Option<u32>,
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub height: Option<u32>,
    /// Average frame rate as an exact fraction, e.g. `30000/1001`.
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub frame_rate: Option<String>,
    /// e.g. `yuv420p`.
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub pixel_format: Option<String>,
    /// Bits per second.
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub bit_rate: Option<u64>,
    /// Samples per second.
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub sample_rate: Option<u32>,
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub channels: Option<u32>,
    /// e.g. `stereo`, `5.1(side)`.
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub channel_layout: Option<String>,
    #[cfg_attr(feature = "schema", schema(required = true))]
    pub duration_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("ffprobe's output is not what it prints: {0}")]
    Unreadable(String),
    #[error("{0}")]
    OutOfRange(String),
}

impl MediaInfo {
    /// Reads `ffprobe -show_entries FFPROBE_ENTRIES -of json`. Streams of a kind FFmpeg calls
    /// `unknown` are left out; values ffprobe prints as `N/A` or a `0/0` rate are unknown.
    pub fn from_ffprobe_json(bytes: &[u8]) -> Result<MediaInfo, MediaError> {
        let raw: raw::Output =
            serde_json::from_slice(bytes).map_err(|e| MediaError::Unreadable(e.to_string()))?;
        let format = raw
            .format
            .ok_or_else(|| MediaError::Unreadable("no format section".into()))?;
        let mut streams = Vec::new();
        for s in raw.streams.into_iter().take(MAX_STREAMS) {
            let Some(kind) = s.codec_type.as_deref().and_then(StreamKind::parse) else {
                continue;
            };
            streams.push(MediaStream {
                index: s.index,
                kind,
                codec: s.codec_name.unwrap_or_else(|| "none".into()),
                profile: s.profile,
                width: s.width,
                height: s.height,
                frame_rate: s.avg_frame_rate.filter(|r| !r.starts_with("0/")),
                pixel_format: s.pix_fmt,
                bit_rate: number(s.bit_rate.as_deref()),
                sample_rate: number(s.sample_rate.as_deref()),
                channels: s.channels,
                channel_layout: s.channel_layout,
                duration_seconds: number(s.duration.as_deref()),
            });
        }
        let info = MediaInfo {
            format: format.format_name.unwrap_or_default(),
            duration_seconds: number(format.duration.as_deref()),
            bit_rate: number(format.bit_rate.as_deref()),
            streams,
        };
        info.check()?;
        Ok(info)
    }

    /// Whether every value is in range and every name short and plain: what the control plane
    /// requires of a worker's report before it shows it to anyone.
    pub fn check(&self) -> Result<(), MediaError> {
        let bad = |what: &str| Err(MediaError::OutOfRange(what.to_owned()));
        if !plain_name(&self.format) {
            return bad("format");
        }
        if !seconds_ok(self.duration_seconds) || self.bit_rate.is_some_and(|b| b > MAX_BIT_RATE) {
            return bad("duration or bit rate");
        }
        if self.streams.len() > MAX_STREAMS {
            return bad("too many streams");
        }
        for s in &self.streams {
            let names = [&s.profile, &s.pixel_format, &s.channel_layout];
            if !plain_name(&s.codec)
                || names
                    .iter()
                    .any(|n| n.as_deref().is_some_and(|n| !plain_name(n)))
            {
                return bad("a stream's names");
            }
            if s.frame_rate.as_deref().is_some_and(|r| !fraction(r)) {
                return bad("a stream's frame rate");
            }
            let dimension = |d: Option<u32>| d.is_some_and(|d| d == 0 || d > MAX_DIMENSION);
            if dimension(s.width)
                || dimension(s.height)
                || s.bit_rate.is_some_and(|b| b > MAX_BIT_RATE)
                || s.sample_rate.is_some_and(|r| r == 0 || r > MAX_SAMPLE_RATE)
                || s.channels.is_some_and(|c| c == 0 || c > MAX_CHANNELS)
                || !seconds_ok(s.duration_seconds)
            {
                return bad("a stream's numbers");
            }
        }
        Ok(())
    }
}

/// A number ffprobe prints as a string (`"47336"`, `"2.000000"`); `N/A` and the like are unknown.
fn number<T: std::str::FromStr>(s: Option<&str>) -> Option<T> {
    s.and_then(|s| s.trim().parse().ok())
}

fn seconds_ok(s: Option<f64>) -> bool {
    s.is_none_or(|s| s.is_finite() && (0.0..=MAX_SECONDS).contains(&s))
}

/// Letters, digits and the punctuation FFmpeg's names use; nothing a terminal or a parser
/// downstream would read as markup.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" _.,:/()+-".contains(&b))
}

/// `num/den`, both positive decimal integers that fit 32 bits.
fn fraction(s: &str) -> bool {
    s.split_once('/').is_some_and(|(n, d)| {
        [n, d]
            .iter()
            .all(|x| !x.is_empty() && x.len() <= 10 && x.bytes().all(|b| b.is_ascii_digit()))
            && d.parse::<u32>().is_ok_and(|d| d > 0)
            && n.parse::<u32>().is_ok()
    })
}

/// ffprobe's JSON as it prints it.
mod raw {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Output {
        #[serde(default)]
        pub streams: Vec<Stream>,
        pub format: Option<Format>,
    }

    #[derive(Deserialize)]
    pub struct Format {
        pub format_name: Option<String>,
        pub duration: Option<String>,
        pub bit_rate: Option<String>,
    }

    #[derive(Deserialize)]
    pub struct Stream {
        pub index: u32,
        pub codec_type: Option<String>,
        pub codec_name: Option<String>,
        pub profile: Option<String>,
        pub width: Option<u32>,
        pub height: Option<u32>,
        pub pix_fmt: Option<String>,
        pub avg_frame_rate: Option<String>,
        pub bit_rate: Option<String>,
        pub sample_rate: Option<String>,
        pub channels: Option<u32>,
        pub channel_layout: Option<String>,
        pub duration: Option<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MP4: &str = r#"{
        "programs": [],
        "streams": [
            { "index": 0, "codec_name": "h264", "profile": "High 4:4:4 Predictive", "codec_type": "video",
              "width": 320, "height": 240, "pix_fmt": "yuv444p", "r_frame_rate": "25/1",
              "avg_frame_rate": "25/1", "duration": "2.000000", "bit_rate": "47336" },
            { "index": 1, "codec_name": "aac", "profile": "LC", "codec_type": "audio",
              "sample_rate": "44100", "channels": 1, "channel_layout": "mono",
              "r_frame_rate": "0/0", "avg_frame_rate": "0/0", "duration": "2.000000", "bit_rate": "69671" }
        ],
        "format": { "format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "2.000000", "bit_rate": "130152" }
    }"#;

    #[test]
    fn ffprobe_json_is_read_into_streams() {
        let m = MediaInfo::from_ffprobe_json(MP4.as_bytes()).unwrap();
        assert_eq!(m.format, "mov,mp4,m4a,3gp,3g2,mj2");
        assert_eq!(m.duration_seconds, Some(2.0));
        assert_eq!(m.bit_rate, Some(130152));
        assert_eq!(m.streams.len(), 2);
        let v = &m.streams[0];
        assert_eq!(
            (v.kind, v.codec.as_str(), v.width, v.height),
            (StreamKind::Video, "h264", Some(320), Some(240))
        );
        assert_eq!(v.frame_rate.as_deref(), Some("25/1"));
        assert_eq!(v.pixel_format.as_deref(), Some("yuv444p"));
        let a = &m.streams[1];
        assert_eq!(
            (a.kind, a.sample_rate, a.channels, a.frame_rate.as_deref()),
            (StreamKind::Audio, Some(44100), Some(1), None)
        );
        assert_eq!(a.channel_layout.as_deref(), Some("mono"));
    }

    #[test]
    fn untrusted_output_out_of_range_or_odd_is_refused() {
        let with =
            |from: &str, to: &str| MediaInfo::from_ffprobe_json(MP4.replace(from, to).as_bytes());
        assert!(
            with("\"h264\"", "\"h264\\u001b[31m\"").is_err(),
            "escape in a name"
        );
        assert!(
            with("\"LC\"", &format!("\"{}\"", "L".repeat(65))).is_err(),
            "long name"
        );
        assert!(
            with("\"width\": 320", "\"width\": 0").is_err(),
            "zero width"
        );
        assert!(
            with("\"width\": 320", "\"width\": 100000").is_err(),
            "huge width"
        );
        assert!(
            with("\"width\": 320", "\"width\": -1").is_err(),
            "negative width"
        );
        assert!(with("\"25/1\"", "\"25/0\"").is_err(), "zero denominator");
        assert!(with("\"25/1\"", "\"1e3/1\"").is_err(), "not integers");
        assert!(
            with("\"channels\": 1", "\"channels\": 5000").is_err(),
            "channels"
        );
        assert!(with(
            "\"duration\": \"2.000000\", \"bit_rate\": \"130152\"",
            "\"duration\": \"1e300\""
        )
        .is_err());
        assert!(MediaInfo::from_ffprobe_json(b"not json").is_err());
        assert!(
            MediaInfo::from_ffprobe_json(b"{\"streams\": []}").is_err(),
            "no format"
        );
        // What ffprobe prints for values it does not know is not an error: they are unknown.
        let m = with(
            "\"duration\": \"2.000000\", \"bit_rate\": \"130152\"",
            "\"duration\": \"N/A\"",
        )
        .unwrap();
        assert_eq!((m.duration_seconds, m.bit_rate), (None, None));
    }

    #[test]
    fn many_streams_are_capped_and_unknown_kinds_left_out() {
        let stream = r#"{ "index": 0, "codec_type": "audio", "codec_name": "aac" }"#;
        let odd = r#"{ "index": 1, "codec_type": "unknown" }"#;
        let many = vec![stream; 40].join(",");
        let json =
            format!(r#"{{"streams": [{odd},{many}], "format": {{"format_name": "mpegts"}}}}"#);
        let m = MediaInfo::from_ffprobe_json(json.as_bytes()).unwrap();
        assert_eq!(m.streams.len(), MAX_STREAMS - 1);
        assert!(m.streams.iter().all(|s| s.kind == StreamKind::Audio));
    }
}
