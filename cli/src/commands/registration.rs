//! Registrations (usrloc bindings): `get registrations [USER]`.
//!
//! The edges hold the registrations in memory and write them to the `location`
//! table every `registrar.flushIntervalSeconds` (usrloc write-back), so the edges
//! are asked first (`ul.lookup` for one address of record, `ul.dump` otherwise);
//! the table is read only when no edge answers, and sipctl says so.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sipstack_db::validate;
use sipstack_edgerpc::{UlContact, UlExpires};

use super::cdr::rfc3339;
use super::{CliError, Ctx};
use crate::output::Columns;

/// The usrloc table the edge's registrar saves to.
const TABLE: &str = "location";

/// List registered contacts: expiry, user agent, received address.
#[derive(Debug, Args)]
#[command(
    after_help = "The edges are asked (their memory is the truth); without a reachable edge the database's \
`location` table is shown, which lags by up to registrar.flushIntervalSeconds.\n\nExamples:\n  sipctl get registrations\n  sipctl get registrations alice@example.com -o wide\n  sipctl get registrations --domain example.com -o json"
)]
pub struct GetArgs {
    /// One user: user@domain (or user, with --domain).
    pub user: Option<String>,
    /// Only registrations of this domain.
    #[arg(long)]
    pub domain: Option<String>,
}

/// One registered contact as sipctl prints it; the JSON/YAML field names are stable.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationView {
    /// user@domain
    aor: String,
    contact: String,
    /// Seconds until it expires; null: permanent.
    expires_in: Option<i64>,
    /// When it expires (RFC 3339, UTC); null: permanent.
    expires_at: Option<String>,
    user_agent: Option<String>,
    /// The address the REGISTER came from, for a contact behind NAT.
    received: Option<String>,
    call_id: String,
    cseq: i64,
    /// The edge's socket the registration came in on.
    socket: Option<String>,
    path: Option<String>,
    q: Option<f64>,
    instance: Option<String>,
    reg_id: i64,
    ruid: Option<String>,
    flags: i64,
    cflags: i64,
    last_modified: Option<String>,
    /// Where it was read: the names of the edges holding it, or "database".
    source: Vec<String>,
}

const COLUMNS: Columns = Columns {
    headers: &[
        "AOR",
        "CONTACT",
        "EXPIRES",
        "USER-AGENT",
        "RECEIVED",
        "CALL-ID",
        "CSEQ",
        "SOCKET",
        "PATH",
        "Q",
        "INSTANCE",
        "REG-ID",
        "RUID",
        "LAST-MODIFIED",
        "SOURCE",
    ],
    narrow: 5,
};

fn row(r: &RegistrationView) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    vec![
        r.aor.clone(),
        r.contact.clone(),
        match r.expires_in {
            Some(s) => format!("{s}s"),
            None => "permanent".into(),
        },
        opt(&r.user_agent),
        opt(&r.received),
        r.call_id.clone(),
        r.cseq.to_string(),
        opt(&r.socket),
        opt(&r.path),
        r.q.map(|q| q.to_string()).unwrap_or_else(|| "-".into()),
        opt(&r.instance),
        r.reg_id.to_string(),
        opt(&r.ruid),
        opt(&r.last_modified),
        r.source.join(","),
    ]
}

static USERNAME: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(validate::USERNAME_PATTERN)
        .unwrap_or_else(|e| panic!("built-in pattern: {e}"))
});

/// Which registrations to show: (user, domain), each optional.
fn selection(args: &GetArgs) -> anyhow::Result<(Option<String>, Option<String>)> {
    let domain = args
        .domain
        .as_deref()
        .map(|d| validate::domain("--domain", d))
        .transpose()?;
    let Some(user) = &args.user else {
        return Ok((None, domain));
    };
    let (name, at_domain) = match user.rsplit_once('@') {
        Some((u, d)) => (u, Some(validate::domain("USER", d)?)),
        None => (user.as_str(), None),
    };
    if !USERNAME.is_match(name) {
        return Err(CliError::Invalid(format!(
            "USER: {} is not a SIP user name; give user@domain with a user of letters, digits and . _ ~ + -, \
             e.g. alice@example.com",
            validate::shown(user)
        ))
        .into());
    }
    let domain = match (at_domain, domain) {
        (Some(a), Some(d)) if a != d => {
            return Err(CliError::Invalid(format!(
                "--domain: {d} differs from the domain of {user}; give one of them"
            ))
            .into())
        }
        (Some(a), _) => Some(a),
        (None, d) => d,
    };
    Ok((Some(name.to_string()), domain))
}

