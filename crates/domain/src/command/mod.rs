//! FFmpeg command templates.
//!
//! A tenant writes a command as one string, e.g. `-i {{in}} -vf scale=640:-2 {{out}}`, and
//! declares its inputs and outputs by alias. The template is split with shell-word rules (never
//! run by a shell) and parsed the way FFmpeg 5.1's `split_commandline` reads an argv into a typed
//! [`Command`] tree: global options, then input and output files, each with its options. Every
//! option is on an allowlist ([`options`]) with its real arity and a value grammar ([`grammar`]);
//! filter graphs are parsed with FFmpeg's own two-level grammar ([`filtergraph`]) against a filter
//! and filter-option allowlist ([`filters`]); codec parameter strings key by key
//! ([`codec_params`]). Inputs and outputs may only be named through declared `{{alias}}`
//! placeholders: after `-i`, as output files, and as the whole file name of the one kind of
//! filter that opens a file (`subtitles=`/`ass=`, which read a declared subtitle input). Anything
//! else is refused with an error that names the argument.
//!
//! [`render`] writes the argv the worker runs **from the tree**, with canonical escaping, so no
//! byte of the template reaches FFmpeg except as a value the tree holds: forced flags first,
//! placeholders replaced by fixed relative names inside the job directory (`in/<alias>[.<ext>]`,
//! `out/<alias>/<name>`). The worker's [`check_rendered`] parses that argv again and requires
//! that rendering the tree it finds gives the identical argv.

pub mod codec_params;
pub mod filtergraph;
pub mod filters;
pub mod grammar;
pub mod options;
pub mod timing;

use crate::names::{check_alias, check_file_name, safe_extension, NameError};
use options::{Kind, Match, OptSpec, Scope};
use std::collections::{BTreeMap, BTreeSet};

/// Arguments every rendered command starts with. `-progress pipe:1` is how the worker reads
/// progress; tenants may not set it themselves. The log level is the platform's too: the worker
/// reads which input FFmpeg could not open or read nothing from, and each input's duration,
/// from FFmpeg's own level-tagged log, so a tenant's `-v quiet` cannot blind it (a tenant's
/// `-v`/`-loglevel` is accepted and left out of the rendered command).
pub const FORCED_PREFIX: &[&str] = &[
    "-loglevel",
    FORCED_LOG_LEVEL,
    "-hide_banner",
    "-nostdin",
    "-nostats",
    "-y",
    "-progress",
    "pipe:1",
];

/// The log level every command runs at: `verbose` (input descriptions with their durations and
/// streams, and the packets each input and output file carried at the end), each line tagged
/// with its level.
pub const FORCED_LOG_LEVEL: &str = "level+verbose";

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
    /// Extension of the uploaded file name, kept as a probing hint when it names a container
    /// or stream format ([`PROBE_HINT_EXTENSIONS`]); other inputs are read by content alone.
    pub ext: Option<String>,
}

/// Extensions an input's stored name keeps, as a hint for FFmpeg's probing. Image extensions
/// (jpg, png, bmp, tif, webp, gif…) are not among them: with one, the `image2` demuxer claims
/// the file by its name before the content-probed `*_pipe` demuxers look at its bytes, and
/// image2 is not allowed (it expands `%d` patterns and globs into other files). Stored without
/// an extension, a still image is read by the single-image demuxer its content selects.
pub const PROBE_HINT_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "m4a", "mov", "3gp", "3g2", "mj2", "mkv", "mka", "mks", "webm", "ts", "m2ts",
    "mts", "avi", "flv", "wav", "mp3", "aac", "ogg", "oga", "ogv", "opus", "spx", "flac", "mpg",
    "mpeg", "vob", "m2v", "h264", "264", "avc", "hevc", "h265", "265", "mxf", "ivf", "obu", "asf",
    "wmv", "wma", "w64", "aif", "aiff", "aifc", "caf", "ac3", "eac3", "ec3", "dts", "thd", "amr",
    "au", "nut", "y4m", "srt", "ass", "ssa", "vtt",
];

/// The probing hint kept from an uploaded file name (see [`PROBE_HINT_EXTENSIONS`]).
pub fn probe_hint(filename: &str) -> Option<String> {
    safe_extension(filename).filter(|e| PROBE_HINT_EXTENSIONS.contains(&e.as_str()))
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
                ext: probe_hint(filename),
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
    #[error("argument {arg:?} (value of {option}): {why}")]
    BadValue {
        arg: String,
        option: String,
        why: String,
    },
    #[error("argument {arg:?}: placeholder is not a declared input or output")]
    UndeclaredPlaceholder { arg: String },
    #[error("argument {arg:?}: filter {filter:?}: {why}")]
    FilterGraph {
        arg: String,
        filter: String,
        why: String,
    },
    #[error("argument {arg:?}: format {format:?} is not allowed here")]
    FormatNotAllowed { arg: String, format: String },
    #[error("argument {arg:?}: option after the last output applies to nothing")]
    TrailingOption { arg: String },
    #[error("input {0:?} is declared but never read with -i")]
    InputUnused(String),
    #[error("output {0:?} is declared but never written")]
    OutputUnused(String),
    #[error("the command has no output")]
    NoOutput,
    #[error("rendered command does not start with the forced flags")]
    MissingForcedPrefix,
    #[error("rendered command is not the canonical rendering of its own tree")]
    NotCanonical,
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
            | CommandError::BadValue { arg, .. }
            | CommandError::UndeclaredPlaceholder { arg }
            | CommandError::FilterGraph { arg, .. }
            | CommandError::FormatNotAllowed { arg, .. }
            | CommandError::TrailingOption { arg } => Some(arg),
            _ => None,
        }
    }
}

/// A parsed command: what FFmpeg will run, as a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// Options that apply to the whole run, wherever they were written.
    pub globals: Vec<Opt>,
    /// Input and output files in order, each with its own options.
    pub files: Vec<FileGroup>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileGroup {
    pub options: Vec<Opt>,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `-i` of a declared input.
    Input { alias: String },
    /// A declared output file, or a file `entry` inside a directory output.
    Output {
        alias: String,
        entry: Option<String>,
    },
}

/// One option: its name in the allowlist, an optional stream specifier, a typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub name: &'static str,
    pub stream: Option<String>,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Flag,
    /// A value that matched its grammar; rendered as is (grammars admit no byte FFmpeg would
    /// read differently at this level).
    Text(String),
    Graph(filtergraph::Graph),
    Params(Vec<codec_params::Param>),
    /// A file inside a directory output.
    Entry {
        alias: String,
        name: String,
    },
}

