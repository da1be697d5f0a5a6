//! A client for Patroni's REST API, the way sipctl and the local driver see a
//! PostgreSQL HA cluster: who is primary, who replicates with what lag, and a
//! switchover or failover with the checks `patronictl` makes first.
//!
//! Patroni 3.0 (Debian 12) and 4.x differ in names: 3.0 says `master` where 4.x
//! says `primary` (roles and `/patroni`), and the leader of `/cluster` is `leader`
//! in both. [`Role`] reads all of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum PatroniError {
    #[error("Patroni REST API at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("Patroni at {url} answered HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("Patroni at {url}: unexpected answer: {detail}")]
    Protocol { url: String, detail: String },
    #[error("{0}")]
    Refused(String),
}

/// A member's role, whatever the Patroni version calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The primary (Patroni: leader, master, primary).
    Leader,
    /// A replica the primary waits for in synchronous mode.
    SyncStandby,
    Replica,
    /// The leader of a standby cluster.
    StandbyLeader,
    Unknown,
}

impl Role {
    pub fn parse(text: &str) -> Role {
        match text {
            "leader" | "master" | "primary" => Role::Leader,
            "sync_standby" => Role::SyncStandby,
            "replica" | "standby" => Role::Replica,
            "standby_leader" => Role::StandbyLeader,
            _ => Role::Unknown,
        }
    }

    pub fn is_leader(self) -> bool {
        self == Role::Leader
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::SyncStandby => "sync standby",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby leader",
            Role::Unknown => "unknown",
        }
    }
}

/// One member as `/cluster` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub name: String,
    pub role: Role,
    /// running, streaming, stopped, starting, crashed, ...
    pub state: String,
    pub host: String,
    pub port: u16,
    pub api_url: Option<String>,
    pub timeline: Option<u64>,
    /// Replication lag in bytes (replicas); `None` for the leader or when unknown.
    pub lag_bytes: Option<u64>,
    pub nofailover: bool,
}

impl Member {
    /// Whether the member's PostgreSQL runs (Patroni 3.0 says running, 4.x streaming for replicas).
    pub fn is_running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "streaming")
    }
}

/// The cluster as one member's `/cluster` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub members: Vec<Member>,
    /// A switchover or failover Patroni has been asked for and not carried out yet.
    pub pending_switchover: bool,
}

impl Cluster {
    pub fn leader(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.role.is_leader())
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

#[derive(Deserialize)]
struct RawCluster {
    #[serde(default)]
    members: Vec<RawMember>,
    #[serde(default)]
    scheduled_switchover: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawMember {
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    api_url: Option<String>,
    #[serde(default)]
    timeline: Option<u64>,
    // a number of bytes, or "unknown"
    #[serde(default)]
    lag: Option<serde_json::Value>,
    #[serde(default)]
    tags: Option<serde_json::Value>,
}

/// What a switchover should do.
#[derive(Debug, Clone, Default)]
pub struct SwitchoverRequest {
    /// The member to promote; Patroni picks the healthiest replica when `None`.
    pub candidate: Option<String>,
}

/// A client for the REST APIs of a cluster's members. Any member answers for the
/// whole cluster; the client tries them in turn until one does.
#[derive(Debug, Clone)]
pub struct PatroniClient {
    urls: Vec<String>,
    http: reqwest::Client,
    /// Basic credentials for the endpoints that change something (switchover,
    /// failover): Patroni's `restapi.authentication`.
    auth: Option<(String, String)>,
}

/// The user name Patroni's REST API is given for its changing endpoints.
pub const REST_API_USER: &str = "sipstack";

impl PatroniClient {
    /// `urls`: each member's REST API base, e.g. `http://127.0.0.1:8008`.
    pub fn new(urls: Vec<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            // a proxy from the environment must not stand between us and the cluster
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let urls = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        Self {
            urls,
            http,
            auth: None,
        }
    }

    /// Sends `username`/`password` with the requests that change the cluster.
    pub fn with_auth(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some((username.into(), password.into()));
        self
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The cluster's members, from the first member that answers.
    pub async fn cluster(&self) -> Result<Cluster, PatroniError> {
        let (endpoint, body) = self.get_from_any("cluster").await?;
        let raw: RawCluster = serde_json::from_str(&body).map_err(|e| PatroniError::Protocol {
            url: endpoint,
            detail: e.to_string(),
        })?;
        Ok(Cluster {
            pending_switchover: raw.scheduled_switchover.is_some(),
            members: raw
                .members
                .into_iter()
                .map(|m| Member {
                    role: Role::parse(&m.role),
                    lag_bytes: m.lag.as_ref().and_then(|l| l.as_u64()),
                    nofailover: m
                        .tags
                        .as_ref()
                        .and_then(|t| t.get("nofailover"))
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                    name: m.name,
                    state: m.state,
                    host: m.host,
                    port: m.port,
                    api_url: m.api_url,
                    timeline: m.timeline,
                })
                .collect(),
        })
    }

    /// Whether synchronous mode is on, from the cluster's dynamic configuration.
    pub async fn synchronous_mode(&self) -> Result<bool, PatroniError> {
        let (endpoint, body) = self.get_from_any("config").await?;
        let config: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| PatroniError::Protocol {
                url: endpoint,
                detail: e.to_string(),
            })?;
        Ok(config
            .get("synchronous_mode")
            .and_then(|s| s.as_bool())
            .unwrap_or(false))
    }

