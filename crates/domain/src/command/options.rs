//! The option allowlist, with the arity FFmpeg 5.1 really gives each option (checked by the
//! oracle test against `-v debug` traces, not against `-h full`) and a value grammar.
//!
//! FFmpeg's `split_commandline` matches an argument `-name[:spec]` first against its own option
//! table (`find_option`, which ignores everything after `:`), then as an AVOption of the codec,
//! format, swscale or swresample classes (`opt_default`, always one argument, stream specifiers
//! only for codec options), then as `-noNAME` for boolean table options. Everything not listed
//! here is refused.

use super::grammar::G;

/// Where an option belongs. Global options apply wherever they are written, so the renderer
/// writes them first; per-file options belong to the next input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Input,
    Output,
    File,
}

/// How FFmpeg matches the option, as its trace shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// `matched as option 'NAME' (…) with argument 'V'` (or `'1'` for a flag).
    Table,
    /// `-noNAME`: `matched as option 'NAME' (…) with argument 0`.
    Negated(&'static str),
    /// `matched as AVOption 'NAME[:spec]' with argument 'V'`.
    AvOption,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No argument.
    Flag,
    /// One argument with this grammar.
    Value(G),
    /// A codec name from [`CODECS`].
    Codec,
    /// `-f`: a demuxer before an input, a muxer before an output.
    Format,
    /// A muxer name from [`MUXERS`].
    Muxer,
    /// A filter graph.
    Graph,
    /// `-x264-params`.
    X264Params,
    /// `-x265-params`.
    X265Params,
    /// A comma-separated list of bitstream filters from [`BSFS`].
    Bsf,
    /// A file inside a directory output: `{{dir}}/name`.
    OutputEntry,
    /// A plain file name the muxer writes next to its output (`master.m3u8`).
    FileName,
}

#[derive(Debug, Clone, Copy)]
pub struct OptSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    /// Whether `-name:spec` is accepted.
    pub spec: bool,
    pub matched: Match,
}

/// Most threads a file may ask for; the renderer clamps the configured default to it.
pub const MAX_THREADS: u32 = 256;

pub const CODECS: &[&str] = &[
    "copy",
    "libx264",
    "libx265",
    "libvpx",
    "libvpx-vp9",
    "libaom-av1",
    "libdav1d",
    "mpeg4",
    "mjpeg",
    "png",
    "gif",
    "libwebp",
    "ffv1",
    "rawvideo",
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "av1",
    "prores",
    "prores_ks",
    "aac",
    "libopus",
    "opus",
    "libvorbis",
    "vorbis",
    "libmp3lame",
    "mp3",
    "flac",
    "alac",
    "ac3",
    "eac3",
    "pcm_s16le",
    "pcm_s24le",
    "pcm_f32le",
    "pcm_u8",
    "mov_text",
    "webvtt",
    "subrip",
    "srt",
    "ass",
];

pub const MUXERS: &[&str] = &[
    "mp4", "mov", "ipod", "matroska", "webm", "mpegts", "hls", "dash", "segment", "image2", "gif",
    "apng", "wav", "mp3", "adts", "ogg", "oga", "opus", "flac", "null", "webvtt", "srt", "ass",
    "nut", "avi", "flv", "ivf", "h264", "hevc", "mjpeg", "rawvideo",
];

