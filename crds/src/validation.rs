//! Field validation shared by the CRD schemas and the Rust side.
//!
//! The API server enforces the schema patterns for objects that go through
//! `kubectl apply`; the local driver and the renderers have no API server in
//! front of them, so every spec is also checked here before anything is
//! rendered or written. The patterns are defined once and used by both.
//!
//! Every check reports the field path, the offending value (escaped, so a
//! newline or quote is visible) and how to fix it.

use std::fmt;
use std::net::IpAddr;

/// DNS-1123 label, the form Kubernetes requires of object names.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A host name: dot-separated labels of letters, digits and inner hyphens.
pub const DOMAIN_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";
/// Characters an IPv4 or IPv6 address can hold; the exact form is checked by parsing.
pub const IP_PATTERN: &str = r"^[0-9A-Fa-f:.]{2,45}$";
/// An IP address, or the name of a network interface (eth0, ens3, ...).
pub const IP_OR_INTERFACE_PATTERN: &str = r"^([0-9A-Fa-f:.]{2,45}|[A-Za-z][A-Za-z0-9_.-]{0,14})$";
/// A network interface name as Linux allows it (at most 15 characters).
pub const INTERFACE_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$";
/// An IP network in CIDR notation; the exact form is checked by parsing.
pub const CIDR_PATTERN: &str = r"^[0-9A-Fa-f:.]{2,45}/[0-9]{1,3}$";
/// An absolute file path without spaces, quotes or shell characters.
pub const PATH_PATTERN: &str = r"^/[A-Za-z0-9._/-]{1,254}$";
/// A SIP URI of a media node: `sip:host[:port][;transport=udp|tcp|tls]`.
pub const SIP_MEMBER_URI_PATTERN: &str =
    r"^sip:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(;transport=(udp|tcp|tls))?$";
/// A User-Agent fragment to drop (matched literally, case-insensitively).
pub const USER_AGENT_PATTERN: &str = r"^[A-Za-z0-9 ._/-]{1,64}$";
/// A container image reference.
pub const IMAGE_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$";
/// A Kubernetes quantity such as `10Gi` or `500M`.
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|[mkMGTPE])?$";
/// An `host:port` endpoint (host name or IPv4 address).
pub const ENDPOINT_PATTERN: &str = r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$";

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where the field is, e.g. `spec.listen[1].address`.
    pub path: String,
    /// What is wrong, naming the value.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.path, self.problem, self.fix)
    }
}

/// Every invalid field of one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// `Kind/name` of the object the errors belong to.
    pub object: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is invalid:", self.object)?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// Collects field errors while walking a spec.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

/// Shows a value the way a person can see what is wrong with it:
/// quoted, with control characters escaped, and cut if very long.
pub fn shown(value: &str) -> String {
    let mut s: String = value
        .chars()
        .take(80)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if value.chars().count() > 80 {
        s.push('…');
    }
    format!("\"{s}\"")
}

fn regex(pattern: &str) -> regex::Regex {
    // The patterns are constants of this module; a test compiles each of them.
    regex::Regex::new(pattern).expect("validation pattern compiles")
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an error at `path`.
    pub fn error(
        &mut self,
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.push(FieldError {
            path: path.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Ends the walk: `Ok` when nothing was recorded.
    pub fn finish(self, object: impl Into<String>) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                object: object.into(),
                errors: self.errors,
            })
        }
    }

    /// Moves the errors of another walk into this one.
    pub fn extend(&mut self, other: ValidationErrors) {
        self.errors.extend(other.errors);
    }

    pub fn name(&mut self, path: &str, value: &str) {
        if value.is_empty() || value.len() > 63 || !regex(NAME_PATTERN).is_match(value) {
            self.error(
                path,
                format!("{} is not a valid name", shown(value)),
                "use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit (e.g. media-east)",
            );
        }
    }

    pub fn domain(&mut self, path: &str, value: &str) {
        if value.is_empty() || value.len() > 63 || !regex(DOMAIN_PATTERN).is_match(value) {
            self.error(
                path,
                format!("{} is not a valid domain name", shown(value)),
                "use letters, digits, '-' and '.', at most 63 characters (e.g. sip.example.com)",
            );
        }
    }

    pub fn ip(&mut self, path: &str, value: &str) -> Option<IpAddr> {
        match value.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.error(
                    path,
                    format!("{} is not an IP address", shown(value)),
                    "use an IPv4 or IPv6 address such as 0.0.0.0, 127.0.0.1 or ::1",
                );
                None
            }
        }
    }

    /// An address that may be a host name or an IP address (an advertised address).
    pub fn host(&mut self, path: &str, value: &str) {
        if value.parse::<IpAddr>().is_err()
            && (value.is_empty() || value.len() > 253 || !regex(DOMAIN_PATTERN).is_match(value))
        {
            self.error(
                path,
                format!("{} is neither an IP address nor a host name", shown(value)),
                "use an address such as 203.0.113.10 or a name such as sip.example.com",
            );
        }
    }

    pub fn cidr(&mut self, path: &str, value: &str) {
        let ok = value.split_once('/').is_some_and(|(ip, bits)| {
            let max = match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            bits.parse::<u8>().is_ok_and(|b| b <= max) && !bits.starts_with('+')
        });
        if !ok {
            self.error(
                path,
                format!("{} is not an IP network", shown(value)),
                "use CIDR notation such as 10.0.0.0/8 or 127.0.0.1/32",
            );
        }
    }

    pub fn port(&mut self, path: &str, value: u16) {
        if value == 0 {
            self.error(
                path,
                "port 0 is not a usable port",
                "use a port between 1 and 65535",
            );
        }
    }

    pub fn range<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        path: &str,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            self.error(
                path,
                format!("{value} is out of range"),
                format!("use a value from {min} to {max}"),
            );
        }
    }

    pub fn path(&mut self, path: &str, value: &str) {
        if !regex(PATH_PATTERN).is_match(value) || value.split('/').any(|seg| seg == "..") {
            self.error(
                path,
                format!("{} is not an acceptable file path", shown(value)),
                "use an absolute path of letters, digits, '.', '_', '-' and '/' without '..' (e.g. /etc/sipstack/tls/tls.crt)",
            );
        }
    }

    pub fn pattern(&mut self, path: &str, value: &str, pattern: &str, what: &str, fix: &str) {
        if !regex(pattern).is_match(value) {
            self.error(path, format!("{} is not {what}", shown(value)), fix);
        }
    }

    pub fn sip_member_uri(&mut self, path: &str, value: &str) {
        let ok = value.len() <= 192
            && regex(SIP_MEMBER_URI_PATTERN).is_match(value)
            && SipMemberUri::parse(value).is_some_and(|u| u.port != Some(0));
        if !ok {
            self.error(
                path,
                format!("{} is not a media node URI", shown(value)),
                "use sip:HOST[:PORT][;transport=udp|tcp|tls], e.g. sip:10.0.0.5:5080",
            );
        }
    }

    pub fn quantity(&mut self, path: &str, value: &str) {
        if !regex(QUANTITY_PATTERN).is_match(value) {
            self.error(
                path,
                format!("{} is not a Kubernetes quantity", shown(value)),
                "use a size such as 10Gi or 500Mi",
            );
        }
    }
}

