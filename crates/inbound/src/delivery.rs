//! The fate of one customer DM, the same whichever path found it (webhook or
//! poll): skipped if it already reached the CRM, dropped if it is the echo of
//! the bridge's own reply, published as `message.echo` (when wanted) if the
//! company sent it from X's own app, else completed with the sender's profile
//! and published as `message.received`; recorded as delivered only after the
//! publish is confirmed.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use xbridge_store::{StateStore, StoreError};

use crate::media::MediaLinks;
use crate::profiles::Profiles;
use crate::sink::{EventSink, OutboundEvent, SinkError};
use crate::{classify, DirectMessage, MessageEcho, MessageOrigin, ReceivedMessage, ReceivedVia};

/// How long a DM of the account's own, not (yet) known as one of the bridge's
/// sends, is looked up again before it is published as `message.echo`.
const OWN_SEND_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What delivering a DM needs to know and reach.
pub(crate) struct Delivery<'a> {
    pub channel: &'a str,
    pub own_user_id: &'a str,
    pub store: &'a dyn StateStore,
    pub sink: &'a dyn EventSink,
    pub profiles: Option<&'a Profiles>,
    pub publish_echoes: bool,
    /// Signs the attachments' media URLs; without it they go out with `url: null`.
    pub media: Option<&'a MediaLinks>,
    /// The events being delivered right now, shared by the webhook and the pollers.
    pub in_flight: &'a InFlightDeliveries,
}

/// The (channel, event id) pairs being delivered right now in this process, so
/// two concurrent deliveries of one event (X's retry racing the original, or
/// the webhook racing a poll) cannot both pass the "already delivered" check
/// and publish twice: the second waits, then finds it delivered.
#[derive(Default)]
pub struct InFlightDeliveries {
    keys: Mutex<HashSet<String>>,
    released: Notify,
}

/// Holds one (channel, event id); releasing it wakes the waiters.
struct InFlightGuard<'a> {
    in_flight: &'a InFlightDeliveries,
    key: String,
}

impl InFlightDeliveries {
    fn keys(&self) -> MutexGuard<'_, HashSet<String>> {
        // Nothing panics while holding the lock; recover rather than propagate.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn acquire(&self, channel: &str, event_id: &str) -> InFlightGuard<'_> {
        let key = format!("{channel}\0{event_id}");
        loop {
            // Register for the wake-up before checking, so a release in between is
            // not missed.
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            let taken = self.keys().insert(key.clone());
            if taken {
                return InFlightGuard {
                    in_flight: self,
                    key,
                };
            }
            released.await;
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.in_flight.keys().remove(&self.key);
        self.in_flight.released.notify_waiters();
    }
}

/// Why a DM was not delivered; the caller retries (X redelivers, the poller
/// keeps its cursor).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliverError {
    #[error("publish failed: {0}")]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Delivery<'_> {
    /// Whether the account's DM `event_id`, delivered by the webhook, is one
    /// the bridge sent. X delivers the echo of a reply as soon as it creates
    /// the DM, which can be before
    /// the bridge (this process or another replica) has recorded X's answer:
    /// an unknown DM of the account is looked up again for a short while
    /// before it is taken for one sent outside the bridge.
    async fn is_own_send(&self, channel: &str, event_id: &str) -> Result<bool, StoreError> {
        let mut pause = std::time::Duration::from_millis(20);
        let deadline = tokio::time::Instant::now() + OWN_SEND_GRACE;
        loop {
            if self.store.is_own_send(channel, event_id).await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// Delivers `dm`; `true` when an event was published.
    pub(crate) async fn deliver(&self, mut dm: DirectMessage) -> Result<bool, DeliverError> {
        let channel = self.channel;
        let event_id = dm.event_id.clone();
        let _in_flight = self.in_flight.acquire(channel, &event_id).await;
        if self.store.is_delivered(channel, &event_id).await? {
            tracing::debug!(channel, event_id, "DM already delivered; skipped");
            return Ok(false);
        }
        // A webhook delivers the echo of a reply at once; a poll comes later.
        let own_send = dm.sender.id == self.own_user_id
            && match dm.received_via {
                ReceivedVia::Webhook => self.is_own_send(channel, &event_id).await?,
                ReceivedVia::Poll => self.store.is_own_send(channel, &event_id).await?,
            };
        let via = match dm.received_via {
            ReceivedVia::Webhook => "webhook",
            ReceivedVia::Poll => "poll",
        };
        if let Some(media) = self.media {
            media.complete(channel, &mut dm);
        }
        let event = match classify(&dm, self.own_user_id, &|_| own_send) {
            MessageOrigin::OwnSendEcho => {
                tracing::debug!(channel, event_id, "echo of the bridge's own reply; dropped");
                return Ok(false);
            }
            MessageOrigin::CompanyEcho if !self.publish_echoes => {
                tracing::debug!(channel, event_id, "company echo; echoes are off, dropped");
                return Ok(false);
            }
            MessageOrigin::CompanyEcho => OutboundEvent::echo(&MessageEcho::new(channel, dm)),
            MessageOrigin::Received => {
                if let Some(profiles) = self.profiles {
                    profiles.complete(&mut dm.sender).await;
                }
                OutboundEvent::received(&ReceivedMessage::new(channel, dm))
            }
        };
        self.sink.publish(&event).await?;
        self.store
            .record_delivered(channel, std::slice::from_ref(&event_id))
            .await?;
        tracing::info!(
            channel,
            event_id,
            via,
            event_type = event.event_type,
            "DM published"
        );
        metrics::counter!(
            "xbridge_dms_received_total",
            "channel" => channel.to_owned(),
            "via" => via,
            "type" => event.event_type
        )
        .increment(1);
        Ok(true)
    }

    /// Publishes a typing or read `event` once, like a DM: X gives these no id, so
    /// their stable AMQP `message_id` (built from who and when) is the key of the
    /// in-flight guard and of the delivered record. `true` when it was published.
    pub(crate) async fn deliver_activity(
        &self,
        event: &OutboundEvent,
    ) -> Result<bool, DeliverError> {
        let channel = self.channel;
        let key = event.message_id.as_str();
        let _in_flight = self.in_flight.acquire(channel, key).await;
        if self.store.is_delivered(channel, key).await? {
            tracing::debug!(
                channel,
                message_id = key,
                "activity event already delivered; skipped"
            );
            return Ok(false);
        }
        self.sink.publish(event).await?;
        self.store
            .record_delivered(channel, &[key.to_owned()])
            .await?;
        tracing::debug!(channel, message_id = key, "activity event published");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_delivery_of_the_same_event_waits_for_the_first() {
        let in_flight = std::sync::Arc::new(InFlightDeliveries::default());
        let first = in_flight.acquire("acme", "1").await;
        // Another event, or the same event on another channel, does not wait.
        drop(in_flight.acquire("acme", "2").await);
        drop(in_flight.acquire("other", "1").await);

        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let _second = in_flight.acquire("acme", "1").await;
                let _ = tx.send(());
            })
        };
        // Still held: the waiter cannot have got it.
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err());
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter gets the event once released")
            .unwrap();
        assert!(in_flight.keys().is_empty());
    }
}
