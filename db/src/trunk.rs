//! Trunks (`sipstack_trunk`, migration 0006): carriers and PBXs the platform
//! exchanges calls with. A trunk has the addresses its calls come from (the
//! edge's permissions module trusts them without a challenge), the gateways its
//! outbound calls go to in priority order, optional digest credentials towards
//! the carrier, and the number handling for its gateways. A registration-based
//! PBX names the subscriber account it registers with instead of addresses.
//!
//! The credentials' password is stored encrypted with the edges' trunk key, in
//! the format Kamailio's crypto module decrypts with `key_derivation` 0:
//! base64(IV || AES-256-CBC(PKCS#7)). Listings say only whether a trunk has
//! credentials.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::SystemTime;

use aes::Aes256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand::Rng as _;
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Row};

use crate::validate::{self, invalid, shown};
use crate::DbError;

/// The environment variable the edges (and sipctl) read the trunk key from.
pub const TRUNK_KEY_ENV: &str = "SIPSTACK_TRUNK_KEY";

const KEY_LEN: usize = 32;
const IV_LEN: usize = 16;
/// The longest clear password: its encryption must fit `auth_password_enc` (256
/// base64 characters hold 192 bytes: the IV and at most 176 of ciphertext).
pub const MAX_PASSWORD_BYTES: usize = 128;

const HOW_TO_GET_A_KEY: &str = "use the edges' trunk key: 32 random bytes in base64 (the local driver keeps it in \
     <state>/secrets/trunk-key; elsewhere make one with `openssl rand -base64 32` and give the same key to every edge)";

/// The key the trunks' passwords are encrypted with: 32 random bytes, written
/// as base64. The edges hold the same key (`SIPSTACK_TRUNK_KEY`).
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkKey([u8; KEY_LEN]);

impl TrunkKey {
    /// A new random key.
    pub fn generate() -> TrunkKey {
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        TrunkKey(key)
    }

    /// A key in its text form (surrounding whitespace, e.g. a file's newline, is ignored).
    /// The error never shows the text: it may be a key.
    pub fn from_base64(text: &str) -> Result<TrunkKey, DbError> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| {
            invalid(
                "trunk key",
                "the trunk key is not base64 text",
                HOW_TO_GET_A_KEY,
            )
        })?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            invalid(
                "trunk key",
                format!(
                    "the trunk key holds {} bytes, not {KEY_LEN} (an AES-256 key)",
                    bytes.len()
                ),
                HOW_TO_GET_A_KEY,
            )
        })?;
        Ok(TrunkKey(key))
    }

    /// The text form: standard base64 with padding, as `crypto_aes_decrypt` reads it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Debug for TrunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrunkKey(..)")
    }
}

type Encryptor = cbc::Encryptor<Aes256>;
type Decryptor = cbc::Decryptor<Aes256>;

/// Encrypts a trunk password for the edges: base64(IV || AES-256-CBC), PKCS#7
/// padding and a fresh random IV, which is what Kamailio's
/// `crypto_aes_decrypt(in, base64key, out)` reads with `key_derivation` 0.
pub fn encrypt_password(key: &TrunkKey, password: &str) -> String {
    let mut iv = [0u8; IV_LEN];
    rand::rng().fill_bytes(&mut iv);
    encrypt_with_iv(key, &iv, password)
}

fn encrypt_with_iv(key: &TrunkKey, iv: &[u8; IV_LEN], password: &str) -> String {
    let ciphertext = Encryptor::new(&key.0.into(), &(*iv).into())
        .encrypt_padded_vec_mut::<Pkcs7>(password.as_bytes());
    let mut out = Vec::with_capacity(IV_LEN + ciphertext.len());
    out.extend_from_slice(iv);
    out.extend_from_slice(&ciphertext);
    STANDARD.encode(out)
}

/// The clear password of [`encrypt_password`]'s output.
pub fn decrypt_password(key: &TrunkKey, encrypted: &str) -> Result<String, DbError> {
    let not_ours = |problem: &str| {
        invalid(
            "--auth-password",
            problem.to_string(),
            "set the trunk's password again with the edges' trunk key",
        )
    };
    let raw = STANDARD
        .decode(encrypted.trim())
        .map_err(|_| not_ours("the encrypted password is not base64"))?;
    if raw.len() < 2 * IV_LEN || raw.len() % IV_LEN != 0 {
        return Err(not_ours(
            "the encrypted password is not an IV followed by AES blocks",
        ));
    }
    let (iv, ciphertext) = raw.split_at(IV_LEN);
    let iv: [u8; IV_LEN] = iv
        .try_into()
        .map_err(|_| not_ours("the encrypted password has no IV"))?;
    let clear = Decryptor::new(&key.0.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| not_ours("the password does not decrypt with this trunk key"))?;
    String::from_utf8(clear).map_err(|_| not_ours("the decrypted password is not UTF-8 text"))
}

/// Checks a clear trunk password before it is encrypted.
pub fn validate_password(password: &str) -> Result<(), DbError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(
            "--auth-password",
            "the password is empty or longer than 128 bytes",
            "use 1 to 128 bytes",
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(invalid(
            "--auth-password",
            "the password contains a control character (a line break?)",
            "give the password alone on the first line, printable characters only",
        ));
    }
    Ok(())
}

/// Checks the digest user name towards a carrier (it goes into an Authorization header).
pub fn validate_auth_user(username: &str) -> Result<(), DbError> {
    if !validate::AUTH_USERNAME.is_match(username) {
        return Err(invalid(
            "--auth-user",
            format!(
                "{} is not a digest user name sipstack accepts",
                shown(username)
            ),
            "use 1 to 64 letters, digits and . _ + -",
        ));
    }
    Ok(())
}

/// The transport a trunk address's calls must use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    #[default]
    Any,
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Any => "any",
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = DbError;

    fn from_str(s: &str) -> Result<Self, DbError> {
        match s {
            "any" => Ok(Transport::Any),
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            _ => Err(invalid(
                "--transport",
                format!("{} is not a transport", shown(s)),
                "use udp, tcp, tls or any",
            )),
        }
    }
}

/// An address a trunk's calls come from: a host or a network (CIDR).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrunkAddress {
    /// An IPv4 or IPv6 host (`203.0.113.5`) or network (`203.0.113.0/24`), in
    /// canonical form once validated.
    pub address: String,
    /// 0: any port.
    pub port: u16,
    pub transport: Transport,
}

const ADDRESS_FIX: &str =
    "give an IPv4 or IPv6 host or network with an optional port: 203.0.113.5, \
     203.0.113.0/24, 203.0.113.5:5060, 2001:db8::1, [2001:db8::/48]:5060";

