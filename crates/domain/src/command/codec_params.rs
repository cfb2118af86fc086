//! Codec private option strings (`-x264-params`, `-x265-params`), read key by key as FFmpeg
//! does (an AVOption dictionary: `av_dict_parse_string(value, "=", ":")`, tokens read with
//! `av_get_token`), each key normalised as the library does before it looks it up
//! (`x264_param_parse` / `x265_param_parse`: `_` becomes `-`, a `no`/`no-` prefix inverts a
//! boolean, x265 also drops a leading `--`), and checked against a key allowlist with a value
//! grammar. Keys that name files (cqmfile, stats, qpfile, dump-yuv, csv, analysis-*, …) are not on
//! it. Rendering writes the normalised keys with their values (which hold no separators).

use super::filtergraph::av_get_token;
use super::grammar::G;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    X264,
    X265,
}

const BOOL: G = G::Kw(&["0", "1", "true", "false", "yes", "no"]);
const UINT: G = G::Int(0, 1_000_000_000);

const X264_KEYS: &[(&str, G)] = &[
    ("keyint", G::Int(1, 100_000)),
    ("min-keyint", G::Int(1, 100_000)),
    ("scenecut", G::Int(-1, 100)),
    ("bframes", G::Int(0, 16)),
    ("b-adapt", G::Int(0, 2)),
    (
        "b-pyramid",
        G::Kw(&["none", "strict", "normal", "0", "1", "2"]),
    ),
    ("ref", G::Int(1, 16)),
    ("rc-lookahead", G::Int(0, 250)),
    ("aq-mode", G::Int(0, 3)),
    ("aq-strength", G::Num),
    ("crf", G::Num),
    ("qp", G::Int(0, 81)),
    ("bitrate", UINT),
    ("vbv-maxrate", UINT),
    ("vbv-bufsize", UINT),
    ("nal-hrd", G::Kw(&["none", "vbr", "cbr"])),
    ("open-gop", BOOL),
    ("cabac", BOOL),
    ("me", G::Kw(&["dia", "hex", "umh", "esa", "tesa"])),
    ("subme", G::Int(0, 11)),
    ("trellis", G::Int(0, 2)),
    ("weightp", G::Int(0, 2)),
    ("weightb", BOOL),
    ("mbtree", BOOL),
    ("8x8dct", BOOL),
    ("mixed-refs", BOOL),
    ("fast-pskip", BOOL),
    ("threads", G::Int(0, 64)),
    ("sliced-threads", BOOL),
    ("slices", G::Int(0, 64)),
    ("force-cfr", BOOL),
    ("repeat-headers", BOOL),
    ("aud", BOOL),
    ("intra-refresh", BOOL),
    ("level", G::Num),
];

const X265_KEYS: &[(&str, G)] = &[
    ("keyint", G::Int(1, 100_000)),
    ("min-keyint", G::Int(0, 100_000)),
    ("scenecut", G::Int(0, 100)),
    ("bframes", G::Int(0, 16)),
    ("ref", G::Int(1, 16)),
    ("rc-lookahead", G::Int(0, 250)),
    ("aq-mode", G::Int(0, 4)),
    ("aq-strength", G::Num),
    ("crf", G::Num),
    ("qp", G::Int(0, 69)),
    ("bitrate", UINT),
    ("vbv-maxrate", UINT),
    ("vbv-bufsize", UINT),
    ("open-gop", BOOL),
    ("repeat-headers", BOOL),
    ("sao", BOOL),
    ("psy-rd", G::Num),
    ("frame-threads", G::Int(0, 16)),
    (
        "log-level",
        G::Kw(&["none", "error", "warning", "info", "-1", "0", "1", "2"]),
    ),
    ("level-idc", G::Num),
];

/// One parsed entry: the key as the library will see it (normalised, `no` prefix removed),
/// whether it was negated, and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: String,
}