fn from_edge(c: &UlContact, edge: &str, now: SystemTime) -> RegistrationView {
    let expires_in = match c.expires {
        UlExpires::In(s) => Some(s),
        _ => None,
    };
    RegistrationView {
        aor: c.aor.clone(),
        contact: c.address.clone(),
        expires_in,
        expires_at: expires_in.map(|s| rfc3339(now + Duration::from_secs(s.max(0).unsigned_abs()))),
        user_agent: c.user_agent.clone(),
        received: c.received.clone(),
        call_id: c.call_id.clone(),
        cseq: c.cseq,
        socket: c.socket.clone(),
        path: c.path.clone(),
        q: c.q,
        instance: c.instance.clone(),
        reg_id: c.reg_id,
        ruid: c.ruid.clone(),
        flags: c.flags,
        cflags: c.cflags,
        last_modified: u64::try_from(c.last_modified)
            .ok()
            .filter(|t| *t > 0)
            .map(|t| rfc3339(UNIX_EPOCH + Duration::from_secs(t))),
        source: vec![edge.to_string()],
    }
}

fn selected(aor: &str, user: Option<&str>, domain: Option<&str>) -> bool {
    let (u, d) = aor.rsplit_once('@').unwrap_or((aor, ""));
    // usrloc keeps AoRs lower-cased (case-insensitive AoRs, Kamailio's default)
    user.is_none_or(|want| want.eq_ignore_ascii_case(u))
        && domain.is_none_or(|want| want.eq_ignore_ascii_case(d))
}

/// Asks the edges; `None` when none answered.
async fn from_edges(
    ctx: &Ctx,
    user: Option<&str>,
    domain: Option<&str>,
) -> Option<Vec<RegistrationView>> {
    let now = SystemTime::now();
    let mut answered = false;
    // by ruid (unique per binding), so a binding several edges hold is listed once
    let mut merged: BTreeMap<String, RegistrationView> = BTreeMap::new();
    for (name, rpc) in ctx.edges() {
        let contacts = match (user, domain) {
            (Some(u), Some(d)) => rpc.ul_lookup(TABLE, &format!("{u}@{d}")).await,
            _ => rpc.ul_dump().await,
        };
        let contacts = match contacts {
            Ok(c) => c,
            Err(e) => {
                eprintln!("warning: edge {name}: cannot read its registrations ({e})");
                continue;
            }
        };
        answered = true;
        for c in contacts
            .iter()
            .filter(|c| c.is_valid() && selected(&c.aor, user, domain))
        {
            let key = c
                .ruid
                .clone()
                .unwrap_or_else(|| format!("{}\n{}\n{}", c.aor, c.address, c.call_id));
            match merged.get_mut(&key) {
                Some(seen) => seen.source.push(name.clone()),
                None => {
                    merged.insert(key, from_edge(c, &name, now));
                }
            }
        }
    }
    answered.then(|| merged.into_values().collect())
}

