//! Outbound HTTP under the operator's restrictions: one client builder for
//! every HTTP sink, so that a tenant-chosen URL cannot reach the server's own
//! network, hold a call longer than the operator allows, or fill memory with
//! an endless answer.
//!
//! * `egress=public`: names are resolved by [`PublicOnly`], which drops every
//!   address that is not public, so the address actually connected to is
//!   checked (a name that resolves to a public address once and to a private
//!   one the next time, DNS rebinding, gets nowhere); an IP literal in the URL
//!   is checked by [`check_url`]; no proxy is used.
//! * Redirects are never followed (a 3xx is an answer like any other), so a
//!   public URL cannot send the call somewhere it could not go itself.
//! * `max_timeout_ms` caps the whole-request timeout.
//! * At most [`MAX_RESPONSE_BYTES`] of an answer are read ([`read_capped`]).

use sluice_sdk::{Error, Restrictions};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Most bytes of an answer's body a sink reads (the rest is dropped with the
/// connection): enough for any intake's error message or per-record report.
pub const MAX_RESPONSE_BYTES: u64 = 64 << 10;

/// The plugin's HTTP client (connection pool): [`builder`], built.
pub fn client(
    kind: &str,
    timeout: Duration,
    restrictions: Restrictions,
) -> Result<reqwest::blocking::Client, Error> {
    builder(timeout, restrictions)
        .build()
        .map_err(|e| Error::fatal(format!("{kind}: cannot build the HTTP client: {e}")))
}

/// A client builder with a whole-request timeout cut to the operator's
/// bound, no redirects, and, under `egress=public`, only public addresses
/// and no proxy. Add settings of your own; do not undo these.
pub fn builder(timeout: Duration, restrictions: Restrictions) -> reqwest::blocking::ClientBuilder {
    let b = reqwest::blocking::Client::builder()
        .timeout(restrictions.timeout(timeout))
        .redirect(reqwest::redirect::Policy::none());
    if restrictions.public_egress_only {
        b.no_proxy().dns_resolver(Arc::new(PublicOnly))
    } else {
        b
    }
}

/// Checks a URL a tenant gave against the restrictions, as far as can be
/// known without resolving it: the scheme, and an IP literal's address.
/// Names are checked at every connection by the client's resolver.
pub fn check_url(what: &str, url: &str, restrictions: Restrictions) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("{what} '{url}' is not a URL: {e}"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(format!("{what} '{url}' must be http:// or https://"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{what} '{url}' has no host"))?;
    // The URL parser writes IPv4 literals in every accepted spelling
    // (`0x7f000001`, `2130706433`) as dotted quads, IPv6 in brackets.
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return Ok(());
    };
    if restrictions.allows(ip) {
        Ok(())
    } else {
        Err(refused(what, &ip.to_string()))
    }
}

fn refused(what: &str, target: &str) -> String {
    format!(
        "{what} points at {target}, which is not a public address; this server's operator allows destinations on public addresses only"
    )
}

/// A transport error with its causes (reqwest's message alone says only
/// "error sending request"; the cause says why: refused, reset, a name
/// that resolves to no public address).
pub fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of an answer's body.
pub fn read_capped(resp: reqwest::blocking::Response) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = resp.take(MAX_RESPONSE_BYTES).read_to_end(&mut out);
    out
}

/// A resolver that keeps only public addresses; a name with none left is an
/// error saying so.
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let lookup = host.clone();
            let all: Vec<SocketAddr> = tokio::task::spawn_blocking(move || {
                (lookup.as_str(), 0)
                    .to_socket_addrs()
                    .map(Iterator::collect)
            })
            .await??;
            let public: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| sluice_sdk::restrictions::is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!(
                    "'{host}' resolves to no public address; this server's operator allows destinations on public addresses only"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const PUBLIC: Restrictions = Restrictions {
        public_egress_only: true,
        max_timeout: Some(Duration::from_secs(2)),
    };

    #[test]
    fn literal_and_named_private_addresses_are_refused() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:10.0.0.1]/",
            "http://0x7f000001/",
            "http://2130706433/",
        ] {
            let e = check_url("`url`", url, PUBLIC).unwrap_err();
            assert!(e.contains("not a public address"), "{url}: {e}");
            assert!(check_url("`url`", url, Restrictions::default()).is_ok());
        }
        assert!(check_url("`url`", "https://8.8.8.8/", PUBLIC).is_ok());
        assert!(check_url("`url`", "ftp://example.com/", PUBLIC).is_err());
        // A name is checked where it is resolved: `localhost` resolves here.
        let c = client("test", Duration::from_secs(5), PUBLIC).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let e = c
            .get(format!("http://localhost:{port}/"))
            .send()
            .unwrap_err();
        let why = describe(&e);
        assert!(why.contains("resolves to no public address"), "{why}");
    }

    #[test]
    fn answers_are_read_up_to_the_cap_and_redirects_are_not_followed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for i in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                if i == 0 {
                    let _ = s.write_all(
                        b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n",
                    );
                } else {
                    // An endless body: stops when the client goes away.
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
                    let chunk = vec![b'x'; 1 << 16];
                    while s.write_all(&chunk).is_ok() {}
                }
            }
        });
        let c = client("test", Duration::from_secs(10), Restrictions::default()).unwrap();
        let r = c.get(format!("http://{at}/")).send().unwrap();
        assert_eq!(r.status().as_u16(), 302, "the redirect is the answer");
        let r = c.get(format!("http://{at}/")).send().unwrap();
        assert_eq!(read_capped(r).len() as u64, MAX_RESPONSE_BYTES);
        server.join().unwrap();
    }
}
