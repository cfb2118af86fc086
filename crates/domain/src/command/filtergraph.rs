//! Filter graphs, parsed with FFmpeg's own grammar (libavfilter/graphparser.c and
//! avfilter.c `process_options`, FFmpeg 5.1) and rendered back with the platform's canonical
//! escaping.
//!
//! FFmpeg reads a graph at two levels, both with `av_get_token`: the graph level splits filters on
//! `,` and `;` and reads `[label]`s, the filter level splits each filter's argument string on `:`
//! into `key=value` pairs or positional (shorthand) values. At both levels a backslash escapes the
//! next character outside quotes, and inside `'…'` nothing is escaped. This module implements
//! exactly that, resolves shorthand values to the option names in the filter's declared order,
//! checks every option against [`super::filters`], and renders every option as `key=value` with
//! every special character escaped for both levels, so what FFmpeg reads is what the tree holds.

use super::filters::{filter_spec, FilterSpec, GENERIC};
use super::grammar::G;

const WHITESPACES: &[u8] = b" \n\t\r";

/// One filter of a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub inputs: Vec<String>,
    pub name: &'static str,
    /// `name@instance`: FFmpeg then names the filter context `name@instance`.
    pub instance: Option<String>,
    /// Options with their real names (shorthand resolved), in the order given. A file option
    /// ([`G::InputFile`]) holds the declared input's path in the job directory.
    pub options: Vec<(&'static str, String)>,
    pub outputs: Vec<String>,
    /// The declared inputs (aliases) this filter's file options name.
    pub files: Vec<String>,
}

/// Maps the value of a file option to the declared input it names: `(alias, path in the job
/// directory)`, or `None` when it names none.
pub type ResolveInput<'a> = &'a dyn Fn(&str) -> Option<(String, String)>;

/// A filter graph: filters in order, each followed by the separator FFmpeg saw after it
/// (`,` links to the next filter, `;` starts a new chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub chains: Vec<Vec<Filter>>,
}

/// `av_get_token`: reads up to an unescaped, unquoted byte of `term`; returns the token and the
/// rest (starting at the terminator, if any).
pub fn av_get_token<'a>(buf: &'a [u8], term: &[u8]) -> (Vec<u8>, &'a [u8]) {
    let mut p = 0;
    while p < buf.len() && WHITESPACES.contains(&buf[p]) {
        p += 1;
    }
    let mut out = Vec::new();
    let mut end = 0;
    while p < buf.len() && !term.contains(&buf[p]) {
        let c = buf[p];
        p += 1;
        if c == b'\\' && p < buf.len() {
            out.push(buf[p]);
            p += 1;
            end = out.len();
        } else if c == b'\'' {
            while p < buf.len() && buf[p] != b'\'' {
                out.push(buf[p]);
                p += 1;
            }
            if p < buf.len() {
                p += 1;
                end = out.len();
            }
        } else {
            out.push(c);
        }
    }
    while out.len() > end && out.last().is_some_and(|c| WHITESPACES.contains(c)) {
        out.pop();
    }
    (out, &buf[p..])
}

fn skip_ws(buf: &[u8]) -> &[u8] {
    let n = buf.iter().take_while(|c| WHITESPACES.contains(c)).count();
    &buf[n..]
}

fn text(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| "the graph is not valid UTF-8".to_owned())
}

/// `parse_link_name`: `[label]`.
fn parse_label(buf: &[u8]) -> Result<(String, &[u8]), String> {
    let (name, rest) = av_get_token(&buf[1..], b"]");
    let name = text(name)?;
    if name.is_empty() || rest.first() != Some(&b']') {
        return Err("empty or unterminated [label]".into());
    }
    if !super::grammar::is_label(&name) {
        return Err(format!(
            "label [{name}] may only hold letters, digits, _ and :"
        ));
    }
    Ok((name, &rest[1..]))
}