/// The muxer FFmpeg 5.1's `av_guess_format` picks for an output file name's extension (matched
/// case-insensitively), for extensions whose pick is on [`MUXERS`] (checked against the installed
/// ffmpeg by the oracle test). Any other extension may pick a muxer that is not allowed
/// (`.ffmeta` → ffmetadata, `.xml` → webm_dash_manifest…), so an output without `-f` needs one
/// of these.
pub const MUXER_BY_EXTENSION: &[(&str, &str)] = &[
    ("mp4", "mp4"),
    ("mov", "mov"),
    ("m4v", "ipod"),
    ("m4a", "ipod"),
    ("m4b", "ipod"),
    ("mkv", "matroska"),
    ("webm", "webm"),
    ("ts", "mpegts"),
    ("m2t", "mpegts"),
    ("m2ts", "mpegts"),
    ("mts", "mpegts"),
    ("m3u8", "hls"),
    ("mpd", "dash"),
    ("jpg", "image2"),
    ("jpeg", "image2"),
    ("png", "image2"),
    ("bmp", "image2"),
    ("tif", "image2"),
    ("tiff", "image2"),
    ("gif", "gif"),
    ("apng", "apng"),
    ("wav", "wav"),
    ("mp3", "mp3"),
    ("aac", "adts"),
    ("adts", "adts"),
    ("ogg", "ogg"),
    ("oga", "oga"),
    ("opus", "opus"),
    ("flac", "flac"),
    ("vtt", "webvtt"),
    ("srt", "srt"),
    ("ass", "ass"),
    ("ssa", "ass"),
    ("nut", "nut"),
    ("avi", "avi"),
    ("flv", "flv"),
    ("ivf", "ivf"),
    ("h264", "h264"),
    ("264", "h264"),
    ("hevc", "hevc"),
    ("h265", "hevc"),
    ("265", "hevc"),
    ("mjpg", "mjpeg"),
    ("mjpeg", "mjpeg"),
    ("yuv", "rawvideo"),
    ("rgb", "rawvideo"),
];

/// The allowed muxer FFmpeg guesses for `file_name`, if its extension is a known one.
pub fn guessed_muxer(file_name: &str) -> Option<&'static str> {
    let (_, ext) = file_name.rsplit_once('.')?;
    MUXER_BY_EXTENSION
        .iter()
        .find(|(e, _)| e.eq_ignore_ascii_case(ext))
        .map(|(_, m)| *m)
}

pub const BSFS: &[&str] = &[
    "h264_mp4toannexb",
    "hevc_mp4toannexb",
    "aac_adtstoasc",
    "vp9_superframe",
    "extract_extradata",
    "dump_extra",
    "remove_extra",
    "null",
];

/// Demuxers an input may be read with; the same list is forced as `-format_whitelist`.
pub fn demuxers() -> impl Iterator<Item = &'static str> {
    super::INPUT_FORMAT_WHITELIST.split(',')
}

const PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];
const TUNES: &[&str] = &[
    "film",
    "animation",
    "grain",
    "stillimage",
    "psnr",
    "ssim",
    "fastdecode",
    "zerolatency",
];
const PROFILES: &[&str] = &[
    "baseline",
    "main",
    "high",
    "high10",
    "high422",
    "high444",
    "main10",
    "mainstillpicture",
    "aac_low",
    "aac_he",
    "aac_he_v2",
    "0",
    "1",
    "2",
    "3",
];
const MOVFLAGS: &[&str] = &[
    "faststart",
    "frag_keyframe",
    "empty_moov",
    "default_base_moof",
    "separate_moof",
    "omit_tfhd_offset",
    "frag_every_frame",
    "negative_cts_offsets",
    "cmaf",
    "dash",
    "disable_chpl",
    "use_metadata_tags",
];
const HLS_FLAGS: &[&str] = &[
    "single_file",
    "temp_file",
    "round_durations",
    "discont_start",
    "omit_endlist",
    "split_by_time",
    "program_date_time",
    "independent_segments",
];
const FFLAGS: &[&str] = &[
    "genpts",
    "igndts",
    "ignidx",
    "discardcorrupt",
    "sortdts",
    "fastseek",
    "nobuffer",
    "flush_packets",
    "bitexact",
    "shortest",
    "autobsf",
];
const CODEC_FLAGS: &[&str] = &[
    "global_header",
    "cgop",
    "ildct",
    "ilme",
    "bitexact",
    "low_delay",
    "qscale",
    "gray",
    "loop",
];
/// Disposition flags; "0" clears them all (`-disposition:a:1 0`).
const DISPOSITIONS: &[&str] = &[
    "0",
    "default",
    "dub",
    "original",
    "comment",
    "lyrics",
    "karaoke",
    "forced",
    "hearing_impaired",
    "visual_impaired",
    "clean_effects",
    "attached_pic",
    "captions",
    "descriptions",
    "metadata",
    "dependent",
    "still_image",
];
const COLOR_PRIMARIES: &[&str] = &[
    "bt709",
    "bt470m",
    "bt470bg",
    "smpte170m",
    "smpte240m",
    "film",
    "bt2020",
    "smpte428",
    "smpte431",
    "smpte432",
    "unknown",
];
const COLOR_TRC: &[&str] = &[
    "bt709",
    "gamma22",
    "gamma28",
    "smpte170m",
    "smpte240m",
    "linear",
    "iec61966-2-1",
    "bt2020-10",
    "bt2020-12",
    "smpte2084",
    "arib-std-b67",
    "unknown",
];
const COLORSPACES: &[&str] = &[
    "rgb",
    "bt709",
    "fcc",
    "bt470bg",
    "smpte170m",
    "smpte240m",
    "ycgco",
    "bt2020nc",
    "bt2020c",
    "unknown",
];
const LOG_LEVELS: &[&str] = &["quiet", "panic", "fatal", "error", "warning", "info"];
const BOOL01: G = G::Kw(&["0", "1"]);

