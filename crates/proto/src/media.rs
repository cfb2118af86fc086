//! The domain's media measurement on the wire, both ways: the worker sends what its ffprobe
//! read, the coordinator reads it back (and the service checks its bounds).

use crate::v1 as pb;
use mpegflow_domain::media::{MediaInfo, MediaStream, StreamKind, MAX_STREAMS};

impl From<MediaInfo> for pb::MediaInfo {
    fn from(m: MediaInfo) -> Self {
        pb::MediaInfo {
            format: m.format,
            duration_seconds: m.duration_seconds,
            bit_rate: m.bit_rate,
            streams: m
                .streams
                .into_iter()
                .map(|s| pb::MediaStream {
                    index: s.index,
                    kind: s.kind.as_str().to_owned(),
                    codec: s.codec,
                    profile: s.profile,
                    width: s.width,
                    height: s.height,
                    frame_rate: s.frame_rate,
                    pixel_format: s.pixel_format,
                    bit_rate: s.bit_rate,
                    sample_rate: s.sample_rate,
                    channels: s.channels,
                    channel_layout: s.channel_layout,
                    duration_seconds: s.duration_seconds,
                })
                .collect(),
        }
    }
}

impl pb::MediaInfo {
    /// As domain types, or `None` with more streams than any output may have or a stream kind
    /// this build does not know. Its bounds are the caller's to check
    /// ([`MediaInfo::check`]).
    pub fn to_domain(&self) -> Option<MediaInfo> {
        if self.streams.len() > MAX_STREAMS {
            return None;
        }
        Some(MediaInfo {
            format: self.format.clone(),
            duration_seconds: self.duration_seconds,
            bit_rate: self.bit_rate,
            streams: self
                .streams
                .iter()
                .map(|s| {
                    Some(MediaStream {
                        index: s.index,
                        kind: StreamKind::parse(&s.kind)?,
                        codec: s.codec.clone(),
                        profile: s.profile.clone(),
                        width: s.width,
                        height: s.height,
                        frame_rate: s.frame_rate.clone(),
                        pixel_format: s.pixel_format.clone(),
                        bit_rate: s.bit_rate,
                        sample_rate: s.sample_rate,
                        channels: s.channels,
                        channel_layout: s.channel_layout.clone(),
                        duration_seconds: s.duration_seconds,
                    })
                })
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measurement_survives_the_wire_and_unknown_kinds_do_not() {
        let m = MediaInfo {
            format: "mpegts".into(),
            duration_seconds: Some(1.5),
            bit_rate: Some(1000),
            streams: vec![MediaStream {
                index: 0,
                kind: StreamKind::Audio,
                codec: "aac".into(),
                profile: Some("LC".into()),
                width: None,
                height: None,
                frame_rate: None,
                pixel_format: None,
                bit_rate: None,
                sample_rate: Some(48000),
                channels: Some(2),
                channel_layout: Some("stereo".into()),
                duration_seconds: None,
            }],
        };
        let wire = pb::MediaInfo::from(m.clone());
        assert_eq!(wire.to_domain(), Some(m));
        let mut odd = wire.clone();
        odd.streams[0].kind = "hologram".into();
        assert_eq!(odd.to_domain(), None);
        let mut many = wire;
        many.streams = vec![many.streams[0].clone(); MAX_STREAMS + 1];
        assert_eq!(many.to_domain(), None);
    }
}
