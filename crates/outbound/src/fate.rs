//! The fate of a failed send: pure functions over the typed X error and the
//! reply's history, so every case is decided in one place and tested alone:
//! what becomes of the reply ([`decide`]) and what the failure says about the
//! channel ([`channel_state`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use xbridge_core::config::{CreditsSettings, RetrySettings};
use xbridge_core::contract::ChannelState;
use xbridge_core::contract::FailureReason;
use xbridge_x_api::XError;

/// What happens to a reply after a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Try again in place after a short backoff (transient failure, budget
    /// for in-place tries left).
    RetrySoon,
    /// Park the reply in a delay queue for this long and let go of the
    /// delivery, instead of holding it for minutes.
    Park(Duration),
    /// The channel hit its rate limit: wait for the window's reset and try
    /// again; never a reason to give up.
    WaitForRateLimit,
    /// The account is out of credits: hold the reply while the channel
    /// probes X, up to the credits wait bound.
    WaitForCredits,
    /// Give up: dead-letter with this reason and tell the CRM.
    DeadLetter(FailureReason),
}

/// What the decision needs to know about the reply so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Requests made to X for this reply, including the one that just failed.
    pub attempts: u32,
    /// Requests made for it during the current delivery.
    pub attempts_this_delivery: u32,
    /// How often it was parked in a delay queue before.
    pub times_parked: u32,
    /// How long it has waited since the bridge first took it.
    pub waited: Duration,
}

/// The bounds the decision applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Transient-failure budget.
    pub retry: RetrySettings,
    /// Credits wait bound.
    pub credits: CreditsSettings,
}

/// Whether a DM send that failed with `error` may still have created the DM on X, so
/// that before sending it again the bridge must look for it among the account's DM
/// events (a billed read that also spends one of the reply's attempts). Only what is
/// proof that X did nothing rules it out: an error status from X, or a connection that
/// never opened; no answer at all, or a 2xx the bridge could not read, may hide a DM.
pub fn send_may_have_gone_out(error: &XError) -> bool {
    match error {
        XError::NotConnected { .. } => false,
        _ => error
            .http_status()
            .is_none_or(|status| (200..300).contains(&status)),
    }
}

/// Decides what happens after `error`.
pub fn decide(error: &XError, history: &History, policy: &Policy) -> Fate {
    match error {
        // A connection to X that never opened counts against the same budget:
        // X may be down for a while.
        XError::Transient { .. } | XError::NotConnected { .. } => {
            if history.attempts >= policy.retry.max_attempts {
                Fate::DeadLetter(FailureReason::RetriesExhausted)
            } else if history.attempts_this_delivery < policy.retry.immediate_attempts {
                Fate::RetrySoon
            } else {
                let delays = &policy.retry.delays;
                let step = (history.times_parked as usize).min(delays.len().saturating_sub(1));
                delays
                    .get(step)
                    .map_or(Fate::DeadLetter(FailureReason::RetriesExhausted), |d| {
                        Fate::Park(*d)
                    })
            }
        }
        XError::RateLimited { .. } => Fate::WaitForRateLimit,
        XError::CreditsExhausted { .. } => {
            if history.waited >= policy.credits.max_wait {
                Fate::DeadLetter(FailureReason::CreditsExhausted)
            } else {
                Fate::WaitForCredits
            }
        }
        XError::Unauthorized { .. } => Fate::DeadLetter(FailureReason::Unauthorized),
        XError::MissingDmPermission { .. } => Fate::DeadLetter(FailureReason::MissingPermission),
        XError::NotEnrolled { .. } => Fate::DeadLetter(FailureReason::NotEnrolled),
        XError::RecipientRefuses { .. } => Fate::DeadLetter(FailureReason::RecipientRefuses),
        // X refused the media itself: sending it again fails the same way.
        XError::InvalidRequest { .. } | XError::MediaProcessingFailed { .. } => {
            Fate::DeadLetter(FailureReason::InvalidRequest)
        }
    }
}