macro_rules! o {
    ($name:literal, $kind:expr, $scope:ident, $spec:literal, $m:expr) => {
        OptSpec {
            name: $name,
            kind: $kind,
            scope: Scope::$scope,
            spec: $spec,
            matched: $m,
        }
    };
}

use Kind::{Flag, Value as V};
use Match::{AvOption as A, Table as T};

pub static OPTIONS: &[OptSpec] = &[
    // Global options of ffmpeg_opt.c / cmdutils.c.
    o!("y", Flag, Global, false, T),
    o!("copyts", Flag, Global, false, T),
    o!("start_at_zero", Flag, Global, false, T),
    o!("ignore_unknown", Flag, Global, false, T),
    o!("copy_unknown", Flag, Global, false, T),
    o!("copytb", V(G::Int(-1, 1)), Global, false, T),
    o!(
        "vsync",
        V(G::Kw(&[
            "passthrough",
            "cfr",
            "vfr",
            "drop",
            "auto",
            "0",
            "1",
            "2",
            "-1"
        ])),
        Global,
        false,
        T
    ),
    o!("filter_threads", V(G::Int(1, 16)), Global, false, T),
    o!("filter_complex_threads", V(G::Int(1, 16)), Global, false, T),
    o!("filter_complex", Kind::Graph, Global, false, T),
    o!("lavfi", Kind::Graph, Global, false, T),
    o!("v", V(G::Kw(LOG_LEVELS)), Global, false, T),
    o!("loglevel", V(G::Kw(LOG_LEVELS)), Global, false, T),
    // Per-file options of ffmpeg_opt.c.
    o!("f", Kind::Format, File, false, T),
    o!("c", Kind::Codec, File, true, T),
    o!("codec", Kind::Codec, File, true, T),
    o!("vcodec", Kind::Codec, File, false, T),
    o!("acodec", Kind::Codec, File, false, T),
    o!("scodec", Kind::Codec, File, false, T),
    o!("t", V(G::Dur), File, false, T),
    o!("to", V(G::Dur), File, false, T),
    o!("ss", V(G::Dur), File, false, T),
    o!("sseof", V(G::Dur), Input, false, T),
    o!("itsoffset", V(G::Dur), Input, false, T),
    o!("itsscale", V(G::Num), Input, true, T),
    // Not -1: an endless loop would only end at the job timeout.
    o!("stream_loop", V(G::Int(0, 100)), Input, false, T),
    o!("re", Flag, Input, false, T),
    o!("readrate", V(G::Num), Input, false, T),
    o!("accurate_seek", Flag, Input, false, T),
    o!(
        "noaccurate_seek",
        Flag,
        Input,
        false,
        Match::Negated("accurate_seek")
    ),
    o!("autorotate", V(BOOL01), Input, true, T),
    o!(
        "noautorotate",
        Flag,
        Input,
        true,
        Match::Negated("autorotate")
    ),
    o!("fix_sub_duration", Flag, Input, true, T),
    o!("reinit_filter", V(G::Int(-1, 1)), Input, true, T),
    o!("guess_layout_max", V(G::Int(0, 64)), Input, true, T),
    o!("thread_queue_size", V(G::Int(1, 100_000)), Input, false, T),
    o!(
        "discard",
        V(G::Kw(&[
            "none", "default", "noref", "bidir", "nokey", "all"
        ])),
        Input,
        true,
        T
    ),
    o!("map", V(G::Map), Output, false, T),
    o!("map_metadata", V(G::MetaMap), Output, true, T),
    o!("map_chapters", V(G::Int(-1, 64)), Output, false, T),
    o!("metadata", V(G::Metadata), Output, true, T),
    o!("disposition", V(G::Flags(DISPOSITIONS)), Output, true, T),
    o!("frames", V(G::Int(0, 1_000_000_000)), Output, true, T),
    o!("vframes", V(G::Int(0, 1_000_000_000)), Output, false, T),
    o!("aframes", V(G::Int(0, 1_000_000_000)), Output, false, T),
    o!("fs", V(G::Int(1, i64::MAX)), Output, false, T),
    o!("q", V(G::Num), Output, true, T),
    o!("qscale", V(G::Num), Output, true, T),
    o!("profile", V(G::Kw(PROFILES)), Output, true, T),
    o!("r", V(G::Fps), File, true, T),
    o!("fpsmax", V(G::Fps), Output, true, T),
    o!("s", V(G::Size), File, true, T),
    o!("aspect", V(G::Ratio), Output, true, T),
    o!("pix_fmt", V(G::Kw(super::filters::PIX_FMTS)), File, true, T),
    o!("ar", V(G::Int(1, 768_000)), File, true, T),
    o!("ac", V(G::Int(1, 16)), File, true, T),
    o!(
        "sample_fmt",
        V(G::Kw(super::filters::SAMPLE_FMTS)),
        File,
        true,
        T
    ),
    o!(
        "channel_layout",
        V(G::Kw(super::filters::CHANNEL_LAYOUTS)),
        File,
        true,
        T
    ),
    o!("tag", V(G::FourCc), Output, true, T),
    o!("vtag", V(G::FourCc), Output, false, T),
    o!("atag", V(G::FourCc), Output, false, T),
    o!("vf", Kind::Graph, Output, false, T),
    o!("af", Kind::Graph, Output, false, T),
    o!("filter", Kind::Graph, Output, true, T),
    o!("b", V(G::Rate), Output, true, T),
    o!("ab", V(G::Rate), Output, false, T),
    o!("force_key_frames", V(G::KeyFrames), Output, true, T),
    o!(
        "fps_mode",
        V(G::Kw(&["passthrough", "cfr", "vfr", "drop", "auto"])),
        Output,
        true,
        T
    ),
    o!("top", V(G::Int(-1, 1)), Output, true, T),
    o!("shortest", Flag, Output, false, T),
    o!("an", Flag, File, false, T),
    o!("vn", Flag, File, false, T),
    o!("sn", Flag, File, false, T),
    o!("dn", Flag, File, false, T),
    o!("bsf", Kind::Bsf, Output, true, T),
    o!(
        "max_muxing_queue_size",
        V(G::Int(1, 100_000)),
        Output,
        true,
        T
    ),
    o!("muxdelay", V(G::Num), Output, false, T),
    o!("muxpreload", V(G::Num), Output, false, T),
    // AVOptions of codecs.
    o!("crf", V(G::Num), File, true, A),
    o!("qp", V(G::Int(-1, 69)), File, true, A),
    o!("preset", V(G::Kw(PRESETS)), File, true, A),
    o!("tune", V(G::Kw(TUNES)), File, true, A),
    o!("level", V(G::Num), File, true, A),
    o!("g", V(G::Int(-1, 100_000)), File, true, A),
    o!("keyint_min", V(G::Int(-1, 100_000)), File, true, A),
    o!(
        "sc_threshold",
        V(G::Int(-1_000_000_000, 1_000_000_000)),
        File,
        true,
        A
    ),
    o!("bf", V(G::Int(-1, 16)), File, true, A),
    o!("refs", V(G::Int(0, 16)), File, true, A),
    o!("maxrate", V(G::Rate), File, true, A),
    o!("minrate", V(G::Rate), File, true, A),
    o!("bufsize", V(G::Rate), File, true, A),
    o!("x264-params", Kind::X264Params, File, true, A),
    o!("x265-params", Kind::X265Params, File, true, A),
    o!("threads", V(G::Int(0, MAX_THREADS as i64)), File, true, A),
    o!("qmin", V(G::Int(-1, 69)), File, true, A),
    o!("qmax", V(G::Int(-1, 1024)), File, true, A),
    o!("global_quality", V(G::Int(0, 1_000_000)), File, true, A),
    o!("flags", V(G::Flags(CODEC_FLAGS)), File, true, A),
    o!("color_primaries", V(G::Kw(COLOR_PRIMARIES)), File, true, A),
    o!("color_trc", V(G::Kw(COLOR_TRC)), File, true, A),
    o!("colorspace", V(G::Kw(COLORSPACES)), File, true, A),
    o!(
        "color_range",
        V(G::Kw(&["tv", "pc", "mpeg", "jpeg", "unknown"])),
        File,
        true,
        A
    ),
    o!(
        "row-mt",
        V(G::Kw(&["0", "1", "true", "false"])),
        File,
        true,
        A
    ),
    o!("tile-columns", V(G::Int(-1, 6)), File, true, A),
    o!("tile-rows", V(G::Int(-1, 2)), File, true, A),
    o!(
        "deadline",
        V(G::Kw(&["good", "best", "realtime"])),
        File,
        true,
        A
    ),
    o!("cpu-used", V(G::Int(-16, 16)), File, true, A),
    o!("lag-in-frames", V(G::Int(-1, 25)), File, true, A),
    o!("auto-alt-ref", V(G::Int(-1, 6)), File, true, A),
    o!("aq-mode", V(G::Int(-1, 4)), File, true, A),
    o!("rc-lookahead", V(G::Int(-1, 250)), File, true, A),
    o!("nal-hrd", V(G::Kw(&["none", "vbr", "cbr"])), File, true, A),
    o!(
        "coder",
        V(G::Kw(&["default", "cavlc", "cabac", "vlc", "ac", "0", "1"])),
        File,
        true,
        A
    ),
    o!("trellis", V(G::Int(-1, 2)), File, true, A),
    o!(
        "vbr",
        V(G::Kw(&[
            "off",
            "on",
            "constrained",
            "0",
            "1",
            "2",
            "3",
            "4",
            "5"
        ])),
        File,
        true,
        A
    ),
    o!(
        "application",
        V(G::Kw(&["voip", "audio", "lowdelay"])),
        File,
        true,
        A
    ),
    o!("compression_level", V(G::Int(-1, 12)), File, true, A),
    o!("cutoff", V(G::Int(0, 192_000)), File, true, A),
    // AVOptions of formats (no stream specifier: FFmpeg would not find them with one).
    o!("fflags", V(G::Flags(FFLAGS)), File, false, A),
    o!(
        "avoid_negative_ts",
        V(G::Kw(&[
            "auto",
            "disabled",
            "make_non_negative",
            "make_zero",
            "-1",
            "0",
            "1",
            "2"
        ])),
        File,
        false,
        A
    ),
    o!(
        "max_interleave_delta",
        V(G::Int(0, i64::MAX)),
        File,
        false,
        A
    ),
    o!(
        "analyzeduration",
        V(G::Int(0, 100_000_000)),
        Input,
        false,
        A
    ),
    o!("movflags", V(G::Flags(MOVFLAGS)), Output, false, A),
    o!("brand", V(G::FourCc), Output, false, A),
    o!(
        "frag_duration",
        V(G::Int(0, i32::MAX as i64)),
        Output,
        false,
        A
    ),
    o!("frag_size", V(G::Int(0, i32::MAX as i64)), Output, false, A),
    o!(
        "write_tmcd",
        V(G::Kw(&["0", "1", "auto", "true", "false"])),
        Output,
        false,
        A
    ),
    o!("hls_time", V(G::Num), Output, false, A),
    o!("hls_init_time", V(G::Num), Output, false, A),
    o!("hls_list_size", V(G::Int(0, 100_000)), Output, false, A),
    o!(
        "hls_playlist_type",
        V(G::Kw(&["event", "vod"])),
        Output,
        false,
        A
    ),
    o!("hls_flags", V(G::Flags(HLS_FLAGS)), Output, false, A),
    o!(
        "hls_segment_type",
        V(G::Kw(&["mpegts", "fmp4"])),
        Output,
        false,
        A
    ),
    o!("hls_segment_filename", Kind::OutputEntry, Output, false, A),
    o!("hls_fmp4_init_filename", Kind::FileName, Output, false, A),
    o!("master_pl_name", Kind::FileName, Output, false, A),
    o!("start_number", V(G::Int(0, i64::MAX)), Output, false, A),
    o!("segment_time", V(G::Dur), Output, false, A),
    o!("segment_format", Kind::Muxer, Output, false, A),
    o!("segment_list", Kind::OutputEntry, Output, false, A),
    o!(
        "segment_list_type",
        V(G::Kw(&["flat", "csv", "ext", "ffconcat", "m3u8"])),
        Output,
        false,
        A
    ),
    o!("segment_list_size", V(G::Int(0, 100_000)), Output, false, A),
    o!(
        "segment_start_number",
        V(G::Int(0, i32::MAX as i64)),
        Output,
        false,
        A
    ),
    o!("segment_wrap", V(G::Int(0, 100_000)), Output, false, A),
    o!(
        "reset_timestamps",
        V(G::Kw(&["0", "1", "true", "false"])),
        Output,
        false,
        A
    ),
    o!("seg_duration", V(G::Num), Output, false, A),
    o!("window_size", V(G::Int(0, 100_000)), Output, false, A),
    o!(
        "use_template",
        V(G::Kw(&["0", "1", "true", "false"])),
        Output,
        false,
        A
    ),
    o!(
        "use_timeline",
        V(G::Kw(&["0", "1", "true", "false"])),
        Output,
        false,
        A
    ),
    o!(
        "update",
        V(G::Kw(&["0", "1", "true", "false"])),
        Output,
        false,
        A
    ),
    o!(
        "frame_pts",
        V(G::Kw(&["0", "1", "true", "false"])),
        Output,
        false,
        A
    ),
    o!("id3v2_version", V(G::Int(0, 4)), Output, false, A),
    o!(
        "write_id3v1",
        V(G::Kw(&["0", "1", "true", "false"])),
        Output,
        false,
        A
    ),
];

