//! FFmpeg command templates.
//!
//! A tenant writes a command as one string, e.g. `-i {{in}} -vf scale=640:-2 {{out}}`, and
//! declares its inputs and outputs by alias. The template is split with shell-word rules (never
//! run by a shell) and every argument is checked against an allowlist of options, each with a
//! known value kind: an input reference, an output reference, a filter graph, a format or plain
//! text. Inputs and outputs may only be named through declared `{{alias}}` placeholders; paths,
//! URLs, protocol prefixes (`concat:`, `file:`…), `..` and unknown options are refused with an
//! error that names the argument.
//!
//! [`render`] turns a valid template into the exact argv the worker runs: forced flags first,
//! placeholders replaced by fixed relative names inside the job directory (`in/<alias>.<ext>`,
//! `out/<alias>/<name>`). The worker checks that argv again with [`check_rendered`], which runs
//! the same validator in "rendered" mode.

use crate::names::{check_alias, check_file_name, safe_extension, NameError};
use std::collections::{BTreeMap, BTreeSet};

/// Arguments every rendered command starts with. `-progress pipe:1` is how the worker reads
/// progress; tenants may not set it themselves.
pub const FORCED_PREFIX: &[&str] = &[
    "-hide_banner",
    "-nostdin",
    "-nostats",
    "-y",
    "-progress",
    "pipe:1",
];

/// Demuxers an input may be read with (forced per input as `-format_whitelist`). Playlist and
/// indirection formats (hls, dash, concat, image2 patterns, ffmetadata…) are absent, so a crafted
/// input cannot make FFmpeg open other files.
pub const INPUT_FORMAT_WHITELIST: &str =
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,avi,flv,wav,mp3,aac,ogg,flac,\
    mpeg,mpegvideo,h264,hevc,m4v,mxf,gif,png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,tiff_pipe,\
    ivf,obu,asf,w64,aiff,caf,ac3,eac3,dts,truehd,amr,au,nut,yuv4mpegpipe,srt,ass,webvtt";

/// Bounded probing per input (bytes), forced.
pub const PROBE_SIZE: &str = "50000000";

/// Longest template accepted, in bytes.
pub const MAX_TEMPLATE_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDecl {
    /// Extension of the uploaded file name, kept as a probing hint.
    pub ext: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputDecl {
    /// One file, e.g. `out.mp4`.
    File { name: String },
    /// A directory of files (declared with a trailing slash, e.g. `hls/`).
    Dir { name: String },
}

impl OutputDecl {
    /// Parses a declared output file name; a trailing `/` declares a directory.
    pub fn parse(filename: &str) -> Result<Self, NameError> {
        match filename.strip_suffix('/') {
            Some(dir) => check_file_name(dir).map(|_| OutputDecl::Dir {
                name: dir.to_owned(),
            }),
            None => check_file_name(filename).map(|_| OutputDecl::File {
                name: filename.to_owned(),
            }),
        }
    }
    pub fn is_dir(&self) -> bool {
        matches!(self, OutputDecl::Dir { .. })
    }
    pub fn name(&self) -> &str {
        match self {
            OutputDecl::File { name } | OutputDecl::Dir { name } => name,
        }
    }
}

/// The declared inputs and outputs of a job, by alias.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoSpec {
    pub inputs: BTreeMap<String, InputDecl>,
    pub outputs: BTreeMap<String, OutputDecl>,
}

impl IoSpec {
    pub fn add_input(&mut self, alias: &str, filename: &str) -> Result<(), CommandError> {
        check_alias(alias).map_err(CommandError::Name)?;
        self.ensure_new(alias)?;
        self.inputs.insert(
            alias.to_owned(),
            InputDecl {
                ext: safe_extension(filename),
            },
        );
        Ok(())
    }

    pub fn add_output(&mut self, alias: &str, filename: &str) -> Result<(), CommandError> {
        check_alias(alias).map_err(CommandError::Name)?;
        self.ensure_new(alias)?;
        self.outputs.insert(
            alias.to_owned(),
            OutputDecl::parse(filename).map_err(CommandError::Name)?,
        );
        Ok(())
    }

    fn ensure_new(&self, alias: &str) -> Result<(), CommandError> {
        if self.inputs.contains_key(alias) || self.outputs.contains_key(alias) {
            return Err(CommandError::DuplicateAlias(alias.to_owned()));
        }
        Ok(())
    }

    /// Where input `alias` lives, relative to the job directory.
    pub fn input_path(&self, alias: &str) -> Option<String> {
        let decl = self.inputs.get(alias)?;
        Some(match &decl.ext {
            Some(ext) => format!("in/{alias}.{ext}"),
            None => format!("in/{alias}"),
        })
    }

    /// Where output `alias` is written, relative to the job directory: a file for file outputs,
    /// a directory for directory outputs.
    pub fn output_path(&self, alias: &str) -> Option<String> {
        Some(match self.outputs.get(alias)? {
            OutputDecl::File { name } => format!("out/{alias}/{name}"),
            OutputDecl::Dir { .. } => format!("out/{alias}"),
        })
    }

