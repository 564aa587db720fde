//! What one channel keeps across reconnects, shared by its lanes: the one
//! value every step of a reply's life reads, so it imports only the state it
//! holds and nothing that acts on it.

use std::sync::Arc;

use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_store::StateStore;
use xbridge_x_api::{UserId, XClient, XError};

use crate::credits::CreditsGate;
use crate::fate::Policy;
use crate::media::MediaFetcher;
use crate::ordering::ParkedReplies;
use crate::recent_events::RecentEvents;
use crate::unrecorded::UnrecordedSends;

/// What one channel keeps across reconnects: its X client (and so its rate
/// limit pacing), its credits gate and its parked-reply order.
pub struct ChannelContext {
    /// Channel name.
    pub name: String,
    /// The channel's X client.
    pub client: XClient,
    /// The channel's credits state.
    pub gate: CreditsGate,
    /// Parked replies per conversation.
    pub parked: ParkedReplies,
    /// Which replies were sent.
    pub store: Arc<dyn StateStore>,
    /// Retry and credits bounds.
    pub policy: Policy,
    /// Every channel's state, for the CRM and operators.
    pub states: Arc<ChannelStates>,
    /// Turns reply attachments into bytes to upload, safely.
    pub media: Arc<MediaFetcher>,
    /// Every channel's X account (configured, or learnt from X by the inbound
    /// side or by [`ChannelContext::own_user_id`]), to recognise this account's
    /// own DMs when looking for an unrecorded send.
    pub identities: Arc<ChannelIdentities>,
    /// The account's DM events as last read to find unrecorded sends.
    pub recent_events: tokio::sync::Mutex<RecentEvents>,
    /// Sends X accepted whose records the store has not taken yet.
    pub unrecorded: UnrecordedSends,
    /// Largest reply body parsed (`outbound.max_reply_bytes`).
    pub max_reply_bytes: usize,
}

impl ChannelContext {
    /// The account's X user id: the one known to the process, else asked of X
    /// (and then known to the inbound side too).
    pub async fn own_user_id(&self) -> Result<UserId, XError> {
        if let Some(id) = self.identities.user_id(&self.name) {
            return Ok(id);
        }
        let id = self.client.me().await?.0.id;
        // A channel with a configured id has it known from the start, so what X
        // says cannot contradict one here; the inbound side checks those.
        let _ = self.identities.learn(&self.name, id.as_str());
        Ok(id)
    }
}
