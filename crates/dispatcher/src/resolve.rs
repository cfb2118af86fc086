//! Name resolution that checks before it connects: an endpoint's host is resolved once per
//! connection, every address it resolves to must be allowed ([`check_ip`]), and the HTTP client
//! connects to exactly those addresses — a name that answered "public" when the endpoint was
//! created and "private" now is refused, and no second lookup can answer differently.

use mpegflow_domain::webhook::{check_ip, UrlError, UrlPolicy};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

/// Looks a host name up. Injectable, so tests answer without asking any DNS server.
pub trait Resolver: Send + Sync + 'static {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

/// The system's resolver (getaddrinfo).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host, 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Why a host was not connected to.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("{host} resolves to a refused address: {error}")]
    Address { host: String, error: UrlError },
}

/// The HTTP client's resolver: resolves with the injected [`Resolver`] and refuses the whole
/// name when any address it answers is not allowed.
pub(crate) struct CheckedResolver {
    pub(crate) inner: Arc<dyn Resolver>,
    pub(crate) policy: UrlPolicy,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let inner = self.inner.clone();
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let ips = inner.lookup(&host).await?;
            if ips.is_empty() {
                return Err(Box::new(Refused::NoAddress { host }) as _);
            }
            for ip in &ips {
                if let Err(error) = check_ip(*ip, false, &policy) {
                    return Err(Box::new(Refused::Address { host, error }) as _);
                }
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