/// Options refused with a reason (anything else unknown is refused as unknown).
pub fn refusal(name: &str) -> Option<&'static str> {
    Some(match name {
        "filter_script"
        | "filter_complex_script"
        | "attach"
        | "dump_attachment"
        | "pre"
        | "fpre"
        | "vpre"
        | "apre"
        | "spre"
        | "hls_key_info_file"
        | "key_info_file" => "it reads a file named by the tenant",
        "vstats"
        | "vstats_file"
        | "vstats_version"
        | "report"
        | "passlogfile"
        | "sdp_file"
        | "progress"
        | "stats"
        | "pass"
        | "segment_list_entry_prefix" => "it writes a file outside the declared outputs",
        "protocol_whitelist"
        | "protocol_blacklist"
        | "format_whitelist"
        | "probesize"
        | "safe"
        | "allowed_extensions"
        | "allowed_segment_extensions"
        | "stdin"
        | "nostdin"
        | "extension_picky"
        | "hls_base_url"
        | "nostats"
        | "hide_banner" => "it would override a protection the platform sets",
        "hwaccel"
        | "hwaccel_device"
        | "hwaccel_output_format"
        | "init_hw_device"
        | "filter_hw_device"
        | "vaapi_device"
        | "qsv_device" => "hardware devices are not available to jobs",
        _ => return None,
    })
}

