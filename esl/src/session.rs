//! A connection that is made when first needed and made again after it broke.

use std::time::Duration;

use tokio::sync::Mutex;

use crate::client::{EslClient, EslError};

/// Runs API commands on one FreeSWITCH, reconnecting when the connection broke
/// (a node restart, an idle connection the server closed). A command that failed
/// because the connection was gone is sent once more on a new one.
pub struct EslSession {
    addr: String,
    password: String,
    timeout: Duration,
    client: Mutex<Option<EslClient>>,
}

impl EslSession {
    pub fn new(addr: impl Into<String>, password: impl Into<String>, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            password: password.into(),
            timeout,
            client: Mutex::new(None),
        }
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    pub async fn api(&self, command: &str) -> Result<String, EslError> {
        let mut slot = self.client.lock().await;
        for attempt in 0..2 {
            if slot.as_ref().is_none_or(|c| c.is_closed()) {
                *slot = Some(EslClient::connect(&self.addr, &self.password, self.timeout).await?);
            }
            let Some(client) = slot.as_ref() else {
                continue;
            };
            match client.api(command).await {
                Err(EslError::Closed(_) | EslError::Io { .. }) if attempt == 0 => {
                    tracing::debug!(addr = %self.addr, "event socket connection broke; connecting again");
                    *slot = None;
                }
                other => return other,
            }
        }
        Err(EslError::Closed(self.addr.clone()))
    }
}
