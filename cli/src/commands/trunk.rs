//! Trunks: `add`, `get`, `delete trunk`, and their addresses and gateways
//! (`add|delete trunk-address`, `add|delete trunk-gateway`).
//!
//! A trunk's password is read from a file or standard input, never from the
//! command line (other users see command lines in the process list), and is
//! stored encrypted with the edges' trunk key. A change is committed first and
//! then pushed to every edge (addresses, the trunk table, the dialplan).

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sipstack_db::trunk::{self, Gateway, NewTrunk, Transport, Trunk, TrunkAddress};
use sipstack_db::{validate, DbError};
use sipstack_edgerpc::Reload;

use super::{CliError, Ctx};
use crate::output::{Columns, Format};

/// Add a trunk: a carrier or a PBX; the edges reload their trunks.
#[derive(Debug, Args)]
#[command(
    after_help = "Calls from a trunk's addresses are let in without a challenge, as that trunk's calls; they \
reach the platform's numbers, and routes with --source trunk or any. Calls a number or route sends to the trunk \
go to its gateways in priority order (the next takes over on 5xx, 408 or no answer), with the dialled number \
after --strip and --prefix. A registration-based PBX names its subscriber account instead (--account): calls to \
it go to the contact it registered, and its own calls are the trunk's.\n\nThe password towards the carrier is \
read from a file or standard input, never from the command line, and stored encrypted with the edges' trunk key \
(SIPSTACK_TRUNK_KEY, or the context's trunkKeyFile).\n\nExamples:\n  sipctl add trunk carrier-a --address \
203.0.113.5 --address 198.51.100.0/24:5060 --transport udp \\\n      --gateway sip:198.51.100.10:5060,priority=10 \
--gateway 'sip:gw2.carrier.example;transport=tcp,priority=20' \\\n      --auth-user acct-1 --auth-password-file \
./carrier-a.pw --strip 1 --prefix 00\n  printf '%s\\n' \"$PW\" | sipctl add trunk carrier-b --gateway \
sip:gw.carrier-b.example --auth-user me --auth-password-stdin\n  sipctl add trunk acme-pbx --account \
pbx-acme@example.com\n\nExit codes: 3 invalid input or no trunk key, 5 database unreachable, 6 the name, an \
address or the account is taken."
)]
pub struct AddArgs {
    /// Name of the trunk (lower-case letters, digits, '-').
    pub name: String,
    /// An address its calls come from: IP, IP/LEN (a network), with :PORT for one
    /// port ([IPv6]:PORT); repeatable.
    #[arg(long = "address", value_name = "IP|CIDR[:PORT]")]
    pub addresses: Vec<String>,
    /// The transport calls from its addresses must use.
    #[arg(long, default_value = "any", value_parser = ["any", "udp", "tcp", "tls"])]
    pub transport: String,
    /// Where its calls go: sip:HOST[:PORT][;transport=udp|tcp|tls], optionally
    /// ,priority=N (lower first, default 0); repeatable.
    #[arg(long = "gateway", value_name = "URI[,priority=N]")]
    pub gateways: Vec<String>,
    /// Digest user name towards the carrier, when its gateways challenge.
    #[arg(long, value_name = "USER")]
    pub auth_user: Option<String>,
    /// Read the password of --auth-user from the first line of this file.
    #[arg(
        long,
        value_name = "FILE",
        requires = "auth_user",
        conflicts_with = "auth_password_stdin"
    )]
    pub auth_password_file: Option<PathBuf>,
    /// Read the password of --auth-user from the first line of standard input.
    #[arg(long, requires = "auth_user")]
    pub auth_password_stdin: bool,
    /// A registration-based PBX's subscriber account: user@domain.
    #[arg(long, value_name = "USER@DOMAIN")]
    pub account: Option<String>,
    /// Leading characters of the dialled number to strip towards its gateways (0-15).
    #[arg(
        long = "strip",
        default_value_t = 0,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub strip_digits: i32,
    /// Put this in front of the dialled number towards its gateways (digits, + * #).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Free text shown by `get trunks -o wide`.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Concurrent calls it may carry, in and out together; the one more gets a 503.
    #[arg(long, value_name = "N")]
    pub max_calls: Option<i32>,
    /// New calls per second it may carry, in and out together; the one more gets a 503.
    #[arg(long, value_name = "N")]
    pub max_cps: Option<i32>,
}