impl Opt {
    /// The argument as written in the argv, e.g. `-c:v`.
    pub fn flag(&self) -> String {
        match &self.stream {
            Some(s) => format!("-{}:{s}", self.name),
            None => format!("-{}", self.name),
        }
    }

    pub fn spec(&self) -> &'static OptSpec {
        options::lookup(self.name).expect("tree options come from the table")
    }

    /// The value FFmpeg receives (without the job-directory prefix for entries).
    fn rendered_value(&self, spec: &IoSpec) -> Option<String> {
        Some(match &self.value {
            Value::Flag => return None,
            Value::Text(s) => s.clone(),
            Value::Graph(g) => g.render(),
            Value::Params(p) => codec_params::render(p),
            Value::Entry { alias, name } => {
                format!("{}/{name}", spec.output_path(alias).unwrap_or_default())
            }
        })
    }

    /// What FFmpeg's `-v debug` trace says when it consumes this option:
    /// `(matched name, argument)`, the argument as FFmpeg prints it.
    pub fn trace(&self, spec: &IoSpec) -> (String, String) {
        let s = self.spec();
        let value = self.rendered_value(spec);
        match s.matched {
            Match::Table => (
                self.name.to_owned(),
                value.map_or("'1'".to_owned(), |v| format!("'{v}'")),
            ),
            Match::Negated(base) => (base.to_owned(), "0".to_owned()),
            Match::AvOption => (
                self.flag()[1..].to_owned(),
                format!("'{}'", value.unwrap_or_default()),
            ),
        }
    }
}

const PLACEHOLDER_WHY: &str = "inputs and outputs may only appear after -i or as output files";

/// How a single argument refers to the declared files.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ref {
    Input(String),
    OutputFile(String),
    OutputDir(String),
    OutputDirEntry(String, String),
    Text,
}

/// Whether every `%` of a file name is `%%`, `%d` or `%0Nd` with one digit N: muxers expand
/// these into segment and frame numbers, and FFmpeg pads to any width written there (hls
/// allocates gigabytes for `%2000000000d`, image2 spins for minutes).
fn is_bounded_pattern(name: &str) -> bool {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1), b.get(i + 2), b.get(i + 3)) {
                (Some(b'%' | b'd'), _, _) => i += 2,
                (Some(b'0'..=b'9'), Some(b'd'), _) => i += 3,
                (Some(b'0'), Some(b'0'..=b'9'), Some(b'd')) => i += 4,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// Whether the parser reads a tenant's template or a rendered argv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Template,
    Rendered,
}

struct Parser<'s> {
    spec: &'s IoSpec,
    mode: Mode,
    inputs_used: BTreeSet<String>,
    outputs_used: BTreeSet<String>,
}

/// The declared input a filter's file option names: `{{alias}}` in a template, the input's
/// path in a rendered argv; `(alias, path)`.
fn resolve_input(spec: &IoSpec, mode: Mode, v: &str) -> Option<(String, String)> {
    let alias = match mode {
        Mode::Template => {
            let a = v.strip_prefix("{{")?.strip_suffix("}}")?;
            spec.inputs.contains_key(a).then(|| a.to_owned())?
        }
        Mode::Rendered => spec
            .inputs
            .keys()
            .find(|k| spec.input_path(k).as_deref() == Some(v))?
            .clone(),
    };
    let path = spec.input_path(&alias)?;
    Some((alias, path))
}

impl<'s> Parser<'s> {
    fn classify(&self, arg: &str) -> Result<Ref, CommandError> {
        match self.mode {
            Mode::Template => self.classify_template(arg),
            Mode::Rendered => Ok(self.classify_rendered(arg)),
        }
    }

    fn classify_template(&self, arg: &str) -> Result<Ref, CommandError> {
        if !arg.contains("{{") && !arg.contains("}}") {
            return Ok(Ref::Text);
        }
        let undeclared = || CommandError::UndeclaredPlaceholder {
            arg: arg.to_owned(),
        };
        let inner = arg.strip_prefix("{{").ok_or_else(undeclared)?;
        let (alias, rest) = inner.split_once("}}").ok_or_else(undeclared)?;
        if self.spec.inputs.contains_key(alias) {
            return if rest.is_empty() {
                Ok(Ref::Input(alias.to_owned()))
            } else {
                Err(undeclared())
            };
        }
        let decl = self.spec.outputs.get(alias).ok_or_else(undeclared)?;
        match (decl, rest) {
            (OutputDecl::File { .. }, "") => Ok(Ref::OutputFile(alias.to_owned())),
            (OutputDecl::Dir { .. }, "") => Ok(Ref::OutputDir(alias.to_owned())),
            (OutputDecl::Dir { .. }, rest) => match rest.strip_prefix('/') {
                Some(name) if check_file_name(name).is_ok() && is_bounded_pattern(name) => {
                    Ok(Ref::OutputDirEntry(alias.to_owned(), name.to_owned()))
                }
                _ => Err(CommandError::ForbiddenValue {
                    arg: arg.to_owned(),
                    why: "a directory output is used as {{dir}}/name with a plain file name (a % only as %d, %0Nd with N up to 9, or %%)",
                }),
            },
            (OutputDecl::File { .. }, _) => Err(undeclared()),
        }
    }

    fn classify_rendered(&self, arg: &str) -> Ref {
        for key in self.spec.inputs.keys() {
            if self.spec.input_path(key).as_deref() == Some(arg) {
                return Ref::Input(key.clone());
            }
        }
        for (key, decl) in &self.spec.outputs {
            let path = self.spec.output_path(key).unwrap_or_default();
            if arg == path {
                return if decl.is_dir() {
                    Ref::OutputDir(key.clone())
                } else {
                    Ref::OutputFile(key.clone())
                };
            }
            if decl.is_dir() {
                if let Some(name) = arg.strip_prefix(&path).and_then(|r| r.strip_prefix('/')) {
                    if check_file_name(name).is_ok() && is_bounded_pattern(name) {
                        return Ref::OutputDirEntry(key.clone(), name.to_owned());
                    }
                }
            }
        }
        Ref::Text
    }

    fn no_placeholder(&self, v: &str) -> Result<(), CommandError> {
        if v.contains("{{") || v.contains("}}") || self.classify(v)? != Ref::Text {
            return Err(CommandError::ForbiddenValue {
                arg: v.to_owned(),
                why: PLACEHOLDER_WHY,
            });
        }
        Ok(())
    }

