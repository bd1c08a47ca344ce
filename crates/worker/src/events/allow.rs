//! Which callback URLs the worker may call (server-side request forgery guard). A job's
//! `callback` comes from whoever can put a message on the queue, so it must not turn the worker
//! into a client of the instance metadata service or of anything else on its own network:
//!
//! - the URL is `https://` (`http://` only with `FACEGROUP_CALLBACK_ALLOW_HTTP`), with no user
//!   info, and its host matches the allow-list (exact host, or `*.domain` for its subdomains);
//! - whatever the list says, addresses that are link-local (169.254.0.0/16 with the EC2/ECS
//!   metadata address 169.254.169.254, fe80::/10), the EC2 IPv6 metadata address fd00:ec2::254,
//!   unspecified, broadcast or multicast are refused, and loopback (127.0.0.0/8, ::1) too unless
//!   `FACEGROUP_CALLBACK_ALLOW_LOOPBACK` is set. IPv4-mapped IPv6 addresses are judged as the
//!   IPv4 address they carry;
//! - a host name is resolved by the worker and *every* address it resolves to must pass (one
//!   bad record refuses the callback), and the connection goes to one of exactly those
//!   addresses, so a DNS answer that changes between check and connect (rebinding) cannot
//!   reach another address. Redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::Uri;

use super::config::EventsConfig;

/// A callback URL that passed the static checks, ready to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Lower case, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Path and query, `/` when empty.
    pub path: String,
    /// The `Host` header value.
    pub authority: String,
}

/// Parses `url` and checks scheme, user info and the host against the allow-list (and an IP
/// literal against the address rules). `Err` is the reason the callback is refused.
pub fn check_url(cfg: &EventsConfig, url: &str) -> Result<Target, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("callback {url:?} is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if cfg.callback_allow_http => false,
        Some("http") => return Err("plain http callbacks are not allowed".into()),
        other => return Err(format!("callback scheme {other:?} is not http(s)")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "callback URL has no host".to_string())?;
    if authority.as_str().contains('@') {
        return Err("callback URL carries user info".into());
    }
    let raw_host = authority.host();
    let host = raw_host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err("callback URL has no host".into());
    }
    if !host_allowed(cfg.allowed_hosts(), &host) {
        return Err(format!("callback host {host:?} is not in the allow-list"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        check_ip(cfg, ip)?;
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(Target {
        https,
        host,
        port,
        path,
        authority: authority.as_str().to_string(),
    })
}

/// Exact host, or `*.domain` matching any subdomain of `domain` (not `domain` itself).
pub fn host_allowed<'a>(mut allowed: impl Iterator<Item = &'a str>, host: &str) -> bool {
    allowed.any(|a| {
        let a = a
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match a.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => a == host,
        }
    })
}

/// `Err` when the address may never be called (see the module docs).
pub fn check_ip(cfg: &EventsConfig, ip: IpAddr) -> Result<(), String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let refused = |why: &str| Err(format!("callback address {ip} is {why}"));
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_link_local() {
                return refused("link-local (metadata service range)");
            }
            if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                return refused("not a unicast address");
            }
            if v4.is_loopback() && !cfg.callback_allow_loopback {
                return refused("loopback");
            }
        }
        IpAddr::V6(v6) => {
            if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                return refused("link-local");
            }
            if v6 == EC2_METADATA_V6 {
                return refused("the metadata service");
            }
            if v6.is_unspecified() || v6.is_multicast() {
                return refused("not a unicast address");
            }
            if v6.is_loopback() && !cfg.callback_allow_loopback {
                return refused("loopback");
            }
        }
    }
    Ok(())
}

/// The EC2 instance metadata service's IPv6 address.
const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// The metadata address, for the docs and tests.
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Why [`resolve`] gave no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// An address is refused: the callback must not be tried again.
    Refused(String),
    /// The lookup failed (may work later).
    Failed(String),
}

/// Resolves the target (an IP literal is its own answer) and checks every address; returns
/// them all (the caller connects to one of these and nothing else).
pub async fn resolve(cfg: &EventsConfig, target: &Target) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| ResolveError::Failed(format!("cannot resolve {}: {e}", target.host)))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(ResolveError::Failed(format!(
            "{} resolves to no address",
            target.host
        )));
    }
    for a in &addrs {
        check_ip(cfg, a.ip()).map_err(|e| {
            ResolveError::Refused(format!(
                "{} resolves to a refused address: {e}",
                target.host
            ))
        })?;
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        events: EventsConfig,
    }

    fn cfg(args: &[&str]) -> EventsConfig {
        let mut all = vec!["w", "--callback-secret", "s"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parse").events
    }

    #[test]
    fn only_allowed_hosts_and_schemes_pass() {
        let c = cfg(&[
            "--callback-allowed-hosts",
            "hooks.example.com,*.corp.example",
        ]);
        let t = check_url(&c, "https://hooks.example.com/cb?x=1").expect("allowed");
        assert_eq!((t.port, t.path.as_str()), (443, "/cb?x=1"));
        assert!(check_url(&c, "https://HOOKS.example.com.").is_ok());
        assert!(check_url(&c, "https://a.corp.example:8443/").is_ok());
        for bad in [
            "https://corp.example/",     // the wildcard is for subdomains only
            "https://evilcorp.example/", // not a subdomain
            "https://hooks.example.com.evil/",
            "http://hooks.example.com/", // plain http not allowed by default
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "hooks.example.com/cb",
            "https://169.254.169.254/latest/meta-data/",
        ] {
            assert!(check_url(&c, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_link_local_and_loopback_are_refused_even_when_listed() {
        let c = cfg(&[
            "--callback-allowed-hosts",
            "169.254.169.254,127.0.0.1,[::1],fe80::1,::ffff:169.254.169.254,fd00:ec2::254",
            "--callback-allow-http",
        ]);
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:8080/",
            "http://[::1]:8080/",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
        ] {
            assert!(check_url(&c, bad).is_err(), "{bad}");
        }
        let c = cfg(&[
            "--callback-allowed-hosts",
            "127.0.0.1,169.254.169.254",
            "--callback-allow-http",
            "--callback-allow-loopback",
        ]);
        assert!(check_url(&c, "http://127.0.0.1:8080/").is_ok());
        assert!(check_url(&c, "http://169.254.169.254/").is_err());
        assert!(check_ip(&c, IpAddr::V4(METADATA_V4)).is_err());
    }

    #[tokio::test]
    async fn every_resolved_address_is_checked() {
        // `localhost` resolves to loopback: refused unless loopback is allowed, although the
        // name itself is on the list (what a rebinding name pointing inside would look like).
        let c = cfg(&[
            "--callback-allowed-hosts",
            "localhost",
            "--callback-allow-http",
        ]);
        let t = check_url(&c, "http://localhost:9/").expect("name allowed");
        assert!(matches!(
            resolve(&c, &t).await,
            Err(ResolveError::Refused(_))
        ));
        let c = cfg(&[
            "--callback-allowed-hosts",
            "localhost",
            "--callback-allow-http",
            "--callback-allow-loopback",
        ]);
        let addrs = resolve(&c, &t).await.expect("loopback allowed");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
