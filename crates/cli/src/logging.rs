//! Log output of the `mpegflow` command: human-readable lines (coloured only on a terminal) or,
//! with `MPEGFLOW_LOG_FORMAT=json`, one JSON object per line.

use std::io::IsTerminal;
use std::sync::OnceLock;

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format [`init`] chose (text before it ran).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// A status line of `up` for the person running it: a plain `mpegflow: …` line on stderr, or a
/// log event when the logs are JSON (so that stderr stays one JSON object per line).
pub fn status(msg: std::fmt::Arguments<'_>) {
    match format() {
        LogFormat::Json => tracing::info!(target: "mpegflow", "{msg}"),
        LogFormat::Text => eprintln!("mpegflow: {msg}"),
    }
}

/// The final error of a command, on stderr (as a log event when the logs are JSON).
pub fn final_error(e: &anyhow::Error) {
    match format() {
        LogFormat::Json => tracing::error!(target: "mpegflow", "{e:#}"),
        LogFormat::Text => eprintln!("error: {e:#}"),
    }
}

/// What is logged when `MPEGFLOW_LOG` is unset. s3s reports every refused tenant request at
/// ERROR under its own name; the embedded store logs those itself, at the level they deserve,
/// under `mpegflow_objstore::embedded`.
pub const DEFAULT_FILTER: &str = "warn,mpegflow=info,s3s=off,s3s_fs=off";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// From `MPEGFLOW_LOG_FORMAT` (`text`, the default, or `json`).
    pub fn from_env() -> Result<LogFormat, String> {
        LogFormat::parse(std::env::var("MPEGFLOW_LOG_FORMAT").ok().as_deref())
    }

    pub fn parse(value: Option<&str>) -> Result<LogFormat, String> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(_) => Err(format!(
                "MPEGFLOW_LOG_FORMAT must be `text` or `json`, not {:?}",
                value.unwrap_or_default()
            )),
        }
    }
}

/// Whether text logs may carry ANSI colour codes: only on a terminal, and not under `NO_COLOR`.
pub fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The filter for a `MPEGFLOW_LOG` value: [`DEFAULT_FILTER`] when unset; otherwise the value,
/// with s3s silenced unless the value names it (so `MPEGFLOW_LOG=debug` does not bring back
/// s3s's ERROR line for every refused tenant request).
pub fn directives(user: Option<&str>) -> String {
    match user.map(str::trim).filter(|v| !v.is_empty()) {
        None => DEFAULT_FILTER.to_owned(),
        Some(v) if v.contains("s3s") => v.to_owned(),
        Some(v) => format!("{v},s3s=off,s3s_fs=off"),
    }
}

/// Installs the global subscriber, writing to stderr. `MPEGFLOW_LOG` is an `EnvFilter`
/// directive list (default [`DEFAULT_FILTER`]).
pub fn init() -> Result<(), String> {
    let format = LogFormat::from_env()?;
    let _ = FORMAT.set(format);
    let user = std::env::var("MPEGFLOW_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(directives(user.as_deref()))
        .map_err(|e| format!("MPEGFLOW_LOG {user:?} is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(colour_on_stderr()).init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("text")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some(" JSON ")), Ok(LogFormat::Json));
        let err = LogFormat::parse(Some("xml")).unwrap_err();
        assert!(
            err.contains("MPEGFLOW_LOG_FORMAT") && err.contains("xml"),
            "{err}"
        );
    }

    #[test]
    fn a_user_filter_keeps_s3s_silent_unless_it_names_it() {
        assert_eq!(directives(None), DEFAULT_FILTER);
        assert_eq!(directives(Some(" ")), DEFAULT_FILTER);
        assert_eq!(directives(Some("debug")), "debug,s3s=off,s3s_fs=off");
        assert_eq!(directives(Some("info,s3s=debug")), "info,s3s=debug");
    }

    #[test]
    fn the_default_filter_parses_and_silences_s3s() {
        let filter = tracing_subscriber::EnvFilter::try_new(DEFAULT_FILTER).unwrap();
        assert!(filter.to_string().contains("s3s=off"), "{filter}");
    }
}