pub fn lookup(name: &str) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|o| o.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_not_refused() {
        for o in OPTIONS {
            assert_eq!(
                OPTIONS.iter().filter(|p| p.name == o.name).count(),
                1,
                "{}",
                o.name
            );
            assert!(refusal(o.name).is_none(), "{}", o.name);
        }
    }

    #[test]
    fn guessed_muxers_are_allowed_ones() {
        for (_, m) in MUXER_BY_EXTENSION {
            assert!(MUXERS.contains(m), "{m}");
        }
        assert_eq!(guessed_muxer("A.MP4"), Some("mp4"));
        assert_eq!(guessed_muxer("meta.ffmeta"), None);
        assert_eq!(guessed_muxer("noext"), None);
    }

    #[test]
    fn the_5_1_arities_that_help_text_gets_wrong() {
        assert_eq!(lookup("fix_sub_duration").unwrap().kind, Kind::Flag);
        assert!(matches!(lookup("copytb").unwrap().kind, Kind::Value(_)));
        assert!(matches!(
            lookup("reinit_filter").unwrap().kind,
            Kind::Value(_)
        ));
        assert!(matches!(lookup("top").unwrap().kind, Kind::Value(_)));
        assert!(matches!(lookup("fps_mode").unwrap().kind, Kind::Value(_)));
        assert!(matches!(
            lookup("filter_threads").unwrap().kind,
            Kind::Value(_)
        ));
    }
}
