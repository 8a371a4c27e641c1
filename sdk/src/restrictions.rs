//! What the operator allows an instance that delivers for a tenant (ABI 1.2).
//!
//! `sluice serve` is multi-tenant: a tenant chooses a destination's URL, so
//! a plugin that connects somewhere must not let that URL reach the server's
//! own network. The engine passes the operator's rules in
//! [`SluiceHost::restrictions`](crate::abi::SluiceHost::restrictions): a
//! string of `key=value` pairs separated by `;`, empty when the instance is
//! trusted (the operator's own `sluice run` configuration, or an older engine).
//!
//! | key | value | the plugin must |
//! | --- | --- | --- |
//! | `egress` | `public` | connect only to public addresses: check the address actually connected to (after DNS, on every redirect), not the name; refuse a proxy |
//! | `max_timeout_ms` | integer ≥ 1 | wait at most this long in any one outbound call, whatever its own configuration says |
//!
//! A plugin that meets a key it does not know must refuse to be created
//! (fail closed): [`Restrictions::parse`] does that for Rust plugins.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The operator's rules for one instance; the default restricts nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// Connect only to public addresses ([`is_public`]).
    pub public_egress_only: bool,
    /// Longest any one outbound call may take.
    pub max_timeout: Option<Duration>,
}

impl Restrictions {
    /// Parses the host's string. An unknown key or a bad value is an error
    /// naming it: a plugin cannot enforce a rule it does not know.
    pub fn parse(s: &str) -> Result<Restrictions, String> {
        let mut r = Restrictions::default();
        for pair in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("operator restriction '{pair}' is not key=value"))?;
            match (k.trim(), v.trim()) {
                ("egress", "public") => r.public_egress_only = true,
                ("egress", "any") => r.public_egress_only = false,
                ("max_timeout_ms", ms) => match ms.parse::<u64>() {
                    Ok(ms) if ms > 0 => r.max_timeout = Some(Duration::from_millis(ms)),
                    _ => {
                        return Err(format!(
                            "operator restriction max_timeout_ms = '{ms}' is not a positive integer"
                        ));
                    }
                },
                (k, v) => {
                    return Err(format!(
                        "this plugin does not know the operator restriction '{k}={v}'; update the plugin"
                    ));
                }
            }
        }
        Ok(r)
    }

    /// The string [`Restrictions::parse`] reads back.
    pub fn encode(&self) -> String {
        let mut parts = Vec::new();
        if self.public_egress_only {
            parts.push("egress=public".to_string());
        }
        if let Some(t) = self.max_timeout {
            parts.push(format!("max_timeout_ms={}", t.as_millis().max(1)));
        }
        parts.join(";")
    }

    /// `timeout`, cut to the operator's bound.
    pub fn timeout(&self, timeout: Duration) -> Duration {
        self.max_timeout.map_or(timeout, |m| timeout.min(m))
    }

    /// Whether connecting to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        !self.public_egress_only || is_public(ip)
    }
}

/// Whether `ip` is a public unicast address: not loopback, private,
/// shared (CGNAT), link-local, unspecified, multicast, broadcast, reserved or
/// benchmarking; IPv6 forms that embed an IPv4 address (mapped, compatible,
/// NAT64, 6to4) are judged by that address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                  // "this network"
        || a == 10                            // private
        || a == 127                           // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)             // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)     // IETF protocol assignments
        || (a == 192 && b == 168)             // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // IPv4-compatible (::a.b.c.d, deprecated) and the unspecified/loopback addresses.
    if s[..6] == [0; 6] {
        return s[6] != 0
            && is_public_v4(Ipv4Addr::new(
                (s[6] >> 8) as u8,
                s[6] as u8,
                (s[7] >> 8) as u8,
                s[7] as u8,
            ));
    }
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return is_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // 6to4 (2002::/16) carries one in bits 16..48.
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    !((s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0] == 0x0100 && s[1..4] == [0; 3]) // discard-only
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_judged_public_or_not() {
        for (ip, public) in [
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("127.0.0.1", false),
            ("127.0.0.2", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("172.32.0.1", true),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("100.128.0.1", true),
            ("0.0.0.0", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("198.18.0.1", false),
            ("::1", false),
            ("::", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:8.8.8.8", true),
            ("::127.0.0.1", false),
            ("64:ff9b::a00:1", false),
            ("64:ff9b::808:808", true),
            ("2002:7f00:1::", false),
            ("2002:808:808::", true),
            ("fd00::1", false),
            ("fe80::1", false),
            ("ff02::1", false),
            ("2001:db8::1", false),
            ("2606:4700:4700::1111", true),
        ] {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }

    #[test]
    fn the_host_string_round_trips_and_unknown_rules_are_refused() {
        assert_eq!(Restrictions::parse("").unwrap(), Restrictions::default());
        let r = Restrictions::parse("egress=public; max_timeout_ms=2500").unwrap();
        assert!(r.public_egress_only);
        assert_eq!(r.max_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(Restrictions::parse(&r.encode()).unwrap(), r);
        assert_eq!(
            r.timeout(Duration::from_secs(30)),
            Duration::from_millis(2500)
        );
        assert!(!r.allows("10.0.0.1".parse().unwrap()));
        assert!(Restrictions::default().allows("10.0.0.1".parse().unwrap()));
        let e = Restrictions::parse("egress=public;max_body=1").unwrap_err();
        assert!(e.contains("max_body=1"), "{e}");
        assert!(Restrictions::parse("max_timeout_ms=0").is_err());
        assert!(Restrictions::parse("egress").is_err());
    }
}
