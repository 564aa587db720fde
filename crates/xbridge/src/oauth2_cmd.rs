//! `xbridge oauth2 authorize --channel NAME`: an operator authorises an OAuth 2.0 channel
//! (of the config file or one the CRM created) once. It prints X's authorize URL (PKCE
//! S256, a random `state`), reads back what the browser was redirected to (the whole
//! redirect URL, whose `state` must match, or the bare code), exchanges the code within
//! X's 30 seconds, asks X whose account approved (a channel with a `user_id` takes only
//! that account's grant) and stores the grant sealed in the state store, replacing any
//! grant there and clearing a refused mark (docs/design-oauth2.md). The bridge's replicas
//! then refresh it. Never prints a token. `xbridge oauth2 forget --channel NAME` deletes
//! a grant (of a channel gone from the config file).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _};
use xbridge_core::config::{ChannelSettings, Settings};
use xbridge_core::oauth2_tokens::{seal, sealed_seeds, token_endpoint, with_digest, with_seed};
use xbridge_store::{CredentialsKey, GrantBase, GrantWrite, StateStore};
use xbridge_x_api::oauth2::{
    code_from_redirect, new_state, PkceVerifier, TokenEndpoint, TokenError, DM_SCOPES, MEDIA_SCOPE,
};
use xbridge_x_api::{AccessTokenSource, TokenFuture, XAuth, XClient, XClientConfig, XHttp};

use crate::cli::OAuth2Command;

/// The most of the pasted redirect that is read: a redirect URL is well under 2 KiB.
const MAX_PASTED_BYTES: u64 = 8 * 1024;

/// How long the operator has to paste the redirect.
const PASTE_WITHIN: Duration = Duration::from_secs(10 * 60);

/// Runs one `oauth2` subcommand.
pub async fn run(command: OAuth2Command) -> anyhow::Result<()> {
    match command {
        OAuth2Command::Authorize {
            config,
            channel,
            redirect_uri,
        } => {
            let settings = Settings::load(&config)?;
            let store = crate::app::open_store(&settings.state).await?;
            let channel =
                crate::channel_lookup::find_channel(&settings, store.clone(), &channel).await?;
            let stdin = tokio::io::BufReader::new(tokio::io::stdin());
            let stored =
                authorize(&settings, store.as_ref(), &channel, &redirect_uri, stdin).await?;
            crate::outln!(
                "channel {}: OAuth 2.0 grant of @{} (id {}) stored (generation {}); the bridge refreshes it from now on",
                channel.name,
                stored.username,
                stored.user_id,
                stored.generation
            );
            Ok(())
        }
        OAuth2Command::Forget { config, channel } => {
            let settings = Settings::load(&config)?;
            let store = crate::app::open_store(&settings.state).await?;
            if store.delete_oauth2_grant(&channel).await? {
                crate::outln!("channel {channel}: OAuth 2.0 grant deleted from the state store");
            } else {
                crate::outln!("channel {channel}: no OAuth 2.0 grant was stored");
            }
            Ok(())
        }
    }
}

/// Authorises `channel` (found by [`crate::channel_lookup::find_channel`]): prints the
/// URL, reads the redirect from `input`, exchanges the code and stores the grant in
/// `store`.
pub async fn authorize(
    settings: &Settings,
    store: &dyn StateStore,
    channel: &ChannelSettings,
    redirect_uri: &str,
    input: impl AsyncBufRead + Unpin,
) -> anyhow::Result<Stored> {
    let (url, pending) = begin(settings, channel, redirect_uri)?;
    crate::outln!("Open this URL as the channel's X account and approve the App:\n\n  {url}\n");
    crate::outln!(
        "Then paste the address the browser was redirected to ({redirect_uri}?state=…&code=…), or only its code, and press Enter (the code is valid for 30 seconds):"
    );
    let pasted = read_pasted(input).await?;
    finish(pending, store, &pasted).await
}

/// An authorisation begun: what [`finish`] needs to exchange the code. `Debug` shows no
/// secret.
#[derive(Debug)]
pub struct Pending {
    channel: String,
    client_id: String,
    /// The account the channel is for (`user_id`), if it says.
    user_id: Option<String>,
    /// The seeds the grant is stored with: the digest of the channel's configured
    /// refresh token, if any, which this authorisation supersedes (so the bridge does not
    /// take that token for a new one and replace this grant with it).
    seeds: Vec<String>,
    redirect_uri: String,
    state: String,
    verifier: PkceVerifier,
    endpoint: TokenEndpoint,
    x: XClientConfig,
    key: CredentialsKey,
}

/// A grant stored: its generation, and the account that approved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The grant's generation in the store.
    pub generation: u64,
    /// The approving account's X user id.
    pub user_id: String,
    /// Its @handle.
    pub username: String,
}

