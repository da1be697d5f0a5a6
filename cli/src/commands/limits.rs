//! Call limits: `set trunk-limits` (concurrent calls and calls per second of a
//! trunk) and `set call-limit` (concurrent calls a subscriber may place). The
//! edges read them with their trunks: a change is committed, then the edges
//! reload their trunks.

use std::str::FromStr;

use clap::Args;
use serde::Serialize;
use sipstack_db::limits::{self, TrunkLimits};
use sipstack_db::subscriber::parse_aor;
use sipstack_db::trunk;
use sipstack_edgerpc::Reload;

use super::Ctx;

/// A limit on the command line: a number, or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    At(i32),
}

impl Limit {
    fn value(self) -> Option<i32> {
        match self {
            Limit::Unlimited => None,
            Limit::At(n) => Some(n),
        }
    }
}

impl FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Limit::Unlimited);
        }
        s.parse::<i32>()
            .ok()
            .filter(|n| *n > 0)
            .map(Limit::At)
            .ok_or_else(|| format!("{s:?} is not a limit: give a number of 1 or more, or none"))
    }
}

/// Set how many calls a trunk may carry at once and per second.
#[derive(Debug, Args)]
#[command(
    after_help = "Both count the trunk's calls in and out together. The call over a limit is refused \
with 503 (a carrier tries elsewhere, a caller hears that the route is busy); calls in progress go on. A \
flag left out keeps its limit; `none` lifts it. The edges reload their trunks.\n\nExamples:\n  sipctl \
set trunk-limits carrier-a --max-calls 30 --max-cps 5\n  sipctl set trunk-limits carrier-a --max-cps none"
)]
pub struct TrunkLimitsArgs {
    /// The trunk's name.
    pub name: String,
    /// Concurrent calls, or none.
    #[arg(long, value_name = "N|none")]
    pub max_calls: Option<Limit>,
    /// New calls per second, or none.
    #[arg(long, value_name = "N|none")]
    pub max_cps: Option<Limit>,
}

/// Set how many calls a subscriber may place at once.
#[derive(Debug, Args)]
#[command(
    after_help = "The call over the limit is refused with 486 Call Limit Reached; calls in progress go \
on. Calls to the subscriber do not count. `none` lifts the limit. The edges reload their trunks, \
which carry the limits.\n\nExamples:\n  sipctl set call-limit alice@example.com --max-calls 2\n  sipctl \
set call-limit alice@example.com --max-calls none"
)]
pub struct CallLimitArgs {
    /// The subscriber: user@domain.
    pub aor: String,
    /// Concurrent calls it may place, or none.
    #[arg(long, value_name = "N|none")]
    pub max_calls: Limit,
}

pub async fn set_trunk_limits(ctx: &Ctx, args: TrunkLimitsArgs) -> anyhow::Result<()> {
    if args.max_calls.is_none() && args.max_cps.is_none() {
        return Err(super::CliError::Invalid(
            "give --max-calls or --max-cps (a number, or none to lift the limit)".into(),
        )
        .into());
    }
    let mut db = ctx.db().await?;
    let current = trunk::get(&db, &args.name).await?;
    let limits = TrunkLimits {
        max_calls: args.max_calls.map_or(current.max_calls, Limit::value),
        max_cps: args.max_cps.map_or(current.max_cps, Limit::value),
    };
    let t = limits::set_trunk_limits(&mut db, &args.name, limits).await?;
    super::trunk::print_changed(ctx, &t, "limits set")?;
    ctx.push_reload(Reload::Trunks).await;
    Ok(())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CallLimitView {
    aor: String,
    /// None: no limit.
    max_calls: Option<i32>,
}

pub async fn set_call_limit(ctx: &Ctx, args: CallLimitArgs) -> anyhow::Result<()> {
    let (username, domain) = parse_aor(&args.aor)?;
    let db = ctx.db().await?;
    let max_calls = args.max_calls.value();
    limits::set_subscriber_limit(&db, &username, &domain, max_calls).await?;
    let view = CallLimitView {
        aor: format!("{username}@{domain}"),
        max_calls,
    };
    ctx.output.object(&view, |out| match view.max_calls {
        Some(n) => writeln!(
            out,
            "{} may place {n} call{} at once",
            view.aor,
            if n == 1 { "" } else { "s" }
        ),
        None => writeln!(out, "{} may place any number of calls at once", view.aor),
    })?;
    ctx.push_reload(Reload::Trunks).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_a_positive_number_or_none() {
        assert_eq!("5".parse::<Limit>(), Ok(Limit::At(5)));
        assert_eq!("None".parse::<Limit>(), Ok(Limit::Unlimited));
        for bad in ["0", "-1", "x", "", "5 "] {
            let e = bad.parse::<Limit>().unwrap_err();
            assert!(e.contains("none"), "{bad}: {e}");
        }
    }
}
