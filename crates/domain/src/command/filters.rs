//! The filter allowlist: filters that only transform frames (no files, libraries, devices,
//! sockets or stats files), each with the options a tenant may set and a value grammar per option.
//! `positional` lists the option names FFmpeg 5.1 assigns shorthand values to, in its declared
//! order (aliases sharing an offset skipped), as far as this table allows positional use; the
//! oracle test checks them against FFmpeg's own trace.

use super::grammar::G;

pub struct FilterSpec {
    pub name: &'static str,
    pub positional: &'static [&'static str],
    pub options: &'static [(&'static str, G)],
}

impl FilterSpec {
    pub fn option(&self, key: &str) -> Option<(&'static str, G)> {
        self.options.iter().find(|(n, _)| *n == key).copied()
    }
}

/// Options of every filter context (timeline support).
pub const GENERIC: &[(&str, G)] = &[("enable", G::Expr)];

const BOOL: G = G::Kw(&["0", "1", "true", "false"]);
const EVAL: G = G::Kw(&["init", "frame"]);
const I32: G = G::Int(0, i32::MAX as i64);

pub const SWS_FLAGS: &[&str] = &[
    "fast_bilinear",
    "bilinear",
    "bicubic",
    "experimental",
    "neighbor",
    "area",
    "bicublin",
    "gauss",
    "sinc",
    "lanczos",
    "spline",
    "accurate_rnd",
    "full_chroma_int",
    "full_chroma_inp",
    "bitexact",
];

pub const PIX_FMTS: &[&str] = &[
    "yuv420p",
    "yuv422p",
    "yuv444p",
    "yuvj420p",
    "yuvj422p",
    "yuvj444p",
    "yuva420p",
    "nv12",
    "nv21",
    "rgb24",
    "bgr24",
    "rgba",
    "bgra",
    "argb",
    "abgr",
    "gray",
    "gray10le",
    "yuv420p10le",
    "yuv422p10le",
    "yuv444p10le",
    "rgb48le",
    "gbrp",
    "pal8",
    "monob",
];

pub const SAMPLE_FMTS: &[&str] = &[
    "u8", "s16", "s32", "flt", "dbl", "s64", "u8p", "s16p", "s32p", "fltp", "dblp", "s64p",
];

pub const CHANNEL_LAYOUTS: &[&str] = &[
    "mono", "stereo", "2.1", "3.0", "4.0", "quad", "5.0", "5.1", "6.1", "7.1",
];

const SIZE_EXPR: G = G::Expr;
const COLOR: G = G::Color;
const RANGE: G = G::Kw(&[
    "auto", "unknown", "full", "limited", "jpeg", "mpeg", "tv", "pc",
]);
const TRIM: &[(&str, G)] = &[
    ("start", G::Dur),
    ("end", G::Dur),
    ("duration", G::Dur),
    ("start_pts", G::Int(i64::MIN + 1, i64::MAX)),
    ("end_pts", G::Int(i64::MIN + 1, i64::MAX)),
    ("start_frame", G::Int(0, i64::MAX)),
    ("end_frame", G::Int(0, i64::MAX)),
];
const ATRIM: &[(&str, G)] = &[
    ("start", G::Dur),
    ("end", G::Dur),
    ("duration", G::Dur),
    ("start_pts", G::Int(i64::MIN + 1, i64::MAX)),
    ("end_pts", G::Int(i64::MIN + 1, i64::MAX)),
    ("start_sample", G::Int(0, i64::MAX)),
    ("end_sample", G::Int(0, i64::MAX)),
];
const PASS_FILTER: &[(&str, G)] = &[
    ("frequency", G::Num),
    ("f", G::Num),
    ("width_type", G::Kw(&["h", "q", "o", "s", "k"])),
    ("t", G::Kw(&["h", "q", "o", "s", "k"])),
    ("width", G::Num),
    ("w", G::Num),
    ("poles", G::Int(1, 2)),
    ("p", G::Int(1, 2)),
    ("mix", G::Num),
    ("m", G::Num),
];
const DEINT: &[(&str, G)] = &[
    (
        "mode",
        G::Kw(&[
            "0",
            "1",
            "2",
            "3",
            "send_frame",
            "send_field",
            "send_frame_nospatial",
            "send_field_nospatial",
        ]),
    ),
    ("parity", G::Kw(&["tff", "bff", "auto", "0", "1", "-1"])),
    ("deint", G::Kw(&["all", "interlaced", "0", "1"])),
];
const AFADE_CURVES: G = G::Kw(&[
    "tri", "qsin", "hsin", "esin", "log", "ipar", "qua", "cub", "squ", "cbr", "par", "exp",
    "iqsin", "ihsin", "dese", "desi", "losi", "sinc", "isinc", "nofade",
]);

