//! OAuth 2.0 channels' access tokens, kept with the grant in the state store so every
//! replica (and both directions of one) uses the grant the last refresh stored
//! (docs/design-oauth2.md, docs/architecture.md).
//!
//! X rotates refresh tokens: a refresh answers a new one and the old one is then refused.
//! So [`StoreTokenSource`] refreshes under the store's refresh lease (one replica at a
//! time), stores the new grant by compare-and-set on the generation it read *before*
//! using it, and on a lost race (the row moved on) takes the stored grant instead of its
//! own. A grant X refused is marked in the store (only if the row is still the one the
//! refresh used), so every replica reports the channel `unauthorized` with the fix
//! "run `xbridge oauth2 authorize --channel NAME`".
//!
//! Every source of a channel in the process shares one [`ProcessGrants`] entry
//! (`oauth2_held.rs`): a rotated grant the store did not take (kept by a task until the
//! store takes it, `oauth2_unsaved.rs`), and a refusal whose mark it did not take, outlive
//! the source that met them. The access token held there is used only while the store
//! still holds its grant: a source checks that when first used and then every
//! [`VERIFY_EVERY`], so a new authorisation takes effect on the next channel update.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;
use xbridge_store::{CredentialsKey, GrantBase, GrantWrite, StateStore};
use xbridge_x_api::oauth2::{
    OAuth2Client, TokenEndpoint, TokenEndpointConfig, TokenError, TokenGrant,
};
use xbridge_x_api::{AccessTokenSource, TokenFuture, XAuth, XHttp, REFRESH_MARGIN};

use crate::config::{ChannelSettings, OAuth2Channel, XSettings};
pub use crate::oauth2_held::ProcessGrants;
use crate::oauth2_held::{ChannelGrant, DeadToken, Held, RejectedToken, Unsaved};
use crate::oauth2_unsaved::Keeper;

/// How often a source in use checks that the store still holds the grant of the access
/// token the process holds: a new authorisation (another account, other scopes) stored
/// meanwhile takes effect within this, at one store read per source and period.
pub const VERIFY_EVERY: Duration = Duration::from_secs(60);

/// How soon a check the store did not answer is made again.
const VERIFY_RETRY: Duration = Duration::from_secs(5);

/// The grant as sealed in the store (JSON). Its `Debug` is not derived.
#[derive(Serialize, Deserialize)]
pub struct GrantJson {
    /// The Bearer access token.
    pub access_token: String,
    /// The refresh token to use next.
    pub refresh_token: Option<String>,
    /// The scopes X granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The client the grant belongs to (a grant of another client is not used).
    pub client_id: String,
    /// Digests ([`seed_digest`], never the token) of the configured refresh tokens the
    /// grant descends from or was authorised over, newest last, at most [`MAX_SEEDS`]. A
    /// configured refresh token not among them is a new authorisation (the CRM's
    /// `oauth2_refresh_token` after a revoke, an operator's edit) and replaces the grant.
    /// A list, not the newest alone: a replica still serving the channel's previous
    /// settings (its change notice not read yet) would take its older token for a new
    /// one, spend it, and have X's refusal mark the new grant refused.
    ///
    /// `None`: a grant stored before seeds were kept. It is taken as descending from the
    /// configured token (long spent, it must not replace the grant), and gets that
    /// token's digest at its next refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<String>>,
}

/// The most seeds a grant keeps: more than a channel's settings change between two
/// refreshes.
pub const MAX_SEEDS: usize = 8;