    /// Maps a produced file (relative to `out/`) to its output alias, if it belongs to one:
    /// `alias/<name>` for a file output, `alias/<file>` for a directory output.
    pub fn output_of<'a>(&self, rel_path: &'a str) -> Option<(&str, &'a str)> {
        let (alias, rest) = rel_path.split_once('/')?;
        let (alias_key, decl) = self.outputs.get_key_value(alias)?;
        let ok = match decl {
            OutputDecl::File { name } => rest == name,
            OutputDecl::Dir { .. } => check_file_name(rest).is_ok(),
        };
        ok.then_some((alias_key.as_str(), rest))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command is not valid shell-word syntax: {0}")]
    Syntax(String),
    #[error("command is empty")]
    Empty,
    #[error("command is longer than {MAX_TEMPLATE_LEN} bytes")]
    TooLong,
    #[error(transparent)]
    Name(NameError),
    #[error("alias {0:?} is declared twice")]
    DuplicateAlias(String),
    #[error("argument {arg:?}: unknown or unsupported option")]
    UnknownOption { arg: String },
    #[error("argument {arg:?}: option is not allowed ({why})")]
    ForbiddenOption { arg: String, why: &'static str },
    #[error("argument {arg:?}: option needs a value")]
    MissingValue { arg: String },
    #[error("argument {arg:?}: -i must be followed by exactly a declared input placeholder like {{{{in}}}}")]
    NotAnInput { arg: String },
    #[error("argument {arg:?}: outputs must be exactly a declared output placeholder ({{{{out}}}}, or {{{{dir}}}}/name for a directory output)")]
    NotAnOutput { arg: String },
    #[error("argument {arg:?}: {why}")]
    ForbiddenValue { arg: String, why: &'static str },
    #[error("argument {arg:?}: placeholder is not a declared input or output")]
    UndeclaredPlaceholder { arg: String },
    #[error("argument {arg:?}: filter {filter:?} is not allowed (it can open files, libraries or sockets, or is unknown)")]
    FilterNotAllowed { arg: String, filter: String },
    #[error("argument {arg:?}: format {format:?} is not allowed here")]
    FormatNotAllowed { arg: String, format: String },
    #[error("input {0:?} is declared but never read with -i")]
    InputUnused(String),
    #[error("output {0:?} is declared but never written")]
    OutputUnused(String),
    #[error("the command has no output")]
    NoOutput,
    #[error("rendered command does not start with the forced flags")]
    MissingForcedPrefix,
}

impl CommandError {
    /// The offending argument, when the error is about one.
    pub fn argument(&self) -> Option<&str> {
        match self {
            CommandError::UnknownOption { arg }
            | CommandError::ForbiddenOption { arg, .. }
            | CommandError::MissingValue { arg }
            | CommandError::NotAnInput { arg }
            | CommandError::NotAnOutput { arg }
            | CommandError::ForbiddenValue { arg, .. }
            | CommandError::UndeclaredPlaceholder { arg }
            | CommandError::FilterNotAllowed { arg, .. }
            | CommandError::FormatNotAllowed { arg, .. } => Some(arg),
            _ => None,
        }
    }
}

/// What an option's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Takes no value.
    Flag,
    /// Plain text: codec names, numbers, presets, metadata. Never a file.
    Text,
    /// `-i`: a declared input.
    Input,
    /// A filter graph.
    Filter,
    /// `-f`: a format name.
    Format,
    /// A file inside a directory output (`{{hls}}/seg_%03d.ts`).
    OutputPath,
    /// A bare file name written next to the main output (`master.m3u8`).
    FileName,
    /// Set by the renderer only, with exactly this value.
    Forced(&'static str),
    /// Never allowed.
    Forbidden(&'static str),
}

const READS_FILE: &str = "it reads a file named by the tenant";
const WRITES_FILE: &str = "it writes a file outside the declared outputs";
const OVERRIDE: &str = "it would override a protection the platform sets";
const HW: &str = "hardware devices are not available to jobs";

/// The option allowlist. Names are without the leading `-` and without stream specifiers
/// (`-c:v` is looked up as `c`).
fn option_kind(name: &str) -> Option<Kind> {
    use Kind::*;
    Some(match name {
        "y" | "n" | "nostdin" | "hide_banner" | "an" | "vn" | "sn" | "dn" | "shortest"
        | "copyts" | "start_at_zero" | "nostats" | "stats" | "re" | "accurate_seek"
        | "noaccurate_seek" | "autorotate" | "noautorotate" | "ignore_unknown" | "copy_unknown"
        | "benchmark" | "xerror" | "copytb" | "reinit_filter" => Flag,

        "i" => Input,
        "f" => Format,
        "vf" | "af" | "filter" | "filter_complex" | "lavfi" => Filter,
        "hls_segment_filename" | "segment_list" => OutputPath,
        "master_pl_name" | "hls_fmp4_init_filename" | "init_seg_name" | "media_seg_name" => {
            FileName
        }
        "protocol_whitelist" => Forced("file"),
        "format_whitelist" => Forced(INPUT_FORMAT_WHITELIST),

        "c"
        | "codec"
        | "vcodec"
        | "acodec"
        | "scodec"
        | "b"
        | "ab"
        | "vb"
        | "maxrate"
        | "minrate"
        | "bufsize"
        | "crf"
        | "qp"
        | "q"
        | "qscale"
        | "qmin"
        | "qmax"
        | "preset"
        | "tune"
        | "profile"
        | "level"
        | "pix_fmt"
        | "r"
        | "fpsmax"
        | "s"
        | "aspect"
        | "g"
        | "keyint_min"
        | "sc_threshold"
        | "bf"
        | "refs"
        | "x264-params"
        | "x265-params"
        | "x264opts"
        | "svtav1-params"
        | "ar"
        | "ac"
        | "sample_fmt"
        | "channel_layout"
        | "t"
        | "ss"
        | "to"
        | "sseof"
        | "fs"
        | "frames"
        | "vframes"
        | "aframes"
        | "map"
        | "map_metadata"
        | "map_chapters"
        | "metadata"
        | "disposition"
        | "movflags"
        | "brand"
        | "tag"
        | "vtag"
        | "atag"
        | "threads"
        | "filter_threads"
        | "filter_complex_threads"
        | "pass"
        | "hls_time"
        | "hls_init_time"
        | "hls_list_size"
        | "hls_playlist_type"
        | "hls_flags"
        | "hls_segment_type"
        | "start_number"
        | "segment_time"
        | "segment_format"
        | "segment_times"
        | "reset_timestamps"
        | "vsync"
        | "fps_mode"
        | "async"
        | "stream_loop"
        | "itsoffset"
        | "itsscale"
        | "color_primaries"
        | "color_trc"
        | "colorspace"
        | "color_range"
        | "max_muxing_queue_size"
        | "row-mt"
        | "tile-columns"
        | "tile-rows"
        | "deadline"
        | "cpu-used"
        | "speed"
        | "lag-in-frames"
        | "auto-alt-ref"
        | "quality"
        | "force_key_frames"
        | "strict"
        | "probesize"
        | "analyzeduration"
        | "fflags"
        | "avoid_negative_ts"
        | "max_interleave_delta"
        | "muxdelay"
        | "muxpreload"
        | "frag_duration"
        | "min_frag_duration"
        | "frag_size"
        | "seg_duration"
        | "window_size"
        | "extra_window_size"
        | "use_template"
        | "use_timeline"
        | "adaptation_sets"
        | "dash_segment_type"
        | "vbr"
        | "application"
        | "compression_level"
        | "cutoff"
        | "aq-mode"
        | "trellis"
        | "bsf"
        | "update"
        | "frame_pts"
        | "id3v2_version"
        | "write_id3v1"
        | "max_delay"
        | "thread_queue_size"
        | "timecode"
        | "rc_lookahead"
        | "nal-hrd"
        | "coder"
        | "lossless"
        | "sws_flags"
        | "loglevel"
        | "v"
        | "frame_size"
        | "apad"
        | "shortest_buf_duration"
        | "enc_time_base"
        | "timelimit"
        | "dpi"
        | "lavfi_complex"
        | "target"
        | "qscale_v"
        | "global_quality"
        | "b_strategy"
        | "flags"
        | "movflags_extra"
        | "write_tmcd"
        | "hls_start_number_source"
        | "hls_delete_threshold"
        | "segment_list_type"
        | "segment_list_size"
        | "segment_wrap"
        | "segment_start_number"
        | "streamid"
        | "program"
        | "forced_subs_only"
        | "canvas_size"
        | "fix_sub_duration"
        | "display_rotation"
        | "display_hflip"
        | "display_vflip"
        | "ignore_editlist"
        | "use_wallclock_as_timestamps"
        | "skip_frame"
        | "discard"
        | "top"
        | "field_order" => Text,

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
        | "key_info_file" => Forbidden(READS_FILE),
        "vstats" | "vstats_file" | "vstats_version" | "report" | "passlogfile" | "sdp_file"
        | "progress" | "stats_enc_pre" | "stats_enc_post" | "stats_mux_pre" => {
            Forbidden(WRITES_FILE)
        }
        "protocol_blacklist"
        | "safe"
        | "allowed_extensions"
        | "allowed_segment_extensions"
        | "stdin"
        | "extension_picky"
        | "hls_base_url" => Forbidden(OVERRIDE),
        "hwaccel"
        | "hwaccel_device"
        | "hwaccel_output_format"
        | "init_hw_device"
        | "filter_hw_device"
        | "vaapi_device"
        | "qsv_device" => Forbidden(HW),
        _ => return None,
    })
}

/// Formats that may not be used to read an input: they read other files, devices or the network,
/// or synthesise input from a filter graph.
const INPUT_FORMAT_DENY: &[&str] = &[
    "lavfi",
    "concat",
    "hls",
    "applehttp",
    "dash",
    "image2",
    "image2pipe",
    "sdp",
    "rtp",
    "rtsp",
    "v4l2",
    "video4linux2",
    "x11grab",
    "alsa",
    "pulse",
    "fbdev",
    "kmsgrab",
    "oss",
    "jack",
    "openal",
    "libcdio",
    "dshow",
    "avfoundation",
    "gdigrab",
    "vfwcap",
    "decklink",
    "iec61883",
    "lavfi_complex",
    "mpjpeg",
    "ffmetadata",
    "tee",
    "subfile",
    "data",
    "bin",
    "tty",
    "imf",
    "mov_text",
];

/// Formats that may not be used to write an output.
const OUTPUT_FORMAT_DENY: &[&str] = &[
    "tee",
    "fifo",
    "fifo_test",
    "rtp",
    "rtp_mpegts",
    "rtsp",
    "sdl",
    "sdl2",
    "xv",
    "opengl",
    "alsa",
    "pulse",
    "oss",
    "v4l2",
    "video4linux2",
    "fbdev",
    "caca",
    "decklink",
    "chromaprint",
    "ffmetadata",
];

/// Filters that touch nothing but frames: no files, libraries, devices or sockets.
const FILTER_ALLOW: &[&str] = &[
    "scale",
    "crop",
    "pad",
    "fps",
    "format",
    "setsar",
    "setdar",
    "transpose",
    "hflip",
    "vflip",
    "rotate",
    "trim",
    "atrim",
    "setpts",
    "asetpts",
    "overlay",
    "split",
    "asplit",
    "concat",
    "null",
    "anull",
    "volume",
    "aresample",
    "aformat",
    "loudnorm",
    "yadif",
    "bwdif",
    "select",
    "aselect",
    "thumbnail",
    "tile",
    "drawbox",
    "drawgrid",
    "unsharp",
    "hqdn3d",
    "nlmeans",
    "eq",
    "colorspace",
    "colorchannelmixer",
    "hue",
    "curves",
    "amix",
    "amerge",
    "pan",
    "channelsplit",
    "channelmap",
    "atempo",
    "fade",
    "afade",
    "boxblur",
    "gblur",
    "palettegen",
    "paletteuse",
    "tpad",
    "apad",
    "showwaves",
    "showspectrum",
    "settb",
    "asettb",
    "framerate",
    "minterpolate",
    "deband",
    "deblock",
    "fieldorder",
    "idet",
    "interlace",
    "tinterlace",
    "kerndeint",
    "w3fdif",
    "setfield",
    "copy",
    "acopy",
    "noise",
    "vignette",
    "zoompan",
    "xfade",
    "acrossfade",
    "hstack",
    "vstack",
    "xstack",
    "blend",
    "chromakey",
    "colorkey",
    "lumakey",
    "alphamerge",
    "alphaextract",
    "premultiply",
    "negate",
    "lutrgb",
    "lutyuv",
    "lut",
    "geq",
    "histogram",
    "waveform",
    "vectorscope",
    "signalstats",
    "blackdetect",
    "blackframe",
    "freezedetect",
    "silencedetect",
    "silenceremove",
    "volumedetect",
    "ebur128",
    "astats",
    "highpass",
    "lowpass",
    "bandpass",
    "equalizer",
    "bass",
    "treble",
    "acompressor",
    "alimiter",
    "dynaudnorm",
    "compand",
    "aecho",
    "areverse",
    "reverse",
    "loop",
    "aloop",
    "framestep",
    "decimate",
    "mpdecimate",
    "shuffleframes",
    "cropdetect",
    "scale2ref",
    "sidedata",
    "asidedata",
    "showinfo",
    "ashowinfo",
    "extractplanes",
    "mergeplanes",
    "swapuv",
    "fillborders",
    "smartblur",
    "avgblur",
    "median",
    "super2xbrz",
    "xbr",
    "hqx",
    "sab",
    "dctdnoiz",
    "atadenoise",
    "removegrain",
    "owdenoise",
    "vaguedenoiser",
    "colorbalance",
    "colorlevels",
    "colortemperature",
    "exposure",
    "vibrance",
    "huesaturation",
    "monochrome",
    "grayworld",
    "setparams",
    "zscale",
    "tonemap",
    "thistogram",
    "limiter",
    "inflate",
    "deflate",
    "dilation",
    "erosion",
    "edgedetect",
    "sobel",
    "prewitt",
    "roberts",
    "convolution",
    "untile",
    "stereo3d",
    "v360",
    "lenscorrection",
    "perspective",
    "shear",
    "scroll",
    "random",
    "separatefields",
    "weave",
    "doubleweave",
    "telecine",
    "pullup",
    "fieldmatch",
    "dejudder",
    "haldclutsrc",
    "adelay",
    "apulsator",
    "atrim",
    "aeval",
    "asetnsamples",
    "asetrate",
    "earwax",
    "extrastereo",
    "stereotools",
    "stereowiden",
    "join",
    "amultiply",
    "anlmdn",
    "afftdn",
    "arnndn_disabled",
];

/// Filter options that name files; refused even on allowed filters.
const FILTER_FILE_OPTIONS: &[&str] = &[
    "filename",
    "file",
    "textfile",
    "fontfile",
    "f",
    "stats_file",
];

/// Protocol prefixes FFmpeg would interpret in a value.
const PROTOCOLS: &[&str] = &[
    "file",
    "concat",
    "concatf",
    "http",
    "https",
    "subfile",
    "pipe",
    "fd",
    "tcp",
    "udp",
    "udplite",
    "unix",
    "tls",
    "rtmp",
    "rtmps",
    "rtmpe",
    "rtmpt",
    "rtmpte",
    "rtmpts",
    "rtp",
    "rtsp",
    "srt",
    "srtp",
    "data",
    "crypto",
    "async",
    "cache",
    "ftp",
    "sftp",
    "gopher",
    "gophers",
    "hls",
    "icecast",
    "md5",
    "mmsh",
    "mmst",
    "prompeg",
    "sctp",
    "tee",
    "zmq",
    "ipfs",
    "ipns",
    "smb",
    "librtmp",
    "bluray",
    "ffrtmpcrypt",
    "ffrtmphttp",
    "httpproxy",
    "dash",
    "android_content",
];

/// How a single argument refers to the declared files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ref<'a> {
    Input(&'a str),
    OutputFile(&'a str),
    OutputDir(&'a str),
    OutputDirEntry(&'a str),
    Text,
}

/// Whether the validator reads a tenant's template or a rendered argv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Template,
    Rendered,
}

struct Validator<'s> {
    spec: &'s IoSpec,
    mode: Mode,
}

impl<'s> Validator<'s> {
    fn classify(&self, arg: &str) -> Result<Ref<'s>, CommandError> {
        match self.mode {
            Mode::Template => self.classify_template(arg),
            Mode::Rendered => Ok(self.classify_rendered(arg)),
        }
    }

    fn classify_template(&self, arg: &str) -> Result<Ref<'s>, CommandError> {
        if !arg.contains("{{") && !arg.contains("}}") {
            return Ok(Ref::Text);
        }
        let undeclared = || CommandError::UndeclaredPlaceholder {
            arg: arg.to_owned(),
        };
        let inner = arg.strip_prefix("{{").ok_or_else(undeclared)?;
        let (alias, rest) = inner.split_once("}}").ok_or_else(undeclared)?;
        if let Some((key, _)) = self.spec.inputs.get_key_value(alias) {
            return if rest.is_empty() {
                Ok(Ref::Input(key))
            } else {
                Err(undeclared())
            };
        }
        let (key, decl) = self
            .spec
            .outputs
            .get_key_value(alias)
            .ok_or_else(undeclared)?;
        match (decl, rest) {
            (OutputDecl::File { .. }, "") => Ok(Ref::OutputFile(key)),
            (OutputDecl::Dir { .. }, "") => Ok(Ref::OutputDir(key)),
            (OutputDecl::Dir { .. }, rest) => match rest.strip_prefix('/') {
                Some(name) if check_file_name(name).is_ok() => Ok(Ref::OutputDirEntry(key)),
                _ => Err(CommandError::ForbiddenValue {
                    arg: arg.to_owned(),
                    why: "a directory output is used as {{dir}}/name with a plain file name",
                }),
            },
            (OutputDecl::File { .. }, _) => Err(undeclared()),
        }
    }

    fn classify_rendered(&self, arg: &str) -> Ref<'s> {
        for key in self.spec.inputs.keys() {
            if self.spec.input_path(key).as_deref() == Some(arg) {
                return Ref::Input(key);
            }
        }
        for (key, decl) in &self.spec.outputs {
            let path = self.spec.output_path(key).unwrap_or_default();
            if arg == path {
                return if decl.is_dir() {
                    Ref::OutputDir(key)
                } else {
                    Ref::OutputFile(key)
                };
            }
            if decl.is_dir() {
                if let Some(name) = arg.strip_prefix(&path).and_then(|r| r.strip_prefix('/')) {
                    if check_file_name(name).is_ok() {
                        return Ref::OutputDirEntry(key);
                    }
                }
            }
        }
        Ref::Text
    }

    /// Walks the arguments (without the program name or forced prefix) and checks each.
    /// Returns the indices of the output files among `args`.
    fn validate(&self, args: &[String]) -> Result<Vec<usize>, CommandError> {
        let mut output_positions = Vec::new();
        let mut inputs_used = BTreeSet::new();
        let mut outputs_used = BTreeSet::new();
        // `-f` applies to the next input or output, whichever comes first.
        let mut pending_format: Option<(&str, &str)> = None;
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].as_str();
            let is_option = arg.len() > 1
                && arg.starts_with('-')
                && !arg[1..].starts_with(|c: char| c.is_ascii_digit());
            if !is_option {
                match self.classify(arg)? {
                    Ref::OutputFile(a) | Ref::OutputDirEntry(a) => {
                        outputs_used.insert(a);
                        output_positions.push(i);
                    }
                    _ => {
                        return Err(CommandError::NotAnOutput {
                            arg: arg.to_owned(),
                        })
                    }
                }
                if let Some((farg, fmt)) = pending_format.take() {
                    if OUTPUT_FORMAT_DENY.contains(&fmt) {
                        return Err(CommandError::FormatNotAllowed {
                            arg: farg.to_owned(),
                            format: fmt.to_owned(),
                        });
                    }
                }
                i += 1;
                continue;
            }
            let name = &arg[1..];
            if name.starts_with('/') {
                return Err(CommandError::ForbiddenOption {
                    arg: arg.to_owned(),
                    why: READS_FILE,
                });
            }
            let base = name.split(':').next().unwrap_or(name);
            let kind = option_kind(base).ok_or_else(|| CommandError::UnknownOption {
                arg: arg.to_owned(),
            })?;
            if kind == Kind::Flag {
                i += 1;
                continue;
            }
            if let Kind::Forbidden(why) = kind {
                return Err(CommandError::ForbiddenOption {
                    arg: arg.to_owned(),
                    why,
                });
            }
            let value = args
                .get(i + 1)
                .ok_or_else(|| CommandError::MissingValue {
                    arg: arg.to_owned(),
                })?
                .as_str();
            if value == "-i" {
                return Err(CommandError::MissingValue {
                    arg: arg.to_owned(),
                });
            }
            match kind {
                Kind::Input => match self.classify(value)? {
                    Ref::Input(a) => {
                        inputs_used.insert(a);
                        if let Some((farg, fmt)) = pending_format.take() {
                            if INPUT_FORMAT_DENY.contains(&fmt) {
                                return Err(CommandError::FormatNotAllowed {
                                    arg: farg.to_owned(),
                                    format: fmt.to_owned(),
                                });
                            }
                        }
                    }
                    _ => {
                        return Err(CommandError::NotAnInput {
                            arg: value.to_owned(),
                        })
                    }
                },
                Kind::OutputPath => match self.classify(value)? {
                    Ref::OutputDirEntry(a) => {
                        outputs_used.insert(a);
                    }
                    _ => {
                        return Err(CommandError::NotAnOutput {
                            arg: value.to_owned(),
                        })
                    }
                },
                Kind::Forced(expected) => {
                    if self.mode == Mode::Template || value != expected {
                        return Err(CommandError::ForbiddenOption {
                            arg: arg.to_owned(),
                            why: OVERRIDE,
                        });
                    }
                }
                Kind::Format => {
                    self.expect_text(value)?;
                    pending_format = Some((arg, value));
                }
                Kind::Filter => self.check_filtergraph(value)?,
                Kind::FileName => {
                    self.expect_text(value)?;
                    if check_file_name(value).is_err() {
                        return Err(CommandError::ForbiddenValue {
                            arg: value.to_owned(),
                            why: "must be a plain file name",
                        });
                    }
                }
                Kind::Text => {
                    self.expect_text(value)?;
                    check_text(value)?;
                }
                Kind::Flag | Kind::Forbidden(_) => unreachable!("handled above"),
            }
            i += 2;
        }
        if let Some(alias) = self
            .spec
            .inputs
            .keys()
            .find(|a| !inputs_used.contains(a.as_str()))
        {
            return Err(CommandError::InputUnused(alias.clone()));
        }
        if let Some(alias) = self
            .spec
            .outputs
            .keys()
            .find(|a| !outputs_used.contains(a.as_str()))
        {
            return Err(CommandError::OutputUnused(alias.clone()));
        }
        if outputs_used.is_empty() {
            return Err(CommandError::NoOutput);
        }
        Ok(output_positions)
    }

    /// A value that must not be a file reference.
    fn expect_text(&self, value: &str) -> Result<(), CommandError> {
        match self.classify(value)? {
            Ref::Text => Ok(()),
            _ => Err(CommandError::ForbiddenValue {
                arg: value.to_owned(),
                why: "inputs and outputs may only appear after -i or as output files",
            }),
        }
    }

    fn check_filtergraph(&self, graph: &str) -> Result<(), CommandError> {
        let bad = |why| CommandError::ForbiddenValue {
            arg: graph.to_owned(),
            why,
        };
        if graph.contains("{{") || graph.contains("}}") {
            return Err(CommandError::UndeclaredPlaceholder {
                arg: graph.to_owned(),
            });
        }
        if graph.contains("..") {
            return Err(bad("'..' is not allowed"));
        }
        if graph.contains("://") {
            return Err(bad("URLs are not allowed"));
        }
        for filter in split_top_level(graph, &[',', ';']) {
            let filter = strip_labels(filter.trim());
            if filter.is_empty() {
                continue;
            }
            let (name, args) = filter.split_once('=').unwrap_or((filter, ""));
            let base = name.split('@').next().unwrap_or(name).trim();
            if !FILTER_ALLOW.contains(&base) {
                return Err(CommandError::FilterNotAllowed {
                    arg: graph.to_owned(),
                    filter: base.to_owned(),
                });
            }
            for opt in split_top_level(args, &[':']) {
                let opt = opt.trim().trim_matches('\'');
                let (key, value) = match opt.split_once('=') {
                    Some((k, v)) => (k.trim(), v.trim().trim_matches('\'')),
                    None => ("", opt),
                };
                if FILTER_FILE_OPTIONS.contains(&key) {
                    return Err(bad("filter options that name files are not allowed"));
                }
                if value.starts_with('/') || value.starts_with('~') {
                    return Err(bad("absolute paths are not allowed"));
                }
            }
        }
        Ok(())
    }
}

