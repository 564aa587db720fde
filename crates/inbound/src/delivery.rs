//! The fate of one customer DM, the same whichever path found it (webhook or
//! poll): skipped if it already reached the CRM, dropped if it is the echo of
//! the bridge's own reply, published as `message.echo` (when wanted) if the
//! company sent it from X's own app, else completed with the sender's profile
//! and published as `message.received`; recorded as delivered only after the
//! publish is confirmed.

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
}