macro_rules! f {
    ($name:literal, [$($pos:literal),*], [$(($k:literal, $g:expr)),* $(,)?]) => {
        FilterSpec { name: $name, positional: &[$($pos),*], options: &[$(($k, $g)),*] }
    };
}

pub static FILTERS: &[FilterSpec] = &[
    f!(
        "scale",
        ["w", "h", "flags", "interl"],
        [
            ("w", SIZE_EXPR),
            ("width", SIZE_EXPR),
            ("h", SIZE_EXPR),
            ("height", SIZE_EXPR),
            ("flags", G::Flags(SWS_FLAGS)),
            ("interl", G::Int(-1, 1)),
            (
                "force_original_aspect_ratio",
                G::Kw(&["disable", "decrease", "increase", "0", "1", "2"])
            ),
            ("force_divisible_by", G::Int(1, 256)),
            ("eval", EVAL),
            ("in_range", RANGE),
            ("out_range", RANGE),
        ]
    ),
    f!(
        "crop",
        ["out_w", "out_h", "x", "y", "keep_aspect", "exact"],
        [
            ("out_w", G::Expr),
            ("w", G::Expr),
            ("out_h", G::Expr),
            ("h", G::Expr),
            ("x", G::Expr),
            ("y", G::Expr),
            ("keep_aspect", BOOL),
            ("exact", BOOL),
        ]
    ),
    f!(
        "pad",
        ["width", "height", "x", "y", "color"],
        [
            ("width", G::Expr),
            ("w", G::Expr),
            ("height", G::Expr),
            ("h", G::Expr),
            ("x", G::Expr),
            ("y", G::Expr),
            ("color", COLOR),
            ("eval", EVAL),
            ("aspect", G::Ratio),
        ]
    ),
    f!(
        "fps",
        ["fps", "start_time", "round", "eof_action"],
        [
            ("fps", G::Fps),
            ("start_time", G::Num),
            ("round", G::Kw(&["zero", "inf", "down", "up", "near"])),
            ("eof_action", G::Kw(&["round", "pass"])),
        ]
    ),
    f!("format", ["pix_fmts"], [("pix_fmts", G::List(PIX_FMTS))]),
    f!(
        "setsar",
        ["sar", "max"],
        [
            ("sar", G::Ratio),
            ("ratio", G::Ratio),
            ("r", G::Ratio),
            ("max", G::Int(1, i32::MAX as i64))
        ]
    ),
    f!(
        "setdar",
        ["dar", "max"],
        [
            ("dar", G::Ratio),
            ("ratio", G::Ratio),
            ("r", G::Ratio),
            ("max", G::Int(1, i32::MAX as i64))
        ]
    ),
    f!(
        "transpose",
        ["dir", "passthrough"],
        [
            (
                "dir",
                G::Kw(&[
                    "0",
                    "1",
                    "2",
                    "3",
                    "cclock_flip",
                    "clock",
                    "cclock",
                    "clock_flip"
                ])
            ),
            ("passthrough", G::Kw(&["none", "portrait", "landscape"])),
        ]
    ),
    f!("hflip", [], []),
    f!("vflip", [], []),
    f!(
        "rotate",
        ["angle", "out_w", "out_h", "fillcolor", "bilinear"],
        [
            ("angle", G::Expr),
            ("a", G::Expr),
            ("out_w", G::Expr),
            ("ow", G::Expr),
            ("out_h", G::Expr),
            ("oh", G::Expr),
            ("fillcolor", COLOR),
            ("c", COLOR),
            ("bilinear", BOOL),
        ]
    ),
    FilterSpec {
        name: "trim",
        positional: &[],
        options: TRIM,
    },
    FilterSpec {
        name: "atrim",
        positional: &[],
        options: ATRIM,
    },
    f!("setpts", ["expr"], [("expr", G::Expr)]),
    f!("asetpts", ["expr"], [("expr", G::Expr)]),
    f!("settb", ["expr"], [("expr", G::Expr), ("tb", G::Expr)]),
    f!("asettb", ["expr"], [("expr", G::Expr), ("tb", G::Expr)]),
    f!(
        "overlay",
        ["x", "y"],
        [
            ("x", G::Expr),
            ("y", G::Expr),
            ("eof_action", G::Kw(&["repeat", "endall", "pass"])),
            ("eval", EVAL),
            ("shortest", BOOL),
            ("repeatlast", BOOL),
            (
                "format",
                G::Kw(&[
                    "yuv420",
                    "yuv420p10",
                    "yuv422",
                    "yuv422p10",
                    "yuv444",
                    "rgb",
                    "gbrp",
                    "auto"
                ])
            ),
            ("alpha", G::Kw(&["straight", "premultiplied"])),
        ]
    ),
    f!("split", ["outputs"], [("outputs", G::Int(1, 16))]),
    f!("asplit", ["outputs"], [("outputs", G::Int(1, 16))]),
    f!(
        "concat",
        [],
        [
            ("n", G::Int(1, 64)),
            ("v", G::Int(0, 8)),
            ("a", G::Int(0, 8)),
            ("unsafe", BOOL)
        ]
    ),
    f!("null", [], []),
    f!("anull", [], []),
    FilterSpec {
        name: "yadif",
        positional: &["mode", "parity", "deint"],
        options: DEINT,
    },
    FilterSpec {
        name: "bwdif",
        positional: &["mode", "parity", "deint"],
        options: DEINT,
    },
    f!(
        "select",
        ["expr", "outputs"],
        [
            ("expr", G::Expr),
            ("e", G::Expr),
            ("outputs", G::Int(1, 16)),
            ("n", G::Int(1, 16))
        ]
    ),
    f!(
        "aselect",
        ["expr", "outputs"],
        [
            ("expr", G::Expr),
            ("e", G::Expr),
            ("outputs", G::Int(1, 16)),
            ("n", G::Int(1, 16))
        ]
    ),
    f!("thumbnail", ["n"], [("n", G::Int(2, 10000))]),
    f!(
        "tile",
        ["layout", "nb_frames", "margin", "padding", "color"],
        [
            ("layout", G::Size),
            ("nb_frames", G::Int(0, 1024)),
            ("margin", G::Int(0, 1024)),
            ("padding", G::Int(0, 1024)),
            ("color", COLOR),
            ("overlap", G::Int(0, 1024)),
            ("init_padding", G::Int(0, 1024)),
        ]
    ),
    f!(
        "drawbox",
        ["x", "y", "width", "height", "color", "thickness", "replace"],
        [
            ("x", G::Expr),
            ("y", G::Expr),
            ("width", G::Expr),
            ("w", G::Expr),
            ("height", G::Expr),
            ("h", G::Expr),
            ("color", COLOR),
            ("c", COLOR),
            ("thickness", G::Expr),
            ("t", G::Expr),
            ("replace", BOOL),
        ]
    ),
    f!(
        "eq",
        ["contrast", "brightness", "saturation", "gamma"],
        [
            ("contrast", G::Expr),
            ("brightness", G::Expr),
            ("saturation", G::Expr),
            ("gamma", G::Expr),
            ("gamma_r", G::Expr),
            ("gamma_g", G::Expr),
            ("gamma_b", G::Expr),
            ("gamma_weight", G::Expr),
            ("eval", EVAL),
        ]
    ),
    f!(
        "palettegen",
        [
            "max_colors",
            "reserve_transparent",
            "transparency_color",
            "stats_mode"
        ],
        [
            ("max_colors", G::Int(2, 256)),
            ("reserve_transparent", BOOL),
            ("transparency_color", COLOR),
            ("stats_mode", G::Kw(&["full", "diff", "single"])),
        ]
    ),
    f!(
        "paletteuse",
        [
            "dither",
            "bayer_scale",
            "diff_mode",
            "new",
            "alpha_threshold"
        ],
        [
            (
                "dither",
                G::Kw(&[
                    "bayer",
                    "heckbert",
                    "floyd_steinberg",
                    "sierra2",
                    "sierra2_4a",
                    "sierra3",
                    "burkes",
                    "atkinson",
                    "none"
                ])
            ),
            ("bayer_scale", G::Int(0, 5)),
            ("diff_mode", G::Kw(&["rectangle", "none"])),
            ("new", BOOL),
            ("alpha_threshold", G::Int(0, 255)),
        ]
    ),
    f!(
        "hstack",
        ["inputs", "shortest"],
        [("inputs", G::Int(2, 16)), ("shortest", BOOL)]
    ),
    f!(
        "vstack",
        ["inputs", "shortest"],
        [("inputs", G::Int(2, 16)), ("shortest", BOOL)]
    ),
    f!(
        "xstack",
        ["inputs", "layout"],
        [
            ("inputs", G::Int(2, 16)),
            ("layout", G::StackLayout),
            ("grid", G::Size),
            ("shortest", BOOL),
            ("fill", COLOR),
        ]
    ),
    f!(
        "xfade",
        ["transition", "duration", "offset"],
        [
            (
                "transition",
                G::Kw(&[
                    "fade",
                    "wipeleft",
                    "wiperight",
                    "wipeup",
                    "wipedown",
                    "slideleft",
                    "slideright",
                    "slideup",
                    "slidedown",
                    "circlecrop",
                    "rectcrop",
                    "distance",
                    "fadeblack",
                    "fadewhite",
                    "radial",
                    "smoothleft",
                    "smoothright",
                    "smoothup",
                    "smoothdown",
                    "circleopen",
                    "circleclose",
                    "vertopen",
                    "vertclose",
                    "horzopen",
                    "horzclose",
                    "dissolve",
                    "pixelize",
                    "diagtl",
                    "diagtr",
                    "diagbl",
                    "diagbr",
                    "hlslice",
                    "hrslice",
                    "vuslice",
                    "vdslice",
                    "hblur",
                    "fadegrays",
                    "wipetl",
                    "wipetr",
                    "wipebl",
                    "wipebr",
                    "squeezeh",
                    "squeezev",
                    "zoomin",
                ])
            ),
            ("duration", G::Dur),
            ("offset", G::Dur),
        ]
    ),
    f!(
        "hqdn3d",
        ["luma_spatial", "chroma_spatial", "luma_tmp", "chroma_tmp"],
        [
            ("luma_spatial", G::Num),
            ("chroma_spatial", G::Num),
            ("luma_tmp", G::Num),
            ("chroma_tmp", G::Num),
        ]
    ),
    f!(
        "unsharp",
        [
            "luma_msize_x",
            "luma_msize_y",
            "luma_amount",
            "chroma_msize_x",
            "chroma_msize_y",
            "chroma_amount"
        ],
        [
            ("luma_msize_x", G::Int(3, 23)),
            ("lx", G::Int(3, 23)),
            ("luma_msize_y", G::Int(3, 23)),
            ("ly", G::Int(3, 23)),
            ("luma_amount", G::Num),
            ("la", G::Num),
            ("chroma_msize_x", G::Int(3, 23)),
            ("cx", G::Int(3, 23)),
            ("chroma_msize_y", G::Int(3, 23)),
            ("cy", G::Int(3, 23)),
            ("chroma_amount", G::Num),
            ("ca", G::Num),
        ]
    ),
    f!(
        "fade",
        ["type", "start_frame", "nb_frames"],
        [
            ("type", G::Kw(&["in", "out"])),
            ("t", G::Kw(&["in", "out"])),
            ("start_frame", I32),
            ("s", I32),
            ("nb_frames", I32),
            ("n", I32),
            ("alpha", BOOL),
            ("start_time", G::Dur),
            ("st", G::Dur),
            ("duration", G::Dur),
            ("d", G::Dur),
            ("color", COLOR),
            ("c", COLOR),
        ]
    ),
    f!(
        "afade",
        ["type", "start_sample", "nb_samples"],
        [
            ("type", G::Kw(&["in", "out"])),
            ("t", G::Kw(&["in", "out"])),
            ("start_sample", G::Int(0, i64::MAX)),
            ("ss", G::Int(0, i64::MAX)),
            ("nb_samples", G::Int(1, i32::MAX as i64)),
            ("ns", G::Int(1, i32::MAX as i64)),
            ("start_time", G::Dur),
            ("st", G::Dur),
            ("duration", G::Dur),
            ("d", G::Dur),
            ("curve", AFADE_CURVES),
            ("c", AFADE_CURVES),
        ]
    ),
    f!(
        "boxblur",
        ["luma_radius", "luma_power", "chroma_radius", "chroma_power"],
        [
            ("luma_radius", G::Expr),
            ("lr", G::Expr),
            ("luma_power", G::Int(0, 100)),
            ("lp", G::Int(0, 100)),
            ("chroma_radius", G::Expr),
            ("cr", G::Expr),
            ("chroma_power", G::Int(-1, 100)),
            ("cp", G::Int(-1, 100)),
        ]
    ),
    f!(
        "gblur",
        ["sigma", "steps", "planes", "sigmaV"],
        [
            ("sigma", G::Num),
            ("steps", G::Int(1, 6)),
            ("planes", G::Int(0, 15)),
            ("sigmaV", G::Num),
        ]
    ),
    f!(
        "tpad",
        [
            "start",
            "stop",
            "start_mode",
            "stop_mode",
            "start_duration",
            "stop_duration",
            "color"
        ],
        [
            ("start", G::Int(0, 100_000)),
            ("stop", G::Int(-1, 100_000)),
            ("start_mode", G::Kw(&["add", "clone"])),
            ("stop_mode", G::Kw(&["add", "clone"])),
            ("start_duration", G::Dur),
            ("stop_duration", G::Dur),
            ("color", COLOR),
        ]
    ),
    f!(
        "volume",
        ["volume", "precision", "eval"],
        [
            ("volume", G::Expr),
            ("precision", G::Kw(&["fixed", "float", "double"])),
            ("eval", G::Kw(&["once", "frame"])),
        ]
    ),
    f!(
        "aresample",
        ["sample_rate"],
        [("sample_rate", G::Int(1, 768_000))]
    ),
    f!(
        "aformat",
        ["sample_fmts", "sample_rates", "channel_layouts"],
        [
            ("sample_fmts", G::List(SAMPLE_FMTS)),
            ("f", G::List(SAMPLE_FMTS)),
            ("sample_rates", G::Numbers),
            ("r", G::Numbers),
            ("channel_layouts", G::List(CHANNEL_LAYOUTS)),
            ("cl", G::List(CHANNEL_LAYOUTS)),
        ]
    ),
    f!(
        "loudnorm",
        [],
        [
            ("I", G::Num),
            ("i", G::Num),
            ("LRA", G::Num),
            ("lra", G::Num),
            ("TP", G::Num),
            ("tp", G::Num),
            ("measured_I", G::Num),
            ("measured_i", G::Num),
            ("measured_LRA", G::Num),
            ("measured_lra", G::Num),
            ("measured_TP", G::Num),
            ("measured_tp", G::Num),
            ("measured_thresh", G::Num),
            ("offset", G::Num),
            ("linear", BOOL),
            ("dual_mono", BOOL),
            ("print_format", G::Kw(&["none", "json", "summary"])),
        ]
    ),
    f!(
        "amix",
        [
            "inputs",
            "duration",
            "dropout_transition",
            "weights",
            "normalize"
        ],
        [
            ("inputs", G::Int(2, 32)),
            ("duration", G::Kw(&["longest", "shortest", "first"])),
            ("dropout_transition", G::Num),
            ("weights", G::Numbers),
            ("normalize", BOOL),
        ]
    ),
    f!("amerge", ["inputs"], [("inputs", G::Int(1, 64))]),
    f!("atempo", ["tempo"], [("tempo", G::Num)]),
    f!(
        "apad",
        [
            "packet_size",
            "pad_len",
            "whole_len",
            "pad_dur",
            "whole_dur"
        ],
        [
            ("packet_size", G::Int(0, 1 << 20)),
            ("pad_len", G::Int(-1, i64::MAX)),
            ("whole_len", G::Int(-1, i64::MAX)),
            ("pad_dur", G::Dur),
            ("whole_dur", G::Dur),
        ]
    ),
    f!(
        "acrossfade",
        ["nb_samples", "duration", "overlap", "curve1", "curve2"],
        [
            ("nb_samples", G::Int(1, i32::MAX as i64)),
            ("ns", G::Int(1, i32::MAX as i64)),
            ("duration", G::Dur),
            ("d", G::Dur),
            ("overlap", BOOL),
            ("o", BOOL),
            ("curve1", AFADE_CURVES),
            ("c1", AFADE_CURVES),
            ("curve2", AFADE_CURVES),
            ("c2", AFADE_CURVES),
        ]
    ),
    FilterSpec {
        name: "highpass",
        positional: &["frequency", "width_type", "width", "poles", "mix"],
        options: PASS_FILTER,
    },
    FilterSpec {
        name: "lowpass",
        positional: &["frequency", "width_type", "width", "poles", "mix"],
        options: PASS_FILTER,
    },
    f!(
        "adelay",
        ["delays", "all"],
        [("delays", G::Delays), ("all", BOOL)]
    ),
    f!("negate", [], [("negate_alpha", BOOL)]),
    f!("copy", [], []),
    f!("acopy", [], []),
    f!("framestep", ["step"], [("step", G::Int(1, 100_000))]),
    f!("reverse", [], []),
    f!("areverse", [], []),
    // Burnt-in subtitles (libass). The file is only ever a declared input (its extension
    // checked against the filter, its content against the demuxer by the worker before the job
    // runs); fonts come from the platform's fontconfig, so `fontsdir` is absent, and `charenc`
    // (an iconv name) is one of a fixed list.
    f!(
        "subtitles",
        ["filename", "original_size"],
        [
            ("filename", G::InputFile),
            ("f", G::InputFile),
            ("original_size", G::Size),
            ("alpha", BOOL),
            ("charenc", G::Kw(CHARENCS)),
            ("stream_index", G::Int(-1, 99)),
            ("si", G::Int(-1, 99)),
            ("force_style", G::AssStyle),
        ]
    ),
    f!(
        "ass",
        ["filename", "original_size"],
        [
            ("filename", G::InputFile),
            ("f", G::InputFile),
            ("original_size", G::Size),
            ("alpha", BOOL),
            (
                "shaping",
                G::Kw(&["auto", "simple", "complex", "-1", "0", "1"])
            ),
        ]
    ),
];

