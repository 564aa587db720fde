//! Named points where a test can freeze the process, to kill it there.
//!
//! Only active when built with the `failpoints` feature and configured by the
//! `FAILPOINTS` environment variable (`FAILPOINTS=after_send_recorded=return`).
//! A triggered point logs `failpoint reached` with its name and then never
//! returns, so a test can wait for that line and send SIGKILL: the process
//! dies exactly between two steps, as a crash would.

/// After a DM was sent and recorded in the state store, before the CRM is
/// told and the delivery acknowledged.
pub const AFTER_SEND_RECORDED: &str = "after_send_recorded";

/// After X accepted a DM, before the bridge recorded it: the window an
/// unrecorded send is looked up on X for.
pub const BEFORE_SEND_RECORDED: &str = "before_send_recorded";

/// After one DM of a reply sent in parts was recorded, before the next part.
pub const BETWEEN_PARTS: &str = "between_parts";

/// Stops here forever if the failpoint `name` is armed.
pub async fn freeze_if_armed(name: &'static str) {
    if is_armed(name) {
        tracing::warn!(failpoint = name, "failpoint reached");
        std::future::pending::<()>().await;
    }
}

fn is_armed(name: &str) -> bool {
    // Without the feature the macro expands to nothing.
    let _ = name;
    fail::fail_point!(name, |_| true);
    false
}

/// Reads `FAILPOINTS` once at startup (a no-op without the feature).
pub fn setup() {
    if cfg!(feature = "failpoints") {
        let scenario = fail::FailScenario::setup();
        // Keep the configuration for the life of the process.
        std::mem::forget(scenario);
    }
}
