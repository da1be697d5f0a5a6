//! Support for the integration tests: SIPp runs, free ports, process cleanup.

pub mod bench;
pub mod pgha;
pub mod rawsip;
pub mod sipp;
pub mod testbed;
pub mod voicecall;