impl TrunkAddress {
    /// Reads `IP`, `IP/LEN`, `IP:PORT`, `IP/LEN:PORT`, and for IPv6 with a port
    /// `[IP]:PORT` or `[IP/LEN]:PORT`. The result is validated.
    pub fn parse(text: &str, transport: Transport) -> Result<TrunkAddress, DbError> {
        let bad = || {
            invalid(
                "--address",
                format!("{} is not an address", shown(text)),
                ADDRESS_FIX,
            )
        };
        let (address, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            if !inside.contains(':') {
                // brackets are for IPv6 only
                return Err(bad());
            }
            (inside, port)
        } else {
            match text.matches(':').count() {
                0 => (text, None),
                1 => text
                    .split_once(':')
                    .map(|(a, p)| (a, Some(p)))
                    .ok_or_else(bad)?,
                // IPv6 without a port
                _ => (text, None),
            }
        };
        let port = match port {
            None => 0,
            Some(p) => parse_port(p).ok_or_else(|| {
                invalid(
                    "--address",
                    format!("{} has no valid port", shown(text)),
                    "give a port from 1 to 65535, or none for any port",
                )
            })?,
        };
        let (address, _) = canonical_network(address)?;
        Ok(TrunkAddress {
            address,
            port,
            transport,
        })
    }

    /// The address as `parse` reads it: `203.0.113.5:5060`, `[2001:db8::1]:5060`.
    pub fn address_text(&self) -> String {
        match (self.port, self.address.contains(':')) {
            (0, _) => self.address.clone(),
            (p, true) => format!("[{}]:{p}", self.address),
            (p, false) => format!("{}:{p}", self.address),
        }
    }
}

impl fmt::Display for TrunkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.address_text())?;
        if self.transport != Transport::Any {
            write!(f, " ({})", self.transport)?;
        }
        Ok(())
    }
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// A host or network in canonical form (`203.0.113.5`, `203.0.113.0/24`) and its
/// mask length. A network with host bits set is refused rather than silently
/// widened: `203.0.113.5/24` may be a typo for the host.
fn canonical_network(text: &str) -> Result<(String, u8), DbError> {
    let bad = |problem: String, fix: &str| invalid("--address", problem, fix);
    let (host, mask) = match text.split_once('/') {
        Some((h, m)) => (h, Some(m)),
        None => (text, None),
    };
    let ip: IpAddr = host
        .parse()
        .map_err(|_| bad(format!("{} is not an IP address", shown(text)), ADDRESS_FIX))?;
    let full: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let mask = match mask {
        None => full,
        Some(m) => {
            let len = (!m.is_empty() && m.len() <= 3 && m.bytes().all(|b| b.is_ascii_digit()))
                .then(|| m.parse::<u8>().ok())
                .flatten()
                .filter(|len| *len <= full)
                .ok_or_else(|| {
                    bad(
                        format!("{} has no valid mask length", shown(text)),
                        if full == 32 {
                            "give /8 to /32 after an IPv4 address"
                        } else {
                            "give /16 to /128 after an IPv6 address"
                        },
                    )
                })?;
            len
        }
    };
    // Most of the Internet calling without a challenge is never meant.
    let widest = if full == 32 { 8 } else { 16 };
    if mask < widest {
        return Err(bad(
            format!(
                "{} is a network of /{mask}: calls from anywhere in it would need no password",
                shown(text)
            ),
            &format!("give the carrier's own hosts or networks, at most /{widest} wide"),
        ));
    }
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Err(bad(
                format!("{} is an IPv4 address written as IPv6", shown(text)),
                &format!("write it as IPv4: {v4}"),
            ));
        }
    }
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(bad(
            format!("{} is not an address calls come from", shown(text)),
            ADDRESS_FIX,
        ));
    }
    let network = match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX.checked_shl(32 - u32::from(mask)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & keep))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX.checked_shl(128 - u32::from(mask)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & keep))
        }
    };
    if network != ip {
        return Err(bad(
            format!("{} has host bits set", shown(text)),
            &format!("write the network as {network}/{mask}, or the host alone as {ip}"),
        ));
    }
    Ok(if mask == full {
        (ip.to_string(), mask)
    } else {
        (format!("{ip}/{mask}"), mask)
    })
}

/// Where a trunk's outbound calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// `sip:host[:port][;transport=udp|tcp|tls]` (or `sips:`), no user part.
    pub uri: String,
    /// 0 to 9999, lower first; equal priorities in the order they were added.
    pub priority: i32,
}

const GATEWAY_FIX: &str = "give sip:HOST[:PORT][;transport=udp|tcp|tls] without a user part (the dialled \
     number becomes it), optionally followed by ,priority=N; e.g. sip:198.51.100.10:5060,priority=10";

/// The longest gateway URI (the column's width).
pub const MAX_GATEWAY_URI_LEN: usize = 127;

impl Gateway {
    /// Reads `URI` or `URI,priority=N` (default priority 0). The result is validated.
    pub fn parse(text: &str) -> Result<Gateway, DbError> {
        let (uri, priority) = match text.split_once(',') {
            None => (text, 0),
            Some((uri, option)) => {
                let value = option.strip_prefix("priority=").ok_or_else(|| {
                    invalid(
                        "--gateway",
                        format!("{} is not an option of a gateway", shown(option)),
                        GATEWAY_FIX,
                    )
                })?;
                let priority = (!value.is_empty()
                    && value.len() <= 4
                    && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<i32>().ok())
                .flatten()
                .ok_or_else(|| {
                    invalid(
                        "--gateway",
                        format!("{} is not a priority", shown(value)),
                        "give priority=N with N from 0 to 9999 (lower is tried first)",
                    )
                })?;
                (uri, priority)
            }
        };
        let gateway = Gateway {
            uri: uri.to_string(),
            priority,
        };
        validate_gateway(&gateway)?;
        Ok(gateway)
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (priority {})", self.uri, self.priority)
    }
}

/// Checks a gateway as the table's CHECK does, and that its host and port are real.
pub fn validate_gateway(g: &Gateway) -> Result<(), DbError> {
    let bad = || {
        invalid(
            "--gateway",
            format!("{} is not a gateway URI", shown(&g.uri)),
            GATEWAY_FIX,
        )
    };
    if g.uri.len() > MAX_GATEWAY_URI_LEN || !validate::GATEWAY_URI.is_match(&g.uri) {
        return Err(bad());
    }
    let (secure, rest) = match g.uri.strip_prefix("sips:") {
        Some(rest) => (true, rest),
        None => (false, g.uri.strip_prefix("sip:").ok_or_else(bad)?),
    };
    let (hostport, transport) = match rest.split_once(";transport=") {
        Some((hp, t)) => (hp, Some(t)),
        None => (rest, None),
    };
    if secure && transport.is_some_and(|t| t != "tls") {
        return Err(invalid(
            "--gateway",
            format!("{}: a sips: URI is reached over TLS only", shown(&g.uri)),
            "leave out ;transport=, or use sip: for UDP or TCP",
        ));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or_else(bad)?;
        inside.parse::<Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(hostport), None),
        }
    };
    if let Some(host) = host {
        // digits and dots only: an IPv4 address, or a typo of one
        let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        let ok = if numeric {
            host.parse::<Ipv4Addr>().is_ok()
        } else {
            host.len() <= 253 && validate::DOMAIN.is_match(host)
        };
        if !ok {
            return Err(bad());
        }
    }
    if let Some(port) = port {
        if parse_port(port).is_none() {
            return Err(invalid(
                "--gateway",
                format!("{} has no valid port", shown(&g.uri)),
                "give a port from 1 to 65535, or none for the default",
            ));
        }
    }
    if !(0..=9999).contains(&g.priority) {
        return Err(invalid(
            "--gateway",
            format!("priority {} of {} is out of range", g.priority, g.uri),
            "use 0 to 9999 (lower is tried first)",
        ));
    }
    Ok(())
}

