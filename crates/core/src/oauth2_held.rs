//! What this process holds of each OAuth 2.0 channel's grant besides the state store,
//! shared by every token source of the channel (docs/design-oauth2.md).
//!
//! A token source is built per use of a channel: one per direction, new ones on every
//! channel update, one per check the CRM asks for. What must outlive any one of them
//! lives here, per channel and OAuth 2.0 client: a rotated grant the store did not take
//! (X already spent the refresh token it replaced, so this is the only copy: dropping it
//! with the source would lose the grant), a refresh token X refused while the store did
//! not take the refused mark (so X is not asked with it again on every send), a refresh
//! token X turned away for another reason (asked again only after a back-off), the access
//! token in use, and the lease holder's name with the lock that lets one refresh of the
//! channel run at a time in the process.
//!
//! An entry lives as long as the process: it is small, and it may hold the only copy of a
//! grant (a channel removed and added again finds it). What it holds is never trusted
//! blindly: a token source checks the held access token against the store's grant when it
//! is first used and then every minute (`oauth2_tokens.rs`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::time::Instant;
use xbridge_x_api::oauth2::TokenError;

/// A channel's name and an OAuth 2.0 client id.
type ChannelClient = (String, String);

/// The channels' shared grant state of one process. [`ProcessGrants::global`] is the
/// process's own; tests make one per simulated replica.
#[derive(Clone, Default)]
pub struct ProcessGrants {
    channels: Arc<Mutex<HashMap<ChannelClient, Arc<ChannelGrant>>>>,
}

impl ProcessGrants {
    /// This process's registry, which every token source the bridge builds uses.
    pub fn global() -> ProcessGrants {
        static GLOBAL: LazyLock<ProcessGrants> = LazyLock::new(ProcessGrants::default);
        GLOBAL.clone()
    }

    /// A registry of its own, as another process (replica) would have.
    pub fn isolated() -> ProcessGrants {
        ProcessGrants::default()
    }

    /// `channel`'s state for grants of `client_id` (a grant of another client is never
    /// used, so it does not share state with this one). One entry per channel and client
    /// ever served: small, and it may hold the only copy of a grant.
    pub(crate) fn channel(&self, channel: &str, client_id: &str) -> Arc<ChannelGrant> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .entry((channel.to_owned(), client_id.to_owned()))
            .or_insert_with(|| {
                Arc::new(ChannelGrant {
                    holder: format!("{channel}-{:016x}", rand_u64()),
                    held: Mutex::new(Held::default()),
                    refreshing: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }
}

impl ProcessGrants {
    /// Drops the access tokens this process holds for `channel` (of any client), so its
    /// next use reads the store: the grant there was put back (a refused command's check
    /// had stored another account's). An unsaved grant is kept: it is the only copy.
    pub fn forget_access(&self, channel: &str) {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        for ((name, _), grant) in channels.iter() {
            if name == channel {
                let mut held = grant.held();
                if held.unsaved.is_none() {
                    held.access = None;
                }
            }
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// One channel's shared state.
pub(crate) struct ChannelGrant {
    /// The process's name as the channel's refresh lease holder.
    pub(crate) holder: String,
    held: Mutex<Held>,
    /// Held for a whole refresh: one at a time in the process.
    pub(crate) refreshing: tokio::sync::Mutex<()>,
}

impl ChannelGrant {
    pub(crate) fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The grant in use, as far as this process knows.
#[derive(Default)]
pub(crate) struct Held {
    /// The stored generation the access token belongs to.
    pub(crate) generation: u64,
    pub(crate) access: Option<SecretString>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    /// A rotated grant the store did not take: X already spent the refresh token it
    /// replaced, so this is the only copy. Written before every later use until the
    /// store takes it; its access token is `access` meanwhile.
    pub(crate) unsaved: Option<Unsaved>,
    /// The refresh token X last refused, kept whether or not the store took the mark.
    pub(crate) dead: Option<DeadToken>,
    /// The refresh token X last turned away for another reason (`TokenError::Rejected`),
    /// and when to ask X with it again.
    pub(crate) rejected: Option<RejectedToken>,
    /// Whether a task keeps `unsaved` (its lease renewed, its write retried) until stored.
    pub(crate) keeper: bool,
}

/// A grant to store over generation `base`.
pub(crate) struct Unsaved {
    pub(crate) base: u64,
    pub(crate) sealed: xbridge_store::SealedGrant,
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

/// A refresh token X refused, with the generation it was read at (0: the configured one).
pub(crate) struct DeadToken {
    generation: u64,
    refresh: SecretString,
}

impl DeadToken {
    pub(crate) fn new(generation: u64, refresh: &SecretString) -> DeadToken {
        DeadToken {
            generation,
            refresh: refresh.clone(),
        }
    }

    /// Whether `refresh`, read at `generation`, is this token: X would refuse it again.
    pub(crate) fn is(&self, generation: u64, refresh: &SecretString) -> bool {
        self.generation == generation && self.refresh.expose_secret() == refresh.expose_secret()
    }
}

/// The first wait before X is asked again with a refresh token it turned away.
const FIRST_REJECTED_WAIT: Duration = Duration::from_secs(30);
/// The longest such wait.
const LAST_REJECTED_WAIT: Duration = Duration::from_secs(3600);

/// A refresh token X turned away without saying the grant is gone (an `invalid_request`
/// whose description is not X's words for a dead token, or another 4xx): asking again at
/// once would get the same answer, so X is asked again only after a back-off, doubling
/// up to an hour, and every use meanwhile gets X's answer again.
pub(crate) struct RejectedToken {
    token: DeadToken,
    error: TokenError,
    retry_at: Instant,
    wait: Duration,
}

impl RejectedToken {
    /// X's answer to `refresh` (read at `generation`) while the back-off lasts.
    pub(crate) fn answer(&self, generation: u64, refresh: &SecretString) -> Option<TokenError> {
        (self.token.is(generation, refresh) && Instant::now() < self.retry_at)
            .then(|| self.error.clone())
    }

    /// X turned `refresh` away with `error`; `previous` is the memory so far, whose wait
    /// doubles if it was of the same token.
    pub(crate) fn after(
        previous: Option<&RejectedToken>,
        generation: u64,
        refresh: &SecretString,
        error: TokenError,
    ) -> RejectedToken {
        let wait = previous
            .filter(|p| p.token.is(generation, refresh))
            .map_or(FIRST_REJECTED_WAIT, |p| {
                (p.wait * 2).min(LAST_REJECTED_WAIT)
            });
        RejectedToken {
            token: DeadToken::new(generation, refresh),
            error,
            retry_at: Instant::now() + wait,
            wait,
        }
    }
}
