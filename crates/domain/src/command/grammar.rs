//! Value grammars: what a value of an allowed option may look like. Every grammar here accepts
//! only short, closed forms (numbers, durations, keywords, arithmetic expressions, colours…) that
//! FFmpeg cannot read as a file, device, URL or library name, and none of them contains a quote or
//! a backslash, so a value means the same at every level of FFmpeg's own escaping.

/// A value grammar. `check` answers why a value does not match, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum G {
    /// Decimal integer in `[min, max]`.
    Int(i64, i64),
    /// Decimal number, optionally signed, with an optional fraction and exponent.
    Num,
    /// A bit rate or byte count: number with an optional k/K/M/G suffix.
    Rate,
    /// A duration: `[-][[HH:]MM:]SS[.frac]` or `[-]N[.frac][s|ms|us]`.
    Dur,
    /// `WxH`.
    Size,
    /// A frame rate: number, `num/den`, or ntsc/pal/film/ntsc-film.
    Fps,
    /// A ratio: number or `num:den` / `num/den`.
    Ratio,
    /// One of these words.
    Kw(&'static [&'static str]),
    /// `[+-]word[+-word…]` with words from the list (AVOption flags).
    Flags(&'static [&'static str]),
    /// `|`-separated list of words from the list.
    List(&'static [&'static str]),
    /// An arithmetic expression of libavutil's evaluator: identifiers, numbers, operators,
    /// parentheses, commas. No quotes, colons, brackets or backslashes.
    Expr,
    /// A colour: a name, `#RRGGBB[AA]` or `0xRRGGBB[AA]`, optional `@alpha`.
    Color,
    /// A four-character code.
    FourCc,
    /// `|`-separated durations (with an optional `S` suffix for samples).
    Delays,
    /// Space- or `|`-separated numbers.
    Numbers,
    /// xstack layout: `x_y|x_y…` with widths/heights like `w0+w1`.
    StackLayout,
    /// A stream map: `[-]N[:spec][?]` or `[label]`.
    Map,
    /// A map_metadata/map_chapters source: `-1` or `N[:spec]`.
    MetaMap,
    /// `key=value` metadata; the value is free text (it is written into the container, never
    /// opened), without control characters.
    Metadata,
    /// force_key_frames: `source`, `expr:EXPR`, or comma-separated durations.
    KeyFrames,
    /// A file a filter opens: only ever a declared input, named by its placeholder (`{{subs}}`)
    /// in a template and by its path in the job directory in a rendered argv. The command
    /// parser resolves it; as a grammar it matches nothing.
    InputFile,
    /// libass style overrides (`force_style`): comma-separated `Field=value` with ASS style
    /// field names and plain values (letters, digits, spaces, `& . + -`).
    AssStyle,
}

/// ASS style fields `force_style` may override.
pub const ASS_STYLE_FIELDS: &[&str] = &[
    "FontName",
    "FontSize",
    "PrimaryColour",
    "SecondaryColour",
    "OutlineColour",
    "BackColour",
    "Bold",
    "Italic",
    "Underline",
    "StrikeOut",
    "ScaleX",
    "ScaleY",
    "Spacing",
    "Angle",
    "BorderStyle",
    "Outline",
    "Shadow",
    "Alignment",
    "MarginL",
    "MarginR",
    "MarginV",
    "Encoding",
];

fn is_ass_style(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 512
        && v.split(',').all(|kv| {
            kv.split_once('=').is_some_and(|(k, val)| {
                ASS_STYLE_FIELDS.contains(&k)
                    && !val.is_empty()
                    && val.len() <= 64
                    && val.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b' ' | b'&' | b'.' | b'+' | b'-')
                    })
            })
        })
}

pub const MAX_VALUE_LEN: usize = 1024;

fn is_num(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mant, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    let ok_mant = (!int.is_empty() || !frac.is_empty()) && digits(int) && digits(frac);
    let ok_exp = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.len() <= 3 && digits(e)
    });
    ok_mant && ok_exp && s.len() <= 32
}

fn is_uint(s: &str) -> bool {
    !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn is_duration(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() > 3 {
            return false;
        }
        let (last, head) = parts.split_last().expect("split yields one part");
        let (sec, frac) = last.split_once('.').unwrap_or((last, "0"));
        return head.iter().all(|p| is_uint(p) && p.len() <= 6)
            && is_uint(sec)
            && sec.len() <= 2
            && is_uint(frac);
    }
    let body = s
        .strip_suffix("ms")
        .or_else(|| s.strip_suffix("us"))
        .or_else(|| s.strip_suffix('s'))
        .unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, "0"));
    is_uint(int) && is_uint(frac)
}