/// A trunk to add.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewTrunk {
    pub name: String,
    /// Digest credentials towards the carrier: the username and the password
    /// encrypted with [`encrypt_password`].
    pub auth: Option<(String, String)>,
    /// A registration-based PBX's subscriber account: (username, domain).
    pub account: Option<(String, String)>,
    /// Leading characters of the dialled number to strip towards the gateways (0-15).
    pub strip_digits: i32,
    /// Put in front of the dialled number towards the gateways (digits, + * #).
    pub prefix: String,
    pub description: String,
    pub addresses: Vec<TrunkAddress>,
    pub gateways: Vec<Gateway>,
    /// Concurrent calls, both directions (`None`: no limit).
    pub max_calls: Option<i32>,
    /// New calls per second, both directions (`None`: no limit).
    pub max_cps: Option<i32>,
}

/// A stored trunk. Its encrypted password stays in the database: only whether
/// it has credentials is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    pub id: i32,
    pub name: String,
    pub auth_username: Option<String>,
    /// An encrypted password is stored.
    pub has_credentials: bool,
    pub account: Option<(String, String)>,
    pub strip_digits: i32,
    pub prefix: String,
    pub description: String,
    pub addresses: Vec<TrunkAddress>,
    /// In the order the edge tries them (priority, then the order they were added).
    pub gateways: Vec<Gateway>,
    /// Concurrent calls, both directions (`None`: no limit).
    pub max_calls: Option<i32>,
    /// New calls per second, both directions (`None`: no limit).
    pub max_cps: Option<i32>,
    pub created_at: Option<SystemTime>,
}

impl Trunk {
    /// The number as this trunk's gateways get it: `strip_digits` characters
    /// removed from the front, then the prefix put there (as the edge does).
    pub fn outbound_number(&self, number: &str) -> String {
        let strip = usize::try_from(self.strip_digits).unwrap_or(0);
        let rest: String = number.chars().skip(strip).collect();
        format!("{}{rest}", self.prefix)
    }
}

/// Checks a trunk the way the tables' CHECK constraints do, with errors naming
/// the sipctl flag. Returns it normalised: addresses in canonical form, the
/// account's domain lower-cased.
pub fn validate(trunk: &NewTrunk) -> Result<NewTrunk, DbError> {
    validate::name("name", &trunk.name)?;
    if let Some((username, password_enc)) = &trunk.auth {
        validate_auth_user(username)?;
        if password_enc.len() > 256 || !validate::ENCRYPTED_PASSWORD.is_match(password_enc) {
            return Err(invalid(
                "--auth-password",
                "the stored form of the password is not an encrypted password",
                "encrypt the password with the trunk key (trunk::encrypt_password)",
            ));
        }
    }
    let account = match &trunk.account {
        Some((username, domain)) => {
            if !validate::USERNAME.is_match(username) {
                return Err(invalid(
                    "--account",
                    format!(
                        "{} is not a SIP user name sipstack accepts",
                        shown(username)
                    ),
                    "write the account as user@domain of a subscriber, e.g. pbx1@example.com",
                ));
            }
            Some((username.clone(), validate::domain("--account", domain)?))
        }
        None => None,
    };
    if !(0..=15).contains(&trunk.strip_digits) {
        return Err(invalid(
            "--strip",
            format!("{} is out of range", trunk.strip_digits),
            "strip 0 to 15 leading characters",
        ));
    }
    if trunk.prefix.len() > 15 || !validate::TRUNK_PREFIX.is_match(&trunk.prefix) {
        return Err(invalid(
            "--prefix",
            format!("{} is not a number prefix", shown(&trunk.prefix)),
            "use at most 15 digits and + * #, e.g. +44 or 0",
        ));
    }
    validate::one_line_text("--description", &trunk.description, 255)?;
    crate::limits::validate_max_calls("--max-calls", trunk.max_calls)?;
    crate::limits::validate_max_cps("--max-cps", trunk.max_cps)?;
    let mut addresses = Vec::with_capacity(trunk.addresses.len());
    let mut seen = HashSet::new();
    for a in &trunk.addresses {
        let checked = validate_address(a)?;
        if !seen.insert((checked.address.clone(), checked.port)) {
            return Err(invalid(
                "--address",
                format!("{} is given twice", checked.address_text()),
                "give each address and port once",
            ));
        }
        addresses.push(checked);
    }
    let mut uris = HashSet::new();
    for g in &trunk.gateways {
        validate_gateway(g)?;
        if !uris.insert(g.uri.as_str()) {
            return Err(invalid(
                "--gateway",
                format!("{} is given twice", g.uri),
                "give each gateway once",
            ));
        }
    }
    Ok(NewTrunk {
        account,
        addresses,
        ..trunk.clone()
    })
}

/// Checks an address and returns it in canonical form.
pub fn validate_address(a: &TrunkAddress) -> Result<TrunkAddress, DbError> {
    let (address, _) = canonical_network(&a.address)?;
    Ok(TrunkAddress {
        address,
        ..a.clone()
    })
}

const TRUNK_COLUMNS: &str = "t.id, t.name::text, t.auth_username::text, (t.auth_password_enc IS NOT NULL), \
     t.account_username::text, t.account_domain::text, t.strip_digits, t.prefix::text, t.description::text, \
     t.created_at, \
     ARRAY(SELECT host(a.address) FROM sipstack_trunk_address AS a WHERE a.trunk_id = t.id ORDER BY a.id), \
     ARRAY(SELECT masklen(a.address) FROM sipstack_trunk_address AS a WHERE a.trunk_id = t.id ORDER BY a.id), \
     ARRAY(SELECT a.port FROM sipstack_trunk_address AS a WHERE a.trunk_id = t.id ORDER BY a.id), \
     ARRAY(SELECT a.transport::text FROM sipstack_trunk_address AS a WHERE a.trunk_id = t.id ORDER BY a.id), \
     ARRAY(SELECT g.uri::text FROM sipstack_trunk_gateway AS g WHERE g.trunk_id = t.id ORDER BY g.priority, g.id), \
     ARRAY(SELECT g.priority FROM sipstack_trunk_gateway AS g WHERE g.trunk_id = t.id ORDER BY g.priority, g.id), \
     t.max_calls, t.max_cps";