/// List trunks, or show one.
#[derive(Debug, Args)]
#[command(
    after_help = "Listings never show a password: whether a trunk has credentials, and the user name.\n\n\
Examples:\n  sipctl get trunks\n  sipctl get trunks -o wide\n  sipctl get trunk carrier-a -o json"
)]
pub struct GetArgs {
    /// One trunk by name.
    pub name: Option<String>,
}

/// Delete a trunk with its addresses and gateways; the edges reload their trunks.
#[derive(Debug, Args)]
#[command(
    after_help = "Refused while numbers or routes send calls to the trunk (exit code 6); the error names \
them.\n\nExample:\n  sipctl delete trunk carrier-a"
)]
pub struct DeleteArgs {
    pub name: String,
}

/// Add an address a trunk's calls come from.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl add trunk-address carrier-a 203.0.113.6\n  sipctl add trunk-address carrier-a '[2001:db8::5]:5060' --transport tcp"
)]
pub struct AddAddressArgs {
    /// The trunk.
    pub trunk: String,
    /// IP, IP/LEN, with :PORT for one port ([IPv6]:PORT).
    #[arg(value_name = "IP|CIDR[:PORT]")]
    pub address: String,
    /// The transport its calls must use.
    #[arg(long, default_value = "any", value_parser = ["any", "udp", "tcp", "tls"])]
    pub transport: String,
}

/// Remove an address (and port) from a trunk.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  sipctl delete trunk-address carrier-a 198.51.100.0/24:5060")]
pub struct DeleteAddressArgs {
    pub trunk: String,
    /// The address as listed: IP or IP/LEN, with :PORT when it has one.
    #[arg(value_name = "IP|CIDR[:PORT]")]
    pub address: String,
}

/// Add a gateway to a trunk.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  sipctl add trunk-gateway carrier-a sip:198.51.100.11:5060,priority=30"
)]
pub struct AddGatewayArgs {
    pub trunk: String,
    /// sip:HOST[:PORT][;transport=udp|tcp|tls], optionally ,priority=N.
    #[arg(value_name = "URI[,priority=N]")]
    pub gateway: String,
}