/// The parts of a media node URI (`sip:host[:port][;transport=x]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMemberUri {
    pub host: String,
    pub port: Option<u16>,
    pub transport: Option<String>,
}

impl SipMemberUri {
    /// Splits a URI already matched by [`SIP_MEMBER_URI_PATTERN`]; `None` when the
    /// port is not a number that fits a port.
    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.strip_prefix("sip:")?;
        let (hostport, transport) = match rest.split_once(";transport=") {
            Some((hp, t)) => (hp, Some(t.to_string())),
            None => (rest, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            match after.strip_prefix(':') {
                Some(p) => (format!("[{h}]"), Some(p)),
                None if after.is_empty() => (format!("[{h}]"), None),
                None => return None,
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None => None,
        };
        Some(Self {
            host,
            port,
            transport,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        for p in [
            NAME_PATTERN,
            DOMAIN_PATTERN,
            IP_PATTERN,
            IP_OR_INTERFACE_PATTERN,
            INTERFACE_PATTERN,
            CIDR_PATTERN,
            PATH_PATTERN,
            SIP_MEMBER_URI_PATTERN,
            USER_AGENT_PATTERN,
            IMAGE_PATTERN,
            QUANTITY_PATTERN,
            ENDPOINT_PATTERN,
        ] {
            regex::Regex::new(p).unwrap();
        }
    }

    #[test]
    fn shown_makes_control_characters_visible() {
        assert_eq!(shown("a\nb\"c"), r#""a\nb\"c""#);
    }

    #[test]
    fn domains() {
        let mut v = Validator::new();
        for ok in ["example.com", "sip.example.com", "a", "127.0.0.1", "x-1.y"] {
            v.domain("d", ok);
        }
        assert!(v.is_empty(), "{v:?}");
        for bad in [
            "",
            "-a.com",
            "a..com",
            "a.com\n#!define X",
            "a\"b",
            "$(id)",
            "a;b",
            "a b",
            "a.com.",
        ] {
            let mut v = Validator::new();
            v.domain("d", bad);
            assert!(!v.is_empty(), "{bad:?} accepted");
        }
    }

    #[test]
    fn member_uris() {
        for ok in [
            "sip:10.0.0.5:5080",
            "sip:media-0.media.default.svc:5080;transport=tcp",
            "sip:[::1]:5080",
            "sip:a.b",
        ] {
            let mut v = Validator::new();
            v.sip_member_uri("u", ok);
            assert!(v.is_empty(), "{ok:?} refused: {v:?}");
        }
        for bad in [
            "sip:1.2.3.4:0",
            "sip:1.2.3.4:70000",
            "sips:x",
            "sip:a;lr",
            "sip:a\n",
            "sip:a:5080;transport=sctp",
            "sip:\"a\"",
        ] {
            let mut v = Validator::new();
            v.sip_member_uri("u", bad);
            assert!(!v.is_empty(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cidrs() {
        for ok in ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "0.0.0.0/0"] {
            let mut v = Validator::new();
            v.cidr("c", ok);
            assert!(v.is_empty(), "{ok:?}");
        }
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0",
            "x/8",
            "::1/129",
            "10.0.0.0/+8",
            "1.2.3.4/8\"); ",
        ] {
            let mut v = Validator::new();
            v.cidr("c", bad);
            assert!(!v.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        let mut v = Validator::new();
        v.path("p", "/etc/sipstack/tls/tls.crt");
        assert!(v.is_empty());
        for bad in ["relative/x", "/a b", "/a/../b", "/a\"", "/a\n", "/$(x)"] {
            let mut v = Validator::new();
            v.path("p", bad);
            assert!(!v.is_empty(), "{bad:?}");
        }
    }
}