fn parse_labels(mut buf: &[u8]) -> Result<(Vec<String>, &[u8]), String> {
    let mut labels = Vec::new();
    while buf.first() == Some(&b'[') {
        let (l, rest) = parse_label(buf)?;
        labels.push(l);
        buf = skip_ws(rest);
    }
    Ok((labels, buf))
}

/// An error about one filter of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    pub filter: Option<String>,
    pub why: String,
}

fn gerr(filter: Option<&str>, why: impl Into<String>) -> GraphError {
    GraphError {
        filter: filter.map(str::to_owned),
        why: why.into(),
    }
}

/// Parses a graph as FFmpeg 5.1 does and checks it against the filter allowlist. No file
/// option resolves: a filter that opens a file is refused.
pub fn parse(graph: &str) -> Result<Graph, GraphError> {
    parse_with(graph, &|_| None)
}

/// [`parse`], with file options (the subtitle file of `subtitles=`/`ass=`) resolved to declared
/// inputs by `resolve`; any other value is refused.
pub fn parse_with(graph: &str, resolve: ResolveInput) -> Result<Graph, GraphError> {
    let mut buf = skip_ws(graph.as_bytes());
    if buf.starts_with(b"sws_flags=") {
        return Err(gerr(None, "sws_flags= in a graph is not supported"));
    }
    let mut chains = vec![Vec::new()];
    loop {
        buf = skip_ws(buf);
        let (inputs, rest) = parse_labels(buf).map_err(|e| gerr(None, e))?;
        let (name, rest) = av_get_token(rest, b"=,;[");
        let name = text(name).map_err(|e| gerr(None, e))?;
        let (args, rest) = match rest.first() {
            Some(b'=') => {
                let (a, r) = av_get_token(&rest[1..], b"[],;");
                (Some(text(a).map_err(|e| gerr(Some(&name), e))?), r)
            }
            _ => (None, rest),
        };
        let (base, instance) = match name.split_once('@') {
            Some((b, i)) => (b, Some(i)),
            None => (name.as_str(), None),
        };
        if let Some(i) = instance {
            if i.is_empty()
                || i.len() > 32
                || !i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(gerr(
                    Some(&name),
                    "an instance name (filter@name) may only hold letters, digits and _",
                ));
            }
        }
        let spec = filter_spec(base).ok_or_else(|| {
            gerr(
                Some(&name),
                "filter is not allowed (unknown, or it can open files, libraries, devices or sockets)",
            )
        })?;
        let (options, files) = parse_options(spec, args.as_deref().unwrap_or(""), resolve)
            .map_err(|e| gerr(Some(&name), e))?;
        let (outputs, rest) = parse_labels(rest).map_err(|e| gerr(Some(&name), e))?;
        chains.last_mut().expect("at least one chain").push(Filter {
            inputs,
            name: spec.name,
            instance: instance.map(str::to_owned),
            options,
            outputs,
            files,
        });
        buf = skip_ws(rest);
        match buf.first() {
            Some(b',') => buf = &buf[1..],
            Some(b';') => {
                buf = &buf[1..];
                chains.push(Vec::new());
            }
            None => break,
            Some(_) => {
                return Err(gerr(
                    Some(spec.name),
                    "unexpected text after the filter (FFmpeg: unable to parse graph description)",
                ))
            }
        }
    }
    Ok(Graph { chains })
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'/' | b'.')
}

/// `get_key` of libavutil/opt.c: `key` followed by optional whitespace and `=`.
fn get_key(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let opts = skip_ws(buf);
    let n = opts.iter().take_while(|c| is_key_char(**c)).count();
    let key = &opts[..n];
    let rest = skip_ws(&opts[n..]);
    match rest.first() {
        Some(b'=') => Some((key, &rest[1..])),
        _ => None,
    }
}

