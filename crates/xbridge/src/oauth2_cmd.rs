//! `xbridge oauth2 authorize --channel NAME`: an operator authorises an OAuth 2.0 channel
//! once. It prints X's authorize URL (PKCE S256, a random `state`), reads back what the
//! browser was redirected to (the whole redirect URL, whose `state` must match, or the bare
//! code), exchanges the code within X's 30 seconds and stores the grant sealed in the state
//! store, replacing any grant there and clearing a refused mark (docs/design-oauth2.md).
//! The bridge's replicas then refresh it. Never prints a token.

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _};
use xbridge_core::config::Settings;
use xbridge_core::oauth2_tokens::{seal, token_endpoint};
use xbridge_store::{CredentialsKey, GrantBase, GrantWrite, StateStore};
use xbridge_x_api::oauth2::{
    code_from_redirect, new_state, PkceVerifier, TokenEndpoint, DM_SCOPES, MEDIA_SCOPE,
};
use xbridge_x_api::XHttp;

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
            let stdin = tokio::io::BufReader::new(tokio::io::stdin());
            let generation =
                authorize(&settings, store.as_ref(), &channel, &redirect_uri, stdin).await?;
            crate::outln!(
                "channel {channel}: OAuth 2.0 grant stored (generation {generation}); the bridge refreshes it from now on"
            );
            Ok(())
        }
    }
}

/// Authorises `channel` of `settings`: prints the URL, reads the redirect from `input`,
/// exchanges the code and stores the grant in `store`; returns the stored generation.
pub async fn authorize(
    settings: &Settings,
    store: &dyn StateStore,
    channel: &str,
    redirect_uri: &str,
    input: impl AsyncBufRead + Unpin,
) -> anyhow::Result<u64> {
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
    redirect_uri: String,
    state: String,
    verifier: PkceVerifier,
    endpoint: TokenEndpoint,
    key: CredentialsKey,
}

/// The authorize URL to open for `channel` (PKCE S256, a new `state`, the DM scopes and
/// `media.write`), and what finishing it takes.
pub fn begin(
    settings: &Settings,
    channel: &str,
    redirect_uri: &str,
) -> anyhow::Result<(String, Pending)> {
    let settings_channel = settings
        .channels
        .iter()
        .find(|c| c.name == channel)
        .with_context(|| format!("no channel named {channel:?} in the configuration"))?;
    let oauth2 = settings_channel.oauth2.as_ref().with_context(|| {
        format!("channel {channel} has no oauth2_client_id: it uses OAuth 1.0a, which needs no authorisation here")
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
            channel: channel.to_owned(),
            client_id: oauth2.client_id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            state,
            verifier,
            endpoint,
            key,
        },
    ))
}

/// Reads the code from `pasted` (the redirect, whose `state` must be this one's, or the
/// bare code), exchanges it and stores the grant, replacing any and clearing a refused
/// mark; returns the stored generation.
pub async fn finish(pending: Pending, store: &dyn StateStore, pasted: &str) -> anyhow::Result<u64> {
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
    let (sealed, expires_at) = seal(
        &pending.key,
        &pending.channel,
        &pending.client_id,
        &grant,
        None,
    )
    .map_err(|e| anyhow::anyhow!("cannot seal the grant: {e}"))?;
    match store
        .store_oauth2_grant(&pending.channel, GrantBase::Any, &sealed, expires_at)
        .await?
    {
        GrantWrite::Stored(generation) => Ok(generation),
        GrantWrite::Stale(generation) => {
            anyhow::bail!("the store refused the grant (generation {generation})")
        }
    }
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
