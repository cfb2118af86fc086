//! Which endpoint URLs and addresses the platform may deliver to, so a tenant cannot point a
//! webhook at the platform's own network (server-side request forgery): cloud metadata services,
//! databases on private addresses, the loopback interface.
//!
//! Two stages. [`EndpointUrl::parse`] checks the URL when an endpoint is saved: an IP literal is
//! judged there, names are not resolved (that would be I/O, and DNS can change). The dispatcher
//! resolves the name at delivery time and calls [`check_ip`] for every address it would connect
//! to, so a name that resolves (or rebinds) to a private address is refused too.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest endpoint URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

#[derive(Debug, Clone, Copy, Default)]
pub struct UrlPolicy {
    /// Allow `127.0.0.0/8` and `::1` when the URL spells the address (development and tests: a
    /// receiver on the same machine). Never allows a name resolving to loopback.
    pub allow_loopback_literals: bool,
}

/// The host of an endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    Ip(IpAddr),
    /// A domain name as the url crate normalises it: lowercase ASCII (IDNs in punycode).
    Name(String),
}

/// An endpoint URL that passed the rules of [`EndpointUrl::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    url: url::Url,
    host: TargetHost,
    port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("not a URL: {0}")]
    Unparsable(String),
    #[error("only http and https URLs are allowed")]
    Scheme,
    #[error("URLs with credentials are not allowed")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error("URL fragments are not allowed")]
    Fragment,
    #[error("the URL is longer than 2048 bytes")]
    TooLong,
    #[error("{host} is a local name")]
    LocalName { host: String },
    #[error("{addr} is not allowed: {why}")]
    Forbidden { addr: IpAddr, why: &'static str },
}

/// Suffixes of names that only mean something inside a network (RFC 6761 `.localhost`, mDNS
/// `.local`, and `.internal`, which cloud providers use for their internal DNS).
const LOCAL_SUFFIXES: [&str; 3] = [".localhost", ".local", ".internal"];