/// `host` and `masklen` as sipstack writes an address.
fn address_from_parts(host: &str, mask: i32) -> String {
    let full = if host.contains(':') { 128 } else { 32 };
    if mask == full {
        host.to_string()
    } else {
        format!("{host}/{mask}")
    }
}

fn trunk_from_row(row: &Row) -> Result<Trunk, DbError> {
    let hosts: Vec<String> = row.get(10);
    let masks: Vec<i32> = row.get(11);
    let ports: Vec<i32> = row.get(12);
    let transports: Vec<String> = row.get(13);
    let mut addresses = Vec::with_capacity(hosts.len());
    for (((host, mask), port), transport) in hosts.iter().zip(&masks).zip(&ports).zip(&transports) {
        addresses.push(TrunkAddress {
            address: address_from_parts(host, *mask),
            port: u16::try_from(*port).unwrap_or(0),
            transport: transport.parse()?,
        });
    }
    let uris: Vec<String> = row.get(14);
    let priorities: Vec<i32> = row.get(15);
    let gateways = uris
        .into_iter()
        .zip(priorities)
        .map(|(uri, priority)| Gateway { uri, priority })
        .collect();
    let account = match (
        row.get::<_, Option<String>>(4),
        row.get::<_, Option<String>>(5),
    ) {
        (Some(u), Some(d)) => Some((u, d)),
        _ => None,
    };
    Ok(Trunk {
        id: row.get(0),
        name: row.get(1),
        auth_username: row.get(2),
        has_credentials: row.get(3),
        account,
        strip_digits: row.get(6),
        prefix: row.get(7),
        description: row.get(8),
        created_at: row.get(9),
        addresses,
        gateways,
        max_calls: row.get(16),
        max_cps: row.get(17),
    })
}

fn constraint_of(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().and_then(|d| d.constraint())
}

fn not_a_subscriber(username: &str, domain: &str) -> DbError {
    invalid(
        "--account",
        format!("{username}@{domain} is not a subscriber"),
        format!("add it with `sipctl add subscriber {username}@{domain}` first"),
    )
}

/// Refuses an account that is not a subscriber or is another trunk's.
async fn check_account(
    client: &impl GenericClient,
    username: &str,
    domain: &str,
) -> Result<(), DbError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM subscriber WHERE username = $1 AND domain = $2),
                    (SELECT name::text FROM sipstack_trunk
                     WHERE account_username = $1 AND account_domain = $2)",
            &[&username, &domain],
        )
        .await
        .map_err(DbError::query("cannot look up the trunk's account"))?;
    if !row.get::<_, bool>(0) {
        return Err(not_a_subscriber(username, domain));
    }
    if let Some(other) = row.get::<_, Option<String>>(1) {
        return Err(account_taken(username, domain, Some(&other)));
    }
    Ok(())
}

fn account_taken(username: &str, domain: &str, other: Option<&str>) -> DbError {
    DbError::Conflict {
        problem: format!(
            "account {username}@{domain} is already used by {}",
            match other {
                Some(t) => format!("trunk {t}"),
                None => "another trunk".to_string(),
            }
        ),
        fix: "a PBX account belongs to one trunk: give this trunk its own subscriber account"
            .into(),
    }
}

fn port_text(port: i32) -> String {
    if port == 0 {
        "any port".to_string()
    } else {
        format!("port {port}")
    }
}

/// Refuses an address another trunk uses, or one that overlaps another trunk's
/// on a port both accept: the edge could not tell which trunk a call is from.
async fn check_address_free(
    client: &impl GenericClient,
    own_trunk: Option<i32>,
    a: &TrunkAddress,
) -> Result<(), DbError> {
    let port = i32::from(a.port);
    let row = client
        .query_opt(
            "SELECT t.name::text, host(x.address), masklen(x.address), x.port,
                    (x.address = $1::text::inet AND x.port = $2)
             FROM sipstack_trunk_address AS x JOIN sipstack_trunk AS t ON t.id = x.trunk_id
             WHERE x.address && $1::text::inet AND (x.port = 0 OR $2 = 0 OR x.port = $2)
               AND ($3::int IS NULL OR x.trunk_id <> $3 OR (x.address = $1::text::inet AND x.port = $2))
             ORDER BY (x.address = $1::text::inet AND x.port = $2) DESC, x.id
             LIMIT 1",
            &[&a.address, &port, &own_trunk],
        )
        .await
        .map_err(DbError::query("cannot look up the trunks' addresses"))?;
    let Some(row) = row else { return Ok(()) };
    let (other, host, mask, other_port, same): (String, String, i32, i32, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let theirs = address_from_parts(&host, mask);
    Err(DbError::Conflict {
        problem: if same {
            format!(
                "address {} ({}) is already used by trunk {other}",
                a.address,
                port_text(port)
            )
        } else {
            format!(
                "address {} ({}) overlaps address {theirs} ({}) of trunk {other}: the edge could not tell \
                 which trunk a call from there belongs to",
                a.address,
                port_text(port),
                port_text(other_port)
            )
        },
        fix: format!(
            "remove it from trunk {other} first (`sipctl delete trunk-address {other} {}`), or give each \
             trunk its own addresses or ports",
            TrunkAddress {
                address: theirs.clone(),
                port: u16::try_from(other_port).unwrap_or(0),
                transport: Transport::Any,
            }
            .address_text()
        ),
    })
}

async fn insert_address(
    client: &impl GenericClient,
    trunk_id: i32,
    a: &TrunkAddress,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO sipstack_trunk_address (trunk_id, address, port, transport)
             VALUES ($1, $2::text::inet, $3, $4)",
            &[
                &trunk_id,
                &a.address,
                &i32::from(a.port),
                &a.transport.as_str(),
            ],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                DbError::Conflict {
                    problem: format!(
                        "address {} ({}) was taken by another trunk meanwhile",
                        a.address,
                        port_text(i32::from(a.port))
                    ),
                    fix: "see `sipctl get trunks` and try again".into(),
                }
            } else {
                DbError::query(format!("cannot add address {}", a.address))(e)
            }
        })?;
    Ok(())
}

async fn insert_gateway(
    client: &impl GenericClient,
    trunk_id: i32,
    g: &Gateway,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO sipstack_trunk_gateway (trunk_id, uri, priority) VALUES ($1, $2, $3)",
            &[&trunk_id, &g.uri, &g.priority],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                invalid(
                    "--gateway",
                    format!("the trunk has gateway {} already", g.uri),
                    "give each gateway once",
                )
            } else {
                DbError::query(format!("cannot add gateway {}", g.uri))(e)
            }
        })?;
    Ok(())
}

