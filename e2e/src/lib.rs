//! Support for the integration tests: SIPp runs, free ports, process cleanup.

pub mod bench;
pub mod pgha;
pub mod ports;
pub mod rawsip;
pub mod sipp;
pub mod testbed;
pub mod voicecall;

/// Whether FreeSWITCH is here for a test that needs it. In CI (`CI=true`) it must
/// be, and its absence fails the test; elsewhere the test reports itself skipped.
pub fn freeswitch_present(test: &str) -> bool {
    if sipstack_local::freeswitch::find_freeswitch().is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: FreeSWITCH is required in CI (scripts/install-deps.sh installs it from ../shared/freeswitch)");
    }
    eprintln!("{test}: skipped: FreeSWITCH not found (PATH or SIPSTACK_FREESWITCH)");
    false
}