    fn value(&mut self, spec: &OptSpec, arg: &str, v: &str) -> Result<Value, CommandError> {
        let bad = |why: String| CommandError::BadValue {
            arg: v.to_owned(),
            option: arg.to_owned(),
            why,
        };
        if spec.kind == Kind::OutputEntry {
            return match self.classify(v)? {
                Ref::OutputDirEntry(alias, name) => {
                    self.outputs_used.insert(alias.clone());
                    Ok(Value::Entry { alias, name })
                }
                _ => Err(CommandError::NotAnOutput { arg: v.to_owned() }),
            };
        }
        if spec.kind == Kind::Graph {
            return self.graph(v);
        }
        self.no_placeholder(v)?;
        let text = |g: grammar::G| g.check(v).map(|_| Value::Text(v.to_owned())).map_err(bad);
        match spec.kind {
            Kind::Flag | Kind::OutputEntry => unreachable!("handled by the caller / above"),
            Kind::Value(g) => text(g),
            Kind::Codec => text(grammar::G::Kw(options::CODECS)),
            Kind::Muxer => text(grammar::G::Kw(options::MUXERS)),
            // Checked against the demuxer or muxer list once the file it applies to is known.
            Kind::Format => Ok(Value::Text(v.to_owned())),
            Kind::Bsf => {
                if v.split(',').all(|b| options::BSFS.contains(&b)) {
                    Ok(Value::Text(v.to_owned()))
                } else {
                    Err(bad(format!(
                        "expected a comma-separated list of: {}",
                        options::BSFS.join(", ")
                    )))
                }
            }
            Kind::Graph => unreachable!("handled above"),
            Kind::X264Params => codec_params::parse(codec_params::Library::X264, v)
                .map(Value::Params)
                .map_err(bad),
            Kind::X265Params => codec_params::parse(codec_params::Library::X265, v)
                .map(Value::Params)
                .map_err(bad),
            Kind::FileName => match check_file_name(v) {
                Ok(()) => Ok(Value::Text(v.to_owned())),
                Err(_) => Err(CommandError::ForbiddenValue {
                    arg: v.to_owned(),
                    why: "must be a plain file name",
                }),
            },
        }
    }

    /// A filter graph. Placeholders may appear only as the whole value of a filter's file option
    /// (the subtitle file of `subtitles=`/`ass=`), where they name a declared input of the kind
    /// the filter reads; such an input counts as used.
    fn graph(&mut self, v: &str) -> Result<Value, CommandError> {
        if self.mode == Mode::Rendered {
            self.no_placeholder(v)?;
        }
        let fail = |filter: &str, why: String| CommandError::FilterGraph {
            arg: v.to_owned(),
            filter: filter.to_owned(),
            why,
        };
        let (spec, mode) = (self.spec, self.mode);
        let g = filtergraph::parse_with(v, &|value| resolve_input(spec, mode, value))
            .map_err(|e| fail(&e.filter.unwrap_or_default(), e.why))?;
        for f in g.filters() {
            let file_options: Vec<&str> = f
                .options
                .iter()
                .filter(|(k, _)| {
                    filters::filter_spec(f.name)
                        .and_then(|s| s.option(k))
                        .is_some_and(|(_, g)| g == grammar::G::InputFile)
                })
                .map(|(_, v)| v.as_str())
                .collect();
            if f.options.iter().any(|(_, val)| {
                !file_options.contains(&val.as_str()) && (val.contains("{{") || val.contains("}}"))
            }) {
                return Err(CommandError::ForbiddenValue {
                    arg: v.to_owned(),
                    why: "a placeholder in a filter graph may only be the whole file name of subtitles= or ass=",
                });
            }
            for alias in &f.files {
                let ext = spec.inputs.get(alias).and_then(|d| d.ext.as_deref());
                let allowed = filters::subtitle_file_extensions(f.name).unwrap_or_default();
                if !ext.is_some_and(|e| allowed.contains(&e)) {
                    return Err(fail(
                        f.name,
                        format!(
                            "input {alias:?} must be a subtitle file named *.{}",
                            allowed.join(", *.")
                        ),
                    ));
                }
                self.inputs_used.insert(alias.clone());
            }
        }
        Ok(Value::Graph(g))
    }

    /// Closes the current group of options at an input or output, as FFmpeg's `finish_group`.
    fn finish(
        &mut self,
        options: &mut Vec<Opt>,
        forced: &mut Vec<(String, String)>,
        target: Target,
    ) -> Result<FileGroup, CommandError> {
        let input = matches!(target, Target::Input { .. });
        if self.mode == Mode::Rendered {
            let want: Vec<(String, String)> = forced_input_flags()
                .chunks(2)
                .map(|p| (p[0][1..].to_owned(), p[1].to_owned()))
                .collect();
            if (input && *forced != want) || (!input && !forced.is_empty()) {
                return Err(CommandError::ForbiddenOption {
                    arg: "-i".into(),
                    why: "it would override a protection the platform sets",
                });
            }
            forced.clear();
        }
        for o in options.iter() {
            let scope = o.spec().scope;
            if (input && scope == Scope::Output) || (!input && scope == Scope::Input) {
                return Err(CommandError::ForbiddenOption {
                    arg: o.flag(),
                    why: if input {
                        "it applies to outputs only"
                    } else {
                        "it applies to inputs only"
                    },
                });
            }
            if o.name == "f" {
                if let Value::Text(fmt) = &o.value {
                    let ok = if input {
                        options::demuxers().any(|d| d == fmt)
                    } else {
                        options::MUXERS.contains(&fmt.as_str())
                    };
                    if !ok {
                        return Err(CommandError::FormatNotAllowed {
                            arg: "-f".into(),
                            format: fmt.clone(),
                        });
                    }
                }
            }
        }
        if let Target::Output { alias, entry } = &target {
            self.check_muxer(options, alias, entry.as_deref())?;
        }
        Ok(FileGroup {
            options: std::mem::take(options),
            target,
        })
    }