    /// Waits until a running leader other than `not` is elected, polling every
    /// 250 ms for at most `limit`; returns the cluster as it was then.
    pub async fn wait_for_leader(
        &self,
        not: Option<&str>,
        limit: Duration,
    ) -> Result<Cluster, PatroniError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(c) = self.cluster().await {
                if c.leader()
                    .is_some_and(|l| l.is_running() && Some(l.name.as_str()) != not)
                {
                    return Ok(c);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PatroniError::Refused(format!(
                    "no running leader{} within {limit:?}",
                    not.map(|n| format!(" other than {n}")).unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `GET /PATH` from the first member that answers 2xx: its URL and body. Any
    /// member answers for the whole cluster.
    async fn get_from_any(&self, path: &str) -> Result<(String, String), PatroniError> {
        let mut last = None;
        for url in &self.urls {
            let endpoint = format!("{url}/{path}");
            let answer = match self.http.get(&endpoint).send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.text().await {
                        Ok(body) if status.is_success() => return Ok((endpoint, body)),
                        Ok(body) => PatroniError::Http {
                            url: endpoint,
                            status: status.as_u16(),
                            body,
                        },
                        Err(e) => unreachable(url, e),
                    }
                }
                Err(e) => unreachable(url, e),
            };
            last = Some(answer);
        }
        Err(last.unwrap_or_else(|| {
            PatroniError::Refused("no Patroni REST API address is known".into())
        }))
    }

    /// Checks a switchover the way `patronictl switchover` does before asking
    /// Patroni: there is a leader, the candidate is another running member that may
    /// be promoted (and the synchronous standby in synchronous mode), and some
    /// replica is healthy when no candidate is named.
    pub fn check_switchover(
        cluster: &Cluster,
        request: &SwitchoverRequest,
        synchronous: bool,
    ) -> Result<String, PatroniError> {
        let leader = cluster.leader().ok_or_else(|| {
            PatroniError::Refused(
                "the cluster has no leader; a switchover needs one (use a failover)".into(),
            )
        })?;
        if cluster.pending_switchover {
            return Err(PatroniError::Refused(
                "a switchover is already scheduled; wait for it or cancel it".into(),
            ));
        }
        match &request.candidate {
            Some(name) => {
                let Some(c) = cluster.member(name) else {
                    let names: Vec<&str> =
                        cluster.members.iter().map(|m| m.name.as_str()).collect();
                    return Err(PatroniError::Refused(format!(
                        "{name} is not a member of the cluster; members are {}",
                        names.join(", ")
                    )));
                };
                if c.role.is_leader() {
                    return Err(PatroniError::Refused(format!(
                        "{name} is already the leader; name a replica"
                    )));
                }
                if !c.is_running() {
                    return Err(PatroniError::Refused(format!(
                        "{name} is {}, not running; it cannot be promoted",
                        c.state
                    )));
                }
                if c.nofailover {
                    return Err(PatroniError::Refused(format!(
                        "{name} is tagged nofailover; it cannot be promoted"
                    )));
                }
                if synchronous && c.role != Role::SyncStandby {
                    return Err(PatroniError::Refused(format!(
                        "synchronous mode is on and {name} is not the synchronous standby; only {} can take over without losing a commit",
                        cluster
                            .members
                            .iter()
                            .filter(|m| m.role == Role::SyncStandby)
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            None => {
                let healthy = cluster
                    .members
                    .iter()
                    .any(|m| !m.role.is_leader() && m.is_running() && !m.nofailover);
                if !healthy {
                    return Err(PatroniError::Refused(
                        "no replica is running that could be promoted; a switchover would leave no primary".into(),
                    ));
                }
            }
        }
        Ok(leader.name.clone())
    }

    /// Asks for a switchover now, after [`Self::check_switchover`]. Returns Patroni's answer.
    pub async fn switchover(&self, request: &SwitchoverRequest) -> Result<String, PatroniError> {
        let cluster = self.cluster().await?;
        let synchronous = self.synchronous_mode().await.unwrap_or(false);
        let leader = Self::check_switchover(&cluster, request, synchronous)?;
        let mut body = json!({ "leader": leader });
        if let Some(c) = &request.candidate {
            body["candidate"] = json!(c);
        }
        self.post_to_leader(&cluster, "switchover", &body).await
    }

    /// Promotes `candidate` even when there is no healthy leader (`patronictl failover`).
    pub async fn failover(&self, candidate: &str) -> Result<String, PatroniError> {
        let cluster = self.cluster().await?;
        let Some(c) = cluster.member(candidate) else {
            return Err(PatroniError::Refused(format!(
                "{candidate} is not a member of the cluster"
            )));
        };
        if c.role.is_leader() {
            return Err(PatroniError::Refused(format!(
                "{candidate} is already the leader"
            )));
        }
        self.post_to_leader(&cluster, "failover", &json!({ "candidate": candidate }))
            .await
    }

    async fn post_to_leader(
        &self,
        cluster: &Cluster,
        action: &str,
        body: &serde_json::Value,
    ) -> Result<String, PatroniError> {
        // the leader's own API first (it carries the switchover out), then any other
        let mut urls: Vec<String> = cluster
            .leader()
            .and_then(|l| l.api_url.as_deref())
            .map(base_url)
            .into_iter()
            .collect();
        urls.extend(self.urls.iter().cloned());
        let mut last = None;
        for url in urls {
            let endpoint = format!("{url}/{action}");
            // a switchover waits for the new leader: give it longer than a status call
            let mut request = self
                .http
                .post(&endpoint)
                .timeout(Duration::from_secs(60))
                .json(body);
            if let Some((user, password)) = &self.auth {
                request = request.basic_auth(user, Some(password));
            }
            match request.send().await {
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(text.trim().to_string());
                    }
                    return Err(PatroniError::Http {
                        url: endpoint,
                        status: status.as_u16(),
                        body: text.trim().to_string(),
                    });
                }
                Err(e) => last = Some(unreachable(&url, e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            PatroniError::Refused("no Patroni REST API address is known".into())
        }))
    }
}

/// `http://host:port/patroni` → `http://host:port`.
fn base_url(api_url: &str) -> String {
    api_url
        .trim_end_matches('/')
        .trim_end_matches("/patroni")
        .to_string()
}

fn unreachable(url: &str, e: reqwest::Error) -> PatroniError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    PatroniError::Unreachable {
        url: url.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: Role, state: &str) -> Member {
        Member {
            name: name.into(),
            role,
            state: state.into(),
            host: "127.0.0.1".into(),
            port: 5432,
            api_url: None,
            timeline: Some(1),
            lag_bytes: Some(0),
            nofailover: false,
        }
    }

    fn cluster() -> Cluster {
        Cluster {
            members: vec![
                member("pg-0", Role::Leader, "running"),
                member("pg-1", Role::SyncStandby, "streaming"),
                member("pg-2", Role::Replica, "running"),
            ],
            pending_switchover: false,
        }
    }

    #[test]
    fn roles_of_both_patroni_generations() {
        assert_eq!(Role::parse("master"), Role::Leader);
        assert_eq!(Role::parse("primary"), Role::Leader);
        assert_eq!(Role::parse("leader"), Role::Leader);
        assert_eq!(Role::parse("sync_standby"), Role::SyncStandby);
        assert_eq!(Role::parse("replica"), Role::Replica);
        assert_eq!(Role::parse("what"), Role::Unknown);
    }

    #[test]
    fn switchover_checks() {
        let c = cluster();
        let req = |n: &str| SwitchoverRequest {
            candidate: Some(n.into()),
        };
        assert_eq!(
            PatroniClient::check_switchover(&c, &req("pg-1"), true).unwrap(),
            "pg-0"
        );
        assert_eq!(
            PatroniClient::check_switchover(&c, &req("pg-2"), false).unwrap(),
            "pg-0"
        );
        let err = PatroniClient::check_switchover(&c, &req("pg-2"), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not the synchronous standby") && err.contains("pg-1"),
            "{err}"
        );
        let err = PatroniClient::check_switchover(&c, &req("pg-0"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already the leader"), "{err}");
        let err = PatroniClient::check_switchover(&c, &req("pg-9"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("members are pg-0, pg-1, pg-2"), "{err}");

        let mut stopped = cluster();
        stopped.members[2].state = "stopped".into();
        let err = PatroniClient::check_switchover(&stopped, &req("pg-2"), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not running"), "{err}");

        let alone = Cluster {
            members: vec![member("pg-0", Role::Leader, "running")],
            pending_switchover: false,
        };
        let err = PatroniClient::check_switchover(&alone, &SwitchoverRequest::default(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no replica"), "{err}");

        let leaderless = Cluster {
            members: vec![member("pg-1", Role::Replica, "running")],
            pending_switchover: false,
        };
        assert!(
            PatroniClient::check_switchover(&leaderless, &SwitchoverRequest::default(), false)
                .is_err()
        );
    }

    #[test]
    fn api_urls_lose_their_path() {
        assert_eq!(
            base_url("http://127.0.0.1:8008/patroni"),
            "http://127.0.0.1:8008"
        );
    }
}
