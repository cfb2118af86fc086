//! The `mpegflow` command's library: starting the platform on one machine, the tenant API
//! client, and a private PostgreSQL cluster helper.

pub mod client;
pub mod demo;
pub mod layout;
pub mod logging;
pub mod pg;
pub mod platform;
pub mod sample;
pub mod tenant;

/// Writes a file only its owner can read (it holds a secret).
pub fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}