/// Adds a trunk with its addresses and gateways, in one transaction. The edges
/// use it after their next trunk reload.
pub async fn add(client: &mut impl GenericClient, trunk: &NewTrunk) -> Result<Trunk, DbError> {
    let t = validate(trunk)?;
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin a transaction"))?;
    if let Some((username, domain)) = &t.account {
        check_account(&tx, username, domain).await?;
    }
    for a in &t.addresses {
        check_address_free(&tx, None, a).await?;
    }
    let (auth_user, auth_pass) = match &t.auth {
        Some((u, p)) => (Some(u.as_str()), Some(p.as_str())),
        None => (None, None),
    };
    let (account_user, account_domain) = match &t.account {
        Some((u, d)) => (Some(u.as_str()), Some(d.as_str())),
        None => (None, None),
    };
    let row = tx
        .query_one(
            "INSERT INTO sipstack_trunk (name, auth_username, auth_password_enc, account_username,
                 account_domain, strip_digits, prefix, description, max_calls, max_cps)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[
                &t.name,
                &auth_user,
                &auth_pass,
                &account_user,
                &account_domain,
                &t.strip_digits,
                &t.prefix,
                &t.description,
                &t.max_calls,
                &t.max_cps,
            ],
        )
        .await
        .map_err(|e| match constraint_of(&e) {
            Some("sipstack_trunk_name_key") => DbError::AlreadyExists {
                kind: "trunk",
                name: t.name.clone(),
            },
            Some("sipstack_trunk_account_unique") => account_taken(
                account_user.unwrap_or_default(),
                account_domain.unwrap_or_default(),
                None,
            ),
            Some("sipstack_trunk_account_fk") => not_a_subscriber(
                account_user.unwrap_or_default(),
                account_domain.unwrap_or_default(),
            ),
            _ => DbError::query(format!("cannot add trunk {:?}", t.name))(e),
        })?;
    let id: i32 = row.get(0);
    for a in &t.addresses {
        insert_address(&tx, id, a).await?;
    }
    for g in &t.gateways {
        insert_gateway(&tx, id, g).await?;
    }
    let stored = get(&tx, &t.name).await?;
    tx.commit()
        .await
        .map_err(DbError::query(format!("cannot commit trunk {:?}", t.name)))?;
    Ok(stored)
}

/// Every trunk, by name.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Trunk>, DbError> {
    let rows = client
        .query(
            &format!("SELECT {TRUNK_COLUMNS} FROM sipstack_trunk AS t ORDER BY t.name"),
            &[],
        )
        .await
        .map_err(DbError::query("cannot list trunks"))?;
    rows.iter().map(trunk_from_row).collect()
}

/// One trunk by name.
pub async fn get(client: &impl GenericClient, name: &str) -> Result<Trunk, DbError> {
    validate::name("name", name)?;
    let row = client
        .query_opt(
            &format!("SELECT {TRUNK_COLUMNS} FROM sipstack_trunk AS t WHERE t.name = $1"),
            &[&name],
        )
        .await
        .map_err(DbError::query(format!("cannot read trunk {name:?}")))?;
    match row {
        Some(row) => trunk_from_row(&row),
        None => Err(DbError::NotFound {
            kind: "trunk",
            name: name.to_string(),
        }),
    }
}

/// The id of a trunk, locked against deletion until the transaction ends.
pub(crate) async fn lock_trunk(client: &impl GenericClient, name: &str) -> Result<i32, DbError> {
    validate::name("name", name)?;
    let row = client
        .query_opt(
            "SELECT id FROM sipstack_trunk WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await
        .map_err(DbError::query(format!("cannot read trunk {name:?}")))?;
    row.map(|r| r.get(0)).ok_or_else(|| DbError::NotFound {
        kind: "trunk",
        name: name.to_string(),
    })
}

/// Deletes a trunk with its addresses and gateways. Refused while numbers or
/// routes send calls to it; the error names them.
pub async fn delete(client: &mut impl GenericClient, name: &str) -> Result<(), DbError> {
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin a transaction"))?;
    // The row lock makes a number or route naming the trunk wait for this
    // transaction (its foreign key check locks the row too), so the check holds.
    let id = lock_trunk(&tx, name).await?;
    let users = tx
        .query(
            "SELECT 'number', CASE match_kind WHEN 'prefix' THEN 'prefix ' ELSE '' END || number
             FROM sipstack_number WHERE target_trunk = $1
             UNION ALL
             SELECT 'route', name::text FROM sipstack_route WHERE target_trunk = $1
             ORDER BY 1, 2",
            &[&name],
        )
        .await
        .map_err(DbError::query(format!(
            "cannot look up what uses trunk {name:?}"
        )))?;
    if !users.is_empty() {
        let of = |kind: &str| -> Vec<String> {
            users
                .iter()
                .filter(|r| r.get::<_, &str>(0) == kind)
                .map(|r| r.get(1))
                .collect()
        };
        let (numbers, routes) = (of("number"), of("route"));
        let mut parts = Vec::new();
        if !numbers.is_empty() {
            parts.push(format!(
                "number{} {}",
                if numbers.len() == 1 { "" } else { "s" },
                numbers.join(", ")
            ));
        }
        if !routes.is_empty() {
            parts.push(format!(
                "route{} {}",
                if routes.len() == 1 { "" } else { "s" },
                routes.join(", ")
            ));
        }
        return Err(DbError::Conflict {
            problem: format!("trunk {name} is still used by {}", parts.join(" and ")),
            fix: "delete them (`sipctl delete number`, `sipctl delete route`) or give them another target first"
                .into(),
        });
    }
    tx.execute("DELETE FROM sipstack_trunk WHERE id = $1", &[&id])
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
                DbError::Conflict {
                    problem: format!("trunk {name} is still used by numbers or routes"),
                    fix: "see `sipctl get numbers` and `sipctl get routes`, and delete them first"
                        .into(),
                }
            } else {
                DbError::query(format!("cannot delete trunk {name:?}"))(e)
            }
        })?;
    tx.commit()
        .await
        .map_err(DbError::query(format!("cannot delete trunk {name:?}")))?;
    Ok(())
}

/// Adds a gateway to a trunk. Returns the trunk as it is now.
pub async fn add_gateway(
    client: &mut impl GenericClient,
    trunk: &str,
    gateway: &Gateway,
) -> Result<Trunk, DbError> {
    validate_gateway(gateway)?;
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin a transaction"))?;
    let id = lock_trunk(&tx, trunk).await?;
    insert_gateway(&tx, id, gateway).await?;
    let stored = get(&tx, trunk).await?;
    tx.commit().await.map_err(DbError::query(format!(
        "cannot add gateway {}",
        gateway.uri
    )))?;
    Ok(stored)
}

/// Removes a gateway (by URI) from a trunk. Returns the trunk as it is now.
pub async fn delete_gateway(
    client: &mut impl GenericClient,
    trunk: &str,
    uri: &str,
) -> Result<Trunk, DbError> {
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin a transaction"))?;
    let id = lock_trunk(&tx, trunk).await?;
    let deleted = tx
        .execute(
            "DELETE FROM sipstack_trunk_gateway WHERE trunk_id = $1 AND uri = $2",
            &[&id, &uri],
        )
        .await
        .map_err(DbError::query(format!("cannot delete gateway {uri:?}")))?;
    if deleted == 0 {
        return Err(DbError::NotFound {
            kind: "gateway",
            name: format!("{uri} of trunk {trunk}"),
        });
    }
    let stored = get(&tx, trunk).await?;
    tx.commit()
        .await
        .map_err(DbError::query(format!("cannot delete gateway {uri:?}")))?;
    Ok(stored)
}