/// Checks a plain-text value for things FFmpeg could treat as a file or URL.
fn check_text(value: &str) -> Result<(), CommandError> {
    let bad = |why| {
        Err(CommandError::ForbiddenValue {
            arg: value.to_owned(),
            why,
        })
    };
    if value.starts_with('/') || value.starts_with('~') {
        return bad("absolute paths are not allowed");
    }
    if value.split(['/', '\\']).any(|part| part == "..") {
        return bad("'..' is not allowed");
    }
    if value.contains("://") {
        return bad("URLs are not allowed");
    }
    if let Some((scheme, _)) = value.split_once(':') {
        let scheme = scheme.to_ascii_lowercase();
        if PROTOCOLS.contains(&scheme.as_str()) {
            return bad("protocol prefixes are not allowed");
        }
    }
    Ok(())
}

/// Splits on separators that are not inside brackets, quotes or escaped.
fn split_top_level<'a>(s: &'a str, seps: &[char]) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '\'' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            c if !quoted && depth == 0 && seps.contains(&c) => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Removes `[label]` pads before and after a filter.
fn strip_labels(mut f: &str) -> &str {
    while let Some(rest) = f.strip_prefix('[') {
        f = rest.split_once(']').map_or("", |(_, r)| r).trim_start();
    }
    while f.ends_with(']') {
        match f.rfind('[') {
            Some(i) => f = f[..i].trim_end(),
            None => break,
        }
    }
    f
}