/// The library's own key normalisation; returns the key it looks up and whether a `no` prefix
/// inverted the value.
pub fn normalise(lib: Library, key: &str) -> (String, bool) {
    let key = match lib {
        Library::X265 => key.strip_prefix("--").unwrap_or(key),
        Library::X264 => key,
    };
    let key = key.replace('_', "-");
    match key.strip_prefix("no") {
        Some(rest) => (rest.strip_prefix('-').unwrap_or(rest).to_owned(), true),
        None => (key, false),
    }
}

/// Parses and checks a parameter string; the error says which key and why.
pub fn parse(lib: Library, s: &str) -> Result<Vec<Param>, String> {
    let table = match lib {
        Library::X264 => X264_KEYS,
        Library::X265 => X265_KEYS,
    };
    let mut buf = s.as_bytes();
    let mut out: Vec<Param> = Vec::new();
    while !buf.is_empty() {
        let (key, rest) = av_get_token(buf, b"=");
        if rest.first() != Some(&b'=') || key.is_empty() {
            return Err("expected key=value pairs separated by ':'".into());
        }
        let (value, rest) = av_get_token(&rest[1..], b":");
        buf = if rest.is_empty() { rest } else { &rest[1..] };
        let key = String::from_utf8(key).map_err(|_| "not UTF-8".to_owned())?;
        let value = String::from_utf8(value).map_err(|_| "not UTF-8".to_owned())?;
        if value.is_empty() {
            return Err(format!("{key}: empty value"));
        }
        let (name, negated) = normalise(lib, &key);
        let (name, grammar) = table
            .iter()
            .find(|(n, _)| *n == name)
            .copied()
            .ok_or_else(|| format!("parameter {key:?} is not allowed"))?;
        if negated && grammar != BOOL {
            return Err(format!("{key}: only boolean parameters take a no- prefix"));
        }
        grammar
            .check(&value)
            .map_err(|why| format!("{key}={value}: {why}"))?;
        if out.iter().any(|p| normalise(lib, &p.key).0 == name) {
            return Err(format!("parameter {name} is given twice"));
        }
        let key = if negated {
            format!("no-{name}")
        } else {
            name.to_owned()
        };
        out.push(Param { key, value });
    }
    if out.is_empty() {
        return Err("empty parameter list".into());
    }
    Ok(out)
}

pub fn render(params: &[Param]) -> String {
    params
        .iter()
        .map(|p| format!("{}={}", p.key, p.value))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalised_like_the_library() {
        assert_eq!(
            normalise(Library::X264, "b_pyramid"),
            ("b-pyramid".into(), false)
        );
        assert_eq!(normalise(Library::X264, "no_cabac"), ("cabac".into(), true));
        assert_eq!(normalise(Library::X264, "nocabac"), ("cabac".into(), true));
        // x264 strips "no" from any key starting with it.
        assert_eq!(
            normalise(Library::X264, "non-deterministic"),
            ("n-deterministic".into(), true)
        );
        assert_eq!(normalise(Library::X265, "--no-sao"), ("sao".into(), true));
    }

    #[test]
    fn file_naming_and_unknown_keys_are_refused() {
        for bad in [
            "cqmfile=/etc/passwd",
            "keyint=1:cqmfile=x",
            "qpfile=x",
            "dump-yuv=x",
            "dump_yuv=x",
            "stats=x",
            "keyint='1:cqmfile=/x'",
            "keyint=1\\:cqmfile=/x",
            "no-keyint=1",
            "keyint=1:keyint=2",
            "keyint=1:KEYINT=2",
            "",
        ] {
            assert!(parse(Library::X264, bad).is_err(), "{bad}");
        }
        for bad in [
            "csv=/tmp/x",
            "analysis-save=x",
            "analysis_load=x",
            "--csv=x",
            "pools=x",
        ] {
            assert!(parse(Library::X265, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepted_params_render_normalised() {
        let p = parse(
            Library::X264,
            "keyint=50:min_keyint=50:no-cabac=1:b-pyramid=none",
        )
        .unwrap();
        assert_eq!(
            render(&p),
            "keyint=50:min-keyint=50:no-cabac=1:b-pyramid=none"
        );
        assert_eq!(parse(Library::X264, &render(&p)).unwrap(), p);
    }
}