/// The authorize URL to open for `channel` (PKCE S256, a new `state`, the DM scopes and
/// `media.write`), and what finishing it takes.
pub fn begin(
    settings: &Settings,
    channel: &ChannelSettings,
    redirect_uri: &str,
) -> anyhow::Result<(String, Pending)> {
    let oauth2 = channel.oauth2.as_ref().with_context(|| {
        format!("channel {} has no oauth2_client_id: it uses OAuth 1.0a, which needs no authorisation here", channel.name)
    })?;
    let key = settings
        .state
        .credentials_key()
        .context("the grant is stored only encrypted")?;
    let endpoint = token_endpoint(&settings.x, oauth2, &XHttp::new()?);
    let verifier = PkceVerifier::generate();
    let state = new_state();
    let mut scopes = DM_SCOPES.to_vec();
    scopes.push(MEDIA_SCOPE);
    let url = endpoint.authorize_url(redirect_uri, &scopes, &state, &verifier);
    Ok((
        url.to_string(),
        Pending {
            channel: channel.name.clone(),
            client_id: oauth2.client_id.clone(),
            user_id: channel.user_id.clone(),
            seeds: oauth2.refresh_token.iter().fold(Vec::new(), with_seed),
            redirect_uri: redirect_uri.to_owned(),
            state,
            verifier,
            endpoint,
            x: XClientConfig::from(&settings.x),
            key,
        },
    ))
}

/// Reads the code from `pasted` (the redirect, whose `state` must be this one's, or the
/// bare code), exchanges it and stores the grant, replacing any and clearing a refused
/// mark. A grant another account approved than the channel's `user_id` is refused and
/// nothing is stored: the bridge would send and read as that account.
pub async fn finish(
    pending: Pending,
    store: &dyn StateStore,
    pasted: &str,
) -> anyhow::Result<Stored> {
    let code = code_from_redirect(pasted, &pending.state).context(
        "what was pasted is not this authorisation's redirect (its state differs, X reported an error, or there is no code)",
    )?;
    let grant = pending
        .endpoint
        .exchange_code(&code, &pending.redirect_uri, &pending.verifier)
        .await
        .context("X did not exchange the code")?;
    if !grant.has_scopes(DM_SCOPES) {
        anyhow::bail!(
            "X granted only {:?}; the channel needs {} (approve every permission asked)",
            grant.scopes,
            DM_SCOPES.join(" ")
        );
    }
    let (user_id, username) = approver(&pending, &grant.access_token).await?;
    if let Some(expected) = pending.user_id.as_deref().filter(|id| *id != user_id) {
        anyhow::bail!(
            "the X account that approved is @{username} (id {user_id}), but channel {} is for the account {expected} (its user_id); nothing was stored: approve as that account, or fix user_id",
            pending.channel
        );
    }
    // The stored grant's seeds are kept too: a replica still on older settings must not
    // take its configured token for a new authorisation, spend it and have X's refusal
    // mark this grant refused.
    let earlier = match store.oauth2_grant(&pending.channel).await? {
        Some(row) => sealed_seeds(&pending.key, &pending.channel, &row.sealed)
            .flatten()
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let seeds = pending.seeds.iter().cloned().fold(earlier, with_digest);
    let (sealed, expires_at) = seal(
        &pending.key,
        &pending.channel,
        &pending.client_id,
        &grant,
        None,
        seeds,
    )
    .map_err(|e| anyhow::anyhow!("cannot seal the grant: {e}"))?;
    match store
        .store_oauth2_grant(&pending.channel, GrantBase::Any, &sealed, expires_at)
        .await?
    {
        GrantWrite::Stored(generation) => Ok(Stored {
            generation,
            user_id,
            username,
        }),
        GrantWrite::Stale(generation) => {
            anyhow::bail!("the store refused the grant (generation {generation})")
        }
    }
}

/// The account that approved: X's `GET /2/users/me` with the new access token.
async fn approver(pending: &Pending, access: &SecretString) -> anyhow::Result<(String, String)> {
    let auth = XAuth::OAuth2(Arc::new(OneToken(access.clone())));
    let client = XClient::with_auth(pending.x.clone(), auth, XHttp::new()?)?;
    let (user, _) = client
        .me()
        .await
        .context("X did not say which account approved; nothing was stored")?;
    Ok((user.id.as_str().to_owned(), user.username))
}

/// The access token of the grant just made, for the one lookup [`approver`] makes.
struct OneToken(SecretString);

impl AccessTokenSource for OneToken {
    fn access_token(&self) -> TokenFuture<'_> {
        Box::pin(async move { Ok::<_, TokenError>(self.0.clone()) })
    }

    fn rejected(&self, _: &SecretString) {}
}

/// One line from `input`, bounded in size and time.
async fn read_pasted(input: impl AsyncBufRead + Unpin) -> anyhow::Result<String> {
    let mut line = String::new();
    let mut bounded = input.take(MAX_PASTED_BYTES);
    tokio::time::timeout(PASTE_WITHIN, bounded.read_line(&mut line))
        .await
        .context("nothing was pasted in time")?
        .context("cannot read what was pasted")?;
    Ok(line)
}
