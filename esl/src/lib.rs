//! A client for FreeSWITCH's event socket (mod_event_socket, inbound mode): it
//! authenticates, runs `api` and `bgapi` commands, subscribes to events in plain or
//! JSON form, and frames multi-line bodies by their Content-Length.
//!
//! [`EslClient`] is one connection; [`EslSession`] connects lazily and again after
//! the connection broke, for callers that poll a node now and then.

mod client;
pub mod frame;
mod session;

pub use client::{EslClient, EslError, EventFormat};
pub use frame::Event;
pub use session::EslSession;
