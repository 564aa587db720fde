//! Fencing the old owner of a channel's replies: a reply in flight on one
//! replica is never sent again by another (issue 15, "exactly once across
//! owners").
//!
//! Reply queues are single-active-consumer queues: RabbitMQ hands a channel's
//! replies to one consumer at a time, and to another once it lost the first
//! (a node loss, a heartbeat timeout, a network blip). The first may live on,
//! its lanes still holding replies it took (prefetch), and start sending one
//! after the new owner took that reply over and found no intent for it. The
//! broker tells the old owner nothing, so the state store does:
//!
//! - each consumer **claims** its channel at its first delivery (a standby
//!   only learns it is active from that), before any lane sees the reply:
//!   the channel's owner epoch moves on ([`StateStore::claim_channel`]);
//! - every send intent its lanes write carries that epoch, and the store
//!   refuses one of an earlier claim, atomically with writing it: the old
//!   owner's lane then sends nothing, leaves its delivery unsettled (it is
//!   the new owner's) and the consumer winds down as on a lost connection
//!   ([`Unsettled::Fenced`]);
//! - an intent written before the claim is visible to the new owner, which
//!   waits it out and looks for its DM before sending ([`crate::reconcile`]).
//!
//! Cost: one store write per consumer start (the claim); the check rides on
//! the intent write every DM already makes, so no extra round trip per DM.
//!
//! [`StateStore::claim_channel`]: xbridge_store::StateStore::claim_channel

use tokio_util::sync::CancellationToken;

use crate::context::ChannelContext;
use crate::store_outage;
use crate::unsettled::Unsettled;

/// The owner epoch a consumer holds: what its lanes' send intents carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim(pub u64);

/// Claims `ctx`'s channel for the consumer that just got its first
/// delivery, waiting for the store while it cannot write; `Interrupted` on
/// `stop`. Nothing of the channel is handled before this returns.
pub async fn claim(ctx: &ChannelContext, stop: &CancellationToken) -> Result<Claim, Unsettled> {
    let mut pauses = store_outage::pauses();
    loop {
        store_outage::until_writable(ctx, stop).await?;
        match ctx.store.claim_channel(&ctx.name).await {
            Ok(epoch) => {
                tracing::info!(channel = %ctx.name, epoch, "active consumer of the channel's replies; earlier owners are fenced");
                return Ok(Claim(epoch));
            }
            Err(error) => store_outage::wait_for_store(ctx, &error, &mut pauses, stop).await?,
        }
    }
}

/// The store refused the intent of `message_id` under `claim`: another
/// consumer claimed the channel since. Said once, at WARN, by the lane that
/// met it; the lane then stops.
pub fn fenced(ctx: &ChannelContext, message_id: &str, claim: Claim) -> Unsettled {
    tracing::warn!(
        channel = %ctx.name,
        message_id,
        epoch = claim.0,
        "another consumer took this channel's replies over; not sending this reply, leaving it to the new owner"
    );
    Unsettled::Fenced
}