/// Adds an address to a trunk. Returns the trunk as it is now.
pub async fn add_address(
    client: &mut impl GenericClient,
    trunk: &str,
    address: &TrunkAddress,
) -> Result<Trunk, DbError> {
    let a = validate_address(address)?;
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin a transaction"))?;
    let id = lock_trunk(&tx, trunk).await?;
    check_address_free(&tx, Some(id), &a).await?;
    insert_address(&tx, id, &a).await?;
    let stored = get(&tx, trunk).await?;
    tx.commit()
        .await
        .map_err(DbError::query(format!("cannot add address {}", a.address)))?;
    Ok(stored)
}

/// Removes an address (by address and port) from a trunk. Returns the trunk as it is now.
pub async fn delete_address(
    client: &mut impl GenericClient,
    trunk: &str,
    address: &TrunkAddress,
) -> Result<Trunk, DbError> {
    let a = validate_address(address)?;
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin a transaction"))?;
    let id = lock_trunk(&tx, trunk).await?;
    let deleted = tx
        .execute(
            "DELETE FROM sipstack_trunk_address WHERE trunk_id = $1 AND address = $2::text::inet AND port = $3",
            &[&id, &a.address, &i32::from(a.port)],
        )
        .await
        .map_err(DbError::query(format!("cannot delete address {}", a.address)))?;
    if deleted == 0 {
        return Err(DbError::NotFound {
            kind: "address",
            name: format!("{} of trunk {trunk}", a.address_text()),
        });
    }
    let stored = get(&tx, trunk).await?;
    tx.commit().await.map_err(DbError::query(format!(
        "cannot delete address {}",
        a.address
    )))?;
    Ok(stored)
}