/// The `location` table, as the edges last wrote it. Its times are the edges'
/// local time without a zone; they are read relative to the database's clock.
async fn from_database(
    ctx: &Ctx,
    user: Option<&str>,
    domain: Option<&str>,
) -> anyhow::Result<Vec<RegistrationView>> {
    let db = ctx.db().await?;
    let rows = db
        .query(
            "SELECT username::text, coalesce(domain, '')::text, contact::text, received::text, path::text,
                    expires <= TIMESTAMP '1970-01-02 00:00:00',
                    EXTRACT(EPOCH FROM (expires - LOCALTIMESTAMP))::float8,
                    q::float8, callid::text, cseq, user_agent::text, socket::text, instance::text, reg_id,
                    ruid::text, flags, cflags,
                    EXTRACT(EPOCH FROM (last_modified - LOCALTIMESTAMP))::float8
             FROM location
             WHERE ($1::text IS NULL OR lower(username) = lower($1))
               AND ($2::text IS NULL OR lower(domain) = $2)
               AND (expires > LOCALTIMESTAMP OR expires <= TIMESTAMP '1970-01-02 00:00:00')
             ORDER BY username, domain, contact",
            &[&user, &domain],
        )
        .await
        .context("cannot read the location table")?;
    let now = SystemTime::now();
    let at = |delta: f64| {
        let d = Duration::from_secs_f64(delta.abs().min(1e12));
        if delta >= 0.0 {
            now + d
        } else {
            now.checked_sub(d).unwrap_or(UNIX_EPOCH)
        }
    };
    let text = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(rows
        .iter()
        .map(|r| {
            let (username, domain): (String, String) = (r.get(0), r.get(1));
            let permanent: bool = r.get(5);
            let expires_in: f64 = r.get(6);
            let q: f64 = r.get(7);
            RegistrationView {
                aor: if domain.is_empty() {
                    username
                } else {
                    format!("{username}@{domain}")
                },
                contact: r.get(2),
                expires_in: (!permanent).then_some(expires_in.floor() as i64),
                expires_at: (!permanent).then(|| rfc3339(at(expires_in))),
                user_agent: text(r.get(10)),
                received: text(r.get(3)),
                call_id: r.get(8),
                cseq: i64::from(r.get::<_, i32>(9)),
                socket: text(r.get(11)),
                path: text(r.get(4)),
                q: (q >= 0.0).then_some(q),
                instance: text(r.get(12)),
                reg_id: i64::from(r.get::<_, i32>(13)),
                ruid: text(r.get(14)),
                flags: i64::from(r.get::<_, i32>(15)),
                cflags: i64::from(r.get::<_, i32>(16)),
                last_modified: Some(rfc3339(at(r.get(17)))),
                source: vec!["database".into()],
            }
        })
        .collect())
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    let (user, domain) = selection(&args)?;
    let mut list = match from_edges(ctx, user.as_deref(), domain.as_deref()).await {
        Some(list) => list,
        None => {
            let registrations = from_database(ctx, user.as_deref(), domain.as_deref()).await?;
            eprintln!(
                "note: no edge could be asked{}; these are the registrations in the database, which the edges write \
                 every registrar.flushIntervalSeconds: the newest may be missing, removed ones may still be shown",
                if ctx.edges().is_empty() { " (none known: give --edge or use a context)" } else { "" }
            );
            registrations
        }
    };
    list.sort_by(|a, b| (&a.aor, &a.contact).cmp(&(&b.aor, &b.contact)));
    ctx.output.list(&list, &COLUMNS, row)?;
    if list.is_empty() && ctx.output.is_human() {
        match (&user, &domain) {
            (Some(u), Some(d)) => eprintln!("No registrations of {u}@{d}."),
            (Some(u), None) => eprintln!("No registrations of user {u}."),
            (None, Some(d)) => eprintln!("No registrations in {d}."),
            (None, None) => eprintln!("No registrations."),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(user: Option<&str>, domain: Option<&str>) -> GetArgs {
        GetArgs {
            user: user.map(str::to_string),
            domain: domain.map(str::to_string),
        }
    }

    #[test]
    fn users_and_domains() {
        assert_eq!(selection(&args(None, None)).unwrap(), (None, None));
        assert_eq!(
            selection(&args(Some("alice@Example.COM"), None)).unwrap(),
            (Some("alice".into()), Some("example.com".into()))
        );
        assert_eq!(
            selection(&args(Some("alice"), Some("example.com"))).unwrap(),
            (Some("alice".into()), Some("example.com".into()))
        );
        assert_eq!(
            selection(&args(Some("alice"), None)).unwrap(),
            (Some("alice".into()), None)
        );
        for bad in [
            "x'; DROP TABLE location; --@example.com",
            "a b@example.com",
            "alice@exa mple.com",
            "@example.com",
        ] {
            assert!(selection(&args(Some(bad), None)).is_err(), "{bad}");
        }
        assert!(selection(&args(Some("alice@a.example"), Some("b.example"))).is_err());
    }

    #[test]
    fn aor_filters() {
        assert!(selected(
            "alice@example.com",
            Some("alice"),
            Some("EXAMPLE.com")
        ));
        assert!(!selected("alice@example.com", Some("bob"), None));
        assert!(selected("alice@example.com", Some("Alice"), None));
        assert!(selected("alice@example.com", None, None));
    }
}