/// Splits a template into arguments with shell-word rules, dropping a leading `ffmpeg`.
pub fn parse_template(template: &str) -> Result<Vec<String>, CommandError> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(CommandError::TooLong);
    }
    let mut args = shell_words::split(template).map_err(|e| CommandError::Syntax(e.to_string()))?;
    if args.first().map(String::as_str) == Some("ffmpeg") {
        args.remove(0);
    }
    if args.is_empty() {
        return Err(CommandError::Empty);
    }
    Ok(args)
}

/// Validates a template against its declared inputs and outputs.
pub fn validate(template: &str, spec: &IoSpec) -> Result<Vec<String>, CommandError> {
    let args = parse_template(template)?;
    Validator {
        spec,
        mode: Mode::Template,
    }
    .validate(&args)?;
    Ok(args)
}

/// Threads per input and output when the tenant does not say (the fleet's machines have 2 cores).
pub const DEFAULT_THREADS: u32 = 2;

/// Validates a template and renders the argv (without the program name) the worker will run.
///
/// Every input and every output gets an explicit `-threads threads` unless the tenant set
/// `-threads` for it: inside the jail FFmpeg cannot read `/proc` or `/sys` to count CPUs.
pub fn render(template: &str, spec: &IoSpec, threads: u32) -> Result<Vec<String>, CommandError> {
    let args = parse_template(template)?;
    let outputs = Validator {
        spec,
        mode: Mode::Template,
    }
    .validate(&args)?;
    let threads = threads.max(1).to_string();
    let mut argv: Vec<String> = FORCED_PREFIX.iter().map(|s| s.to_string()).collect();
    // Whether the current option group (since the last input or output) set -threads.
    let mut group_threads = false;
    let mut after_input = false;
    for (i, arg) in args.iter().enumerate() {
        let is_threads = arg == "-threads" || arg.starts_with("-threads:");
        if arg == "-i" {
            if !group_threads {
                argv.extend(["-threads".to_owned(), threads.clone()]);
            }
            argv.extend(forced_input_flags().iter().map(|s| s.to_string()));
        } else if outputs.contains(&i) && !group_threads {
            argv.extend(["-threads".to_owned(), threads.clone()]);
        }
        argv.push(substitute(arg, spec));
        if after_input || outputs.contains(&i) {
            group_threads = false;
        }
        after_input = arg == "-i";
        group_threads |= is_threads;
    }
    Ok(argv)
}

