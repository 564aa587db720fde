//! The periodic webhook check of a channel that receives by webhook: X stops
//! delivering to a webhook whose CRC failed once (an outage, a bad deploy)
//! until someone revalidates it, and nothing else would tell. Asking X with
//! the channel's bearer token turns that silence into the `webhook_invalid`
//! channel state, and back to `ok` once the webhook is valid again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use xbridge_core::channel_state::{ChannelState, ChannelStates};
use xbridge_x_api::{webhook_problem, WebhookClient};

/// Checks `channel`'s webhook now and then every `interval` until shutdown.
/// A failed check (network, bearer token refused) leaves the state as it is:
/// it says nothing about the webhook, and `xbridge check` diagnoses tokens.
pub async fn watch_webhook(
    channel: String,
    client: WebhookClient,
    states: Arc<ChannelStates>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            answer = client.list_webhooks() => match answer {
                Ok(webhooks) => apply(&states, &channel, webhook_problem(&webhooks)),
                Err(error) => tracing::warn!(
                    channel = %channel,
                    error = %error,
                    "cannot check the webhook with X; the channel state is unchanged"
                ),
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Records the outcome of one check. A webhook problem does not mask a state
/// that stops replies (credits, rate limit, credentials): those are what agents
/// must hear about first, and the next check reports the webhook once they clear.
/// Only this check clears `webhook_invalid`.
pub fn apply(states: &ChannelStates, channel: &str, problem: Option<String>) {
    let current = states.get(channel).map(|status| status.state);
    match problem {
        Some(detail) => {
            if matches!(
                current,
                Some(ChannelState::Ok | ChannelState::PollingPaused | ChannelState::WebhookInvalid)
            ) {
                if current != Some(ChannelState::WebhookInvalid) {
                    tracing::warn!(channel, detail = %detail, "X will not deliver to the webhook");
                }
                states.set(channel, ChannelState::WebhookInvalid, None, Some(detail));
            }
        }
        None => {
            if current == Some(ChannelState::WebhookInvalid) {
                states.set(channel, ChannelState::Ok, None, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(states: &ChannelStates) -> ChannelState {
        states.get("acme").unwrap().state
    }

    #[test]
    fn an_invalid_webhook_marks_an_ok_channel_and_a_valid_one_clears_it() {
        let states = ChannelStates::new(["acme"]);
        apply(
            &states,
            "acme",
            Some("X considers the webhook invalid".into()),
        );
        assert_eq!(state(&states), ChannelState::WebhookInvalid);
        assert_eq!(
            states.get("acme").unwrap().detail.as_deref(),
            Some("X considers the webhook invalid")
        );
        apply(&states, "acme", None);
        assert_eq!(state(&states), ChannelState::Ok);
    }

    #[test]
    fn a_state_that_stops_replies_is_not_masked() {
        for blocking in [
            ChannelState::CreditsExhausted,
            ChannelState::RateLimited,
            ChannelState::Unauthorized,
            ChannelState::MissingPermission,
        ] {
            let states = ChannelStates::new(["acme"]);
            states.set("acme", blocking, None, None);
            apply(&states, "acme", Some("no webhook".into()));
            assert_eq!(state(&states), blocking);
            apply(&states, "acme", None);
            assert_eq!(
                state(&states),
                blocking,
                "a valid webhook clears only webhook_invalid"
            );
        }
    }

    #[test]
    fn an_invalid_webhook_outranks_paused_polling() {
        let states = ChannelStates::new(["acme"]);
        states.set("acme", ChannelState::PollingPaused, None, None);
        apply(&states, "acme", Some("no webhook".into()));
        assert_eq!(state(&states), ChannelState::WebhookInvalid);
    }
}