/// Character encodings a subtitle file may be declared in (`charenc`, read by iconv).
pub const CHARENCS: &[&str] = &[
    "UTF-8",
    "UTF-16",
    "UTF-16LE",
    "UTF-16BE",
    "ASCII",
    "ISO-8859-1",
    "ISO-8859-2",
    "ISO-8859-5",
    "ISO-8859-7",
    "ISO-8859-9",
    "ISO-8859-15",
    "CP1250",
    "CP1251",
    "CP1252",
    "CP1253",
    "CP1254",
    "CP1255",
    "CP1256",
    "KOI8-R",
    "SHIFT_JIS",
    "EUC-JP",
    "EUC-KR",
    "GB18030",
    "BIG5",
];

/// Filters that read a declared input as a subtitle file, and the extensions (so, the
/// demuxer) that input may have.
pub fn subtitle_file_extensions(filter: &str) -> Option<&'static [&'static str]> {
    match filter {
        "subtitles" => Some(&["srt", "ass", "ssa", "vtt"]),
        "ass" => Some(&["ass", "ssa"]),
        _ => None,
    }
}

/// The demuxer that must read a subtitle file with this extension.
pub fn subtitle_demuxer(ext: &str) -> Option<&'static str> {
    match ext {
        "srt" => Some("srt"),
        "ass" | "ssa" => Some("ass"),
        "vtt" => Some("webvtt"),
        _ => None,
    }
}

pub fn filter_spec(name: &str) -> Option<&'static FilterSpec> {
    FILTERS.iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consistent() {
        for f in FILTERS {
            for p in f.positional {
                assert!(
                    f.option(p).is_some(),
                    "{}: positional {p} not an option",
                    f.name
                );
            }
            assert_eq!(
                FILTERS.iter().filter(|g| g.name == f.name).count(),
                1,
                "{}",
                f.name
            );
        }
    }
}