fn is_expr(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'.' | b'+' | b'-' | b'*' | b'/' | b'^' | b'(' | b')' | b',' | b' '
                )
        })
        && !s.starts_with([' ', '/', '*', '^'])
        && !s.ends_with(' ')
}

fn is_color(s: &str) -> bool {
    let (c, alpha) = match s.split_once('@') {
        Some((c, a)) => (c, Some(a)),
        None => (s, None),
    };
    let hex = c
        .strip_prefix('#')
        .or_else(|| c.strip_prefix("0x"))
        .or_else(|| c.strip_prefix("0X"));
    let ok_c = match hex {
        Some(h) => (h.len() == 6 || h.len() == 8) && h.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !c.is_empty() && c.len() <= 32 && c.bytes().all(|b| b.is_ascii_alphabetic()),
    };
    ok_c && alpha.is_none_or(|a| is_num(a) && !a.starts_with('-'))
}

/// Stream specifiers (`v`, `a:0`, `p:1:v`, `m:language:eng`, `#0x100`): a closed character set.
pub fn is_stream_spec(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'#' | b'_' | b'-'))
}

/// Link labels in filter graphs and `-map '[label]'`.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_'))
}

impl G {
    /// Checks `v`; the error says what was expected.
    pub fn check(self, v: &str) -> Result<(), String> {
        let ok = v.len() <= MAX_VALUE_LEN
            && match self {
                G::Int(min, max) => {
                    let body = v.strip_prefix('-').unwrap_or(v);
                    is_uint(body) && v.parse::<i64>().is_ok_and(|n| (min..=max).contains(&n))
                }
                G::Num => is_num(v),
                G::Rate => {
                    let body = v.strip_suffix(['k', 'K', 'M', 'G']).unwrap_or(v);
                    is_num(body) && !body.starts_with('-') && !body.contains(['e', 'E'])
                }
                G::Dur => is_duration(v),
                G::Size => v
                    .split_once('x')
                    .is_some_and(|(w, h)| is_uint(w) && is_uint(h) && w.len() <= 5 && h.len() <= 5),
                G::Fps => {
                    matches!(v, "ntsc" | "pal" | "film" | "ntsc-film")
                        || (is_num(v) && !v.starts_with('-'))
                        || v.split_once('/')
                            .is_some_and(|(a, b)| is_uint(a) && is_uint(b))
                }
                G::Ratio => {
                    is_num(v)
                        || v.split_once([':', '/'])
                            .is_some_and(|(a, b)| is_uint(a) && is_uint(b))
                }
                G::Kw(words) => words.contains(&v),
                G::Flags(words) => {
                    !v.is_empty()
                        && v.split(['+', '-'])
                            .enumerate()
                            .all(|(i, w)| (i == 0 && w.is_empty()) || words.contains(&w))
                }
                G::List(words) => v.split('|').all(|w| words.contains(&w)),
                G::Expr => is_expr(v),
                G::Color => is_color(v),
                G::FourCc => v.len() == 4 && v.bytes().all(|b| b.is_ascii_alphanumeric()),
                G::Delays => v.split('|').all(|d| {
                    let d = d.strip_suffix('S').unwrap_or(d);
                    is_num(d) && !d.starts_with('-')
                }),
                G::Numbers => v.split([' ', '|']).all(is_num),
                G::StackLayout => {
                    !v.is_empty()
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'|' | b'+'))
                }
                G::Map => {
                    if let Some(l) = v.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                        is_label(l)
                    } else {
                        let v = v.strip_prefix('-').unwrap_or(v);
                        let v = v.strip_suffix('?').unwrap_or(v);
                        match v.split_once(':') {
                            Some((n, spec)) => is_uint(n) && is_stream_spec(spec),
                            None => is_uint(v),
                        }
                    }
                }
                G::MetaMap => {
                    v == "-1"
                        || match v.split_once(':') {
                            Some((n, spec)) => is_uint(n) && is_stream_spec(spec),
                            None => is_uint(v),
                        }
                }
                G::Metadata => v
                    .split_once('=')
                    .is_some_and(|(k, val)| is_word(k) && !val.chars().any(char::is_control)),
                G::KeyFrames => {
                    v == "source"
                        || v.strip_prefix("expr:").is_some_and(is_expr)
                        || v.split(',').all(is_duration)
                }
                G::InputFile => false,
                G::AssStyle => is_ass_style(v),
            };
        if ok {
            Ok(())
        } else {
            Err(self.describe())
        }
    }

    fn describe(self) -> String {
        match self {
            G::Int(a, b) => format!("expected an integer from {a} to {b}"),
            G::Num => "expected a number".into(),
            G::Rate => "expected a number with an optional k/M/G suffix".into(),
            G::Dur => "expected a duration like 1.5, 1500ms or 00:00:01.5".into(),
            G::Size => "expected a size like 1280x720".into(),
            G::Fps => "expected a frame rate like 25, 30000/1001 or ntsc".into(),
            G::Ratio => "expected a ratio like 16:9 or 1.5".into(),
            G::Kw(w) => format!("expected one of: {}", w.join(", ")),
            G::Flags(w) => format!("expected +flags from: {}", w.join(", ")),
            G::List(w) => format!("expected a |-separated list of: {}", w.join(", ")),
            G::Expr => "expected an arithmetic expression (letters, digits, _ . + - * / ^ ( ) , and spaces)".into(),
            G::Color => "expected a colour like red, #ff0000 or 0xff000080, optionally @alpha".into(),
            G::FourCc => "expected a four-character code".into(),
            G::Delays => "expected |-separated delays".into(),
            G::Numbers => "expected numbers separated by spaces".into(),
            G::StackLayout => "expected a layout like 0_0|w0_0".into(),
            G::Map => "expected a stream map like 0:v:0, -0:a, 1:a? or [label]".into(),
            G::MetaMap => "expected -1 or an input index with an optional specifier".into(),
            G::Metadata => "expected key=value with a key of letters, digits, _ - . and no control characters".into(),
            G::KeyFrames => "expected source, expr:EXPR or comma-separated times".into(),
            G::InputFile => "expected exactly a declared input's placeholder, like {{subs}}".into(),
            G::AssStyle => format!(
                "expected comma-separated Field=value with fields from: {} (values: letters, digits, spaces, & . + -)",
                ASS_STYLE_FIELDS.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammars_accept_the_usual_and_refuse_paths() {
        let ok: &[(G, &str)] = &[
            (G::Int(0, 51), "23"),
            (G::Num, "-1.5e3"),
            (G::Rate, "128k"),
            (G::Rate, "2.5M"),
            (G::Dur, "00:00:01.500"),
            (G::Dur, "1500ms"),
            (G::Dur, "-2"),
            (G::Size, "1280x720"),
            (G::Fps, "30000/1001"),
            (G::Expr, "if(gt(t,2),iw/2,-2)"),
            (G::Color, "red@0.5"),
            (G::Color, "0xff000080"),
            (G::Map, "0:v:0"),
            (G::Map, "1:a?"),
            (G::Map, "[v]"),
            (G::Metadata, "title=A: B /etc/x"),
            (G::KeyFrames, "expr:gte(t,n_forced*2)"),
            (
                G::AssStyle,
                "FontName=DejaVu Sans,FontSize=24,PrimaryColour=&H0000FF&",
            ),
            (
                G::Flags(&["faststart", "frag_keyframe"]),
                "+faststart+frag_keyframe",
            ),
        ];
        for (g, v) in ok {
            assert!(g.check(v).is_ok(), "{g:?} {v:?}");
        }
        let bad: &[(G, &str)] = &[
            (G::Int(0, 51), "52"),
            (G::Num, "1/0"),
            (G::Rate, "/etc/passwd"),
            (G::Dur, "\\/etc"),
            (G::Expr, "a:b"),
            (G::Expr, "'x'"),
            (G::Expr, "x\\,y"),
            (G::Color, "/dev/zero"),
            (G::Map, "0:v;x"),
            (G::Map, "[a b]"),
            (G::Metadata, "=x"),
            (G::Metadata, "a/b=x"),
            (G::Flags(&["faststart"]), "+faststart+delete_segments"),
            (G::Kw(&["a"]), "b"),
            (G::InputFile, "in/subs.srt"),
            (G::AssStyle, "FontName=/etc/passwd"),
            (G::AssStyle, "Fontsdir=x"),
            (G::AssStyle, "FontSize=24:x=1"),
        ];
        for (g, v) in bad {
            assert!(g.check(v).is_err(), "{g:?} {v:?}");
        }
    }
}