    /// The muxer an output really gets is the last `-f`, or else the one FFmpeg guesses from
    /// the file name's extension: that one must be on the allowlist too. Muxers that write more
    /// files than the one named (playlists with segments, image patterns) need a directory output,
    /// where every file they write is a declared one.
    fn check_muxer(
        &self,
        options: &[Opt],
        alias: &str,
        entry: Option<&str>,
    ) -> Result<(), CommandError> {
        let name = match (entry, self.spec.outputs.get(alias)) {
            (Some(e), _) => e,
            (None, Some(decl)) => decl.name(),
            (None, None) => return Err(CommandError::UndeclaredPlaceholder { arg: alias.into() }),
        };
        let shown = || match entry {
            Some(e) => format!("{{{{{alias}}}}}/{e}"),
            None => format!("{{{{{alias}}}}}"),
        };
        let explicit = options.iter().rev().find_map(|o| match (&o.value, o.name) {
            (Value::Text(f), "f") => Some(f.as_str()),
            _ => None,
        });
        let muxer = match explicit {
            Some(f) => f,
            None => options::guessed_muxer(name).ok_or_else(|| CommandError::FormatNotAllowed {
                arg: shown(),
                format: format!("guessed from the name {name:?}; name an allowed muxer with -f"),
            })?,
        };
        // The segment muxer guesses its segments' muxer from the name too.
        if muxer == "segment"
            && !options.iter().any(|o| o.name == "segment_format")
            && options::guessed_muxer(name).is_none()
        {
            return Err(CommandError::FormatNotAllowed {
                arg: shown(),
                format: format!(
                    "segments guessed from the name {name:?}; name an allowed muxer with -segment_format"
                ),
            });
        }
        let in_directory = entry.is_some();
        let multi_file = matches!(muxer, "hls" | "dash" | "segment")
            || (muxer == "image2" && name.contains('%'));
        if multi_file && !in_directory {
            return Err(CommandError::ForbiddenValue {
                arg: shown(),
                why: "this muxer writes several files: write it into a directory output ({{dir}}/name)",
            });
        }
        Ok(())
    }

    /// Reads an argv the way FFmpeg's `split_commandline` does.
    fn parse(mut self, args: &[String]) -> Result<Command, CommandError> {
        let mut cmd = Command::default();
        let mut options: Vec<Opt> = Vec::new();
        let mut forced: Vec<(String, String)> = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].as_str();
            i += 1;
            if arg == "--" {
                return Err(CommandError::ForbiddenOption {
                    arg: arg.into(),
                    why: "-- is not supported",
                });
            }
            if !arg.starts_with('-') || arg == "-" {
                let target = match self.classify(arg)? {
                    Ref::OutputFile(alias) => Target::Output { alias, entry: None },
                    Ref::OutputDirEntry(alias, name) => Target::Output {
                        alias,
                        entry: Some(name),
                    },
                    _ => {
                        return Err(CommandError::NotAnOutput {
                            arg: arg.to_owned(),
                        })
                    }
                };
                if let Target::Output { alias, .. } = &target {
                    self.outputs_used.insert(alias.clone());
                }
                let group = self.finish(&mut options, &mut forced, target)?;
                cmd.files.push(group);
                continue;
            }
            let name = &arg[1..];
            if name.starts_with('/') {
                return Err(CommandError::ForbiddenOption {
                    arg: arg.to_owned(),
                    why: "it reads a file named by the tenant",
                });
            }
            let missing = || CommandError::MissingValue {
                arg: arg.to_owned(),
            };
            if name == "i" {
                let v = args.get(i).ok_or_else(missing)?;
                i += 1;
                let alias = match self.classify(v)? {
                    Ref::Input(a) => a,
                    _ => return Err(CommandError::NotAnInput { arg: v.clone() }),
                };
                self.inputs_used.insert(alias.clone());
                let group = self.finish(&mut options, &mut forced, Target::Input { alias })?;
                cmd.files.push(group);
                continue;
            }
            let (base, stream) = match name.split_once(':') {
                Some((b, s)) => (b, Some(s)),
                None => (name, None),
            };
            if self.mode == Mode::Rendered
                && stream.is_none()
                && matches!(
                    base,
                    "protocol_whitelist" | "format_whitelist" | "probesize"
                )
            {
                let v = args.get(i).ok_or_else(missing)?;
                i += 1;
                forced.push((base.to_owned(), v.clone()));
                continue;
            }
            let Some(spec) = options::lookup(base) else {
                return Err(match options::refusal(base) {
                    Some(why) => CommandError::ForbiddenOption {
                        arg: arg.to_owned(),
                        why,
                    },
                    None => CommandError::UnknownOption {
                        arg: arg.to_owned(),
                    },
                });
            };
            if let Some(s) = stream {
                if !spec.spec || !grammar::is_stream_spec(s) {
                    return Err(CommandError::ForbiddenOption {
                        arg: arg.to_owned(),
                        why: "this option takes no stream specifier, or the specifier is malformed",
                    });
                }
            }
            if !forced.is_empty() {
                return Err(CommandError::ForbiddenOption {
                    arg: arg.to_owned(),
                    why: "it would override a protection the platform sets",
                });
            }
            let value = match spec.kind {
                Kind::Flag => Value::Flag,
                _ => {
                    let v = args.get(i).ok_or_else(missing)?;
                    i += 1;
                    // FFmpeg would take `-i` as this option's value; say what was meant.
                    if v == "-i" {
                        return Err(missing());
                    }
                    self.value(spec, arg, v)?
                }
            };
            if matches!(spec.name, "v" | "loglevel") {
                // The platform's level (FORCED_PREFIX) holds; a rendered argv has no other.
                if self.mode == Mode::Rendered {
                    return Err(CommandError::ForbiddenOption {
                        arg: arg.to_owned(),
                        why: "the platform sets the log level",
                    });
                }
                continue;
            }
            let opt = Opt {
                name: spec.name,
                stream: stream.map(str::to_owned),
                value,
            };
            if spec.scope == Scope::Global {
                cmd.globals.push(opt);
            } else {
                options.push(opt);
            }
        }
        if let Some(alias) = self
            .spec
            .inputs
            .keys()
            .find(|a| !self.inputs_used.contains(*a))
        {
            return Err(CommandError::InputUnused(alias.clone()));
        }
        if let Some(alias) = self
            .spec
            .outputs
            .keys()
            .find(|a| !self.outputs_used.contains(*a))
        {
            return Err(CommandError::OutputUnused(alias.clone()));
        }
        if !cmd
            .files
            .iter()
            .any(|f| matches!(f.target, Target::Output { .. }))
        {
            return Err(CommandError::NoOutput);
        }
        if let Some(o) = options.first() {
            return Err(CommandError::TrailingOption { arg: o.flag() });
        }
        if !forced.is_empty() {
            return Err(CommandError::TrailingOption {
                arg: format!("-{}", forced[0].0),
            });
        }
        Ok(cmd)
    }
}

