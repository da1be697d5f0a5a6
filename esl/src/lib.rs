//! A client for FreeSWITCH's event socket (mod_event_socket, inbound mode): it
//! authenticates, runs `api` and `bgapi` commands, subscribes to events in plain
//! or JSON form, and frames multi-line bodies by their Content-Length.
//!
//! * [`EslClient`]: one authenticated connection; calls from many tasks at once,
//!   each matched to its own reply, events in a bounded queue.
//! * [`EslSession`]: connects lazily, again after the connection broke, and
//!   subscribes the new connection to the events asked for before.
//! * [`frame`]: the framing on its own ([`parse_message`]), [`Event`] the
//!   decoding of event bodies.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sipstack_esl::EslError> {
//! use std::time::Duration;
//! use sipstack_esl::{EslClient, EventFormat};
//!
//! let esl = EslClient::connect("127.0.0.1:8021", "ClueCon", Duration::from_secs(5)).await?;
//! println!("{}", esl.api("status").await?);
//! esl.subscribe(EventFormat::Json, &["BACKGROUND_JOB"]).await?;
//! let job = esl.bgapi("show calls count").await?;
//! while let Some(event) = esl.next_event().await {
//!     if event.job_uuid() == Some(job.as_str()) {
//!         println!("{}", event.body().unwrap_or_default());
//!         break;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod event;
pub mod frame;
mod session;

pub use client::{EslClient, EslOptions, DEFAULT_EVENT_CAPACITY, DEFAULT_TIMEOUT};
pub use error::EslError;
pub use event::{url_decode, Event, EventFormat};
pub use frame::{parse_message, Message};
pub use session::{EslSession, DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF};
