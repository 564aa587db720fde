//! One replica's membership: its heartbeat in the shared store, and the
//! channels it holds there, brought in line with its share of the live ones
//! ([`crate::assignment`]) after each heartbeat and each change of the
//! channels served or of the reply consumers running.
//!
//! A channel is let go in the store only once its reply consumer here has
//! stopped (its unsettled replies handed back to the queue), and taken only
//! when no live replica holds it: two replicas never consume one reply queue
//! on purpose, so a move keeps each conversation's order. A replica whose
//! heartbeat could not be renewed for `expiry` serves nothing, since the
//! others may take its channels from then on.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use xbridge_core::live_channels::LiveChannels;
use xbridge_store::StateStore;

use crate::assignment::{share_of, Channel};
use crate::shares::Shares;

/// How often a replica says it is alive, and how long that holds.
#[derive(Debug, Clone, Copy)]
pub struct MembershipSettings {
    /// Between heartbeats (`state.replica_heartbeat`).
    pub heartbeat: Duration,
    /// How long a heartbeat keeps the replica live (`state.replica_expiry`):
    /// a replica lost without leaving keeps its channels that long.
    pub expiry: Duration,
}

/// A new id for this process: its host name (a pod's name in Kubernetes) and
/// a random suffix, so a restarted replica is a new member and a row of the
/// one before it is never taken for its own.
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "xbridge".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

/// This replica's membership, run by the bridge beside both directions.
pub struct Membership {
    store: Arc<dyn StateStore>,
    shares: Arc<Shares>,
    live: Arc<LiveChannels>,
    settings: MembershipSettings,
    /// The channels held in the store (those being let go among them).
    held: BTreeSet<String>,
    /// The live replicas at the last heartbeat.
    replicas: Vec<String>,
    /// Until when the last renewed heartbeat keeps this replica live.
    alive_until: Option<Instant>,
}

impl Membership {
    /// Not joined yet: [`Membership::join`] before the sides start.
    pub fn new(
        store: Arc<dyn StateStore>,
        shares: Arc<Shares>,
        live: Arc<LiveChannels>,
        settings: MembershipSettings,
    ) -> Membership {
        Membership {
            store,
            shares,
            live,
            settings,
            held: BTreeSet::new(),
            replicas: Vec::new(),
            alive_until: None,
        }
    }

    /// The first heartbeat and holds, so the sides start with this replica's
    /// share (what is free of it: the rest follows as the others let go).
    pub async fn join(&mut self) {
        self.heartbeat().await;
        self.rebalance().await;
        tracing::info!(
            replica = self.shares.replica(),
            replicas = self.replicas.len(),
            serving = self.held.len(),
            "joined the replicas"
        );
    }

    /// Heartbeats and rebalances until `stop`, then leaves: the others take
    /// this replica's channels at once.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut live = self.live.subscribe();
        let mut consuming = self.shares.consuming_changes();
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.reset();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.heartbeat().await,
                Ok(()) = live.changed() => {}
                Ok(()) = consuming.changed() => {}
            }
            self.rebalance().await;
        }
        self.shares.set_served(BTreeSet::new());
        match self.store.leave(self.shares.replica()).await {
            Ok(()) => tracing::info!(replica = self.shares.replica(), "left the replicas"),
            Err(e) => tracing::warn!(
                replica = self.shares.replica(),
                error = %e,
                "could not leave the replicas; the others take this one's channels once its heartbeat expires"
            ),
        }
    }

    /// Renews this replica's heartbeat; forgets the holds another replica
    /// took while it had expired.
    async fn heartbeat(&mut self) {
        let sent = Instant::now();
        let replica = self.shares.replica().to_owned();
        match self.store.heartbeat(&replica, self.settings.expiry).await {
            Ok(membership) => {
                self.alive_until = Some(sent + self.settings.expiry);
                if membership.replicas != self.replicas {
                    tracing::info!(replica, replicas = ?membership.replicas, "the live replicas changed");
                }
                self.replicas = membership.replicas;
                if let Some(in_store) = membership.held {
                    for channel in self.held.difference(&in_store) {
                        tracing::warn!(channel, replica, "another replica took the channel while this one's heartbeat had expired");
                    }
                    self.held.retain(|c| in_store.contains(c));
                }
            }
            Err(e) => {
                tracing::warn!(replica, error = %e, "cannot renew this replica's heartbeat in the state store");
            }
        }
        metrics::gauge!("xbridge_replicas_live").set(self.replicas.len() as f64);
    }

    /// Lets go of the channels outside this replica's share whose consumers
    /// have stopped, takes the free ones inside it, and tells the sides.
    async fn rebalance(&mut self) {
        let replica = self.shares.replica().to_owned();
        let expired = self.alive_until.is_none_or(|at| Instant::now() >= at);
        let channels = self.live.current();
        let wanted: BTreeSet<String> = if expired {
            BTreeSet::new()
        } else {
            let list: Vec<Channel<'_>> = channels
                .values()
                .map(|c| Channel {
                    name: c.name(),
                    polled: c.settings.inbound.polls(),
                })
                .collect();
            share_of(&replica, &self.replicas, &list)
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        // Stop serving first, so the consumers of what goes begin to stop.
        self.shares
            .set_served(self.held.intersection(&wanted).cloned().collect());
        let consuming = self.shares.consuming();
        let going: Vec<String> = self.held.difference(&wanted).cloned().collect();
        for channel in going {
            if consuming.contains(&channel) {
                continue;
            }
            match self.store.release_channel(&channel, &replica).await {
                Ok(()) => {
                    self.held.remove(&channel);
                    tracing::info!(
                        channel,
                        replica,
                        "channel let go: another replica serves it"
                    );
                }
                Err(e) => tracing::warn!(channel, replica, error = %e, "cannot let the channel go"),
            }
        }
        let coming: Vec<String> = wanted.difference(&self.held).cloned().collect();
        for channel in coming {
            match self.store.hold_channel(&channel, &replica).await {
                Ok(true) => {
                    tracing::info!(channel, replica, "channel taken: this replica serves it");
                    self.held.insert(channel);
                }
                Ok(false) => {
                    tracing::debug!(channel, replica, "channel still held by another replica")
                }
                Err(e) => tracing::warn!(channel, replica, error = %e, "cannot take the channel"),
            }
        }
        let served: BTreeSet<String> = self.held.intersection(&wanted).cloned().collect();
        metrics::gauge!("xbridge_channels_served").set(served.len() as f64);
        self.shares.set_served(served);
    }
}
