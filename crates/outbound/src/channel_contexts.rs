//! Every served channel's [`ChannelContext`], kept by the outbound side across
//! reconnects (its pacers, credits gate and parked-reply order must outlive
//! a lost connection) and brought in line with the channels served
//! (`LiveChannels`): built when a channel is added, given new credentials
//! when they change, dropped when the channel is removed.

use std::collections::BTreeMap;
use std::sync::Arc;

use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{ChannelSettings, Settings};
use xbridge_core::live_channels::LiveChannel;
use xbridge_core::oauth2_tokens::channel_auth;
use xbridge_store::StateStore;
use xbridge_x_api::{XAuth, XClient, XHttp};

use crate::context::ChannelContext;
use crate::credits::CreditsGate;
use crate::fate::Policy;
use crate::media::MediaFetcher;
use crate::ordering::ParkedReplies;
use crate::OutboundError;

/// What every channel's context shares, and so what building one takes.
pub(crate) struct ContextBuilder {
    pub(crate) settings: Arc<Settings>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) states: Arc<ChannelStates>,
    pub(crate) identities: Arc<ChannelIdentities>,
    pub(crate) media: Arc<MediaFetcher>,
    pub(crate) http: XHttp,
}

impl ContextBuilder {
    /// How `channel`'s client authenticates: OAuth 1.0a signs with the channel's pair;
    /// OAuth 2.0 takes its Bearer token from the grant in the state store.
    fn auth(&self, channel: &ChannelSettings) -> Result<XAuth, OutboundError> {
        let settings = &self.settings;
        let key = channel
            .oauth2
            .as_ref()
            .and_then(|_| settings.state.credentials_key().ok())
            .map(Arc::new);
        channel_auth(&settings.x, channel, self.store.clone(), key, &self.http).map_err(|detail| {
            OutboundError::Client {
                channel: channel.name.clone(),
                detail,
            }
        })
    }

    /// `channel`'s context, with its X client on the shared HTTP stack.
    fn build(&self, channel: &ChannelSettings) -> Result<Arc<ChannelContext>, OutboundError> {
        let settings = &self.settings;
        let failed = |detail: String| OutboundError::Client {
            channel: channel.name.clone(),
            detail,
        };
        let auth = self.auth(channel)?;
        let client = XClient::with_auth((&settings.x).into(), auth, self.http.clone())
            .map_err(|e| failed(e.to_string()))?;
        let outbound = &settings.outbound;
        Ok(Arc::new(ChannelContext {
            name: channel.name.clone(),
            client,
            gate: CreditsGate::new(outbound.credits.clone()),
            parked: ParkedReplies::default(),
            store: self.store.clone(),
            policy: Policy {
                retry: outbound.retry.clone(),
                credits: outbound.credits.clone(),
            },
            states: self.states.clone(),
            media: self.media.clone(),
            identities: self.identities.clone(),
            recent_events: Default::default(),
            unrecorded: Default::default(),
            max_reply_bytes: outbound.max_reply_bytes,
        }))
    }
}

/// One served channel.
struct Served {
    ctx: Arc<ChannelContext>,
    /// The settings its client signs with (compared by pointer, as
    /// `LiveChannels` versions them).
    settings: Arc<ChannelSettings>,
    /// Whether the channel was last made `paused` here.
    paused: bool,
}

/// What [`ChannelContexts::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upserted {
    /// A new context.
    Added,
    /// The context's client signs with the new credentials from now on.
    CredentialsChanged,
    /// Nothing to do.
    Same,
}

/// Every served channel's context, by name.
pub(crate) struct ChannelContexts {
    builder: ContextBuilder,
    served: BTreeMap<String, Served>,
}

impl ChannelContexts {
    /// None yet.
    pub(crate) fn new(builder: ContextBuilder) -> ChannelContexts {
        ChannelContexts {
            builder,
            served: BTreeMap::new(),
        }
    }

    /// `channel`'s context, built when new; a new version of its settings
    /// gives its client the new credentials (requests in flight finish with
    /// the old ones). Fails only on a client that cannot be built.
    pub(crate) fn upsert(
        &mut self,
        channel: &LiveChannel,
    ) -> Result<(Arc<ChannelContext>, Upserted), OutboundError> {
        if let Some(served) = self.served.get_mut(channel.name()) {
            if Arc::ptr_eq(&served.settings, &channel.settings) {
                return Ok((served.ctx.clone(), Upserted::Same));
            }
            let auth = self.builder.auth(&channel.settings)?;
            served.ctx.client.set_auth(auth);
            served.settings = channel.settings.clone();
            return Ok((served.ctx.clone(), Upserted::CredentialsChanged));
        }
        let ctx = self.builder.build(&channel.settings)?;
        let served = Served {
            ctx: ctx.clone(),
            settings: channel.settings.clone(),
            paused: false,
        };
        self.served.insert(channel.name().to_owned(), served);
        Ok((ctx, Upserted::Added))
    }

    /// Records whether `name` is paused; `true` when that is a change.
    pub(crate) fn set_paused(&mut self, name: &str, paused: bool) -> bool {
        match self.served.get_mut(name) {
            Some(served) if served.paused != paused => {
                served.paused = paused;
                true
            }
            _ => false,
        }
    }

    /// Drops `name`'s context; `true` when there was one.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        self.served.remove(name).is_some()
    }

    /// The served channels' names.
    pub(crate) fn names(&self) -> Vec<String> {
        self.served.keys().cloned().collect()
    }

    /// How many channels are served.
    pub(crate) fn len(&self) -> usize {
        self.served.len()
    }
}
