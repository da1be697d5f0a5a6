//! The local driver: runs a declared platform as processes on one host.

pub mod postgres;
