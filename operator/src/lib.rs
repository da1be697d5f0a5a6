//! The sipstack operator's core: pure functions from the custom resources
//! (SipEdge, MediaPool, PgCluster) to the Kubernetes objects that run them.
//! Nothing here talks to a cluster, so every builder is tested against golden files.

pub mod error;
pub mod manifests;
pub mod mediapool;
pub mod meta;
pub mod names;
pub mod object;
pub mod pgcluster;
pub mod pod;
pub mod secrets;
pub mod sipedge;
pub mod status;

#[cfg(test)]
mod testing;

pub use error::BuildError;
pub use object::Object;
