//! A rotated OAuth 2.0 grant the state store did not take, kept until it does
//! (docs/design-oauth2.md, step 4).
//!
//! X spent the refresh token the grant replaced, so the process's copy is the only one.
//! Until the store takes it this process must keep the channel's refresh lease: a replica
//! taking a lapsed lease over would spend the stored (dead) refresh token, be refused, and
//! mark the channel refused for every replica. Waiting for the channel's next use is not
//! enough (a quiet channel may not be used for hours), so a task tied to the channel's
//! [`ChannelGrant`] renews the lease every third of its TTL and writes the grant again
//! with back-off; once the store takes it, it releases the lease and ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use xbridge_store::{GrantBase, GrantWrite, StateStore};

use crate::oauth2_held::ChannelGrant;

/// The longest wait between two writes of an unsaved grant.
const LAST_WRITE_WAIT: Duration = Duration::from_secs(30);

/// What keeps a channel's unsaved grant: its entry, the store and the lease it holds.
#[derive(Clone)]
pub(crate) struct Keeper {
    pub(crate) grant: Arc<ChannelGrant>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) channel: String,
    pub(crate) lease_ttl: Duration,
}

impl Keeper {
    /// Stores the unsaved grant, if any, and then releases the lease; `true` when none is
    /// left unstored. Call it holding the channel's refresh lock: one write of it at a
    /// time, and no renewal of the lease after its release.
    pub(crate) async fn save(&self) -> bool {
        let pending = self
            .grant
            .held()
            .unsaved
            .as_ref()
            .map(|u| (u.base, u.sealed.clone(), u.expires_at));
        let Some((base, sealed, expires_at)) = pending else {
            return true;
        };
        let written = self
            .store
            .store_oauth2_grant(
                &self.channel,
                GrantBase::Generation(base),
                &sealed,
                expires_at,
            )
            .await;
        match written {
            Ok(written) => {
                {
                    let mut held = self.grant.held();
                    held.unsaved = None;
                    match written {
                        GrantWrite::Stored(generation) => held.generation = generation,
                        // Another replica stored a newer grant: use that one.
                        GrantWrite::Stale(_) => held.access = None,
                    }
                }
                tracing::info!(channel = %self.channel, "the rotated OAuth 2.0 grant is stored now");
                let _ = self
                    .store
                    .release_oauth2_refresh(&self.channel, &self.grant.holder)
                    .await;
                true
            }
            Err(error) => {
                tracing::error!(channel = %self.channel, %error, "the rotated OAuth 2.0 grant is still not stored; trying again");
                false
            }
        }
    }

    /// Starts the task keeping the unsaved grant, unless one runs already.
    pub(crate) fn start(&self) {
        {
            let mut held = self.grant.held();
            if held.keeper || held.unsaved.is_none() {
                return;
            }
            held.keeper = true;
        }
        tokio::spawn(self.clone().run());
    }

    /// Every third of the lease's TTL, under the refresh lock: ends if the grant was
    /// stored meanwhile (by a use of the channel), else renews the lease and, when the
    /// back-off allows, writes the grant.
    async fn run(self) {
        let running = Running(self.grant.clone());
        let period = self.renew_period();
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut wait = period;
        let mut next_write = Instant::now() + wait;
        loop {
            every.tick().await;
            let _one_here = self.grant.refreshing.lock().await;
            // Under the refresh lock, under which alone a grant is left unsaved: none can
            // be left between this look and the end of the task.
            let nothing_left = self.grant.held().unsaved.is_none();
            if nothing_left {
                drop(running);
                return;
            }
            self.renew().await;
            if Instant::now() < next_write {
                continue;
            }
            if self.save().await {
                drop(running);
                return;
            }
            wait = (wait * 2).min(LAST_WRITE_WAIT);
            next_write = Instant::now() + wait;
        }
    }

    /// How often a held refresh lease is renewed: every third of its TTL, so one missed
    /// renewal does not let it lapse.
    pub(crate) fn renew_period(&self) -> Duration {
        (self.lease_ttl / 3).max(Duration::from_millis(1))
    }

    /// Renews this process's refresh lease of the channel (a refresh running, or an
    /// unsaved grant kept); a lease another replica took over, or a store that does not
    /// answer, is logged.
    pub(crate) async fn renew(&self) {
        let renewed = self
            .store
            .lease_oauth2_refresh(&self.channel, &self.grant.holder, self.lease_ttl)
            .await;
        match renewed {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(channel = %self.channel, "another replica took this process's OAuth 2.0 refresh lease over")
            }
            Err(error) => {
                tracing::warn!(channel = %self.channel, %error, "could not renew the OAuth 2.0 refresh lease")
            }
        }
    }
}

/// Says while a task keeps the channel's unsaved grant; dropped when it ends, also when its
/// runtime goes away mid-wait, so a later unsaved grant gets a task of its own.
struct Running(Arc<ChannelGrant>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.held().keeper = false;
    }
}
