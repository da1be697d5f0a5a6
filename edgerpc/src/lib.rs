//! A client for a SipEdge's control-plane endpoint: Kamailio's JSON-RPC over HTTP
//! (`jsonrpcs` + `xhttp`, `POST /RPC`).
//!
//! Kamailio rate-limits `dispatcher.reload` and `dialplan.reload` (module parameter
//! `reload_delta`, 5 s by default) and answers "Ongoing reload" inside that window.
//! [`EdgeRpc::reload`] waits the window out, so a caller's change is never lost to it.
//!
//! Every request carries `Authorization: Bearer TOKEN`: the edge serves nothing
//! without the token it was started with (`SIPSTACK_RPC_TOKEN` in its environment).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

/// How often a request is sent before the edge counts as unreachable.
const SEND_ATTEMPTS: u32 = 3;

/// An HTTP error with its causes ("error sending request" alone hides whether the
/// connection was refused, reset or timed out).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("edge RPC at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error(
        "edge RPC at {url} refused the RPC token (HTTP {status}); use the token the edge \
         was started with: {TOKEN_ENV}, or the context's rpcTokenFile"
    )]
    Unauthorized { url: String, status: u16 },
    #[error("edge RPC at {url} answered HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("edge RPC {method} failed: {code} {message}")]
    Fault {
        method: String,
        code: i64,
        message: String,
    },
    #[error("edge RPC {method}: unexpected answer: {detail}")]
    Protocol { method: String, detail: String },
}

impl RpcError {
    /// dialplan found no rule for the input, or has no rules for the dialplan id.
    pub fn is_no_translation(&self) -> bool {
        matches!(self, RpcError::Fault { message, .. }
            if message.contains("No translation") || message.contains("Dialplan ID not matched"))
    }

    /// `dispatcher.set_state` did not find the set or the destination in memory
    /// (the edge has not loaded it).
    pub fn is_unknown_destination(&self) -> bool {
        matches!(self, RpcError::Fault { message, .. } if message.contains("State Update Failed"))
    }

    /// Kamailio refused a reload because the previous one is less than `reload_delta` old.
    pub fn is_ongoing_reload(&self) -> bool {
        // dispatcher says "Ongoing reload", dialplan "ongoing reload"
        matches!(self, RpcError::Fault { message, .. } if message.to_ascii_lowercase().contains("ongoing reload"))
    }
}

/// What the routing engine's tables need to be reloaded from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// `dispatcher.reload`: media pool members and their flags.
    Dispatcher,
    /// `dialplan.reload`: the routing rules and the numbers.
    Routes,
    /// The trunks: `permissions.addressReload` (inbound addresses), `htable.reload
    /// trunk` (gateways, credentials, number handling) and `dialplan.reload` (the
    /// routes and numbers that name trunks).
    Trunks,
}

impl Reload {
    /// The method names, for logs.
    pub fn method(self) -> &'static str {
        match self {
            Reload::Dispatcher => "dispatcher.reload",
            Reload::Routes => "dialplan.reload",
            Reload::Trunks => "permissions.addressReload, htable.reload, dialplan.reload",
        }
    }

    /// The RPC calls, in order, each with its parameters.
    pub fn calls(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Reload::Dispatcher => &[("dispatcher.reload", &[])],
            Reload::Routes => &[("dialplan.reload", &[])],
            Reload::Trunks => &[
                ("permissions.addressReload", &[]),
                ("htable.reload", &["trunk"]),
                ("dialplan.reload", &[]),
            ],
        }
    }
}

/// One dispatcher destination as Kamailio holds it in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDestination {
    pub set_id: i64,
    pub uri: String,
    /// Kamailio's two-letter state: A(ctive)/I(nactive)/T(rying)/D(isabled), then P(robing) or X.
    pub flags: String,
    pub priority: i64,
    pub attrs: String,
}

