//! Name resolution that checks before it connects: an endpoint's host is resolved once per
//! connection, every address it resolves to must be allowed ([`check_ip`]), and the HTTP client
//! connects to exactly those addresses — a name that answered "public" when the endpoint was
//! created and "private" now is refused, and no second lookup can answer differently.

use mpegflow_domain::webhook::{check_ip, EndpointUrl, TargetHost, UrlError, UrlPolicy};
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

/// A resolver that resolves nothing: for platforms that deliver to IP addresses only
/// (`MPEGFLOW_WEBHOOK_RESOLVE_NAMES=false`), e.g. ones that must never ask DNS.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoResolver;

impl Resolver for NoResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            Err(io::Error::other(format!(
                "{host} not resolved: this platform delivers to IP addresses only"
            )))
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

/// Resolves an endpoint's host as a delivery would and checks every address, for the API to
/// refuse at creation what no delivery could reach. A name that does not resolve (yet) passes:
/// DNS may be set up later, and every delivery checks again.
pub async fn check_endpoint(
    url: &EndpointUrl,
    resolver: &dyn Resolver,
    policy: &UrlPolicy,
) -> Result<(), Refused> {
    let TargetHost::Name(host) = url.host() else {
        // A literal was judged when the URL was parsed.
        return Ok(());
    };
    let ips = match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup(host)).await {
        Ok(Ok(ips)) => ips,
        Ok(Err(_)) | Err(_) => return Ok(()),
    };
    for ip in ips {
        check_ip(ip, false, policy).map_err(|error| Refused::Address {
            host: host.clone(),
            error,
        })?;
    }
    Ok(())
}

/// How long the API waits for a name to resolve when an endpoint is saved.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