fn substitute(arg: &str, spec: &IoSpec) -> String {
    let Some(inner) = arg.strip_prefix("{{") else {
        return arg.to_owned();
    };
    let Some((alias, rest)) = inner.split_once("}}") else {
        return arg.to_owned();
    };
    if let Some(p) = spec.input_path(alias) {
        return p + rest;
    }
    match spec.output_path(alias) {
        Some(p) => p + rest,
        None => arg.to_owned(),
    }
}

/// What precedes every `-i` in a rendered command: only local files, only whitelisted demuxers,
/// bounded probing.
pub fn forced_input_flags() -> [&'static str; 6] {
    [
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        INPUT_FORMAT_WHITELIST,
        "-probesize",
        PROBE_SIZE,
    ]
}

/// The worker's second check of a rendered argv (without the program name).
pub fn check_rendered(argv: &[String], spec: &IoSpec) -> Result<(), CommandError> {
    let n = FORCED_PREFIX.len();
    if argv.len() < n || argv[..n].iter().zip(FORCED_PREFIX).any(|(a, b)| a != b) {
        return Err(CommandError::MissingForcedPrefix);
    }
    let rest = &argv[n..];
    // Every -i must be preceded by the forced input flags.
    let forced = forced_input_flags();
    for (i, a) in rest.iter().enumerate() {
        if a == "-i"
            && (i < forced.len()
                || rest[i - forced.len()..i]
                    .iter()
                    .zip(forced)
                    .any(|(x, y)| x != y))
        {
            return Err(CommandError::ForbiddenOption {
                arg: "-i".into(),
                why: OVERRIDE,
            });
        }
    }
    Validator {
        spec,
        mode: Mode::Rendered,
    }
    .validate(rest)
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> IoSpec {
        let mut s = IoSpec::default();
        s.add_input("in", "clip.mov").unwrap();
        s.add_input("logo", "logo.png").unwrap();
        s.add_output("out", "out.mp4").unwrap();
        s.add_output("hls", "hls/").unwrap();
        s
    }

    const VALID: &str =
        "-i {{in}} -i {{logo}} -filter_complex '[0:v][1:v]overlay=10:10,scale=160:-2[v]' \
        -map '[v]' -c:v libx264 -preset veryfast {{out}} \
        -map 0:v -f hls -hls_time 2 -hls_segment_filename {{hls}}/seg_%03d.ts {{hls}}/index.m3u8";

    #[test]
    fn valid_templates_render_to_fixed_paths() {
        let argv = render(VALID, &spec(), DEFAULT_THREADS).unwrap();
        let joined = argv.join(" ");
        assert!(joined.starts_with("-hide_banner -nostdin -nostats -y -progress pipe:1 "));
        let forced = forced_input_flags().join(" ");
        assert!(
            joined.contains(&format!(
                "-threads 2 {forced} -i in/in.mov -threads 2 {forced} -i in/logo.png"
            )),
            "{joined}"
        );
        assert!(joined.contains(" out/out/out.mp4 "));
        assert!(joined
            .contains("-hls_segment_filename out/hls/seg_%03d.ts -threads 2 out/hls/index.m3u8"));
        assert!(joined.contains("overlay=10:10,scale=160:-2[v]"));
        check_rendered(&argv, &spec()).unwrap();
    }

    #[test]
    fn accepted_forms() {
        let mut s = IoSpec::default();
        s.add_input("in", "a.mp4").unwrap();
        s.add_output("out", "b.mp4").unwrap();
        let ok = [
            "-i {{in}} {{out}}",
            "ffmpeg -i {{in}} -vf scale=160:-2 {{out}}",
            "-ss 00:00:01.5 -i {{in}} -t 2 -c:v libx264 -crf 23 -c:a aac -b:a 128k {{out}}",
            "-i {{in}} -vf \"scale=w=640:h=-2:flags=lanczos,fps=25\" -pix_fmt yuv420p {{out}}",
            "-i {{in}} -af 'volume=0.5,aresample=48000' {{out}}",
            "-i {{in}} -metadata title=\"A: B\" -movflags +faststart {{out}}",
            "-i {{in}} -map 0:v:0 -map 0:a? -c copy {{out}}",
            "-i {{in}} -vf drawbox=x=10:y=10:w=100:h=100:color=red@0.5 {{out}}",
            "-i {{in}} -x264-params keyint=50:min-keyint=50 -c:v libx264 {{out}}",
        ];
        for t in ok {
            let argv = render(t, &s, DEFAULT_THREADS).unwrap_or_else(|e| panic!("{t}: {e}"));
            check_rendered(&argv, &s).unwrap_or_else(|e| panic!("{t} rendered: {e}"));
        }
    }

    #[test]
    fn refused_forms_name_the_argument() {
        let s = spec();
        let base = "-i {{logo}} -f hls -hls_segment_filename {{hls}}/s%d.ts {{hls}}/i.m3u8";
        let cases: &[(&str, &str)] = &[
            ("-i /etc/passwd {{out}}", "/etc/passwd"),
            (
                "-i http://example.invalid/x.mp4 {{out}}",
                "http://example.invalid/x.mp4",
            ),
            (
                "-i concat:{{in}}|{{logo}} {{out}}",
                "concat:{{in}}|{{logo}}",
            ),
            ("-i file:{{in}} {{out}}", "file:{{in}}"),
            ("-i ../in.mov {{out}}", "../in.mov"),
            ("-i {{in}} /tmp/out.mp4", "/tmp/out.mp4"),
            ("-i {{in}} ../out.mp4", "../out.mp4"),
            ("-i {{in}} {{nope}}", "{{nope}}"),
            ("-i {{nope}} {{out}}", "{{nope}}"),
            ("-i {{in}} -metadata title={{out}} {{out}}", "title={{out}}"),
            ("-i {{in}} -metadata {{out}} {{out}}", "{{out}}"),
            (
                "-i {{in}} -vf movie=/etc/passwd {{out}}",
                "movie=/etc/passwd",
            ),
            ("-i {{in}} -vf subtitles=x.srt {{out}}", "subtitles=x.srt"),
            ("-i {{in}} -vf scale=1:1,../x {{out}}", "scale=1:1,../x"),
            ("-i {{in}} -filter_script f.txt {{out}}", "-filter_script"),
            ("-f lavfi -i {{in}} {{out}}", "-f"),
            ("-f concat -safe 0 -i {{in}} {{out}}", "-safe"),
            ("-i {{in}} -f tee {{out}}", "-f"),
            (
                "-protocol_whitelist file,http -i {{in}} {{out}}",
                "-protocol_whitelist",
            ),
            ("-i {{in}} -progress p {{out}}", "-progress"),
            ("-i {{in}} -/filter f {{out}}", "-/filter"),
            ("-i {{in}} -frobnicate 1 {{out}}", "-frobnicate"),
            ("-i {{in}} -c:v", "-c:v"),
            ("-i {{in}} -preset subfile:x {{out}}", "subfile:x"),
            ("-i {{in}} {{hls}} ", "{{hls}}"),
            ("-i {{in}} {{hls}}/../x {{out}}", "{{hls}}/../x"),
            ("-i {{in}} -hwaccel cuda {{out}}", "-hwaccel"),
        ];
        for (t, arg) in cases {
            let full = format!("{t} {base}");
            let err = render(&full, &s, DEFAULT_THREADS).unwrap_err();
            assert_eq!(err.argument(), Some(*arg), "{full}: {err}");
            assert!(err.to_string().contains(arg), "{err}");
        }
    }

    #[test]
    fn declared_but_unused_is_refused() {
        let s = spec();
        assert_eq!(
            render("-i {{in}} {{out}}", &s, DEFAULT_THREADS).unwrap_err(),
            CommandError::InputUnused("logo".into())
        );
        let mut one = IoSpec::default();
        one.add_input("in", "a").unwrap();
        one.add_output("out", "o.mp4").unwrap();
        assert_eq!(
            render("-i {{in}} -vn", &one, DEFAULT_THREADS).unwrap_err(),
            CommandError::OutputUnused("out".into())
        );
        assert!(matches!(
            render("'unterminated", &one, DEFAULT_THREADS),
            Err(CommandError::Syntax(_))
        ));
        assert_eq!(
            render("ffmpeg", &one, DEFAULT_THREADS).unwrap_err(),
            CommandError::Empty
        );
    }

    #[test]
    fn rendered_check_catches_tampering() {
        let mut s = IoSpec::default();
        s.add_input("in", "a.mp4").unwrap();
        s.add_output("out", "b.mp4").unwrap();
        let good = render("-i {{in}} {{out}}", &s, DEFAULT_THREADS).unwrap();
        let tamper = |f: &dyn Fn(&mut Vec<String>)| {
            let mut v = good.clone();
            f(&mut v);
            check_rendered(&v, &s)
        };
        assert!(tamper(&|v| v.remove(0).clear()).is_err());
        assert!(tamper(
            &|v| *v.iter_mut().find(|a| *a == "in/in.mp4").unwrap() = "/etc/passwd".into()
        )
        .is_err());
        assert!(tamper(
            &|v| *v.iter_mut().rev().find(|a| *a == "file").unwrap() = "file,http".into()
        )
        .is_err());
        assert!(tamper(&|v| *v.last_mut().unwrap() = "/tmp/x.mp4".into()).is_err());
        assert!(tamper(&|v| {
            let i = v.iter().position(|a| a == "-protocol_whitelist").unwrap();
            v.drain(i..i + 2);
        })
        .is_err());
    }

    #[test]
    fn threads_are_explicit_unless_the_tenant_set_them() {
        let mut s = IoSpec::default();
        s.add_input("a", "a.mp4").unwrap();
        s.add_input("b", "b.mp4").unwrap();
        s.add_output("x", "x.mp4").unwrap();
        s.add_output("y", "y.mp4").unwrap();
        let argv = render(
            "-threads 8 -i {{a}} -i {{b}} -c:v libx264 {{x}} -threads:v 3 {{y}}",
            &s,
            2,
        )
        .unwrap();
        let joined = argv.join(" ");
        let forced = forced_input_flags().join(" ");
        let cases = [
            format!("-threads 8 {forced} -i in/a.mp4"),
            format!("-threads 2 {forced} -i in/b.mp4"),
            "-c:v libx264 -threads 2 out/x/x.mp4".to_owned(),
            "-threads:v 3 out/y/y.mp4".to_owned(),
        ];
        for want in cases {
            assert!(joined.contains(&want), "{want:?} not in {joined}");
        }
        assert_eq!(
            argv.iter().filter(|a| *a == "-threads").count(),
            3,
            "{joined}"
        );
        check_rendered(&argv, &s).unwrap();
    }

    #[test]
    fn output_paths_map_back_to_aliases() {
        let s = spec();
        assert_eq!(s.output_of("out/out.mp4"), Some(("out", "out.mp4")));
        assert_eq!(s.output_of("hls/seg_001.ts"), Some(("hls", "seg_001.ts")));
        assert_eq!(s.output_of("out/other.mp4"), None);
        assert_eq!(s.output_of("hls/../x"), None);
        assert_eq!(s.output_of("nope/x"), None);
        assert_eq!(s.output_of("hls/sub/x.ts"), None);
    }
}