impl LiveDestination {
    pub fn is_active(&self) -> bool {
        self.flags.starts_with('A')
    }
    pub fn is_probing(&self) -> bool {
        self.flags.ends_with('P')
    }
}

/// The environment variable that holds the RPC token, for the edge (Kamailio reads
/// it with `$env()`) and for sipctl.
pub const TOKEN_ENV: &str = "SIPSTACK_RPC_TOKEN";

/// The shortest token an edge accepts (the rendered config refuses shorter ones).
pub const MIN_TOKEN_LEN: usize = 16;

/// A client for one edge.
#[derive(Clone)]
pub struct EdgeRpc {
    url: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for EdgeRpc {
    // the token is a credential: never in logs or panics
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeRpc")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<Fault>,
}

#[derive(Deserialize)]
struct Fault {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

impl EdgeRpc {
    /// `url` is the endpoint, e.g. `http://127.0.0.1:5071/RPC`.
    pub fn new(url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            // Kamailio closes every RPC connection after its reply (set_reply_close);
            // a pooled connection would be found closed on the next call.
            .pool_max_idle_per_host(0)
            // the edges are on the control-plane network: never through an http_proxy
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            url: url.into(),
            token: None,
            http,
        }
    }

    /// Sends `token` as `Authorization: Bearer` on every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// The endpoint of an edge whose RPC socket is `address:port`.
    pub fn for_socket(address: &str, port: u16) -> Self {
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.to_string()
        };
        Self::new(format!("http://{host}:{port}/RPC"))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts one JSON-RPC request; returns the HTTP status and body. A request
    /// that could not be sent, or whose answer did not arrive, is tried again
    /// (at most [`SEND_ATTEMPTS`] times, briefly apart): a busy edge may accept
    /// its control connection late, and every method the platform calls is
    /// idempotent (reloads, state changes, listings).
    async fn post(&self, body: &Value) -> Result<(reqwest::StatusCode, String), RpcError> {
        let mut attempt = 1;
        loop {
            let mut request = self.http.post(&self.url).json(body);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let result = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    response.text().await.map(|text| (status, text))
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt < SEND_ATTEMPTS => {
                    tracing::debug!(url = %self.url, attempt, error = %error_chain(&e), "edge RPC not answered; trying again");
                    tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(RpcError::Unreachable {
                        url: self.url.clone(),
                        message: error_chain(&e),
                    })
                }
            }
        }
    }

