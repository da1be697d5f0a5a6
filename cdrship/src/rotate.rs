//! Telling Kamailio to reopen its spool files: [`Rotator`], and [`RpcRotator`],
//! the edge's `flatstore.k_rotate` RPC.

use std::future::Future;

use sipstack_edgerpc::EdgeRpc;

use crate::RotateError;

/// The RPC that makes every Kamailio process close its spool file and open it
/// again (by name, so afresh once the shipper renamed it) at its next write.
pub const ROTATE_METHOD: &str = "flatstore.k_rotate";

/// Makes the writers of the spool reopen their files.
pub trait Rotator {
    /// Returns once every later write goes to a newly opened file.
    fn rotate(&mut self) -> impl Future<Output = Result<(), RotateError>> + Send;
}

/// Rotates through the edge's JSON-RPC endpoint.
#[derive(Debug, Clone)]
pub struct RpcRotator {
    rpc: Option<EdgeRpc>,
}

impl RpcRotator {
    pub fn new(rpc: EdgeRpc) -> Self {
        Self { rpc: Some(rpc) }
    }

    /// For a shipper of a stopped Kamailio, which never rotates: every call fails.
    pub fn none() -> Self {
        Self { rpc: None }
    }
}

impl Rotator for RpcRotator {
    async fn rotate(&mut self) -> Result<(), RotateError> {
        match &self.rpc {
            Some(rpc) => rpc
                .call(ROTATE_METHOD, &[])
                .await
                .map(|_| ())
                .map_err(Into::into),
            None => Err(RotateError::Other(
                "no edge RPC endpoint is configured".into(),
            )),
        }
    }
}
