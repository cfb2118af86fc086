//! The `mpegflow` command's library: starting the platform on one machine, the tenant API
//! client, and a private PostgreSQL cluster helper.

pub mod client;
pub mod demo;
pub mod layout;
pub mod logging;
pub mod pg;
pub mod platform;
pub mod sample;