    /// Calls `method` with positional `params` and returns its `result`.
    pub async fn call(&self, method: &str, params: &[Value]) -> Result<Value, RpcError> {
        let body = if params.is_empty() {
            json!({"jsonrpc": "2.0", "method": method, "id": 1})
        } else {
            json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
        };
        let (status, text) = self.post(&body).await?;
        // Kamailio answers a fault with its code as the HTTP status and a JSON-RPC error body.
        let answer: Option<Answer> = serde_json::from_str(&text).ok();
        if let Some(Answer { error: Some(f), .. }) = answer {
            return Err(RpcError::Fault {
                method: method.into(),
                code: f.code,
                message: f.message,
            });
        }
        if status.as_u16() == 401 {
            return Err(RpcError::Unauthorized {
                url: self.url.clone(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(RpcError::Http {
                url: self.url.clone(),
                status: status.as_u16(),
                body: text.trim().to_string(),
            });
        }
        let answer = answer.ok_or_else(|| RpcError::Protocol {
            method: method.into(),
            detail: text.trim().to_string(),
        })?;
        Ok(answer.result.unwrap_or(Value::Null))
    }

    /// Reloads a table, waiting out Kamailio's reload rate limit (at most `patience`).
    pub async fn reload(&self, what: Reload, patience: Duration) -> Result<(), RpcError> {
        let deadline = tokio::time::Instant::now() + patience;
        for (method, params) in what.calls() {
            let params: Vec<Value> = params.iter().map(|p| Value::from(*p)).collect();
            loop {
                match self.call(method, &params).await {
                    Ok(_) => break,
                    Err(e) if e.is_ongoing_reload() && tokio::time::Instant::now() < deadline => {
                        tracing::debug!(method, "reload refused inside reload_delta; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Kamailio's version string; a cheap liveness check.
    pub async fn version(&self) -> Result<String, RpcError> {
        let v = self.call("core.version", &[]).await?;
        Ok(v.as_str()
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| v.to_string()))
    }

    /// The dispatcher destinations Kamailio holds now, with their live state.
    pub async fn dispatcher_list(&self) -> Result<Vec<LiveDestination>, RpcError> {
        let v = self.call("dispatcher.list", &[]).await?;
        parse_dispatcher_list(&v).ok_or_else(|| RpcError::Protocol {
            method: "dispatcher.list".into(),
            detail: format!("cannot read {v}"),
        })
    }

    /// Sets the state of one destination in memory (`a` active, `i` inactive,
    /// `d` disabled, optionally followed by `p` for probing).
    pub async fn dispatcher_set_state(
        &self,
        state: &str,
        set_id: i64,
        uri: &str,
    ) -> Result<(), RpcError> {
        self.call(
            "dispatcher.set_state",
            &[json!(state), json!(set_id), json!(uri)],
        )
        .await
        .map(|_| ())
    }

    /// What dialplan `dpid` makes of `input` (`dialplan.translate`): the output and
    /// the attributes of the first rule that matches; `None` when no rule matches or
    /// the dialplan id has no rules. The input goes as a JSON string: the method
    /// refuses a number.
    pub async fn dialplan_translate(
        &self,
        dpid: i32,
        input: &str,
    ) -> Result<Option<Translation>, RpcError> {
        match self
            .call("dialplan.translate", &[json!(dpid), json!(input)])
            .await
        {
            Ok(v) => parse_translation(&v)
                .map(Some)
                .ok_or_else(|| RpcError::Protocol {
                    method: "dialplan.translate".into(),
                    detail: format!("cannot read {v}"),
                }),
            Err(e) if e.is_no_translation() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The rules of dialplan `dpid` as the edge holds them (`dialplan.dump`), by
    /// priority; empty when the id has no rules.
    pub async fn dialplan_dump(&self, dpid: i32) -> Result<Vec<DialplanEntry>, RpcError> {
        match self.call("dialplan.dump", &[json!(dpid)]).await {
            Ok(v) => parse_dialplan_dump(&v).ok_or_else(|| RpcError::Protocol {
                method: "dialplan.dump".into(),
                detail: format!("cannot read {v}"),
            }),
            Err(e) if e.is_no_translation() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Every contact in the edge's memory (`ul.dump`), including ones that expired
    /// but were not cleaned up yet (see [`UlExpires`]).
    pub async fn ul_dump(&self) -> Result<Vec<UlContact>, RpcError> {
        let v = self.call("ul.dump", &[]).await?;
        parse_ul_dump(&v).ok_or_else(|| RpcError::Protocol {
            method: "ul.dump".into(),
            detail: format!("cannot read {v}"),
        })
    }

    /// The valid contacts of one address of record (`ul.lookup TABLE AOR`); empty
    /// when it has none.
    pub async fn ul_lookup(&self, table: &str, aor: &str) -> Result<Vec<UlContact>, RpcError> {
        match self.call("ul.lookup", &[json!(table), json!(aor)]).await {
            Ok(v) => {
                let aor = v
                    .get("AoR")
                    .and_then(Value::as_str)
                    .unwrap_or(aor)
                    .to_string();
                parse_ul_contacts(&aor, v.get("Contacts")).ok_or_else(|| RpcError::Protocol {
                    method: "ul.lookup".into(),
                    detail: format!("cannot read {v}"),
                })
            }
            Err(RpcError::Fault { message, .. })
                if message.contains("AOR not found") || message.contains("AOR has no contacts") =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

/// The answer of `dialplan.translate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    pub output: String,
    pub attrs: String,
}

/// One rule of `dialplan.dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialplanEntry {
    pub pr: i64,
    pub match_op: i64,
    pub match_exp: String,
    pub match_len: i64,
    /// Empty when not set.
    pub subst_exp: String,
    /// Empty when not set.
    pub repl_exp: String,
    pub attrs: String,
}

/// When a contact expires, as `ul.dump` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UlExpires {
    /// In this many seconds.
    In(i64),
    Permanent,
    /// Expired, not cleaned up yet.
    Expired,
    /// Deleted, not flushed yet.
    Deleted,
}

/// One registered contact in an edge's memory (usrloc).
#[derive(Debug, Clone, PartialEq)]
pub struct UlContact {
    /// user@domain.
    pub aor: String,
    pub address: String,
    pub expires: UlExpires,
    /// `None` when not set (Kamailio shows -1).
    pub q: Option<f64>,
    pub call_id: String,
    pub cseq: i64,
    pub user_agent: Option<String>,
    /// The source address of a contact behind NAT.
    pub received: Option<String>,
    pub path: Option<String>,
    /// CS_NEW (not written to the database yet), CS_SYNC, CS_DIRTY.
    pub state: String,
    pub flags: i64,
    pub cflags: i64,
    pub socket: Option<String>,
    pub methods: Option<i64>,
    pub ruid: Option<String>,
    pub instance: Option<String>,
    pub reg_id: i64,
    pub server_id: i64,
    pub tcpconn_id: i64,
    pub keepalive: i64,
    pub last_keepalive: i64,
    /// Unix time.
    pub last_modified: i64,
}

impl UlContact {
    /// Whether lookup() would use it (not expired, not deleted).
    pub fn is_valid(&self) -> bool {
        matches!(self.expires, UlExpires::In(_) | UlExpires::Permanent)
    }
}

/// Reads the answer of `dialplan.translate`.
pub fn parse_translation(v: &Value) -> Option<Translation> {
    Some(Translation {
        output: v
            .get("Output")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        attrs: v.get("Attributes")?.as_str()?.to_string(),
    })
}

/// Reads the answer of `dialplan.dump`, by priority.
pub fn parse_dialplan_dump(v: &Value) -> Option<Vec<DialplanEntry>> {
    let text = |e: &Value, key: &str| {
        e.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut out = Vec::new();
    for entry in v
        .get("ENTRIES")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let e = entry.get("ENTRY")?;
        out.push(DialplanEntry {
            pr: e.get("PRIO")?.as_i64()?,
            match_op: e.get("MATCHOP")?.as_i64()?,
            match_exp: text(e, "MATCHEXP"),
            match_len: e
                .get("MATCHLEN")
                .and_then(Value::as_i64)
                .unwrap_or_default(),
            subst_exp: text(e, "SUBSTEXP"),
            repl_exp: text(e, "REPLEXP"),
            attrs: text(e, "ATTRS"),
        });
    }
    out.sort_by_key(|e| e.pr);
    Some(out)
}

/// usrloc writes "[not set]" for empty strings.
fn ul_text(c: &Value, key: &str) -> Option<String> {
    c.get(key)
        .and_then(Value::as_str)
        .filter(|s| *s != "[not set]" && !s.is_empty())
        .map(str::to_string)
}

fn parse_ul_contact(aor: &str, c: &Value) -> Option<UlContact> {
    let int = |key: &str| c.get(key).and_then(Value::as_i64).unwrap_or_default();
    let expires = match c.get("Expires")? {
        Value::Number(n) => UlExpires::In(n.as_i64()?),
        Value::String(s) if s == "permanent" => UlExpires::Permanent,
        Value::String(s) if s == "deleted" => UlExpires::Deleted,
        Value::String(_) => UlExpires::Expired,
        _ => return None,
    };
    Some(UlContact {
        aor: aor.to_string(),
        address: c.get("Address")?.as_str()?.to_string(),
        expires,
        q: c.get("Q").and_then(Value::as_f64).filter(|q| *q >= 0.0),
        call_id: c
            .get("Call-ID")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        cseq: int("CSeq"),
        user_agent: ul_text(c, "User-Agent"),
        received: ul_text(c, "Received"),
        path: ul_text(c, "Path"),
        state: c
            .get("State")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        flags: int("Flags"),
        cflags: int("CFlags"),
        socket: ul_text(c, "Socket"),
        methods: c.get("Methods").and_then(Value::as_i64),
        ruid: ul_text(c, "Ruid"),
        instance: ul_text(c, "Instance"),
        reg_id: int("Reg-Id"),
        server_id: int("Server-Id"),
        tcpconn_id: int("Tcpconn-Id"),
        keepalive: int("Keepalive"),
        last_keepalive: int("Last-Keepalive"),
        last_modified: int("Last-Modified"),
    })
}

/// Reads a `Contacts` array of `ul.dump` or `ul.lookup`.
fn parse_ul_contacts(aor: &str, contacts: Option<&Value>) -> Option<Vec<UlContact>> {
    let mut out = Vec::new();
    for item in contacts
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push(parse_ul_contact(aor, item.get("Contact")?)?);
    }
    Some(out)
}

/// Reads the answer of `ul.dump`: every contact of every AoR of every usrloc table.
pub fn parse_ul_dump(v: &Value) -> Option<Vec<UlContact>> {
    let mut out = Vec::new();
    for domain in v
        .get("Domains")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let domain = domain.get("Domain")?;
        for record in domain
            .get("AoRs")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let info = record.get("Info")?;
            let aor = info.get("AoR")?.as_str()?;
            out.extend(parse_ul_contacts(aor, info.get("Contacts"))?);
        }
    }
    Some(out)
}

/// Reads the answer of `dispatcher.list`. An empty dispatcher answers without `RECORDS`.
pub fn parse_dispatcher_list(v: &Value) -> Option<Vec<LiveDestination>> {
    let mut out = Vec::new();
    let records = match v.get("RECORDS") {
        Some(r) => r.as_array()?,
        None => return Some(out),
    };
    for record in records {
        let set = record.get("SET")?;
        let set_id = set.get("ID")?.as_i64()?;
        for target in set
            .get("TARGETS")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let dest = target.get("DEST")?;
            out.push(LiveDestination {
                set_id,
                uri: dest.get("URI")?.as_str()?.to_string(),
                flags: dest
                    .get("FLAGS")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                priority: dest
                    .get("PRIORITY")
                    .and_then(Value::as_i64)
                    .unwrap_or_default(),
                attrs: dest
                    .get("ATTRS")
                    .and_then(|a| a.get("BODY"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dispatcher_list() {
        let v = json!({"NRSETS": 1, "RECORDS": [{"SET": {"ID": 1, "TARGETS": [
            {"DEST": {"URI": "sip:127.0.0.2:5080", "FLAGS": "AP", "PRIORITY": 0, "ATTRS": {"BODY": "rweight=1"}}},
            {"DEST": {"URI": "sip:127.0.0.3:5080", "FLAGS": "IP", "PRIORITY": 5}}
        ]}}]});
        let list = parse_dispatcher_list(&v).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].is_active() && list[0].is_probing());
        assert_eq!(list[0].attrs, "rweight=1");
        assert!(!list[1].is_active());
        assert_eq!(list[1].priority, 5);
        assert_eq!(
            parse_dispatcher_list(&json!({"NRSETS": 0})).unwrap(),
            vec![]
        );
    }

    #[test]
    fn parses_dialplan_answers() {
        let t = json!({"Output": "Premium Blocked", "Attributes": "id=1;t=reject;c=403"});
        assert_eq!(
            parse_translation(&t),
            Some(Translation {
                output: "Premium Blocked".into(),
                attrs: "id=1;t=reject;c=403".into()
            })
        );
        let dump = json!({"DPID": 2, "ENTRIES": [
            {"ENTRY": {"PRIO": 2, "MATCHOP": 0, "MATCHEXP": "5000", "MATCHLEN": 0, "SUBSTEXP": null, "REPLEXP": null, "ATTRS": "id=2;t=pool;s=2"}},
            {"ENTRY": {"PRIO": 1, "MATCHOP": 1, "MATCHEXP": "^\\+44", "MATCHLEN": 0, "SUBSTEXP": "^.*$", "REPLEXP": "sip:gw@x", "ATTRS": "id=4;t=uri"}}
        ]});
        let entries = parse_dialplan_dump(&dump).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].pr, 1);
        assert_eq!(entries[0].match_exp, "^\\+44");
        assert_eq!(entries[1].subst_exp, "");
        let no_rules = RpcError::Fault {
            method: "dialplan.translate".into(),
            code: 500,
            message: "Dialplan ID not matched".into(),
        };
        assert!(no_rules.is_no_translation());
    }

    #[test]
    fn parses_ul_dump() {
        // the shape Kamailio 5.6 answers
        let v = json!({"Domains": [{"Domain": {"Domain": "location", "Size": 1024, "AoRs": [{"Info": {
            "AoR": "alice@example.com", "HashID": 2920418261u64, "Contacts": [
                {"Contact": {"Address": "sip:alice@127.0.0.1:25999;transport=UDP", "Expires": 600, "Q": -1,
                    "Call-ID": "1-12801@127.0.0.1", "CSeq": 2, "User-Agent": "n/a", "Received": "[not set]",
                    "Path": "[not set]", "State": "CS_NEW", "Flags": 0, "CFlags": 0, "Socket": "udp:127.0.0.1:25060",
                    "Methods": 4294967295u64, "Ruid": "uloc-6b0843fc-305e-1", "Instance": "[not set]", "Reg-Id": 0,
                    "Server-Id": 0, "Tcpconn-Id": -1, "Keepalive": 0, "Last-Keepalive": 1795703842,
                    "KA-Roundtrip": 0, "Last-Modified": 1795703842}},
                {"Contact": {"Address": "sip:alice@192.168.1.5:5060", "Expires": "expired", "Q": 0.5,
                    "Call-ID": "x", "CSeq": 9, "User-Agent": "[not set]", "Received": "sip:203.0.113.7:40000",
                    "State": "CS_SYNC", "Socket": "[not set]", "Last-Modified": 1}}
            ]}}], "Stats": {"Records": 1, "Max-Slots": 1}}}]});
        let contacts = parse_ul_dump(&v).unwrap();
        assert_eq!(contacts.len(), 2);
        let c = &contacts[0];
        assert_eq!(c.aor, "alice@example.com");
        assert_eq!(c.expires, UlExpires::In(600));
        assert_eq!(c.q, None);
        assert_eq!(c.received, None);
        assert_eq!(c.user_agent.as_deref(), Some("n/a"));
        assert_eq!(c.socket.as_deref(), Some("udp:127.0.0.1:25060"));
        assert_eq!(c.methods, Some(4294967295));
        assert!(c.is_valid());
        let c = &contacts[1];
        assert_eq!(c.expires, UlExpires::Expired);
        assert!(!c.is_valid());
        assert_eq!(c.q, Some(0.5));
        assert_eq!(c.received.as_deref(), Some("sip:203.0.113.7:40000"));
        assert_eq!(c.user_agent, None);
        assert_eq!(
            parse_ul_dump(&json!({"Domains": [{"Domain": {"Domain": "location", "AoRs": []}}]}))
                .unwrap(),
            vec![]
        );
    }

    #[test]
    fn ongoing_reload_is_recognised() {
        let e = RpcError::Fault {
            method: "dispatcher.reload".into(),
            code: 500,
            message: "Ongoing reload".into(),
        };
        assert!(e.is_ongoing_reload());
    }
}