/// `process_options`: positional values take the filter's options in declared order until the
/// first `key=`; after a key, FFmpeg's rule for further positional values is surprising, so they
/// are refused.
type Options = (Vec<(&'static str, String)>, Vec<String>);

fn parse_options(spec: &FilterSpec, args: &str, resolve: ResolveInput) -> Result<Options, String> {
    let mut buf = args.as_bytes();
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let mut files = Vec::new();
    let mut position = 0;
    let mut keyed = false;
    while !buf.is_empty() {
        let (key, rest) = match get_key(buf) {
            Some((k, r)) => (Some(k), r),
            None => (None, buf),
        };
        let (value, rest) = av_get_token(rest, b":");
        buf = if rest.is_empty() { rest } else { &rest[1..] };
        let mut value = text(value)?;
        let name: &'static str = match key {
            Some(k) => {
                keyed = true;
                let k = std::str::from_utf8(k).map_err(|_| "bad key".to_owned())?;
                spec.option(k)
                    .map(|(n, _)| n)
                    .or_else(|| GENERIC.iter().find(|(n, _)| *n == k).map(|(n, _)| *n))
                    .ok_or_else(|| format!("option {k:?} is not allowed for this filter"))?
            }
            None if keyed => {
                return Err(format!(
                    "positional value {value:?} after a key=value option; write key=value"
                ))
            }
            None => {
                let n = *spec.positional.get(position).ok_or_else(|| {
                    format!("positional value {value:?} is not allowed here; write key=value")
                })?;
                position += 1;
                n
            }
        };
        let grammar = spec
            .option(name)
            .map(|(_, g)| g)
            .or_else(|| GENERIC.iter().find(|(n, _)| *n == name).map(|(_, g)| *g))
            .expect("name comes from the tables");
        if grammar == G::InputFile {
            if !files.is_empty() {
                return Err(format!("option {name}: the filter's file is given twice"));
            }
            let (alias, path) = resolve(&value).ok_or_else(|| {
                format!(
                    "option {name}={value:?}: {}; no other file can be named",
                    grammar.check("").unwrap_err()
                )
            })?;
            files.push(alias);
            value = path;
        } else {
            grammar
                .check(&value)
                .map_err(|why| format!("option {name}={value:?}: {why}"))?;
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("option {name} is given twice"));
        }
        out.push((name, value));
    }
    // FFmpeg appends the CLI's sws flags to a scale filter whose arguments do not mention
    // "flags" (into a fixed 256-byte buffer); naming the default explicitly avoids both.
    if spec.name == "scale" && !out.iter().any(|(n, _)| *n == "flags") {
        out.push(("flags", "bicubic".to_owned()));
    }
    Ok((out, files))
}