impl EndpointUrl {
    pub fn parse(s: &str, policy: &UrlPolicy) -> Result<EndpointUrl, UrlError> {
        if s.len() > MAX_URL_BYTES {
            return Err(UrlError::TooLong);
        }
        // The url crate implements the WHATWG URL parser, which is what HTTP clients use: it
        // turns every spelling of an IPv4 address (2130706433, 0177.0.0.1, 0x7f.1) into its
        // dotted form, so the checks below see the address the client would connect to.
        let url = url::Url::parse(s).map_err(|e| UrlError::Unparsable(e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(UrlError::Scheme);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        if url.fragment().is_some() {
            return Err(UrlError::Fragment);
        }
        // Normalising percent-encodes, so the stored form can be longer than the input.
        if url.as_str().len() > MAX_URL_BYTES {
            return Err(UrlError::TooLong);
        }
        let host = match url.host() {
            None => return Err(UrlError::NoHost),
            Some(url::Host::Ipv4(v4)) => TargetHost::Ip(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => TargetHost::Ip(IpAddr::V6(v6)),
            Some(url::Host::Domain(name)) => TargetHost::Name(name.to_string()),
        };
        match &host {
            TargetHost::Ip(ip) => check_ip(*ip, true, policy)?,
            TargetHost::Name(name) => check_name(name)?,
        }
        let port = url.port_or_known_default().ok_or(UrlError::Scheme)?;
        Ok(EndpointUrl { url, host, port })
    }

    /// Normalised by the url crate (WHATWG): `http://2130706433/` becomes `http://127.0.0.1/`.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub fn host(&self) -> &TargetHost {
        &self.host
    }

    /// The explicit port, or the scheme's default (80, 443).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn check_name(name: &str) -> Result<(), UrlError> {
    // A fully qualified "localhost." is still localhost.
    let bare = name.strip_suffix('.').unwrap_or(name);
    let local = bare == "localhost"
        || !bare.contains('.')
        || LOCAL_SUFFIXES.iter().any(|suffix| bare.ends_with(suffix));
    if local {
        return Err(UrlError::LocalName {
            host: name.to_string(),
        });
    }
    Ok(())
}

/// Whether the platform may connect to `ip`: `literal` says the URL spelled this address itself (loopback is allowed only then, and only when policy.allow_loopback_literals).
pub fn check_ip(ip: IpAddr, literal: bool, policy: &UrlPolicy) -> Result<(), UrlError> {
    let loopback_ok = literal && policy.allow_loopback_literals;
    let why = match ip {
        IpAddr::V4(v4) => refused_v4(v4, Embedding::None, loopback_ok),
        IpAddr::V6(v6) => refused_v6(v6, loopback_ok),
    };
    match why {
        Some(why) => Err(UrlError::Forbidden { addr: ip, why }),
        None => Ok(()),
    }
}

/// How an IPv6 address carries an IPv4 one (index into [`V4Rule::why`]).
#[derive(Clone, Copy)]
enum Embedding {
    None = 0,
    Mapped = 1,
    Compatible = 2,
    Nat64 = 3,
    SixToFour = 4,
}

struct V4Rule {
    net: u32,
    prefix: u32,
    loopback: bool,
    /// The reason, for the address itself and for each way an IPv6 address can embed it.
    why: [&'static str; 5],
}

macro_rules! v4_rules {
    ($( [$a:literal, $b:literal, $c:literal, $d:literal] / $prefix:literal, loopback: $loopback:literal => $why:literal, )*) => {
        &[$(
            V4Rule {
                net: u32::from_be_bytes([$a, $b, $c, $d]),
                prefix: $prefix,
                loopback: $loopback,
                why: [
                    $why,
                    concat!("IPv4-mapped (::ffff:0:0/96) address in ", $why),
                    concat!("IPv4-compatible (::/96) address in ", $why),
                    concat!("NAT64 (64:ff9b::/96) address in ", $why),
                    concat!("6to4 (2002::/16) address in ", $why),
                ],
            },
        )*]
    };
}

/// Refused IPv4 ranges; the first match names the reason, so narrower ranges come first.
const V4_RULES: &[V4Rule] = v4_rules! {
    [0, 0, 0, 0] / 32, loopback: false => "0.0.0.0 (unspecified)",
    [0, 0, 0, 0] / 8, loopback: false => "0.0.0.0/8 (this network)",
    [127, 0, 0, 0] / 8, loopback: true => "127.0.0.0/8 (loopback)",
    [10, 0, 0, 0] / 8, loopback: false => "10.0.0.0/8 (private)",
    [172, 16, 0, 0] / 12, loopback: false => "172.16.0.0/12 (private)",
    [192, 168, 0, 0] / 16, loopback: false => "192.168.0.0/16 (private)",
    [169, 254, 0, 0] / 16, loopback: false => "169.254.0.0/16 (link-local, incl. cloud metadata)",
    [100, 64, 0, 0] / 10, loopback: false => "100.64.0.0/10 (shared address space, CGNAT)",
    [192, 0, 0, 0] / 24, loopback: false => "192.0.0.0/24 (IETF protocol assignments)",
    [192, 0, 2, 0] / 24, loopback: false => "192.0.2.0/24 (documentation)",
    [198, 18, 0, 0] / 15, loopback: false => "198.18.0.0/15 (benchmarking)",
    [198, 51, 100, 0] / 24, loopback: false => "198.51.100.0/24 (documentation)",
    [203, 0, 113, 0] / 24, loopback: false => "203.0.113.0/24 (documentation)",
    [224, 0, 0, 0] / 4, loopback: false => "224.0.0.0/4 (multicast)",
    [255, 255, 255, 255] / 32, loopback: false => "255.255.255.255 (broadcast)",
    [240, 0, 0, 0] / 4, loopback: false => "240.0.0.0/4 (reserved)",
};

fn in_v4(addr: u32, net: u32, prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    addr & mask == net & mask
}

fn refused_v4(v4: Ipv4Addr, how: Embedding, loopback_ok: bool) -> Option<&'static str> {
    let addr = u32::from(v4);
    let rule = V4_RULES
        .iter()
        .find(|rule| in_v4(addr, rule.net, rule.prefix))?;
    // Loopback only as itself: an embedded loopback is a trick, not a development setup.
    if rule.loopback && loopback_ok && matches!(how, Embedding::None) {
        return None;
    }
    Some(rule.why[how as usize])
}

struct V6Rule {
    net: u128,
    prefix: u32,
    why: &'static str,
}

const fn v6(segments: [u16; 8]) -> u128 {
    let mut n = 0u128;
    let mut i = 0;
    while i < 8 {
        n = (n << 16) | segments[i] as u128;
        i += 1;
    }
    n
}

/// Refused IPv6 ranges (after the unspecified, loopback and IPv4-embedding forms).
const V6_RULES: &[V6Rule] = &[
    V6Rule {
        net: v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]),
        prefix: 7,
        why: "fc00::/7 (unique local)",
    },
    V6Rule {
        net: v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]),
        prefix: 10,
        why: "fe80::/10 (link-local)",
    },
    V6Rule {
        net: v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]),
        prefix: 10,
        why: "fec0::/10 (site-local)",
    },
    V6Rule {
        net: v6([0xff00, 0, 0, 0, 0, 0, 0, 0]),
        prefix: 8,
        why: "ff00::/8 (multicast)",
    },
    V6Rule {
        net: v6([0x2001, 0x0db8, 0, 0, 0, 0, 0, 0]),
        prefix: 32,
        why: "2001:db8::/32 (documentation)",
    },
    V6Rule {
        net: v6([0x0100, 0, 0, 0, 0, 0, 0, 0]),
        prefix: 64,
        why: "100::/64 (discard-only)",
    },
    V6Rule {
        net: v6([0x2001, 0, 0, 0, 0, 0, 0, 0]),
        prefix: 32,
        why: "2001::/32 (Teredo)",
    },
];

