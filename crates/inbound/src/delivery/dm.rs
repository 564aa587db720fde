//! The fate of one customer DM, the same whichever path found it (webhook or
//! poll): skipped if it already reached the CRM, dropped if it is the echo of
//! the bridge's own reply, published as `message.echo` (when wanted) if the
//! company sent it from X's own app, else completed with the sender's profile
//! and published as `message.received`; recorded as delivered only after the
//! publish is confirmed.
//!
//! The deliveries in flight, and what the store could not take yet, are
//! [`InFlightDeliveries`]'s ([`super::in_flight`]).

use xbridge_core::contract::{
    DirectMessage, EventToCrm, MessageEcho, ReceivedMessage, ReceivedVia,
};
use xbridge_store::{StateStore, StoreError};
use xbridge_x_api::UserId;

use crate::delivery::echo::{classify, MessageOrigin};
use crate::delivery::in_flight::InFlightDeliveries;
use crate::delivery::profiles::Profiles;
use crate::delivery::sink::{EventSink, SinkError};
use crate::media::links::MediaLinks;

/// How long a DM of the account's own, not (yet) known as one of the bridge's
/// sends, is looked up again before it is published as `message.echo`.
const OWN_SEND_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What delivering a DM needs to know and reach.
pub(crate) struct Delivery<'a> {
    pub channel: &'a str,
    /// The channel's account: a DM it sent is an echo, never a customer's.
    pub own_user_id: &'a UserId,
    pub store: &'a dyn StateStore,
    pub sink: &'a dyn EventSink,
    pub profiles: Option<&'a Profiles>,
    pub publish_echoes: bool,
    /// Signs the attachments' media URLs; without it they go out with `url: null`.
    pub media: Option<&'a MediaLinks>,
    /// The events being delivered right now, shared by the webhook and the pollers.
    pub in_flight: &'a InFlightDeliveries,
}

/// Why a DM was not delivered; the caller retries (X redelivers, the poller
/// keeps its cursor). The one failure type of both paths: the webhook adds only
/// the case of its own (a body whose account is not known yet).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error("publish failed: {0}")]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Delivery<'_> {
    /// Whether the account's DM `event_id` is one the bridge sent. X delivers
    /// the echo of a reply by webhook as soon as it creates the DM, and a poll
    /// can list it as soon, which can be before
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
    pub(crate) async fn deliver(&self, mut dm: DirectMessage) -> Result<bool, DeliveryError> {
        let channel = self.channel;
        let event_id = dm.event_id.clone();
        let _in_flight = self.in_flight.acquire(channel, event_id.as_str()).await;
        if self.already_delivered(event_id.as_str()).await? {
            tracing::debug!(channel, %event_id, "DM already delivered; skipped");
            return Ok(false);
        }
        let own_send = self.is_own_reply(&dm).await?;
        let via = match dm.received_via {
            ReceivedVia::Webhook => "webhook",
            ReceivedVia::Poll => "poll",
        };
        if let Some(media) = self.media {
            media.complete(channel, &mut dm);
        }
        let Some(event) = self.event_for(dm, own_send).await else {
            return Ok(false);
        };
        self.sink.publish(&event).await?;
        self.record_delivered(event_id.as_str()).await;
        tracing::info!(
            channel,
            %event_id,
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

    /// Whether `dm`, if the account sent it, is the echo of the bridge's own reply,
    /// looked up for a short while however it came (see [`Self::is_own_send`]). While the store cannot write, an unknown DM of the account is not
    /// delivered yet: the record of the reply it echoes may be waiting for the store.
    async fn is_own_reply(&self, dm: &DirectMessage) -> Result<bool, DeliveryError> {
        if dm.sender.id != *self.own_user_id {
            return Ok(false);
        }
        // A poll can come as soon as a webhook: with replies streaming, X lists
        // the DM of a reply before the bridge has recorded X's answer to it.
        let own_send = self.is_own_send(self.channel, dm.event_id.as_str()).await?;
        if !own_send && !self.store.health().is_writable() {
            return Err(StoreError::Unavailable(
                "the store cannot write, so it cannot tell yet whether this DM is the bridge's own reply".into(),
            )
            .into());
        }
        Ok(own_send)
    }

    /// The event `dm` becomes, or `None` when it is dropped: the echo of the bridge's own
    /// reply never goes to the CRM, a company echo only when echoes are on, and a
    /// customer's DM goes with the sender's profile completed.
    async fn event_for(&self, mut dm: DirectMessage, own_send: bool) -> Option<EventToCrm> {
        let channel = self.channel;
        let event_id = dm.event_id.as_str();
        match classify(&dm, self.own_user_id, &|_| own_send) {
            MessageOrigin::OwnSendEcho => {
                tracing::debug!(channel, event_id, "echo of the bridge's own reply; dropped");
                None
            }
            MessageOrigin::CompanyEcho if !self.publish_echoes => {
                tracing::debug!(channel, event_id, "company echo; echoes are off, dropped");
                None
            }
            MessageOrigin::CompanyEcho => Some(EventToCrm::echo(&MessageEcho::new(channel, dm))),
            MessageOrigin::Received => {
                if let Some(profiles) = self.profiles {
                    profiles.complete(&mut dm.sender).await;
                }
                Some(EventToCrm::received(&ReceivedMessage::new(channel, dm)))
            }
        }
    }

    /// Publishes a typing or read `event` once, like a DM: X gives these no id, so
    /// their stable AMQP `message_id` (built from who and when) is the key of the
    /// in-flight guard and of the delivered record. `true` when it was published.
    pub(crate) async fn deliver_activity(&self, event: &EventToCrm) -> Result<bool, DeliveryError> {
        let channel = self.channel;
        let key = event.message_id.as_str();
        let _in_flight = self.in_flight.acquire(channel, key).await;
        if self.already_delivered(key).await? {
            tracing::debug!(
                channel,
                message_id = key,
                "activity event already delivered; skipped"
            );
            return Ok(false);
        }
        self.sink.publish(event).await?;
        self.record_delivered(key).await;
        tracing::debug!(channel, message_id = key, "activity event published");
        Ok(true)
    }

    /// Whether the event `key` reached the CRM: recorded in the store, or
    /// published and still waiting in memory for its record.
    async fn already_delivered(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.in_flight.pending().is_delivered(self.channel, key)
            || self.store.is_delivered(self.channel, key).await?)
    }

    /// Records the published event `key` as delivered. A failed record is no
    /// reason to have the event sent again (it would be published again): it
    /// stays known as delivered in memory until the store can write.
    async fn record_delivered(&self, key: &str) {
        let channel = self.channel;
        let Err(error) = self
            .store
            .record_delivered(channel, &[key.to_owned()])
            .await
        else {
            return;
        };
        if self.in_flight.pending().keep_delivered(channel, key) {
            tracing::warn!(channel, event_id = key, %error, "event published but not recorded; known as delivered in memory until the store can write");
        } else {
            tracing::warn!(channel, event_id = key, %error, "event published but not recorded, and the memory for such events is full; a poll may publish it again");
        }
    }
}