/// Escapes `s` so that `av_get_token(…, term)` returns it unchanged.
fn escape(s: &str, specials: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() && (specials.contains(&(c as u8)) || WHITESPACES.contains(&(c as u8))) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Graph {
    /// The canonical text of the graph: `[in]name=key=value:key=value[out]`, values escaped for
    /// the filter level (`\ ' :`) and the result escaped for the graph level (`\ ' [ ] , ;`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (ci, chain) in self.chains.iter().enumerate() {
            if ci > 0 {
                out.push(';');
            }
            for (fi, f) in chain.iter().enumerate() {
                if fi > 0 {
                    out.push(',');
                }
                for l in &f.inputs {
                    out.push_str(&format!("[{l}]"));
                }
                out.push_str(f.name);
                if let Some(i) = &f.instance {
                    out.push('@');
                    out.push_str(i);
                }
                if !f.options.is_empty() {
                    let args: Vec<String> = f
                        .options
                        .iter()
                        .map(|(k, v)| format!("{k}={}", escape(v, b"\\':")))
                        .collect();
                    out.push('=');
                    out.push_str(&escape(&args.join(":"), b"\\'[],;"));
                }
                for l in &f.outputs {
                    out.push_str(&format!("[{l}]"));
                }
            }
        }
        out
    }

    pub fn filters(&self) -> impl Iterator<Item = &Filter> {
        self.chains.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str, term: &str) -> (String, String) {
        let (t, r) = av_get_token(s.as_bytes(), term.as_bytes());
        (
            String::from_utf8(t).unwrap(),
            String::from_utf8(r.to_vec()).unwrap(),
        )
    }

    #[test]
    fn av_get_token_matches_libavutil() {
        // Inside quotes nothing is escaped: '\' is a complete quoted backslash.
        assert_eq!(tok(r"'\\',x", ","), (r"\\".into(), ",x".into()));
        assert_eq!(tok(r"'\',x", ","), (r"\".into(), ",x".into()));
        assert_eq!(tok(r"a\,b,c", ","), ("a,b".into(), ",c".into()));
        assert_eq!(tok("  a b  :c", ":"), ("a b".into(), ":c".into()));
        assert_eq!(tok(r"a\ :c", ":"), ("a ".into(), ":c".into()));
        assert_eq!(tok("'a:b' :c", ":"), ("a:b".into(), ":c".into()));
        assert_eq!(
            tok("'unterminated:x", ":"),
            ("unterminated:x".into(), "".into())
        );
    }

    #[test]
    fn the_quoted_backslash_attack_is_one_filter_with_a_refused_option() {
        // FFmpeg reads `curves=plot='\\',nullsink;amovie=…` as curves with plot=\\ … then
        // nullsink and amovie: amovie is not allowed, and neither is curves' plot.
        let e = parse(r"curves=plot='\\',nullsink;amovie=/etc/passwd:f=u8").unwrap_err();
        assert!(e.filter.is_some(), "{e:?}");
        let e = parse(r"scale=w='\\',nullsink;amovie=/etc/passwd").unwrap_err();
        assert_eq!(e.filter.as_deref(), Some("scale"), "{e:?}");
    }

    #[test]
    fn shorthand_resolves_to_declared_names_and_renders_keyed() {
        let g = parse("[0:v]scale=640:-2,pad=iw+2:ih+2:1:1:black[v]").unwrap();
        assert_eq!(
            g.render(),
            r"[0:v]scale=w=640:h=-2:flags=bicubic,pad=width=iw+2:height=ih+2:x=1:y=1:color=black[v]"
        );
        assert_eq!(parse(&g.render()).unwrap(), g);
    }

    #[test]
    fn values_with_separators_are_escaped_for_both_levels() {
        let g = parse(r"select='eq(n\,0)+gt(t\,2)',setpts=PTS-STARTPTS").unwrap();
        let f = &g.chains[0][0];
        assert_eq!(f.options, vec![("expr", "eq(n,0)+gt(t,2)".to_owned())]);
        let r = g.render();
        assert_eq!(r, r"select=expr=eq(n\,0)+gt(t\,2),setpts=expr=PTS-STARTPTS");
        assert_eq!(parse(&r).unwrap(), g);
    }

    #[test]
    fn instance_names_are_kept() {
        let g = parse("scale@small=16:16,null@x").unwrap();
        assert_eq!(g.chains[0][0].instance.as_deref(), Some("small"));
        assert_eq!(g.render(), "scale@small=w=16:h=16:flags=bicubic,null@x");
        for bad in [
            "scale@=1:1",
            "scale@a@b=1:1",
            "scale@a-b=1:1",
            "movie@x=/etc/passwd",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refused_filters_and_options() {
        for bad in [
            "movie=/etc/passwd",
            "amovie=x",
            "subtitles=x.srt",
            "drawtext=textfile=/etc/passwd",
            "paletteuse=debug_kdtree=/tmp/x",
            "scale=w=\\/etc/passwd",
            "scale=640:-2:bicubic:0:extra",
            "scale=w=1:2",
            "scale=w=1:w=2",
            "sws_flags=neighbor;scale=1:1",
            "[a b]scale=1:1",
            "scale=1:1[x] y",
            "lut3d=file=/x",
            "zmq",
            "hflip=x=1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