fn in_v6(addr: u128, net: u128, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    addr & mask == net & mask
}

fn refused_v6(ip: Ipv6Addr, loopback_ok: bool) -> Option<&'static str> {
    let addr = u128::from(ip);
    if ip.is_unspecified() {
        return Some("::/128 (unspecified)");
    }
    if ip.is_loopback() {
        return if loopback_ok {
            None
        } else {
            Some("::1 (loopback)")
        };
    }
    // Addresses that carry an IPv4 address reach that IPv4 host (through the kernel's dual
    // stack, a NAT64 gateway or a 6to4 relay), so they are judged as that address.
    let low32 = Ipv4Addr::from((addr & 0xffff_ffff) as u32);
    if in_v6(addr, v6([0, 0, 0, 0, 0, 0xffff, 0, 0]), 96) {
        return refused_v4(low32, Embedding::Mapped, false);
    }
    if in_v6(addr, 0, 96) {
        return refused_v4(low32, Embedding::Compatible, false);
    }
    if in_v6(addr, v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), 96) {
        return refused_v4(low32, Embedding::Nat64, false);
    }
    if in_v6(addr, v6([0x2002, 0, 0, 0, 0, 0, 0, 0]), 16) {
        let embedded = Ipv4Addr::from(((addr >> 80) & 0xffff_ffff) as u32);
        return refused_v4(embedded, Embedding::SixToFour, false);
    }
    V6_RULES
        .iter()
        .find(|rule| in_v6(addr, rule.net, rule.prefix))
        .map(|rule| rule.why)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: UrlPolicy = UrlPolicy {
        allow_loopback_literals: false,
    };
    const DEV: UrlPolicy = UrlPolicy {
        allow_loopback_literals: true,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forbidden_why(s: &str, literal: bool, policy: &UrlPolicy) -> Option<&'static str> {
        match check_ip(ip(s), literal, policy) {
            Ok(()) => None,
            Err(UrlError::Forbidden { addr, why }) => {
                assert_eq!(addr, ip(s));
                Some(why)
            }
            Err(other) => panic!("{s}: unexpected {other:?}"),
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "192.0.1.1",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.0",
            "169.253.255.255",
            "223.255.255.255",
            "11.0.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:82b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::8.8.8.8",
            "2001:db9::1",
            "100::1:0:0:0:1",
            "fbff:ffff::1",
            "fe7f::1",
        ] {
            assert_eq!(check_ip(ip(a), false, &STRICT), Ok(()), "{a}");
            assert_eq!(check_ip(ip(a), true, &STRICT), Ok(()), "{a}");
        }
    }

    #[test]
    fn each_refused_range_names_itself() {
        let cases = [
            ("0.0.0.0", "0.0.0.0 (unspecified)"),
            ("0.1.2.3", "0.0.0.0/8 (this network)"),
            ("127.0.0.1", "127.0.0.0/8 (loopback)"),
            ("127.255.255.254", "127.0.0.0/8 (loopback)"),
            ("10.0.0.1", "10.0.0.0/8 (private)"),
            ("10.255.255.255", "10.0.0.0/8 (private)"),
            ("172.16.0.1", "172.16.0.0/12 (private)"),
            ("172.31.255.255", "172.16.0.0/12 (private)"),
            ("192.168.1.1", "192.168.0.0/16 (private)"),
            ("169.254.169.254", "169.254.0.0/16 (link-local, incl. cloud metadata)"),
            ("100.64.0.1", "100.64.0.0/10 (shared address space, CGNAT)"),
            ("100.127.255.255", "100.64.0.0/10 (shared address space, CGNAT)"),
            ("192.0.0.8", "192.0.0.0/24 (IETF protocol assignments)"),
            ("192.0.2.1", "192.0.2.0/24 (documentation)"),
            ("198.18.0.1", "198.18.0.0/15 (benchmarking)"),
            ("198.19.255.255", "198.18.0.0/15 (benchmarking)"),
            ("198.51.100.7", "198.51.100.0/24 (documentation)"),
            ("203.0.113.9", "203.0.113.0/24 (documentation)"),
            ("224.0.0.1", "224.0.0.0/4 (multicast)"),
            ("239.255.255.250", "224.0.0.0/4 (multicast)"),
            ("240.0.0.1", "240.0.0.0/4 (reserved)"),
            ("255.255.255.255", "255.255.255.255 (broadcast)"),
            ("::", "::/128 (unspecified)"),
            ("::1", "::1 (loopback)"),
            ("fc00::1", "fc00::/7 (unique local)"),
            ("fd12:3456::1", "fc00::/7 (unique local)"),
            ("fe80::1", "fe80::/10 (link-local)"),
            ("febf::1", "fe80::/10 (link-local)"),
            ("fec0::1", "fec0::/10 (site-local)"),
            ("ff02::1", "ff00::/8 (multicast)"),
            ("2001:db8::1", "2001:db8::/32 (documentation)"),
            ("100::1", "100::/64 (discard-only)"),
            ("2001:0:4136:e378::1", "2001::/32 (Teredo)"),
            ("::ffff:127.0.0.1", "IPv4-mapped (::ffff:0:0/96) address in 127.0.0.0/8 (loopback)"),
            ("::ffff:a9fe:a9fe", "IPv4-mapped (::ffff:0:0/96) address in 169.254.0.0/16 (link-local, incl. cloud metadata)"),
            ("::ffff:10.1.2.3", "IPv4-mapped (::ffff:0:0/96) address in 10.0.0.0/8 (private)"),
            ("::ffff:0.0.0.0", "IPv4-mapped (::ffff:0:0/96) address in 0.0.0.0 (unspecified)"),
            ("::127.0.0.1", "IPv4-compatible (::/96) address in 127.0.0.0/8 (loopback)"),
            ("::2", "IPv4-compatible (::/96) address in 0.0.0.0/8 (this network)"),
            ("::192.168.0.1", "IPv4-compatible (::/96) address in 192.168.0.0/16 (private)"),
            ("64:ff9b::7f00:1", "NAT64 (64:ff9b::/96) address in 127.0.0.0/8 (loopback)"),
            ("64:ff9b::a9fe:a9fe", "NAT64 (64:ff9b::/96) address in 169.254.0.0/16 (link-local, incl. cloud metadata)"),
            ("2002:7f00:1::", "6to4 (2002::/16) address in 127.0.0.0/8 (loopback)"),
            ("2002:a9fe:a9fe:1234::5", "6to4 (2002::/16) address in 169.254.0.0/16 (link-local, incl. cloud metadata)"),
            ("2002:c0a8:101::1", "6to4 (2002::/16) address in 192.168.0.0/16 (private)"),
        ];
        for (addr, want) in cases {
            assert_eq!(forbidden_why(addr, false, &STRICT), Some(want), "{addr}");
            assert_eq!(forbidden_why(addr, true, &STRICT), Some(want), "{addr}");
        }
        let err = check_ip(ip("169.254.169.254"), false, &STRICT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "169.254.169.254 is not allowed: 169.254.0.0/16 (link-local, incl. cloud metadata)"
        );
    }

    #[test]
    fn loopback_needs_a_literal_and_the_policy() {
        for a in ["127.0.0.1", "127.1.2.3", "::1"] {
            assert!(forbidden_why(a, false, &STRICT).is_some(), "{a}");
            assert!(forbidden_why(a, true, &STRICT).is_some(), "{a}");
            // A name that resolves to loopback: refused even in development.
            assert!(forbidden_why(a, false, &DEV).is_some(), "{a}");
            assert_eq!(check_ip(ip(a), true, &DEV), Ok(()), "{a}");
        }
        // Embedded loopback is refused always; the policy opens loopback only.
        for a in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "10.0.0.1",
            "0.0.0.0",
            "::",
        ] {
            assert!(forbidden_why(a, true, &DEV).is_some(), "{a}");
        }
    }

    fn parse(s: &str) -> Result<EndpointUrl, UrlError> {
        EndpointUrl::parse(s, &STRICT)
    }

    #[test]
    fn good_urls_parse_and_normalise() {
        let u = parse("https://Hooks.Example.COM/path?q=1").unwrap();
        assert_eq!(u.as_str(), "https://hooks.example.com/path?q=1");
        assert_eq!(u.host(), &TargetHost::Name("hooks.example.com".into()));
        assert_eq!(u.port(), 443);
        assert!(u.is_https());
        assert_eq!(u.to_string(), u.as_str());

        let u = parse("http://example.com:8080").unwrap();
        assert_eq!(u.as_str(), "http://example.com:8080/");
        assert_eq!(u.port(), 8080);
        assert!(!u.is_https());

        let u = parse("http://example.com:80/").unwrap();
        assert_eq!(u.as_str(), "http://example.com/");
        assert_eq!(u.port(), 80);

        let u = parse("https://8.8.8.8/hook").unwrap();
        assert_eq!(u.host(), &TargetHost::Ip(ip("8.8.8.8")));

        let u = parse("https://[2606:4700:4700::1111]:8443/").unwrap();
        assert_eq!(u.host(), &TargetHost::Ip(ip("2606:4700:4700::1111")));
        assert_eq!(u.port(), 8443);

        let u = parse("https://bücher.example/").unwrap();
        assert_eq!(u.host(), &TargetHost::Name("xn--bcher-kva.example".into()));
        // A trailing dot is kept (it is a different name to TLS), but the name is still public.
        assert!(parse("https://example.com./").is_ok());
    }

    #[test]
    fn other_spellings_of_loopback_are_normalised_then_refused() {
        for (input, normalised) in [
            ("http://2130706433/", "http://127.0.0.1/"),
            ("http://0177.0.0.1/", "http://127.0.0.1/"),
            ("http://0x7f.1/", "http://127.0.0.1/"),
            ("http://127.1/", "http://127.0.0.1/"),
            ("http://127.0.0.1./", "http://127.0.0.1/"),
            ("http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/"),
            ("http://[0:0:0:0:0:0:0:1]/", "http://[::1]/"),
        ] {
            assert!(
                matches!(parse(input), Err(UrlError::Forbidden { .. })),
                "{input}: {:?}",
                parse(input)
            );
            let dev = EndpointUrl::parse(input, &DEV);
            if input.contains("ffff") {
                assert!(dev.is_err(), "{input}");
            } else {
                assert_eq!(dev.unwrap().as_str(), normalised, "{input}");
            }
        }
        assert_eq!(
            parse("http://[::ffff:a9fe:a9fe]/"),
            Err(UrlError::Forbidden {
                addr: ip("::ffff:169.254.169.254"),
                why: "IPv4-mapped (::ffff:0:0/96) address in 169.254.0.0/16 (link-local, incl. cloud metadata)"
            })
        );
        assert_eq!(
            parse("http://169.254.169.254/latest/meta-data/").unwrap_err(),
            UrlError::Forbidden {
                addr: ip("169.254.169.254"),
                why: "169.254.0.0/16 (link-local, incl. cloud metadata)"
            }
        );
        assert!(matches!(
            parse("http://0xa9fea9fe/"),
            Err(UrlError::Forbidden { .. })
        ));
        assert!(matches!(
            parse("http://0/"),
            Err(UrlError::Forbidden { .. })
        ));
        assert!(matches!(
            parse("http://[::]/"),
            Err(UrlError::Forbidden { .. })
        ));
    }

    #[test]
    fn dev_policy_allows_loopback_literals_only() {
        let u = EndpointUrl::parse("http://127.0.0.1:9000/hook", &DEV).unwrap();
        assert_eq!(u.host(), &TargetHost::Ip(ip("127.0.0.1")));
        assert_eq!(u.port(), 9000);
        assert!(EndpointUrl::parse("http://[::1]:9000/", &DEV).is_ok());
        assert!(matches!(
            EndpointUrl::parse("http://localhost:9000/", &DEV),
            Err(UrlError::LocalName { .. })
        ));
        assert!(matches!(
            EndpointUrl::parse("http://10.0.0.1/", &DEV),
            Err(UrlError::Forbidden { .. })
        ));
    }

    #[test]
    fn local_names_are_refused() {
        for (input, host) in [
            ("http://localhost/", "localhost"),
            ("http://LOCALHOST:8080/", "localhost"),
            ("http://localhost./", "localhost."),
            ("http://api.localhost/", "api.localhost"),
            ("http://printer.local/", "printer.local"),
            ("http://printer.local./", "printer.local."),
            (
                "http://metadata.google.internal/",
                "metadata.google.internal",
            ),
            ("http://db/", "db"),
            ("https://intranet:8443/", "intranet"),
        ] {
            assert_eq!(
                parse(input),
                Err(UrlError::LocalName { host: host.into() }),
                "{input}"
            );
        }
        assert_eq!(
            parse("http://localhost/").unwrap_err().to_string(),
            "localhost is a local name"
        );
        // Only whole labels count.
        for ok in [
            "https://notlocalhost.com/",
            "https://local.example.com/",
            "https://internal.example.com/",
            "https://x.localhostx/",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn structural_rules() {
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://example.com/",
            "javascript:alert(1)",
            "data:text/plain,hi",
            "ws://example.com/",
        ] {
            assert_eq!(parse(bad), Err(UrlError::Scheme), "{bad}");
        }
        assert_eq!(
            parse("https://user:pw@example.com/"),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            parse("https://user@example.com/"),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            parse("https://:pw@example.com/"),
            Err(UrlError::Credentials)
        );
        assert_eq!(parse("https://example.com/#frag"), Err(UrlError::Fragment));
        assert_eq!(parse("https://example.com/#"), Err(UrlError::Fragment));
        for bad in [
            "",
            "example.com",
            "/hook",
            "https://",
            "http://[::1",
            "https://exa mple.com/",
            "http://1.2.3.4.5/",
        ] {
            assert!(
                matches!(parse(bad), Err(UrlError::Unparsable(_))),
                "{bad:?}: {:?}",
                parse(bad)
            );
        }
    }

    #[test]
    fn length_limit_is_2048_bytes() {
        let prefix = "https://example.com/";
        let exact = format!("{prefix}{}", "a".repeat(MAX_URL_BYTES - prefix.len()));
        assert_eq!(parse(&exact).unwrap().as_str().len(), MAX_URL_BYTES);
        let over = format!("{exact}a");
        assert_eq!(parse(&over), Err(UrlError::TooLong));
        // Short input that normalisation makes long (each space becomes %20).
        let spaces = format!("{prefix}{}", " ".repeat(1000));
        assert!(spaces.len() <= MAX_URL_BYTES);
        assert_eq!(parse(&format!("{spaces}x")), Err(UrlError::TooLong));
    }
}