/// Remove a gateway from a trunk.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  sipctl delete trunk-gateway carrier-a sip:198.51.100.11:5060")]
pub struct DeleteGatewayArgs {
    pub trunk: String,
    /// The gateway's URI, as listed.
    pub uri: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct AddressView {
    /// A host or a network (CIDR).
    address: String,
    /// 0: any port.
    port: u16,
    /// any, udp, tcp or tls
    transport: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GatewayView {
    pub uri: String,
    pub priority: i32,
}

/// A trunk as sipctl prints it; the JSON/YAML field names are stable. There is
/// no password field: the encrypted password stays in the database.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct TrunkView {
    id: i32,
    name: String,
    addresses: Vec<AddressView>,
    /// In the order the edge tries them.
    gateways: Vec<GatewayView>,
    auth_user: Option<String>,
    has_credentials: bool,
    /// A registration-based PBX's account (user@domain).
    account: Option<String>,
    strip_digits: i32,
    prefix: String,
    /// Concurrent calls it may carry (none: no limit).
    max_calls: Option<i32>,
    /// New calls per second it may carry (none: no limit).
    max_cps: Option<i32>,
    description: String,
    created_at: Option<String>,
}

impl From<&Trunk> for TrunkView {
    fn from(t: &Trunk) -> Self {
        Self {
            id: t.id,
            name: t.name.clone(),
            addresses: t
                .addresses
                .iter()
                .map(|a| AddressView {
                    address: a.address.clone(),
                    port: a.port,
                    transport: a.transport.as_str(),
                })
                .collect(),
            gateways: gateway_views(t),
            auth_user: t.auth_username.clone(),
            has_credentials: t.has_credentials,
            account: t.account.as_ref().map(|(u, d)| format!("{u}@{d}")),
            strip_digits: t.strip_digits,
            prefix: t.prefix.clone(),
            max_calls: t.max_calls,
            max_cps: t.max_cps,
            description: t.description.clone(),
            created_at: t.created_at.map(super::cdr::rfc3339),
        }
    }
}

pub(super) fn gateway_views(t: &Trunk) -> Vec<GatewayView> {
    t.gateways
        .iter()
        .map(|g| GatewayView {
            uri: g.uri.clone(),
            priority: g.priority,
        })
        .collect()
}

/// How a trunk's gateways get the dialled number, in words.
pub(super) fn number_handling(strip: i32, prefix: &str) -> String {
    match (strip, prefix) {
        (0, "") => "as dialled".to_string(),
        (0, p) => format!("prefix {p}"),
        (n, "") => format!("strip {n}"),
        (n, p) => format!("strip {n}, prefix {p}"),
    }
}

const COLUMNS: Columns = Columns {
    headers: &[
        "NAME",
        "ADDRESSES",
        "GATEWAYS",
        "CREDENTIALS",
        "ACCOUNT",
        "LIMITS",
        "ID",
        "NUMBER-HANDLING",
        "DESCRIPTION",
        "CREATED",
    ],
    narrow: 6,
};

fn row(t: &TrunkView) -> Vec<String> {
    let or_dash = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    vec![
        t.name.clone(),
        or_dash(
            t.addresses
                .iter()
                .map(|a| {
                    TrunkAddress {
                        address: a.address.clone(),
                        port: a.port,
                        transport: a.transport.parse().unwrap_or_default(),
                    }
                    .to_string()
                })
                .collect(),
        ),
        or_dash(
            t.gateways
                .iter()
                .map(|g| format!("{} ({})", g.uri, g.priority))
                .collect(),
        ),
        match (&t.auth_user, t.has_credentials) {
            (Some(u), true) => u.clone(),
            (Some(u), false) => format!("{u} (no password)"),
            (None, _) => "-".into(),
        },
        t.account.clone().unwrap_or_else(|| "-".into()),
        limits_text(t.max_calls, t.max_cps),
        t.id.to_string(),
        number_handling(t.strip_digits, &t.prefix),
        t.description.clone(),
        t.created_at.clone().unwrap_or_default(),
    ]
}

/// A trunk's limits in words: "10 calls, 5/s", "-" for none.
pub(super) fn limits_text(max_calls: Option<i32>, max_cps: Option<i32>) -> String {
    let mut parts = Vec::new();
    if let Some(n) = max_calls {
        parts.push(format!("{n} call{}", if n == 1 { "" } else { "s" }));
    }
    if let Some(n) = max_cps {
        parts.push(format!("{n}/s"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// The command line's name of a field the database layer names.
fn flag_error(e: DbError) -> anyhow::Error {
    match e {
        DbError::Invalid {
            field,
            problem,
            fix,
        } if field == "name" => DbError::Invalid {
            field: "NAME".into(),
            problem,
            fix,
        }
        .into(),
        other => other.into(),
    }
}

/// A line of input longer than this is not a password.
const MAX_PASSWORD_LINE: u64 = 4096;

/// The first line of `input`, without its line ending; `what` names the source in errors.
fn first_line(input: impl BufRead, what: &str) -> anyhow::Result<String> {
    let mut line = Vec::new();
    input
        .take(MAX_PASSWORD_LINE + 1)
        .read_until(b'\n', &mut line)
        .with_context(|| format!("cannot read the password from {what}"))?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() as u64 > MAX_PASSWORD_LINE {
        return Err(CliError::Invalid(format!(
            "--auth-password: the first line of {what} is longer than {MAX_PASSWORD_LINE} bytes; give the password alone on the first line"
        ))
        .into());
    }
    if line.is_empty() {
        return Err(CliError::Invalid(format!(
            "--auth-password: {what} holds no password (its first line is empty); give the password on the first line"
        ))
        .into());
    }
    String::from_utf8(line).map_err(|_| {
        CliError::Invalid(format!(
            "--auth-password: the first line of {what} is not UTF-8 text; give the password as UTF-8"
        ))
        .into()
    })
}

/// The trunk's credentials: its user name and the encrypted password.
fn credentials(ctx: &Ctx, args: &AddArgs) -> anyhow::Result<Option<(String, String)>> {
    let Some(user) = &args.auth_user else {
        return Ok(None);
    };
    trunk::validate_auth_user(user)?;
    let password = if let Some(path) = &args.auth_password_file {
        let what = format!("--auth-password-file {}", path.display());
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        first_line(BufReader::new(file), &what)?
    } else if args.auth_password_stdin {
        first_line(io::stdin().lock(), "standard input")?
    } else {
        return Err(CliError::Invalid(
            "--auth-user needs its password: --auth-password-file FILE or --auth-password-stdin (never on the \
             command line, where other users of the host see it)"
                .into(),
        )
        .into());
    };
    trunk::validate_password(&password)?;
    let key = ctx.target.trunk_key()?;
    Ok(Some((
        user.clone(),
        trunk::encrypt_password(&key, &password),
    )))
}

fn new_trunk(ctx: &Ctx, args: &AddArgs) -> anyhow::Result<NewTrunk> {
    let transport: Transport = args.transport.parse()?;
    let addresses = args
        .addresses
        .iter()
        .map(|a| TrunkAddress::parse(a, transport))
        .collect::<Result<Vec<_>, _>>()?;
    let gateways = args
        .gateways
        .iter()
        .map(|g| Gateway::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    let account = args
        .account
        .as_deref()
        .map(|a| validate::aor("--account", a))
        .transpose()?;
    let mut new = NewTrunk {
        name: args.name.clone(),
        auth: None,
        account,
        strip_digits: args.strip_digits,
        prefix: args.prefix.clone(),
        description: args.description.clone(),
        max_calls: args.max_calls,
        max_cps: args.max_cps,
        addresses,
        gateways,
    };
    // everything else is checked before the password is read
    trunk::validate(&new).map_err(flag_error)?;
    new.auth = credentials(ctx, args)?;
    Ok(new)
}

fn summary(t: &TrunkView) -> String {
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "es" });
    let mut parts = vec![
        plural(t.addresses.len(), "address"),
        format!(
            "{} gateway{}",
            t.gateways.len(),
            if t.gateways.len() == 1 { "" } else { "s" }
        ),
    ];
    if let Some(u) = &t.auth_user {
        parts.push(format!("credentials of {u}"));
    }
    if let Some(a) = &t.account {
        parts.push(format!("PBX account {a}"));
    }
    parts.push(format!(
        "numbers {}",
        number_handling(t.strip_digits, &t.prefix)
    ));
    if t.max_calls.is_some() || t.max_cps.is_some() {
        parts.push(format!("limits {}", limits_text(t.max_calls, t.max_cps)));
    }
    parts.join(", ")
}

pub(super) fn print_changed(ctx: &Ctx, t: &Trunk, what: &str) -> anyhow::Result<()> {
    let view = TrunkView::from(t);
    ctx.output.object(&view, |out| {
        writeln!(out, "trunk {} {what}: {}", view.name, summary(&view))
    })
}

pub async fn add(ctx: &Ctx, args: AddArgs) -> anyhow::Result<()> {
    let new = new_trunk(ctx, &args)?;
    let mut db = ctx.db().await?;
    let added = trunk::add(&mut db, &new).await.map_err(flag_error)?;
    print_changed(ctx, &added, "added")?;
    ctx.push_reload(Reload::Trunks).await;
    Ok(())
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    let db = ctx.db().await?;
    match &args.name {
        Some(name) => {
            let t = trunk::get(&db, name).await.map_err(flag_error)?;
            let view = TrunkView::from(&t);
            if matches!(ctx.output.format, Format::Json | Format::Yaml) {
                ctx.output.object(&view, |_| Ok(()))
            } else {
                ctx.output.list(std::slice::from_ref(&view), &COLUMNS, row)
            }
        }
        None => {
            let views: Vec<TrunkView> = trunk::list(&db)
                .await?
                .iter()
                .map(TrunkView::from)
                .collect();
            ctx.output.list(&views, &COLUMNS, row)?;
            if views.is_empty() && ctx.output.is_human() {
                eprintln!("No trunks; add one with `sipctl add trunk`.");
            }
            Ok(())
        }
    }
}

#[derive(Debug, Serialize)]
struct Deleted {
    deleted: String,
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<()> {
    let mut db = ctx.db().await?;
    trunk::delete(&mut db, &args.name)
        .await
        .map_err(flag_error)?;
    let result = Deleted {
        deleted: args.name.clone(),
    };
    ctx.output.object(&result, |out| {
        writeln!(out, "trunk {} deleted", result.deleted)
    })?;
    ctx.push_reload(Reload::Trunks).await;
    Ok(())
}

pub async fn add_address(ctx: &Ctx, args: AddAddressArgs) -> anyhow::Result<()> {
    let address = TrunkAddress::parse(&args.address, args.transport.parse()?)?;
    validate::name("NAME", &args.trunk)?;
    let mut db = ctx.db().await?;
    let t = trunk::add_address(&mut db, &args.trunk, &address)
        .await
        .map_err(flag_error)?;
    print_changed(ctx, &t, &format!("has address {address}"))?;
    ctx.push_reload(Reload::Trunks).await;
    Ok(())
}

pub async fn delete_address(ctx: &Ctx, args: DeleteAddressArgs) -> anyhow::Result<()> {
    let address = TrunkAddress::parse(&args.address, Transport::Any)?;
    validate::name("NAME", &args.trunk)?;
    let mut db = ctx.db().await?;
    let t = trunk::delete_address(&mut db, &args.trunk, &address)
        .await
        .map_err(flag_error)?;
    print_changed(
        ctx,
        &t,
        &format!("no longer has address {}", address.address_text()),
    )?;
    ctx.push_reload(Reload::Trunks).await;
    Ok(())
}

pub async fn add_gateway(ctx: &Ctx, args: AddGatewayArgs) -> anyhow::Result<()> {
    let gateway = Gateway::parse(&args.gateway)?;
    validate::name("NAME", &args.trunk)?;
    let mut db = ctx.db().await?;
    let t = trunk::add_gateway(&mut db, &args.trunk, &gateway)
        .await
        .map_err(flag_error)?;
    print_changed(ctx, &t, &format!("has gateway {gateway}"))?;
    ctx.push_reload(Reload::Trunks).await;
    Ok(())
}

pub async fn delete_gateway(ctx: &Ctx, args: DeleteGatewayArgs) -> anyhow::Result<()> {
    trunk::validate_gateway(&Gateway {
        uri: args.uri.clone(),
        priority: 0,
    })?;
    validate::name("NAME", &args.trunk)?;
    let mut db = ctx.db().await?;
    let t = trunk::delete_gateway(&mut db, &args.trunk, &args.uri)
        .await
        .map_err(flag_error)?;
    print_changed(ctx, &t, &format!("no longer has gateway {}", args.uri))?;
    ctx.push_reload(Reload::Trunks).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_the_first_line() {
        assert_eq!(first_line(&b"s3cret\nrest"[..], "f").unwrap(), "s3cret");
        assert_eq!(first_line(&b"s3cret\r\n"[..], "f").unwrap(), "s3cret");
        assert_eq!(first_line(&b"no newline"[..], "f").unwrap(), "no newline");
        assert_eq!(
            first_line(&b" spaces kept "[..], "f").unwrap(),
            " spaces kept "
        );
        for bad in [&b""[..], b"\n", b"\xff\n"] {
            let err = first_line(bad, "the file").unwrap_err().to_string();
            assert!(err.starts_with("--auth-password: "), "{err}");
        }
        let long = vec![b'x'; 5000];
        assert!(first_line(&long[..], "f").is_err());
    }

    #[test]
    fn number_handling_in_words() {
        assert_eq!(number_handling(0, ""), "as dialled");
        assert_eq!(number_handling(1, "00"), "strip 1, prefix 00");
        assert_eq!(number_handling(2, ""), "strip 2");
    }
}