/// Trunk names, for errors that list what exists.
pub(crate) async fn names(client: &impl GenericClient) -> Result<Vec<String>, DbError> {
    let rows = client
        .query("SELECT name::text FROM sipstack_trunk ORDER BY name", &[])
        .await
        .map_err(DbError::query("cannot list trunks"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(crate) fn unknown_trunk(field: &str, name: &str, known: &[String]) -> DbError {
    invalid(
        field,
        format!("trunk {} does not exist", shown(name)),
        if known.is_empty() {
            "no trunk exists yet: add it with `sipctl add trunk` first".to_string()
        } else {
            format!("name one of the trunks: {}", known.join(", "))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: DbError) -> String {
        match err {
            DbError::Invalid { field, .. } => field,
            other => panic!("not a validation error: {other}"),
        }
    }

    const HOSTILE: &[&str] = &[
        "a'b",
        "a\"b",
        "a\nb",
        "a;b",
        "$(id)",
        "#!KAMAILIO",
        "a b",
        "x'); DROP TABLE sipstack_trunk; --",
        "a\\b",
        "a\rb",
    ];

    fn key() -> TrunkKey {
        TrunkKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    fn trunk() -> NewTrunk {
        NewTrunk {
            name: "carrier-a".into(),
            auth: Some(("acct-1".into(), encrypt_password(&key(), "s3cret"))),
            account: None,
            strip_digits: 1,
            prefix: "+44".into(),
            description: "Carrier A".into(),
            addresses: vec![
                TrunkAddress::parse("203.0.113.5", Transport::Udp).unwrap(),
                TrunkAddress::parse("198.51.100.0/24:5060", Transport::Any).unwrap(),
            ],
            gateways: vec![
                Gateway::parse("sip:198.51.100.10:5060,priority=10").unwrap(),
                Gateway::parse("sip:gw2.carrier.example;transport=tcp").unwrap(),
            ],
            max_calls: Some(30),
            max_cps: Some(5),
        }
    }

    #[test]
    fn keys_round_trip_and_are_not_printed() {
        let k = TrunkKey::generate();
        let text = k.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(TrunkKey::from_base64(&format!("{text}\n")).unwrap(), k);
        assert_ne!(TrunkKey::generate(), k);
        let debug = format!("{k:?}");
        assert_eq!(debug, "TrunkKey(..)");
        assert!(!debug.contains(&text));
    }

    #[test]
    fn bad_keys_name_the_key_and_how_to_get_one() {
        for bad in ["", "not base64!", "AAEC", &STANDARD.encode([0u8; 16])] {
            let err = TrunkKey::from_base64(bad).unwrap_err().to_string();
            assert!(err.starts_with("trunk key: "), "{err}");
            assert!(err.contains("openssl rand -base64 32"), "{err}");
        }
        // the text is never echoed: it may be a key that is only slightly off
        let almost = format!("{}!", key().to_base64());
        assert!(!TrunkKey::from_base64(&almost)
            .unwrap_err()
            .to_string()
            .contains(&almost));
    }

    #[test]
    fn encryption_round_trips_with_a_fresh_iv() {
        let k = key();
        for password in [
            "s3cret",
            "",
            "a",
            &"x".repeat(16),
            "pässwörd 'with' $(quotes)",
        ] {
            let a = encrypt_password(&k, password);
            let b = encrypt_password(&k, password);
            assert_ne!(a, b, "a fresh IV every time");
            assert_eq!(decrypt_password(&k, &a).unwrap(), password);
            assert_eq!(decrypt_password(&k, &b).unwrap(), password);
        }
        let other = TrunkKey::generate();
        let enc = encrypt_password(&k, "s3cret");
        assert!(decrypt_password(&other, &enc).map_or(true, |p| p != "s3cret"));
        assert!(decrypt_password(&k, "AAAA").is_err());
    }

    #[test]
    fn layout_is_iv_then_cbc_ciphertext() {
        let k = key();
        let iv: [u8; 16] = *b"0123456789abcdef";
        let enc = encrypt_with_iv(&k, &iv, "s3cret");
        let raw = STANDARD.decode(&enc).unwrap();
        // one block: 6 bytes and 10 of PKCS#7 padding
        assert_eq!(raw.len(), 32);
        assert_eq!(&raw[..16], &iv);
        // CBC of a single block: AES(key, P xor IV)
        use aes::cipher::{BlockEncrypt, KeyInit};
        let mut block = [0u8; 16];
        let mut plain = b"s3cret".to_vec();
        plain.extend([10u8; 10]);
        for (i, b) in block.iter_mut().enumerate() {
            *b = plain[i] ^ iv[i];
        }
        let mut block = block.into();
        Aes256::new(&k.0.into()).encrypt_block(&mut block);
        assert_eq!(&raw[16..], block.as_slice());
        // a full block of input gets a whole block of padding
        let enc = encrypt_with_iv(&k, &iv, &"x".repeat(16));
        assert_eq!(STANDARD.decode(enc).unwrap().len(), 48);
        // the stored form passes the table's CHECK
        assert!(validate::ENCRYPTED_PASSWORD.is_match(&encrypt_password(&k, "a")));
        let longest = encrypt_password(&k, &"p".repeat(MAX_PASSWORD_BYTES));
        assert!(longest.len() <= 256 && validate::ENCRYPTED_PASSWORD.is_match(&longest));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// OpenSSL is what Kamailio's crypto module decrypts with: the same cipher,
    /// key, IV (the first 16 bytes) and padding must give the password back.
    #[test]
    fn openssl_decrypts_what_is_stored() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let k = TrunkKey::generate();
        for password in ["s3cret", "exactly16bytes!!", "pässwörd 'q' $(x) #!;", "p"] {
            let raw = STANDARD.decode(encrypt_password(&k, password)).unwrap();
            let (iv, ciphertext) = raw.split_at(IV_LEN);
            let mut child = Command::new("openssl")
                .args([
                    "enc",
                    "-d",
                    "-aes-256-cbc",
                    "-K",
                    &hex(&k.0),
                    "-iv",
                    &hex(iv),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("openssl is installed");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(ciphertext)
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8(out.stdout).unwrap(), password);
        }
    }

    #[test]
    fn passwords() {
        assert!(validate_password("Circle Of Life; 'quoted' $(x) #!").is_ok());
        for bad in ["", "a\nb", "a\rb", "a\0b", &"p".repeat(129)] {
            assert_eq!(
                field_of(validate_password(bad).unwrap_err()),
                "--auth-password"
            );
        }
    }

    #[test]
    fn addresses_parse_into_canonical_form() {
        let parse = |s: &str| TrunkAddress::parse(s, Transport::Any).map(|a| (a.address, a.port));
        assert_eq!(parse("203.0.113.5").unwrap(), ("203.0.113.5".into(), 0));
        assert_eq!(parse("203.0.113.5/32").unwrap(), ("203.0.113.5".into(), 0));
        assert_eq!(
            parse("203.0.113.0/24:5060").unwrap(),
            ("203.0.113.0/24".into(), 5060)
        );
        assert_eq!(
            parse("203.0.113.5:5080").unwrap(),
            ("203.0.113.5".into(), 5080)
        );
        assert_eq!(parse("2001:DB8::1").unwrap(), ("2001:db8::1".into(), 0));
        assert_eq!(parse("2001:db8::/48").unwrap(), ("2001:db8::/48".into(), 0));
        assert_eq!(
            parse("[2001:db8::1]:5060").unwrap(),
            ("2001:db8::1".into(), 5060)
        );
        assert_eq!(
            parse("[2001:db8::/32]:5061").unwrap(),
            ("2001:db8::/32".into(), 5061)
        );
        let a = TrunkAddress::parse("[2001:db8::1]:5060", Transport::Tls).unwrap();
        assert_eq!(a.address_text(), "[2001:db8::1]:5060");
        assert_eq!(a.to_string(), "[2001:db8::1]:5060 (tls)");
        assert_eq!(
            TrunkAddress::parse("198.51.100.0/24:5060", Transport::Any)
                .unwrap()
                .address_text(),
            "198.51.100.0/24:5060"
        );
    }

    #[test]
    fn bad_addresses_are_refused_by_field() {
        for bad in [
            "",
            "carrier.example",
            "203.0.113",
            "203.0.113.256",
            "203.0.113.05",
            "203.0.113.5:0",
            "203.0.113.5:65536",
            "203.0.113.5:+1",
            "203.0.113.5:",
            "203.0.113.0/33",
            "203.0.113.0/",
            "203.0.113.0/+8",
            "0.0.0.0/0",
            "10.0.0.0/7",
            "::/0",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:203.0.113.5",
            "[203.0.113.5]:5060",
            "[2001:db8::1]5060",
            "2001:db8::1:5060:x",
            " 203.0.113.5",
            "203.0.113.5 ",
        ] {
            let err = TrunkAddress::parse(bad, Transport::Any).expect_err(bad);
            assert_eq!(field_of(err), "--address", "{bad:?}");
        }
        for hostile in HOSTILE {
            let err = TrunkAddress::parse(hostile, Transport::Any).expect_err(hostile);
            assert_eq!(field_of(err), "--address", "{hostile:?}");
        }
    }

    #[test]
    fn host_bits_in_a_network_are_refused_with_both_readings() {
        let err = TrunkAddress::parse("203.0.113.5/24", Transport::Any)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("host bits")
                && err.contains("203.0.113.0/24")
                && err.contains("203.0.113.5"),
            "{err}"
        );
        assert!(TrunkAddress::parse("2001:db8::1/64", Transport::Any).is_err());
    }

    #[test]
    fn transports() {
        for t in [
            Transport::Any,
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
        ] {
            assert_eq!(t.as_str().parse::<Transport>().unwrap(), t);
        }
        for bad in ["UDP", "ws", "", "udp;"] {
            assert_eq!(
                field_of(bad.parse::<Transport>().unwrap_err()),
                "--transport"
            );
        }
    }

    #[test]
    fn gateways_parse_and_check_like_the_table() {
        for (text, uri, priority) in [
            ("sip:198.51.100.10", "sip:198.51.100.10", 0),
            (
                "sip:198.51.100.10:5060,priority=10",
                "sip:198.51.100.10:5060",
                10,
            ),
            (
                "sip:gw.carrier.example;transport=tcp",
                "sip:gw.carrier.example;transport=tcp",
                0,
            ),
            (
                "sips:gw.carrier.example:5061",
                "sips:gw.carrier.example:5061",
                0,
            ),
            (
                "sip:[2001:db8::10]:5060,priority=9999",
                "sip:[2001:db8::10]:5060",
                9999,
            ),
        ] {
            let g = Gateway::parse(text).unwrap();
            assert_eq!((g.uri.as_str(), g.priority), (uri, priority), "{text}");
            assert!(validate::GATEWAY_URI.is_match(&g.uri));
        }
        for bad in [
            "",
            "sip:",
            "198.51.100.10",
            "tel:+4420",
            "sip:+44@gw.example",
            "sip:gw.example:0",
            "sip:gw.example:99999",
            "sip:gw.example:",
            "sip:gw..example",
            "sip:999.1.1.1",
            "sip:[2001:db8::zz]",
            "sip:[2001:db8::1",
            "sip:gw.example;transport=ws",
            "sip:gw.example;transport=UDP",
            "sip:gw.example;lr",
            "sips:gw.example;transport=udp",
            "sip:gw.example,priority=10000",
            "sip:gw.example,priority=-1",
            "sip:gw.example,priority=",
            "sip:gw.example,weight=1",
            &format!("sip:{}.example", "a".repeat(130)),
        ] {
            let err = Gateway::parse(bad).expect_err(bad);
            assert_eq!(field_of(err), "--gateway", "{bad:?}");
        }
        for hostile in HOSTILE {
            let err = Gateway::parse(&format!("sip:gw.example{hostile}")).expect_err(hostile);
            assert_eq!(field_of(err), "--gateway", "{hostile:?}");
            let err = Gateway::parse(&format!("sip:{hostile}")).expect_err(hostile);
            assert_eq!(field_of(err), "--gateway", "{hostile:?}");
        }
    }

    #[test]
    fn a_valid_trunk_passes_normalised() {
        let mut t = trunk();
        t.account = Some(("pbx1".into(), "Example.COM".into()));
        t.addresses.push(TrunkAddress {
            address: "2001:DB8::5".into(),
            port: 0,
            transport: Transport::Any,
        });
        let v = validate(&t).unwrap();
        assert_eq!(v.account, Some(("pbx1".into(), "example.com".into())));
        assert_eq!(v.addresses[2].address, "2001:db8::5");
        let minimal = NewTrunk {
            name: "pbx".into(),
            ..Default::default()
        };
        assert!(validate(&minimal).is_ok());
    }

    #[test]
    fn every_field_is_checked_and_named() {
        let cases: Vec<(NewTrunk, &str)> = vec![
            (
                NewTrunk {
                    name: "Carrier".into(),
                    ..trunk()
                },
                "name",
            ),
            (
                NewTrunk {
                    max_calls: Some(0),
                    ..trunk()
                },
                "--max-calls",
            ),
            (
                NewTrunk {
                    max_cps: Some(-5),
                    ..trunk()
                },
                "--max-cps",
            ),
            (
                NewTrunk {
                    name: String::new(),
                    ..trunk()
                },
                "name",
            ),
            (
                NewTrunk {
                    name: "a".repeat(64),
                    ..trunk()
                },
                "name",
            ),
            (
                NewTrunk {
                    strip_digits: -1,
                    ..trunk()
                },
                "--strip",
            ),
            (
                NewTrunk {
                    strip_digits: 16,
                    ..trunk()
                },
                "--strip",
            ),
            (
                NewTrunk {
                    prefix: "44a".into(),
                    ..trunk()
                },
                "--prefix",
            ),
            (
                NewTrunk {
                    prefix: "1".repeat(16),
                    ..trunk()
                },
                "--prefix",
            ),
            (
                NewTrunk {
                    auth: Some(("u".into(), "not-encrypted".into())),
                    ..trunk()
                },
                "--auth-password",
            ),
            (
                NewTrunk {
                    auth: Some(("u".into(), format!("{}==", "A".repeat(260)))),
                    ..trunk()
                },
                "--auth-password",
            ),
            (
                NewTrunk {
                    auth: Some((String::new(), encrypt_password(&key(), "x"))),
                    ..trunk()
                },
                "--auth-user",
            ),
            (
                NewTrunk {
                    auth: Some(("u~1".into(), encrypt_password(&key(), "x"))),
                    ..trunk()
                },
                "--auth-user",
            ),
            (
                NewTrunk {
                    account: Some(("pbx".into(), "a..b".into())),
                    ..trunk()
                },
                "--account",
            ),
            (
                NewTrunk {
                    account: Some((String::new(), "example.com".into())),
                    ..trunk()
                },
                "--account",
            ),
            (
                NewTrunk {
                    description: "a\nb".into(),
                    ..trunk()
                },
                "--description",
            ),
            (
                NewTrunk {
                    description: "d".repeat(256),
                    ..trunk()
                },
                "--description",
            ),
            (
                NewTrunk {
                    addresses: vec![
                        TrunkAddress::parse("203.0.113.5", Transport::Udp).unwrap(),
                        TrunkAddress::parse("203.0.113.5/32", Transport::Tcp).unwrap(),
                    ],
                    ..trunk()
                },
                "--address",
            ),
            (
                NewTrunk {
                    addresses: vec![TrunkAddress {
                        address: "203.0.113.5/24".into(),
                        port: 0,
                        transport: Transport::Any,
                    }],
                    ..trunk()
                },
                "--address",
            ),
            (
                NewTrunk {
                    gateways: vec![
                        Gateway::parse("sip:gw.example").unwrap(),
                        Gateway::parse("sip:gw.example,priority=5").unwrap(),
                    ],
                    ..trunk()
                },
                "--gateway",
            ),
            (
                NewTrunk {
                    gateways: vec![Gateway {
                        uri: "sip:gw.example".into(),
                        priority: 10_000,
                    }],
                    ..trunk()
                },
                "--gateway",
            ),
        ];
        for (t, field) in cases {
            let err = validate(&t).expect_err(&format!("{t:?} accepted"));
            assert_eq!(field_of(err), field, "{t:?}");
        }
    }

    #[test]
    fn hostile_strings_are_refused_in_every_token_field() {
        for h in HOSTILE {
            let enc = encrypt_password(&key(), "x");
            let cases: Vec<(NewTrunk, &str)> = vec![
                (
                    NewTrunk {
                        name: (*h).into(),
                        ..trunk()
                    },
                    "name",
                ),
                (
                    NewTrunk {
                        prefix: (*h).into(),
                        ..trunk()
                    },
                    "--prefix",
                ),
                (
                    NewTrunk {
                        auth: Some(((*h).into(), enc.clone())),
                        ..trunk()
                    },
                    "--auth-user",
                ),
                (
                    NewTrunk {
                        auth: Some(("u".into(), format!("{enc}{h}"))),
                        ..trunk()
                    },
                    "--auth-password",
                ),
                (
                    NewTrunk {
                        account: Some(((*h).into(), "example.com".into())),
                        ..trunk()
                    },
                    "--account",
                ),
                (
                    NewTrunk {
                        account: Some(("pbx".into(), format!("example.com{h}"))),
                        ..trunk()
                    },
                    "--account",
                ),
                (
                    NewTrunk {
                        gateways: vec![Gateway {
                            uri: format!("sip:gw{h}"),
                            priority: 0,
                        }],
                        ..trunk()
                    },
                    "--gateway",
                ),
                (
                    NewTrunk {
                        addresses: vec![TrunkAddress {
                            address: format!("203.0.113.5{h}"),
                            port: 0,
                            transport: Transport::Any,
                        }],
                        ..trunk()
                    },
                    "--address",
                ),
            ];
            for (t, field) in cases {
                let err = validate(&t).expect_err(&format!("{h:?} accepted in {field}"));
                assert_eq!(field_of(err), field, "{h:?}");
            }
        }
        // the description is free text the edge never reads: one line of anything
        let t = NewTrunk {
            description: "x'); DROP TABLE t; -- $(id) #!".into(),
            ..trunk()
        };
        assert!(validate(&t).is_ok());
    }

    #[test]
    fn outbound_number_strips_then_prefixes() {
        let t = Trunk {
            id: 1,
            name: "c".into(),
            auth_username: None,
            has_credentials: false,
            max_calls: None,
            max_cps: None,
            account: None,
            strip_digits: 2,
            prefix: "+44".into(),
            description: String::new(),
            addresses: vec![],
            gateways: vec![],
            created_at: None,
        };
        assert_eq!(t.outbound_number("0020123"), "+4420123");
        assert_eq!(t.outbound_number("0"), "+44");
    }
}