/// Splits a template into arguments with shell-word rules, dropping a leading `ffmpeg`.
pub fn parse_template(template: &str) -> Result<Vec<String>, CommandError> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(CommandError::TooLong);
    }
    // An argv cannot carry NUL: FFmpeg would see a shorter string than the tree holds.
    if template.contains('\0') {
        return Err(CommandError::Syntax(
            "the command contains a NUL character".into(),
        ));
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

/// Parses and checks a template against its declared inputs and outputs.
pub fn validate(template: &str, spec: &IoSpec) -> Result<Command, CommandError> {
    let args = parse_template(template)?;
    Parser {
        spec,
        mode: Mode::Template,
        inputs_used: BTreeSet::new(),
        outputs_used: BTreeSet::new(),
    }
    .parse(&args)
}

/// Threads per input and output when the tenant does not say (the fleet's machines have 2 cores).
pub const DEFAULT_THREADS: u32 = 2;

/// Validates a template and renders the argv (without the program name) the worker will run.
///
/// Every input and every output gets an explicit `-threads threads` unless the tenant set
/// `-threads` for it: inside the jail FFmpeg cannot read `/proc` or `/sys` to count CPUs.
pub fn render(template: &str, spec: &IoSpec, threads: u32) -> Result<Vec<String>, CommandError> {
    let cmd = validate(template, spec)?;
    Ok(render_tree(
        &cmd,
        spec,
        Some(threads.clamp(1, options::MAX_THREADS)),
    ))
}

/// Writes the argv of a tree: forced prefix, global options, then each file's options followed
/// by `-threads` (when `threads` is given and the file has none), the forced input flags and
/// `-i path`, or the output path.
pub fn render_tree(cmd: &Command, spec: &IoSpec, threads: Option<u32>) -> Vec<String> {
    let mut argv: Vec<String> = FORCED_PREFIX.iter().map(|s| s.to_string()).collect();
    let push = |argv: &mut Vec<String>, o: &Opt| {
        argv.push(o.flag());
        argv.extend(o.rendered_value(spec));
    };
    for o in &cmd.globals {
        push(&mut argv, o);
    }
    for f in &cmd.files {
        for o in &f.options {
            push(&mut argv, o);
        }
        if let Some(n) = threads {
            if !f.options.iter().any(|o| o.name == "threads") {
                argv.extend(["-threads".to_owned(), n.to_string()]);
            }
        }
        match &f.target {
            Target::Input { alias } => {
                argv.extend(forced_input_flags().iter().map(|s| s.to_string()));
                argv.push("-i".into());
                argv.push(spec.input_path(alias).unwrap_or_default());
            }
            Target::Output { alias, entry } => {
                let base = spec.output_path(alias).unwrap_or_default();
                argv.push(match entry {
                    Some(name) => format!("{base}/{name}"),
                    None => base,
                });
            }
        }
    }
    argv
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

/// The declared inputs the command's filters read as subtitle files, each with the demuxer that
/// must read it (from its extension, which the filter's table allows).
pub fn subtitle_inputs(cmd: &Command, spec: &IoSpec) -> BTreeMap<String, &'static str> {
    let graphs = cmd
        .globals
        .iter()
        .chain(cmd.files.iter().flat_map(|f| f.options.iter()))
        .filter_map(|o| match &o.value {
            Value::Graph(g) => Some(g),
            _ => None,
        });
    let mut out = BTreeMap::new();
    for alias in graphs
        .flat_map(|g| g.filters())
        .flat_map(|f| f.files.iter())
    {
        let ext = spec.inputs.get(alias).and_then(|d| d.ext.as_deref());
        if let Some(d) = ext.and_then(filters::subtitle_demuxer) {
            out.insert(alias.clone(), d);
        }
    }
    out
}

/// Parses a rendered argv (without the program name) into its tree.
pub fn parse_rendered(argv: &[String], spec: &IoSpec) -> Result<Command, CommandError> {
    parse_after_prefix(argv, forced_prefix_len(argv)?, spec)
}

fn parse_after_prefix(argv: &[String], n: usize, spec: &IoSpec) -> Result<Command, CommandError> {
    Parser {
        spec,
        mode: Mode::Rendered,
        inputs_used: BTreeSet::new(),
        outputs_used: BTreeSet::new(),
    }
    .parse(&argv[n..])
}

/// How many of `argv`'s first arguments are the forced prefix: [`FORCED_PREFIX`], or the one
/// before the forced log level (jobs queued before the upgrade; the worker reads no input
/// failure from such a run, and FFmpeg's errors stay `ffmpeg_failed`).
fn forced_prefix_len(argv: &[String]) -> Result<usize, CommandError> {
    let starts = |prefix: &[&str]| {
        argv.len() >= prefix.len() && argv.iter().zip(prefix).all(|(a, b)| a == b)
    };
    if starts(FORCED_PREFIX) {
        Ok(FORCED_PREFIX.len())
    } else if starts(&FORCED_PREFIX[2..]) {
        Ok(FORCED_PREFIX.len() - 2)
    } else {
        Err(CommandError::MissingForcedPrefix)
    }
}

/// The worker's second check of a rendered argv (without the program name): it must parse into
/// an allowed tree, and rendering that tree must give back exactly this argv.
pub fn check_rendered(argv: &[String], spec: &IoSpec) -> Result<(), CommandError> {
    let n = forced_prefix_len(argv)?;
    let cmd = parse_after_prefix(argv, n, spec)?;
    let rendered = render_tree(&cmd, spec, None);
    // An argv of the earlier prefix is the same render without the forced log level.
    if rendered[FORCED_PREFIX.len() - n..] != *argv {
        return Err(CommandError::NotCanonical);
    }
    Ok(())
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
    fn a_tenants_log_level_is_accepted_and_never_reaches_ffmpeg() {
        for level in ["-v quiet", "-loglevel error", "-v panic"] {
            let t = format!("{level} -i {{{{in}}}} -i {{{{logo}}}} -map 0:v {{{{out}}}} -map 0:v -f hls {{{{hls}}}}/index.m3u8");
            let argv = render(&t, &spec(), DEFAULT_THREADS).unwrap();
            assert_eq!(argv[..2], ["-loglevel", FORCED_LOG_LEVEL]);
            assert!(!argv[2..].iter().any(|a| a == "-v" || a == "-loglevel"));
            check_rendered(&argv, &spec()).unwrap();
            // A rendered argv carrying a second level is not the platform's.
            let mut sneaked = argv.clone();
            let n = FORCED_PREFIX.len();
            sneaked.splice(n..n, ["-v".to_owned(), "quiet".to_owned()]);
            assert!(matches!(
                check_rendered(&sneaked, &spec()),
                Err(CommandError::ForbiddenOption { .. })
            ));
        }
        // Values outside the allowed levels are still refused, as before.
        assert!(matches!(
            render(
                "-v debug -i {{in}} -i {{logo}} -map 0:v {{out}} -map 0:v -f hls {{hls}}/i.m3u8",
                &spec(),
                2
            ),
            Err(CommandError::BadValue { .. })
        ));
    }

    /// Jobs queued before the forced log level were rendered without it, and a fleet mid-upgrade
    /// has workers of both kinds; the command grammar (`5.1`) that routes jobs to workers did
    /// not change. A new worker refuses an old argv, an old worker a new one, as
    /// `command_rejected`: not retryable, the tenant's fault, for the platform's upgrade.
    #[test]
    fn an_argv_rendered_before_the_forced_log_level_still_runs_or_is_routed_apart() {
        let argv = render(VALID, &spec(), DEFAULT_THREADS).unwrap();
        // What the control plane rendered before: the same argv, without `-loglevel level+info`.
        let old: Vec<String> = argv[2..].to_vec();
        assert_eq!(
            parse_rendered(&old, &spec()).unwrap(),
            parse_rendered(&argv, &spec()).unwrap()
        );
        // Only exactly the earlier prefix: not a level of the tenant's in its place.
        let mut swapped = argv.clone();
        swapped[1] = "quiet".into();
        assert!(check_rendered(&swapped, &spec()).is_err());
        assert!(
            check_rendered(&old, &spec()).is_ok() || crate::fingerprint::COMMAND_GRAMMAR != "5.1",
            "an argv rendered before the upgrade fails command_rejected on an upgraded worker, \
             and the grammar that routes it is unchanged: {:?}",
            check_rendered(&old, &spec())
        );
    }

    #[test]
    fn valid_templates_render_to_fixed_paths() {
        let argv = render(VALID, &spec(), DEFAULT_THREADS).unwrap();
        let joined = argv.join(" ");
        assert!(joined.starts_with(
            "-loglevel level+verbose -hide_banner -nostdin -nostats -y -progress pipe:1 "
        ));
        let forced = forced_input_flags().join(" ");
        assert!(
            joined.contains(&format!(
                "-threads 2 {forced} -i in/in.mov -threads 2 {forced} -i in/logo"
            )),
            "{joined}"
        );
        assert!(joined.contains(" out/out/out.mp4 "));
        assert!(joined
            .contains("-hls_segment_filename out/hls/seg_%03d.ts -threads 2 out/hls/index.m3u8"));
        assert!(
            joined.contains("overlay=x=10:y=10,scale=w=160:h=-2:flags=bicubic[v]"),
            "{joined}"
        );
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
            "-i {{in}} -map 0 -disposition:a:0 0 -disposition:v:0 +default {{out}}",
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
        assert!(matches!(
            render(
                "-i {{in}} -metadata title=a\0b {{out}}",
                &one,
                DEFAULT_THREADS
            ),
            Err(CommandError::Syntax(_))
        ));
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

    fn io() -> IoSpec {
        let mut s = IoSpec::default();
        s.add_input("in", "clip.mp4").unwrap();
        s.add_output("out", "out.mp4").unwrap();
        s
    }

    #[test]
    fn reported_attack_classes_are_refused_naming_the_argument() {
        let s = io();
        let cases: &[(&str, &str)] = &[
            // FFmpeg reads nothing escaped inside '…': this is curves + nullsink + amovie.
            (
                r#"-i {{in}} -af "curves=plot='\\\\',nullsink;amovie=/etc/passwd:f=u8" {{out}}"#,
                r"curves=plot='\\',nullsink;amovie=/etc/passwd:f=u8",
            ),
            (
                r#"-i {{in}} -af "volume='\\\\',anull;amovie=/etc/passwd" {{out}}"#,
                r"volume='\\',anull;amovie=/etc/passwd",
            ),
            // Arity: -fix_sub_duration is a flag in 5.1, so -vstats_file is an option.
            (
                "-fix_sub_duration -vstats_file {{out}} -i {{in}} {{out}}",
                "-vstats_file",
            ),
            ("-fix_sub_duration -report -i {{in}} {{out}}", "-report"),
            // -copytb and -reinit_filter take a value.
            ("-copytb -report -i {{in}} {{out}}", "-report"),
            ("-reinit_filter -i {{in}} {{out}}", "-reinit_filter"),
            // Values checked by grammar, not by first character.
            (
                "-i {{in}} -c:v libx264 -x264-params keyint=2:cqmfile=/etc/passwd {{out}}",
                "keyint=2:cqmfile=/etc/passwd",
            ),
            (
                "-i {{in}} -c:v libx265 -x265-params csv=/tmp/x {{out}}",
                "csv=/tmp/x",
            ),
            (
                r"-i {{in}} -vf scale=w=\\/etc/passwd {{out}}",
                r"scale=w=\/etc/passwd",
            ),
            (r"-i {{in}} -metadata:s:v:0 \\/x {{out}}", r"\/x"),
            (
                "-i {{in}} -vf paletteuse=debug_kdtree=/tmp/x {{out}}",
                "paletteuse=debug_kdtree=/tmp/x",
            ),
            (
                "-i {{in}} -vf psnr=stats_file=/tmp/x {{out}}",
                "psnr=stats_file=/tmp/x",
            ),
            ("-i {{in}} -f sap {{out}}", "-f"),
            ("-i {{in}} -f rtp {{out}}", "-f"),
            ("-f mp4 -i {{in}} -f tee {{out}}", "-f"),
            ("-i {{in}} -f segment -segment_format sap {{out}}", "sap"),
            (
                "-i {{in}} -c:v libx264 -preset /etc/passwd {{out}}",
                "/etc/passwd",
            ),
            ("-i {{in}} -map:v 0 {{out}}", "-map:v"),
            ("-i {{in}} -movflags:v +faststart {{out}}", "-movflags:v"),
            (
                "-i {{in}} -bsf:v h264_metadata=sei_user_data=x {{out}}",
                "h264_metadata=sei_user_data=x",
            ),
            ("-i {{in}} -- {{out}}", "--"),
            ("-i {{in}} {{out}} -y -c:v", "-c:v"),
            ("-i {{in}} {{out}} -c:v libx264", "-c:v"),
            ("-i {{in}} -sseof -1 {{out}}", "-sseof"),
            ("-map 0 -i {{in}} {{out}}", "-map"),
        ];
        for (t, arg) in cases {
            let err = render(t, &s, DEFAULT_THREADS).unwrap_err();
            assert_eq!(err.argument(), Some(*arg), "{t}: {err}");
            assert!(err.to_string().contains(&format!("{arg:?}")), "{err}");
        }
    }

    #[test]
    fn number_patterns_in_directory_entries_have_a_bounded_width() {
        let mut s = IoSpec::default();
        s.add_input("in", "clip.mp4").unwrap();
        s.add_output("dir", "dir/").unwrap();
        for name in ["s%d.ts", "s%03d.ts", "s%3d.ts", "s%%.ts", "f%02d-%d.png"] {
            let t = format!("-i {{{{in}}}} -f segment {{{{dir}}}}/{name}");
            let argv = render(&t, &s, DEFAULT_THREADS).unwrap_or_else(|e| panic!("{t}: {e}"));
            check_rendered(&argv, &s).unwrap();
        }
        for name in [
            "s%2000000000d.ts",
            "s%010d.ts",
            "s%v.ts",
            "s%.ts",
            "s%",
            "s%0100d.ts",
        ] {
            let entry = format!("{{{{dir}}}}/{name}");
            let t = format!("-i {{{{in}}}} -f hls {entry}");
            let err = render(&t, &s, DEFAULT_THREADS).unwrap_err();
            assert_eq!(err.argument(), Some(entry.as_str()), "{t}: {err}");
            let t =
                format!("-i {{{{in}}}} -f hls -hls_segment_filename {entry} {{{{dir}}}}/i.m3u8");
            let err = render(&t, &s, DEFAULT_THREADS).unwrap_err();
            assert_eq!(err.argument(), Some(entry.as_str()), "{t}: {err}");
        }
    }

    #[test]
    fn outputs_get_an_allowed_muxer_and_multi_file_muxers_a_directory() {
        let mut s = IoSpec::default();
        s.add_input("in", "clip.mp4").unwrap();
        s.add_output("hls", "hls/").unwrap();
        let refused = |out: &str, t: &str| {
            let mut s = s.clone();
            s.add_output("out", out).unwrap();
            let t = format!("-i {{{{in}}}} {t} -f hls {{{{hls}}}}/i.m3u8");
            let err = render(&t, &s, DEFAULT_THREADS).unwrap_err();
            assert_eq!(err.argument(), Some("{{out}}"), "{t}: {err}");
        };
        // hls/dash write segments next to a file output, outside what was declared.
        refused("out.mp4", "-f hls {{out}}");
        refused("out.mp4", "-f dash {{out}}");
        refused("out.mp4", "-f mp4 -f segment {{out}}");
        refused("list.m3u8", "{{out}}");
        refused("x.MPD", "{{out}}");
        // A '%' in a file output's name is an image2 pattern: frame1.png, frame2.png…
        refused("frame%d.png", "{{out}}");
        refused("frame%d.mp4", "-f image2 {{out}}");
        // Extensions FFmpeg maps to muxers that are not allowed, or to none.
        refused("meta.ffmeta", "{{out}}");
        refused("manifest.xml", "{{out}}");
        refused("noext", "{{out}}");
        // The segment muxer guesses the segments' muxer from the name the same way.
        for t in [
            "-i {{in}} -f segment {{hls}}/s%03d.ffmeta",
            "-i {{in}} -f segment {{hls}}/s%03d.xml",
        ] {
            let err = render(t, &s, DEFAULT_THREADS).unwrap_err();
            assert!(
                err.argument()
                    .is_some_and(|a| a.ends_with(".ffmeta") || a.ends_with(".xml")),
                "{t}: {err}"
            );
        }
        let t = "-i {{in}} -f segment -segment_format mpegts {{hls}}/s%03d.seg";
        render(t, &s, DEFAULT_THREADS).unwrap_or_else(|e| panic!("{t}: {e}"));
        let mut s2 = s.clone();
        s2.add_output("out", "meta.ffmeta").unwrap();
        let ok = [
            "-i {{in}} -f mp4 {{out}} -f hls {{hls}}/i.m3u8",
            "-i {{in}} -f mp4 {{out}} -f dash {{hls}}/i.mpd",
            "-i {{in}} -f mp4 {{out}} -f image2 {{hls}}/f%03d.png",
            "-i {{in}} -f mp4 {{out}} -f segment {{hls}}/s%03d.ts",
        ];
        for t in ok {
            let argv = render(t, &s2, DEFAULT_THREADS).unwrap_or_else(|e| panic!("{t}: {e}"));
            check_rendered(&argv, &s2).unwrap();
        }
    }

    #[test]
    fn real_world_templates_are_accepted_and_round_trip() {
        let mut s = IoSpec::default();
        s.add_input("in", "clip.mov").unwrap();
        s.add_input("logo", "logo.png").unwrap();
        s.add_output("hls", "hls/").unwrap();
        s.add_output("thumbs", "thumbs/").unwrap();
        s.add_output("mp4", "out.mp4").unwrap();
        s.add_output("webm", "out.webm").unwrap();
        s.add_output("audio", "audio.m4a").unwrap();
        let t = "-i {{in}} -i {{logo}} \
            -filter_complex '[0:v]split=2[a][b];[a]scale=1280:-2[a1];[b]scale=640:-2[b1]' \
            -map '[a1]' -map 0:a? -c:v libx264 -preset veryfast -crf 23 -g 48 -keyint_min 48 \
              -sc_threshold 0 -c:a aac -b:a 128k -f hls -hls_time 4 -hls_playlist_type vod \
              -hls_segment_filename {{hls}}/hi_%03d.ts {{hls}}/hi.m3u8 \
            -map '[b1]' -c:v libx264 -x264-params keyint=48:min-keyint=48:scenecut=0 \
              -f hls -hls_segment_filename {{hls}}/lo_%03d.ts {{hls}}/lo.m3u8 \
            -map 0:v -vf \"select='not(mod(n\\,10))',scale=160:-2,tile=3x3\" -frames:v 1 \
              -f image2 {{thumbs}}/sheet_%02d.jpg \
            -filter_complex '[0:v][1:v]overlay=W-w-10:H-h-10:enable=between(t\\,1\\,5)[wm]' \
              -map '[wm]' -map 0:a -c:v libx264 -crf 20 -pix_fmt yuv420p -movflags +faststart \
              -af loudnorm=I=-16:TP=-1.5:LRA=11 -metadata title='My clip: part 1' {{mp4}} \
            -map 0:v -map 0:a -c:v libvpx-vp9 -b:v 0 -crf 32 -row-mt 1 -deadline good \
              -cpu-used 4 -c:a libopus -b:a 96k -f webm {{webm}} \
            -vn -map 0:a -c:a aac -ar 48000 -ac 2 -af aresample=48000,volume=0.8 {{audio}}";
        let argv = render(t, &s, 2).unwrap_or_else(|e| panic!("{e}"));
        check_rendered(&argv, &s).unwrap();
        let joined = argv.join(" ");
        for want in [
            "-x264-params keyint=48:min-keyint=48:scenecut=0",
            r"select=expr=not(mod(n\,10)),scale=w=160:h=-2:flags=bicubic,tile=layout=3x3",
            r"overlay=x=W-w-10:y=H-h-10:enable=between(t\,1\,5)[wm]",
            "-metadata title=My clip: part 1",
        ] {
            assert!(joined.contains(want), "{want} not in {joined}");
        }
    }

    #[test]
    fn rendering_is_canonical_and_tampering_with_any_byte_is_caught() {
        let s = io();
        let argv = render(
            r"-i {{in}} -vf 'scale=w=iw/2:h=-2, fps=25' -c:v libx264 -x264-params keyint=5 {{out}}",
            &s,
            2,
        )
        .unwrap();
        check_rendered(&argv, &s).unwrap();
        let i = argv.iter().position(|a| a.starts_with("scale=")).unwrap();
        for (k, tampered) in [
            r"scale=w=iw/2:h=-2,fps=fps=25 ",
            r"scale=w='iw/2':h=-2,fps=fps=25",
            r"scale=w=iw/2:h=-2:flags=bicubic,fps=25",
            r"scale=w=iw\/2:h=-2:flags=bicubic,fps=fps=25",
        ]
        .iter()
        .enumerate()
        {
            let mut v = argv.clone();
            v[i] = tampered.to_string();
            assert!(check_rendered(&v, &s).is_err(), "{k}: {tampered}");
        }
        let mut v = argv.clone();
        let j = v.iter().position(|a| a == "keyint=5").unwrap();
        v[j] = "keyint=5:cqmfile=/etc/passwd".into();
        assert!(check_rendered(&v, &s).is_err());
    }

    fn subs_spec() -> IoSpec {
        let mut s = IoSpec::default();
        s.add_input("video", "clip.mp4").unwrap();
        s.add_input("subs", "Subs.SRT").unwrap();
        s.add_input("styled", "styled.ass").unwrap();
        s.add_output("out", "out.mp4").unwrap();
        s
    }

    #[test]
    fn subtitle_files_are_declared_inputs_rendered_as_their_paths() {
        let s = subs_spec();
        let t = "-i {{video}} -vf 'subtitles={{subs}}:force_style=FontSize=24\\,Bold=1,ass=f={{styled}}' {{out}}";
        let argv = render(t, &s, 2).unwrap_or_else(|e| panic!("{e}"));
        check_rendered(&argv, &s).unwrap();
        let joined = argv.join(" ");
        assert!(
            joined.contains(
                r"-vf subtitles=filename=in/subs.srt:force_style=FontSize=24\,Bold=1,ass=f=in/styled.ass"
            ),
            "{joined}"
        );
        let cmd = parse_rendered(&argv, &s).unwrap();
        let subs = subtitle_inputs(&cmd, &s);
        assert_eq!(
            subs.into_iter().collect::<Vec<_>>(),
            vec![("styled".to_owned(), "ass"), ("subs".to_owned(), "srt")]
        );
        // Quoted or keyed, the placeholder is the same file.
        for t in [
            "-i {{video}} -vf \"subtitles='{{subs}}'\" -vf ass={{styled}} {{out}}",
            "-i {{video}} -filter_complex '[0:v]subtitles=filename={{subs}},ass={{styled}}[v]' -map '[v]' {{out}}",
        ] {
            let argv = render(t, &s, 2).unwrap_or_else(|e| panic!("{t}: {e}"));
            check_rendered(&argv, &s).unwrap();
        }
    }

    #[test]
    fn subtitle_filters_name_no_other_file_and_no_font_directory() {
        let s = subs_spec();
        let cases: &[&str] = &[
            "subtitles=/etc/passwd",
            "subtitles=in/subs.srt",
            "subtitles=filename={{subs}}x",
            "subtitles='{{subs}}/../x'",
            "subtitles={{subs}}:fontsdir=/tmp",
            "subtitles={{subs}}:fontsdir={{styled}}",
            "subtitles={{subs}}:charenc=../../tmp/x",
            "subtitles={{subs}}:charenc=UTF-8/x",
            "subtitles={{subs}}:force_style=FontName=/etc/passwd",
            "subtitles={{video}}",
            "subtitles={{out}}",
            "ass={{subs}}",
            "drawbox=color={{subs}}",
            "subtitles={{subs}}:original_size=64x48:/tmp",
            "subtitles=f={{subs}}:filename={{subs}}",
            "movie={{subs}}",
        ];
        for graph in cases {
            let used = if graph.contains("styled") {
                ""
            } else {
                ",ass={{styled}}"
            };
            let t = format!(
                "-i {{{{video}}}} -vf {} {{{{out}}}}",
                shell_words::quote(&format!("{graph}{used}"))
            );
            let err = render(&t, &s, 2).unwrap_err();
            assert!(err.argument().is_some(), "{t}: {err}");
        }
        // A rendered argv naming anything but the declared input's path is not the tree's.
        let argv = render(
            "-i {{video}} -vf subtitles={{subs}},ass={{styled}} {{out}}",
            &s,
            2,
        )
        .unwrap();
        for bad in [
            "subtitles=filename=/etc/passwd,ass=filename=in/styled.ass",
            "subtitles=filename=in/subs.srt:fontsdir=/tmp,ass=filename=in/styled.ass",
            "subtitles=filename=in/subs.srt,ass=filename=in/video.mp4",
            "subtitles=filename=in/styled.ass",
        ] {
            let mut v = argv.clone();
            let i = v.iter().position(|a| a.starts_with("subtitles=")).unwrap();
            v[i] = bad.to_owned();
            assert!(check_rendered(&v, &s).is_err(), "{bad}");
        }
    }

    #[test]
    fn still_images_are_stored_without_an_extension_image2_would_claim() {
        let mut s = IoSpec::default();
        for (alias, name) in [
            ("a", "logo.jpg"),
            ("b", "logo.JPEG"),
            ("c", "x.png"),
            ("d", "x.webp"),
            ("e", "x.bmp"),
            ("f", "x.tiff"),
            ("g", "x.gif"),
            ("h", "x.raw"),
            // Whatever the upload was called, the stored name holds no pattern.
            ("i", "frame%03d.jpg"),
            ("j", "frames*.png"),
        ] {
            s.add_input(alias, name).unwrap();
            assert_eq!(s.input_path(alias), Some(format!("in/{alias}")), "{name}");
        }
        s.add_input("v", "clip.MOV").unwrap();
        assert_eq!(s.input_path("v").as_deref(), Some("in/v.mov"));
        s.add_input("w", "sound.opus").unwrap();
        assert_eq!(s.input_path("w").as_deref(), Some("in/w.opus"));
        assert!(
            !options::demuxers().any(|d| d == "image2"),
            "image2 expands patterns"
        );
    }
}