/// The digest a grant keeps of a configured refresh token (SHA-256, hex): tells a new
/// token from one the grant came from, and cannot be used as one.
pub fn seed_digest(token: &SecretString) -> String {
    Sha256::digest(token.expose_secret().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `configured` is a new authorisation over a grant with `seeds`: one the grant
/// does not descend from. A grant without seeds (stored before they were kept) is taken
/// as descending from the configured token ([`GrantJson::seeds`]).
pub fn is_new_authorisation(configured: &SecretString, seeds: Option<&[String]>) -> bool {
    seeds.is_some_and(|seeds| !seeds.contains(&seed_digest(configured)))
}

/// The seeds of a sealed grant of `channel` (`None` inside: stored before seeds were
/// kept); `None` if it does not open with `key` or decode.
pub fn sealed_seeds(
    key: &CredentialsKey,
    channel: &str,
    sealed: &xbridge_store::SealedGrant,
) -> Option<Option<Vec<String>>> {
    let text = key.open_grant(channel, sealed).ok()?;
    let json: GrantJson = serde_json::from_str(text.expose_secret()).ok()?;
    Some(json.seeds)
}

/// `seeds` with `token`'s digest added last (once), the oldest dropped past [`MAX_SEEDS`].
pub fn with_seed(seeds: Vec<String>, token: &SecretString) -> Vec<String> {
    with_digest(seeds, seed_digest(token))
}

/// `seeds` with `digest` (a [`seed_digest`]) added last (once), the oldest dropped past
/// [`MAX_SEEDS`].
pub fn with_digest(mut seeds: Vec<String>, digest: String) -> Vec<String> {
    seeds.retain(|s| *s != digest);
    seeds.push(digest);
    let over = seeds.len().saturating_sub(MAX_SEEDS);
    seeds.drain(..over);
    seeds
}

/// What to tell an operator whose channel's grant X refused.
pub fn authorize_fix(channel: &str) -> String {
    format!("X refused the channel's OAuth 2.0 grant (revoked, expired or spent); run `xbridge oauth2 authorize --channel {channel}` to authorise it again")
}

/// The token endpoint of `[x]`: X's own unless `api_base_url` points elsewhere (the
/// simulator), whose authorize page is then under the same root.
pub fn token_endpoint(x: &XSettings, oauth2: &OAuth2Channel, http: &XHttp) -> TokenEndpoint {
    let defaults = TokenEndpointConfig::default();
    let mut config = if x.api_base_url == defaults.api_base_url {
        defaults
    } else {
        TokenEndpointConfig::at(&x.api_base_url)
    };
    config.request_timeout = x.request_timeout;
    TokenEndpoint::new(
        config,
        OAuth2Client {
            client_id: oauth2.client_id.clone(),
            client_secret: oauth2.client_secret.clone(),
        },
        http,
    )
}

/// Seals `grant` of `client_id` for `channel`, with its `seeds` ([`GrantJson::seeds`]),
/// and returns it with when its access token ends; the refresh token kept is the new one
/// or, if X sent none, `previous`.
pub fn seal(
    key: &CredentialsKey,
    channel: &str,
    client_id: &str,
    grant: &TokenGrant,
    previous: Option<&SecretString>,
    seeds: Vec<String>,
) -> Result<(xbridge_store::SealedGrant, Option<DateTime<Utc>>), String> {
    let json = GrantJson {
        access_token: grant.access_token.expose_secret().to_owned(),
        refresh_token: grant
            .refresh_token
            .as_ref()
            .or(previous)
            .map(|t| t.expose_secret().to_owned()),
        scopes: grant.scopes.clone(),
        client_id: client_id.to_owned(),
        seeds: Some(seeds),
    };
    let text = SecretString::from(serde_json::to_string(&json).map_err(|e| e.to_string())?);
    let sealed = key.seal_grant(channel, &text).map_err(|e| e.to_string())?;
    let expires_at = grant
        .expires_in
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| Utc::now() + d);
    Ok((sealed, expires_at))
}

/// The X client authentication of `channel`: its OAuth 1.0a credentials, or a
/// [`StoreTokenSource`] over the store for an OAuth 2.0 channel. An OAuth 2.0 channel
/// needs `state.credentials_key` (the grant is stored only sealed).
pub fn channel_auth(
    x: &XSettings,
    channel: &ChannelSettings,
    store: Arc<dyn StateStore>,
    key: Option<Arc<CredentialsKey>>,
    http: &XHttp,
) -> Result<XAuth, String> {
    let Some(oauth2) = &channel.oauth2 else {
        return Ok(XAuth::from(xbridge_x_api::UserCredentials::from(channel)));
    };
    let key = key.ok_or_else(|| {
        format!(
            "channel {}: an OAuth 2.0 channel needs state.credentials_key (its grant is stored only encrypted)",
            channel.name
        )
    })?;
    Ok(XAuth::OAuth2(Arc::new(StoreTokenSource::new(
        &channel.name,
        token_endpoint(x, oauth2, http),
        store,
        key,
        oauth2.refresh_token.clone(),
        x.request_timeout
            .saturating_mul(2)
            .max(Duration::from_secs(10)),
        &ProcessGrants::global(),
    ))))
}

/// An [`AccessTokenSource`] whose grant lives in the state store.
pub struct StoreTokenSource {
    channel: String,
    client_id: String,
    /// The process's name as the channel's refresh lease holder.
    holder: String,
    endpoint: TokenEndpoint,
    store: Arc<dyn StateStore>,
    key: Arc<CredentialsKey>,
    /// The refresh token from the channel's settings, used while the store has no grant
    /// or when it is a new authorisation over the stored one ([`GrantJson::seeds`]).
    configured_refresh: Option<SecretString>,
    /// X refused the configured refresh token: it is not tried again (each try would
    /// ask X, and mark the stored grant refused again). New settings make a new source.
    configured_refused: AtomicBool,
    /// How long a refresh lease lasts unless renewed; renewed every third of it while a
    /// refresh runs.
    lease_ttl: Duration,
    /// What every source of the channel (and client) in the process shares.
    grant: Arc<ChannelGrant>,
    /// When this source last checked the held token against the store (never: at its
    /// first use).
    verified_at: Mutex<Option<Instant>>,
}

/// What the store holds for the channel, opened.
struct Stored {
    generation: u64,
    access: SecretString,
    refresh: Option<SecretString>,
    expires_at: Option<DateTime<Utc>>,
    refused: bool,
    seeds: Option<Vec<String>>,
    /// The grant is another client's: not used, unless a new configured refresh token
    /// (of this client) replaces it.
    other_client: bool,
}

/// What one refresh spends, and over which generation.
struct Spend {
    generation: u64,
    refresh: Option<SecretString>,
    /// The seeds of the grant the refresh stores ([`GrantJson::seeds`]).
    seeds: Vec<String>,
    /// `refresh` is the configured refresh token.
    configured: bool,
}

/// Whether a token ending at `expires_at` is good for [`REFRESH_MARGIN`] more.
fn fresh(expires_at: Option<DateTime<Utc>>) -> bool {
    let margin = chrono::Duration::from_std(REFRESH_MARGIN).unwrap_or_default();
    expires_at.is_none_or(|at| Utc::now() + margin < at)
}

fn transient(detail: String) -> TokenError {
    TokenError::Transient {
        status: None,
        detail,
    }
}

fn refused(detail: &str) -> TokenError {
    TokenError::GrantRefused {
        error: "authorization_required".to_owned(),
        description: detail.to_owned(),
    }
}

impl StoreTokenSource {
    /// The source of `channel`'s grant for the endpoint's client, sharing what `grants`
    /// holds of the channel with every other source of it there.
    pub fn new(
        channel: &str,
        endpoint: TokenEndpoint,
        store: Arc<dyn StateStore>,
        key: Arc<CredentialsKey>,
        configured_refresh: Option<SecretString>,
        lease_ttl: Duration,
        grants: &ProcessGrants,
    ) -> StoreTokenSource {
        let client_id = endpoint.client().client_id.clone();
        let grant = grants.channel(channel, &client_id);
        StoreTokenSource {
            channel: channel.to_owned(),
            client_id,
            holder: grant.holder.clone(),
            endpoint,
            store,
            key,
            configured_refresh,
            configured_refused: AtomicBool::new(false),
            lease_ttl,
            grant,
            verified_at: Mutex::new(None),
        }
    }

    /// What keeps an unsaved grant of the channel until the store takes it.
    fn keeper(&self) -> Keeper {
        Keeper {
            grant: self.grant.clone(),
            store: self.store.clone(),
            channel: self.channel.clone(),
            lease_ttl: self.lease_ttl,
        }
    }

    /// Whether the held token is due a check against the store: at this source's first
    /// use, then every [`VERIFY_EVERY`].
    fn verify_due(&self) -> bool {
        let mut at = self
            .verified_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = at.is_none_or(|at| at.elapsed() >= VERIFY_EVERY);
        if due {
            *at = Some(Instant::now());
        }
        due
    }

    /// Whether a held access token needs the store's word: there is one, and no unsaved
    /// grant (whose keeping does not wait for the refresh lock here).
    fn held_needs_checking(&self) -> bool {
        let held = self.held();
        held.access.is_some() && held.unsaved.is_none()
    }

    /// Drops the held access token unless the store still holds its grant, taking the
    /// stored one instead if fresh: the grant may have been replaced (`xbridge oauth2
    /// authorize`, the CRM's new refresh token) or removed since the process got it. Not
    /// while an unsaved grant is held: that one is newer than the stored row. A store that
    /// does not answer leaves the held token in use.
    async fn verify(&self) {
        if !self.held_needs_checking() {
            return;
        }
        // Under the refresh lock: a refresh running now cannot have its grant taken back
        // by a read of the row from before it.
        let _one_here = self.grant.refreshing.lock().await;
        if !self.held_needs_checking() {
            return;
        }
        let stored = match self.read().await {
            Ok(stored) => stored.filter(|s| !s.refused),
            Err(e) if e.needs_authorization() => None,
            Err(error) => {
                tracing::debug!(channel = %self.channel, %error, "could not check the held OAuth 2.0 token against the store");
                // Check again soon, not a whole period later: the grant may have changed.
                let soon = Instant::now().checked_sub(VERIFY_EVERY.saturating_sub(VERIFY_RETRY));
                *self
                    .verified_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = soon;
                return;
            }
        };
        if stored.as_ref().is_some_and(|s| self.renews(s)) {
            // This source's settings carry a new authorisation (the CRM's or the file's new
            // refresh token): the next use spends it, not the process's token of the old one.
            tracing::info!(channel = %self.channel, "the channel's settings carry a new OAuth 2.0 authorisation; refreshing with it");
            self.held().access = None;
            return;
        }
        let mut held = self.held();
        let same = match (&stored, &held.access) {
            (Some(stored), Some(access)) => stored.access.expose_secret() == access.expose_secret(),
            _ => false,
        };
        if same {
            return;
        }
        tracing::info!(channel = %self.channel, "the stored OAuth 2.0 grant changed; the process's access token is not used any more");
        match stored.filter(|s| fresh(s.expires_at)) {
            Some(stored) => {
                held.generation = stored.generation;
                held.access = Some(stored.access);
                held.expires_at = stored.expires_at;
            }
            None => held.access = None,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.grant.held()
    }

    /// The held token if it is fresh.
    fn current(&self) -> Option<SecretString> {
        let held = self.held();
        held.access.clone().filter(|_| fresh(held.expires_at))
    }

    /// The held token if it is fresh and its grant is stored.
    fn current_stored(&self) -> Option<SecretString> {
        let held = self.held();
        let stored = held.unsaved.is_none();
        held.access
            .clone()
            .filter(|_| stored && fresh(held.expires_at))
    }

    async fn read(&self) -> Result<Option<Stored>, TokenError> {
        let row = self
            .store
            .oauth2_grant(&self.channel)
            .await
            .map_err(|e| transient(format!("the state store: {e}")))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let text = self
            .key
            .open_grant(&self.channel, &row.sealed)
            .map_err(|e| transient(e.to_string()))?;
        let json: GrantJson = serde_json::from_str(text.expose_secret())
            .map_err(|_| transient("the stored grant does not decode".to_owned()))?;
        Ok(Some(Stored {
            // Authorised for another client: the channel's client changed since.
            other_client: json.client_id != self.client_id,
            generation: row.generation,
            access: json.access_token.into(),
            refresh: json.refresh_token.map(SecretString::from),
            expires_at: row.expires_at,
            refused: row.refused,
            seeds: json.seeds,
        }))
    }

    fn take(&self, generation: u64, access: SecretString, expires_at: Option<DateTime<Utc>>) {
        let mut held = self.held();
        held.generation = generation;
        held.access = Some(access);
        held.expires_at = expires_at;
        held.unsaved = None;
    }

    /// Stores the rotated grant the store did not take before (this source's or an
    /// earlier one's of the channel), if any; `true` when none is left unstored. Called
    /// holding the refresh lock, so one write of it at a time.
    /// Starts the task keeping it if none runs (its runtime may have gone).
    async fn save_unsaved(&self) -> bool {
        let keeper = self.keeper();
        let saved = keeper.save().await;
        if !saved {
            keeper.start();
        }
        saved
    }

    async fn refresh(&self) -> Result<SecretString, TokenError> {
        let _one_here = self.grant.refreshing.lock().await;
        let saved = self.save_unsaved().await;
        if let Some(token) = self.current() {
            // Refreshed by another caller meanwhile, or the unsaved grant's, whose use
            // makes losing it no likelier.
            return Ok(token);
        }
        if !saved {
            // The stored refresh token is spent and the new one is not stored: refreshing
            // now would lose it for good.
            return Err(transient(
                "the rotated OAuth 2.0 grant is not stored yet (the state store refuses writes)"
                    .to_owned(),
            ));
        }
        let mut wait = Duration::from_millis(50);
        loop {
            let stored = self.read().await?;
            let renewal = stored.as_ref().is_some_and(|s| self.renews(s));
            if let Some(stored) = stored.as_ref().filter(|_| !renewal) {
                if stored.other_client {
                    return Err(refused("the stored grant is another OAuth 2.0 client's"));
                }
                if stored.refused {
                    return Err(refused(&authorize_fix(&self.channel)));
                }
                let rejected = self.held().generation == stored.generation;
                if !rejected && fresh(stored.expires_at) {
                    // Another replica (or direction) refreshed: use its grant.
                    self.take(stored.generation, stored.access.clone(), stored.expires_at);
                    return Ok(stored.access.clone());
                }
            }
            let spend = self.spend(stored.as_ref(), renewal);
            let (generation, seeds) = (spend.generation, spend.seeds);
            let Some(refresh) = spend.refresh else {
                return Err(refused(&format!(
                    "no OAuth 2.0 grant is stored for the channel; run `xbridge oauth2 authorize --channel {}`",
                    self.channel
                )));
            };
            let leased = self
                .store
                .lease_oauth2_refresh(&self.channel, &self.holder, self.lease_ttl)
                .await
                .map_err(|e| transient(format!("the state store: {e}")))?;
            if !leased {
                // Another replica refreshes now: wait for its grant.
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
                continue;
            }
            let outcome = self.refresh_leased(generation, &refresh, seeds).await;
            if self.held().unsaved.is_some() {
                // Keep the lease: no other replica may refresh the spent token meanwhile.
                return outcome.and_then(|token| {
                    token.ok_or_else(|| transient("the refresh gave no token".to_owned()))
                });
            }
            if let Err(e) = self
                .store
                .release_oauth2_refresh(&self.channel, &self.holder)
                .await
            {
                tracing::warn!(channel = %self.channel, error = %e, "could not release the OAuth 2.0 refresh lease; it expires by itself");
            }
            match outcome {
                Ok(Some(token)) => return Ok(token),
                Ok(None) => continue,
                Err(e) => {
                    if spend.configured && e.needs_authorization() {
                        self.configured_refused.store(true, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The configured refresh token, unless X refused it already.
    fn configured(&self) -> Option<&SecretString> {
        let refused = self.configured_refused.load(Ordering::Relaxed);
        self.configured_refresh.as_ref().filter(|_| !refused)
    }

    /// Whether the configured refresh token is a new authorisation over `stored`: one
    /// the grant does not descend from ([`GrantJson::seeds`]). It then replaces the grant,
    /// refused or not, under the lease and over the generation read, like any refresh:
    /// of the replicas that see it, one spends it and the others take its grant.
    fn renews(&self, stored: &Stored) -> bool {
        self.configured()
            .is_some_and(|configured| is_new_authorisation(configured, stored.seeds.as_deref()))
    }

    /// What a refresh spends: the stored grant's refresh token, or the configured one
    /// (no grant stored, or a `renewal`); and the seeds of the grant it stores.
    fn spend(&self, stored: Option<&Stored>, renewal: bool) -> Spend {
        match stored {
            Some(stored) if !renewal => Spend {
                generation: stored.generation,
                refresh: stored.refresh.clone(),
                seeds: stored.seeds.clone().unwrap_or_else(|| {
                    let configured = self.configured_refresh.iter();
                    configured.fold(Vec::new(), with_seed)
                }),
                configured: false,
            },
            _ => {
                let earlier = stored.and_then(|s| s.seeds.clone()).unwrap_or_default();
                let configured = self.configured();
                Spend {
                    generation: stored.map_or(0, |s| s.generation),
                    refresh: configured.cloned(),
                    seeds: match configured {
                        Some(token) => with_seed(earlier, token),
                        None => earlier,
                    },
                    configured: true,
                }
            }
        }
    }

    /// Holding the lease (renewed meanwhile): checks the row did not move on, refreshes at
    /// X and stores the new grant before anything uses it. `None`: the row moved on, or
    /// the lease did, read it again.
    async fn refresh_leased(
        &self,
        generation: u64,
        refresh: &SecretString,
        seeds: Vec<String>,
    ) -> Result<Option<SecretString>, TokenError> {
        self.keeping_lease(self.refresh_at_x(generation, refresh, seeds))
            .await
    }

    /// Runs `work` renewing this holder's refresh lease every third of its TTL. The TTL
    /// fits one token request, but a slow store can make a refresh and its write outlast
    /// it; another replica taking the lapsed lease over would spend the same refresh
    /// token, be refused, and mark a grant refused that this refresh just renewed.
    ///
    /// The renewal in flight when `work` ends is let finish (never dropped mid-query), so
    /// a release that follows cannot be overtaken by it and the lease re-held for a TTL.
    async fn keeping_lease<T>(&self, work: impl Future<Output = T>) -> T {
        let (done, mut stop) = tokio::sync::watch::channel(false);
        let keeper = self.keeper();
        let renew = async {
            let mut every = tokio::time::interval(keeper.renew_period());
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await; // At once: the lease was just taken.
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|done| *done) => return,
                    _ = every.tick() => {}
                }
                keeper.renew().await;
            }
        };
        let work = async {
            let out = work.await;
            done.send_replace(true);
            out
        };
        tokio::join!(work, renew).0
    }

    async fn refresh_at_x(
        &self,
        generation: u64,
        refresh: &SecretString,
        seeds: Vec<String>,
    ) -> Result<Option<SecretString>, TokenError> {
        let now = self.read().await?.map_or(0, |s| s.generation);
        if now != generation {
            return Ok(None);
        }
        let known_dead = self
            .held()
            .dead
            .as_ref()
            .is_some_and(|d| d.is(generation, refresh));
        if known_dead {
            // X refused this very token already: asking again would only hammer X.
            return self.refused_by_x(generation).await;
        }
        let turned_away = self
            .held()
            .rejected
            .as_ref()
            .and_then(|r| r.answer(generation, refresh));
        if let Some(error) = turned_away {
            // X turned this very token away lately: its answer again, until the back-off ends.
            return Err(error);
        }
        match self.endpoint.refresh(refresh).await {
            Ok(grant) => {
                self.held().rejected = None;
                self.keep_rotated(generation, refresh, grant, seeds).await
            }
            Err(error) if error.needs_authorization() => {
                self.held().dead = Some(DeadToken::new(generation, refresh));
                self.refused_by_x(generation).await
            }
            Err(error @ TokenError::Rejected { .. }) => {
                tracing::warn!(channel = %self.channel, %error, "X turned the OAuth 2.0 refresh away; asking again after a back-off");
                let mut held = self.held();
                let rejected = RejectedToken::after(
                    held.rejected.as_ref(),
                    generation,
                    refresh,
                    error.clone(),
                );
                held.rejected = Some(rejected);
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Stores the grant X rotated to from `refresh` (read at `generation`) and takes it;
    /// if the store does not take it, keeps it to store before every later use.
    async fn keep_rotated(
        &self,
        generation: u64,
        refresh: &SecretString,
        grant: TokenGrant,
        seeds: Vec<String>,
    ) -> Result<Option<SecretString>, TokenError> {
        let (sealed, expires_at) = seal(
            &self.key,
            &self.channel,
            &self.client_id,
            &grant,
            Some(refresh),
            seeds,
        )
        .map_err(transient)?;
        let written = self
            .store
            .store_oauth2_grant(
                &self.channel,
                GrantBase::Generation(generation),
                &sealed,
                expires_at,
            )
            .await;
        match written {
            Ok(GrantWrite::Stored(generation)) => {
                tracing::info!(channel = %self.channel, generation, "OAuth 2.0 grant refreshed and stored");
                self.take(generation, grant.access_token.clone(), expires_at);
                Ok(Some(grant.access_token))
            }
            Ok(GrantWrite::Stale(_)) => Ok(None),
            Err(e) => {
                // X spent the old refresh token: keep the new grant (for every source of
                // the channel) and store it before every later use. Using its access
                // token meanwhile makes losing the grant no likelier.
                tracing::error!(channel = %self.channel, error = %e, "could not store the rotated OAuth 2.0 grant; keeping it and its lease, and trying again");
                {
                    let mut held = self.held();
                    held.generation = generation;
                    held.access = Some(grant.access_token.clone());
                    held.expires_at = expires_at;
                    held.unsaved = Some(Unsaved {
                        base: generation,
                        sealed,
                        expires_at,
                    });
                }
                self.keeper().start();
                Ok(Some(grant.access_token))
            }
        }
    }

    /// X refused the refresh token read at `generation`: marks the grant refused, so every
    /// replica says to authorise again. Not if this holder lost the lease meanwhile: the
    /// replica that took it over may have spent the token and not stored its grant yet
    /// (`None`: read again). If the store does not take the mark, the refusal is still
    /// the answer, and X is not asked with that token again (`Held::dead`).
    async fn refused_by_x(&self, generation: u64) -> Result<Option<SecretString>, TokenError> {
        let ours = self
            .store
            .lease_oauth2_refresh(&self.channel, &self.holder, self.lease_ttl)
            .await;
        if let Ok(false) = ours {
            tracing::info!(channel = %self.channel, "X refused the refresh token after another replica took the refresh over; reading its grant");
            return Ok(None);
        }
        match self
            .store
            .mark_oauth2_refused(&self.channel, generation)
            .await
        {
            // The row moved on: another replica's refresh spent our token.
            Ok(false) if generation != 0 => Ok(None),
            Ok(_) => {
                tracing::warn!(channel = %self.channel, "X refused the channel's OAuth 2.0 grant; it must be authorised again");
                Err(refused(&authorize_fix(&self.channel)))
            }
            Err(error) => {
                tracing::error!(channel = %self.channel, %error, "X refused the channel's OAuth 2.0 grant and the state store did not take the mark; X is not asked with that refresh token again");
                Err(refused(&authorize_fix(&self.channel)))
            }
        }
    }
}

impl AccessTokenSource for StoreTokenSource {
    fn access_token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            if self.verify_due() {
                self.verify().await;
            }
            match self.current_stored() {
                Some(token) => Ok(token),
                // Stores an unsaved grant first, under the refresh lock.
                None => self.refresh().await,
            }
        })
    }

    fn rejected(&self, token: &SecretString) {
        let mut held = self.held();
        if held
            .access
            .as_ref()
            .is_some_and(|a| a.expose_secret() == token.expose_secret())
        {
            held.access = None;
        }
    }
}
