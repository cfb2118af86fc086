//! The tenant's commands (`run`, `jobs`, `assets`, `pools`, `login`): connection settings,
//! exit codes, and how an error is told.

pub mod jobs;
mod listen;
pub mod run;
pub mod webhooks;

use crate::client::{ApiClient, ApiError};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the `mpegflow` command exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Exit {
    /// Done; for `run` and `jobs wait`, the job succeeded.
    Ok = 0,
    /// The job failed or was canceled.
    JobFailed = 1,
    /// Bad usage: a bad flag or argument, or a request the API refused as invalid.
    Usage = 2,
    /// The API key is missing, wrong or revoked.
    Auth = 3,
    /// No such job, asset or pool (in this org).
    NotFound = 4,
    /// The server or the network failed, or a limit was reached; retrying may help.
    Server = 5,
}

/// The exit codes as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "Exit codes:\n  0  done (the job succeeded)\n  1  the job failed or was canceled\n  2  usage: bad flags, or a request the API refused as invalid\n  3  authentication: missing, wrong or revoked API key\n  4  not found: no such job, asset or pool in your org\n  5  server or network error, or a limit reached (retry later)";

/// An error as the user sees it, and its exit code.
pub fn report(e: &anyhow::Error) -> Exit {
    if let Some(ApiError(p)) = e.downcast_ref::<ApiError>() {
        match &p.argument {
            Some(arg) => eprintln!("error: {} ({}, argument {arg:?})", p.detail, p.code),
            None => eprintln!("error: {} ({})", p.detail, p.code),
        }
        return match p.status {
            401 | 403 => Exit::Auth,
            404 => Exit::NotFound,
            400..=499 if p.status != 429 => Exit::Usage,
            _ => Exit::Server,
        };
    }
    eprintln!("error: {e:#}");
    if e.chain()
        .any(|c| c.downcast_ref::<reqwest::Error>().is_some())
    {
        Exit::Server
    } else {
        Exit::Usage
    }
}

/// How to reach the API: `--api-url`/`--api-key`, else `MPEGFLOW_API_URL`/`MPEGFLOW_API_KEY`,
/// else the file `mpegflow login` wrote.
#[derive(Clone, Default, clap::Args)]
pub struct Connection {
    /// The API's base URL, e.g. http://127.0.0.1:8080 (default: the saved login's)
    #[arg(long, global = true, value_name = "URL", env = "MPEGFLOW_API_URL")]
    pub api_url: Option<String>,
    /// An org's API key (mfk_…); prefer the environment or `mpegflow login`, as flags show in
    /// the process list (default: the saved login's)
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "MPEGFLOW_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
}

/// What `mpegflow login` keeps (mode 0600).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedLogin {
    pub api_url: String,
    pub api_key: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("api_url", &self.api_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for SavedLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedLogin")
            .field("api_url", &self.api_url)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// `$XDG_CONFIG_HOME/mpegflow/config.toml`, else `~/.config/mpegflow/config.toml`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MPEGFLOW_CONFIG") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("mpegflow").join("config.toml"))
}

fn saved_login() -> Result<Option<SavedLogin>> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map(Some).map_err(|e| {
            anyhow!(
                "reading {}: {}",
                path.display(),
                login_file_error(&text, &e)
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Why a saved login does not read, without quoting the file: toml's own text shows the
/// offending line, which may hold the API key.
fn login_file_error(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .and_then(|s| text.get(..s.start))
        .map(|before| format!(" at line {}", before.matches('\n').count() + 1))
        .unwrap_or_default();
    let why = e.message().lines().next().unwrap_or_default();
    let why = if why.contains("mfk_") {
        "not a setting `mpegflow login` writes"
    } else {
        why
    };
    format!("{why}{line}; it holds only api_url = \"URL\" and api_key = \"KEY\" (run `mpegflow login` again to rewrite it)")
}

/// Checks an API base URL: http(s), a host, nothing after the path.
pub fn parse_api_url(url: &str, from: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        let hint = if !url.contains("://") {
            " (it needs a scheme: http://HOST:PORT)"
        } else {
            ""
        };
        anyhow!("{from} {url:?} is not a URL: {e}{hint}")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        bail!("{from} {url:?} must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("{from} {url:?} must not have a query or fragment");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Says so when the key would cross a network in clear text (http to a host that is not this
/// machine).
fn warn_if_cleartext(url: &str) {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return;
    };
    let local = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if parsed.scheme() == "http" && !local {
        eprintln!("warning: {url} is plain http: the API key crosses the network unencrypted");
    }
}

impl Connection {
    /// The client these settings describe.
    pub fn client(&self) -> Result<ApiClient> {
        let saved = saved_login()?;
        let (url, from) = match (&self.api_url, &saved) {
            (Some(u), _) => (u.clone(), "--api-url/MPEGFLOW_API_URL"),
            (None, Some(s)) => (s.api_url.clone(), "the saved login's api_url"),
            (None, None) => bail!(
                "no API URL: pass --api-url, set MPEGFLOW_API_URL (`source DATA_DIR/demo.env` after `mpegflow up`), or run `mpegflow login`"
            ),
        };
        let url = parse_api_url(&url, from)?;
        // The saved key goes only to the server it was saved for.
        let key = match (&self.api_key, &saved) {
            (Some(k), _) => k.clone(),
            (None, Some(s)) if parse_api_url(&s.api_url, "the saved login").ok().as_deref() == Some(url.as_str()) => {
                s.api_key.clone()
            }
            (None, Some(s)) => bail!(
                "no API key for {url}: the saved login is for {}; set MPEGFLOW_API_KEY or pass --api-key",
                s.api_url
            ),
            (None, None) => bail!(
                "no API key: set MPEGFLOW_API_KEY (`source DATA_DIR/demo.env` after `mpegflow up`), pass --api-key, or run `mpegflow login`"
            ),
        };
        warn_if_cleartext(&url);
        Ok(ApiClient::new(&url, &key))
    }
}

/// `mpegflow login`: checks the settings against the API, then saves them.
pub async fn login(conn: &Connection) -> Result<Exit> {
    let url = conn
        .api_url
        .clone()
        .ok_or_else(|| anyhow!("give --api-url (or set MPEGFLOW_API_URL)"))?;
    let url = parse_api_url(&url, "--api-url")?;
    let key = match &conn.api_key {
        Some(k) => k.clone(),
        None => {
            eprint!("API key: ");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the API key from stdin")?;
            line.trim().to_owned()
        }
    };
    warn_if_cleartext(&url);
    let client = ApiClient::new(&url, &key);
    let pools = client.pools().await?;
    let path = config_path().ok_or_else(|| anyhow!("no HOME or XDG_CONFIG_HOME to save to"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let saved = SavedLogin {
        api_url: url.clone(),
        api_key: key,
    };
    crate::write_private(&path, &toml::to_string(&saved)?)?;
    eprintln!(
        "logged in to {url} ({} pool(s) available); settings saved in {}",
        pools.pools.len(),
        path.display()
    );
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_need_a_scheme_and_a_host() {
        assert_eq!(
            parse_api_url("http://127.0.0.1:8080/", "x").unwrap(),
            "http://127.0.0.1:8080"
        );
        let err = parse_api_url("127.0.0.1:8080", "MPEGFLOW_API_URL").unwrap_err();
        assert!(err.to_string().contains("http://HOST:PORT"), "{err}");
        assert!(parse_api_url("ftp://h", "x").is_err());
        assert!(parse_api_url("http://h/?a=1", "x").is_err());
    }
}
