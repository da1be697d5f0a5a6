//! The sipstack operator: pure functions from the custom resources (SipEdge,
//! MediaPool, PgCluster) to the Kubernetes objects that run them, tested against
//! golden files, and the controllers ([`controller`]) that apply those objects to a
//! cluster.

pub mod controller;
pub mod error;
pub mod manifests;
pub mod mediapool;
pub mod meta;
pub mod names;
pub mod network_policy;
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
