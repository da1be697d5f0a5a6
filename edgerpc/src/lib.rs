//! A client for a SipEdge's control-plane endpoint: Kamailio's JSON-RPC over HTTP
//! (`jsonrpcs` + `xhttp`, `POST /RPC`).
//!
//! Kamailio rate-limits `dispatcher.reload` and `dialplan.reload` (module parameter
//! `reload_delta`, 5 s by default) and answers "Ongoing reload" inside that window.
//! [`EdgeRpc::reload`] waits the window out, so a caller's change is never lost to it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

/// How long Kamailio refuses a second reload after one (its default `reload_delta`).
pub const RELOAD_DELTA: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("edge RPC at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("edge RPC at {url} answered HTTP {status}: {body}")]
    Http { url: String, status: u16, body: String },
    #[error("edge RPC {method} failed: {code} {message}")]
    Fault { method: String, code: i64, message: String },
    #[error("edge RPC {method}: unexpected answer: {detail}")]
    Protocol { method: String, detail: String },
}

impl RpcError {
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
    /// `dialplan.reload`: the routing rules.
    Routes,
}

impl Reload {
    pub fn method(self) -> &'static str {
        match self {
            Reload::Dispatcher => "dispatcher.reload",
            Reload::Routes => "dialplan.reload",
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

/// A client for one edge.
#[derive(Debug, Clone)]
pub struct EdgeRpc {
    url: String,
    http: reqwest::Client,
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
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { url: url.into(), http }
    }

    /// The endpoint of an edge whose RPC socket is `address:port`.
    pub fn for_socket(address: &str, port: u16) -> Self {
        let host = if address.contains(':') { format!("[{address}]") } else { address.to_string() };
        Self::new(format!("http://{host}:{port}/RPC"))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls `method` with positional `params` and returns its `result`.
    pub async fn call(&self, method: &str, params: &[Value]) -> Result<Value, RpcError> {
        let body = if params.is_empty() {
            json!({"jsonrpc": "2.0", "method": method, "id": 1})
        } else {
            json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
        };
        let response = self
            .http
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| RpcError::Unreachable { url: self.url.clone(), message: e.to_string() })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| RpcError::Unreachable { url: self.url.clone(), message: e.to_string() })?;
        // Kamailio answers a fault with its code as the HTTP status and a JSON-RPC error body.
        let answer: Option<Answer> = serde_json::from_str(&text).ok();
        if let Some(Answer { error: Some(f), .. }) = answer {
            return Err(RpcError::Fault { method: method.into(), code: f.code, message: f.message });
        }
        if !status.is_success() {
            return Err(RpcError::Http { url: self.url.clone(), status: status.as_u16(), body: text.trim().to_string() });
        }
        let answer = answer.ok_or_else(|| RpcError::Protocol { method: method.into(), detail: text.trim().to_string() })?;
        Ok(answer.result.unwrap_or(Value::Null))
    }

    /// Reloads a table, waiting out Kamailio's reload rate limit (at most `patience`).
    pub async fn reload(&self, what: Reload, patience: Duration) -> Result<(), RpcError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.call(what.method(), &[]).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_ongoing_reload() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(method = what.method(), "reload refused inside reload_delta; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Kamailio's version string; a cheap liveness check.
    pub async fn version(&self) -> Result<String, RpcError> {
        let v = self.call("core.version", &[]).await?;
        Ok(v.as_str().map(|s| s.trim().to_string()).unwrap_or_else(|| v.to_string()))
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
    pub async fn dispatcher_set_state(&self, state: &str, set_id: i64, uri: &str) -> Result<(), RpcError> {
        self.call("dispatcher.set_state", &[json!(state), json!(set_id), json!(uri)]).await.map(|_| ())
    }
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
        for target in set.get("TARGETS").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let dest = target.get("DEST")?;
            out.push(LiveDestination {
                set_id,
                uri: dest.get("URI")?.as_str()?.to_string(),
                flags: dest.get("FLAGS").and_then(Value::as_str).unwrap_or_default().to_string(),
                priority: dest.get("PRIORITY").and_then(Value::as_i64).unwrap_or_default(),
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
        assert_eq!(parse_dispatcher_list(&json!({"NRSETS": 0})).unwrap(), vec![]);
    }

    #[test]
    fn ongoing_reload_is_recognised() {
        let e = RpcError::Fault { method: "dispatcher.reload".into(), code: 500, message: "Ongoing reload".into() };
        assert!(e.is_ongoing_reload());
    }
}
