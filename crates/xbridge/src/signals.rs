//! Turns SIGTERM and SIGINT into a cancellation, so every part of the bridge
//! stops taking work and drains instead of dying mid-send; catches SIGHUP for
//! the configuration reload ([`crate::reload`]).

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        token.cancel();
    });
}

/// Starts catching SIGHUP, whose default action ends the process. Called
/// before the bridge is built, so an operator's `kill -HUP` during a slow
/// start is a reload once the bridge runs rather than a crash.
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}