/// What a failed send says about its channel, for the CRM and operators: the
/// state to show and until when it lasts, if known; `None` when the failure
/// is the reply's own (or passing, like a 5xx), so the state stays as it was.
pub fn channel_state(error: &XError) -> Option<(ChannelState, Option<DateTime<Utc>>)> {
    match error {
        XError::CreditsExhausted { .. } => Some((ChannelState::CreditsExhausted, None)),
        XError::RateLimited { reset_at, .. } => Some((ChannelState::RateLimited, *reset_at)),
        XError::Unauthorized { .. } => Some((ChannelState::Unauthorized, None)),
        XError::MissingDmPermission { .. } => Some((ChannelState::MissingPermission, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xbridge_x_api::classify_send_error;

    /// An X error built from a recorded body, the way the client sees it.
    fn from_fixture(status: u16, file: &str) -> XError {
        let path = format!(
            "{}/../../tests/fixtures/x-api/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        classify_send_error(status, &Default::default(), &body)
    }

    fn policy() -> Policy {
        Policy {
            retry: RetrySettings {
                immediate_attempts: 3,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(10),
                delays: vec![Duration::from_secs(10), Duration::from_secs(60)],
                max_attempts: 8,
            },
            credits: CreditsSettings {
                max_wait: Duration::from_secs(900),
                probe_initial: Duration::from_secs(30),
                probe_max: Duration::from_secs(300),
            },
        }
    }

    fn history(attempts: u32, this_delivery: u32, parked: u32, waited_secs: u64) -> History {
        History {
            attempts,
            attempts_this_delivery: this_delivery,
            times_parked: parked,
            waited: Duration::from_secs(waited_secs),
        }
    }

    fn transient() -> XError {
        XError::Transient {
            status: Some(503),
            detail: "Service Unavailable".into(),
        }
    }

    #[test]
    fn transient_failures_retry_in_place_first() {
        assert_eq!(
            decide(&transient(), &history(1, 1, 0, 0), &policy()),
            Fate::RetrySoon
        );
        assert_eq!(
            decide(&transient(), &history(2, 2, 0, 0), &policy()),
            Fate::RetrySoon
        );
    }

    #[test]
    fn then_they_park_in_growing_delays_whose_last_step_repeats() {
        let p = policy();
        assert_eq!(
            decide(&transient(), &history(3, 3, 0, 0), &p),
            Fate::Park(Duration::from_secs(10))
        );
        assert_eq!(
            decide(&transient(), &history(6, 3, 1, 0), &p),
            Fate::Park(Duration::from_secs(60))
        );
        assert_eq!(
            decide(&transient(), &history(7, 1, 5, 0), &p),
            Fate::RetrySoon
        );
        let mut p = p;
        p.retry.max_attempts = 100;
        assert_eq!(
            decide(&transient(), &history(30, 3, 9, 0), &p),
            Fate::Park(Duration::from_secs(60))
        );
    }

    #[test]
    fn then_they_run_out_of_retries() {
        assert_eq!(
            decide(&transient(), &history(8, 2, 2, 0), &policy()),
            Fate::DeadLetter(FailureReason::RetriesExhausted)
        );
    }

    #[test]
    fn timeouts_and_connection_errors_are_transient_too() {
        let timeout = XError::Transient {
            status: None,
            detail: "timed out".into(),
        };
        assert_eq!(
            decide(&timeout, &history(1, 1, 0, 0), &policy()),
            Fate::RetrySoon
        );
    }

    #[test]
    fn a_connection_that_never_opened_is_retried_like_a_transient_failure() {
        let refused = XError::NotConnected {
            detail: "connection refused".into(),
        };
        assert_eq!(
            decide(&refused, &history(1, 1, 0, 0), &policy()),
            Fate::RetrySoon
        );
        assert_eq!(
            decide(&refused, &history(8, 2, 2, 0), &policy()),
            Fate::DeadLetter(FailureReason::RetriesExhausted)
        );
    }

    #[test]
    fn only_proof_that_x_did_nothing_rules_out_an_earlier_send() {
        let refused = XError::NotConnected {
            detail: "connection refused".into(),
        };
        assert!(!send_may_have_gone_out(&refused));
        assert!(!send_may_have_gone_out(&from_fixture(
            403,
            "error_403_forbidden.json"
        )));
        assert!(!send_may_have_gone_out(&from_fixture(
            429,
            "error_429_rate_limited.json"
        )));
        assert!(!send_may_have_gone_out(&transient()), "X answered 503");
        let timeout = XError::Transient {
            status: None,
            detail: "no answer from X within 10s".into(),
        };
        assert!(send_may_have_gone_out(&timeout));
        let unreadable = XError::Transient {
            status: Some(201),
            detail: "X answered 201 with an unexpected body".into(),
        };
        assert!(send_may_have_gone_out(&unreadable));
    }

    #[test]
    fn rate_limits_wait_and_never_dead_letter() {
        let error = from_fixture(429, "error_429_rate_limited.json");
        assert!(matches!(error, XError::RateLimited { .. }));
        assert_eq!(
            decide(&error, &history(50, 50, 50, 100_000), &policy()),
            Fate::WaitForRateLimit
        );
    }

    #[test]
    fn every_credits_body_waits_then_dead_letters_after_the_bound() {
        let errors = [
            from_fixture(402, "error_402_credits_depleted.json"),
            from_fixture(402, "error_402_payment_required.json"),
            // The usage cap comes as a 429 but is a billing problem, not a rate limit.
            from_fixture(429, "error_429_usage_capped.json"),
            classify_send_error(
                403,
                &Default::default(),
                br#"{"title":"SpendCapReached","detail":"Your monthly spend cap has been reached.","reset_date":"2026-12-01","type":"about:blank","status":403}"#,
            ),
        ];
        for error in errors {
            assert_eq!(
                decide(&error, &history(1, 1, 0, 899), &policy()),
                Fate::WaitForCredits,
                "{error}"
            );
            assert_eq!(
                decide(&error, &history(9, 9, 0, 900), &policy()),
                Fate::DeadLetter(FailureReason::CreditsExhausted),
                "{error}"
            );
        }
    }

    #[test]
    fn permanent_errors_dead_letter_at_once_with_their_own_reason() {
        let cases = [
            (
                401,
                "error_401_unauthorized.json",
                FailureReason::Unauthorized,
            ),
            (
                403,
                "error_403_oauth1_permissions.json",
                FailureReason::MissingPermission,
            ),
            (
                403,
                "error_403_client_not_enrolled.json",
                FailureReason::NotEnrolled,
            ),
            (
                403,
                "error_403_forbidden.json",
                FailureReason::RecipientRefuses,
            ),
            (
                400,
                "error_400_invalid_request.json",
                FailureReason::InvalidRequest,
            ),
        ];
        for (status, file, reason) in cases {
            let error = from_fixture(status, file);
            assert_eq!(
                decide(&error, &history(1, 1, 0, 0), &policy()),
                Fate::DeadLetter(reason),
                "{file}"
            );
        }
    }

    #[test]
    fn a_failure_shows_on_its_channel_only_when_it_is_the_channel_s() {
        let rate_limited = from_fixture(429, "error_429_rate_limited.json");
        let XError::RateLimited { reset_at, .. } = &rate_limited else {
            panic!("{rate_limited:?}");
        };
        assert_eq!(
            channel_state(&rate_limited),
            Some((ChannelState::RateLimited, *reset_at))
        );
        let cases = [
            (
                402,
                "error_402_credits_depleted.json",
                Some(ChannelState::CreditsExhausted),
            ),
            (
                401,
                "error_401_unauthorized.json",
                Some(ChannelState::Unauthorized),
            ),
            (
                403,
                "error_403_oauth1_permissions.json",
                Some(ChannelState::MissingPermission),
            ),
            (403, "error_403_forbidden.json", None),
            (400, "error_400_invalid_request.json", None),
        ];
        for (status, file, state) in cases {
            let shown = channel_state(&from_fixture(status, file));
            assert_eq!(shown.map(|(state, _)| state), state, "{file}");
        }
        assert_eq!(channel_state(&transient()), None);
    }
}
