//! What the inbound side runs for one channel, and how it is built: the
//! channel's X client and profiles, its poller when it polls, its webhook watch
//! when X's webhook brings its DMs. Built at startup for the channels served
//! then, and again for a channel added or changed while the bridge runs
//! ([`crate::lifecycle`]), so both take one path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret as _;
use tokio_util::sync::CancellationToken;

use xbridge_core::channel_identity::{ChannelAccount, ChannelIdentities};
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{ChannelSettings, InboundMode, Settings};
use xbridge_core::live_channels::LiveChannel;
use xbridge_core::oauth2_tokens::channel_auth;
use xbridge_store::StateStore;
use xbridge_x_api::{WebhookClient, XAuth, XClient, XHttp};

use crate::broker::BrokerSink;
use crate::delivery::in_flight::InFlightDeliveries;
use crate::delivery::profiles::Profiles;
use crate::media::links::MediaLinks;
use crate::polling::poller::PollContext;
use crate::polling::schedule::{poll_loop, PollSchedule};
use crate::webhook::crc_self_check::{CrcSelfCheck, LocalCrc};
use crate::webhook::watch::{AppListing, AppWebhooks, WebhookWatch};

/// Why the inbound side could not start, or serve a channel.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The webhook's listen address could not be bound.
    #[error("cannot listen for X's webhook on {addr}: {detail}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// What failed.
        detail: String,
    },
    /// A channel's X client could not be built.
    #[error("channel {channel}: cannot build the X client: {detail}")]
    Client {
        /// The channel.
        channel: String,
        /// What failed.
        detail: String,
    },
}

/// What the webhook and the pollers share.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) sink: Arc<BrokerSink>,
    pub(crate) media: Arc<MediaLinks>,
    /// Shared by the webhook and the pollers (see [`InFlightDeliveries`]).
    pub(crate) in_flight: Arc<InFlightDeliveries>,
    /// The channels this replica polls (its share).
    pub(crate) shares: Arc<xbridge_sharing::Shares>,
}

/// One channel's client and profiles: what its poller, its webhook route and the
/// media proxy use, kept for as long as the channel is served so a change of
/// credentials reaches all of them at once ([`XClient::set_credentials`]).
pub(crate) struct ChannelParts {
    pub(crate) settings: Arc<ChannelSettings>,
    pub(crate) client: XClient,
    pub(crate) profiles: Arc<Profiles>,
}

/// What every channel's parts are built from.
pub(crate) struct Kit {
    pub(crate) settings: Arc<Settings>,
    pub(crate) http: XHttp,
    /// The webhook's bound address, when it is served.
    pub(crate) bound: Option<SocketAddr>,
    pub(crate) shared: Shared,
    pub(crate) states: Arc<ChannelStates>,
    /// Every channel's account and App, shared with the outbound side.
    pub(crate) identities: Arc<ChannelIdentities>,
    /// One webhook list per X App (by consumer key), shared by its channels' checks.
    app_webhooks: HashMap<String, Arc<AppWebhooks>>,
}

impl Kit {
    pub(crate) fn new(
        settings: Arc<Settings>,
        http: XHttp,
        bound: Option<SocketAddr>,
        shared: Shared,
        states: Arc<ChannelStates>,
        identities: Arc<ChannelIdentities>,
    ) -> Kit {
        Kit {
            settings,
            http,
            bound,
            shared,
            states,
            identities,
            app_webhooks: HashMap::new(),
        }
    }

    /// Drops the webhook list of the X App whose consumer key is `key`, once no
    /// channel served is of it, so channels coming and going leave nothing behind.
    pub(crate) fn forget_app(&mut self, key: &str) {
        self.app_webhooks.remove(key);
    }

    /// How `channel`'s client authenticates: OAuth 1.0a signs with the channel's pair;
    /// OAuth 2.0 takes its Bearer token from the grant in the state store, shared with
    /// the outbound side and the other replicas.
    pub(crate) fn auth(&self, channel: &ChannelSettings) -> Result<XAuth, InboundError> {
        let key = channel
            .oauth2
            .as_ref()
            .and_then(|_| self.settings.state.credentials_key().ok())
            .map(Arc::new);
        channel_auth(
            &self.settings.x,
            channel,
            self.shared.store.clone(),
            key,
            &self.http,
        )
        .map_err(|detail| InboundError::Client {
            channel: channel.name.clone(),
            detail,
        })
    }

    /// `channel`'s client (from the shared HTTP stack) and profiles.
    pub(crate) fn parts(
        &self,
        channel: Arc<ChannelSettings>,
    ) -> Result<ChannelParts, InboundError> {
        let auth = self.auth(&channel)?;
        let client = XClient::with_auth((&self.settings.x).into(), auth, self.http.clone())
            .map_err(|e| client_error(&channel, e))?;
        let ttl = self.settings.inbound.profile_cache_ttl;
        let profiles = Arc::new(Profiles::new(client.clone(), ttl));
        Ok(ChannelParts {
            settings: channel,
            client,
            profiles,
        })
    }

    /// Records `channel` in the shared identities (a configured id is known at
    /// once; others wait for X's answer).
    pub(crate) fn know(&self, channel: &ChannelSettings) {
        self.identities.upsert(ChannelAccount {
            name: &channel.name,
            consumer_key: &channel.consumer_key,
            user_id: channel.user_id.as_deref(),
        });
    }

    /// Whether this process learns `channel`'s account: every channel when the
    /// webhook is served (one App's webhook brings the events of all its
    /// accounts, whatever their `inbound` mode), else the polled ones.
    pub(crate) fn receives(&self, channel: &ChannelSettings) -> bool {
        self.bound.is_some() || channel.inbound.needs_user_id()
    }

    /// `parts`' channel polled on its schedule while it is this replica's
    /// share and this replica holds its lease, until `stop`; `None` when the
    /// channel does not poll.
    pub(crate) fn poller(
        &self,
        parts: &ChannelParts,
        stop: &CancellationToken,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let channel = &parts.settings;
        if !channel.inbound.polls() {
            return None;
        }
        let settings = &self.settings;
        let ctx = PollContext {
            channel: channel.name.clone(),
            own_user_id: channel.user_id.clone().unwrap_or_default(),
            client: parts.client.clone(),
            store: self.shared.store.clone(),
            sink: self.shared.sink.clone(),
            publish_echoes: settings.inbound.publish_echoes,
            backfill: backfill(settings),
            profiles: Some(parts.profiles.clone()),
            media: Some(self.shared.media.clone()),
            in_flight: self.shared.in_flight.clone(),
        };
        Some(poll_loop(
            ctx,
            self.states.clone(),
            poll_schedule(settings, channel.inbound),
            settings.amqp.topology.poll_lease_queue(&channel.name),
            self.shared.sink.connection.subscribe(),
            self.shared.shares.clone(),
            stop.clone(),
        ))
    }

    /// The check that keeps `channel`'s webhook registered and valid, when it
    /// receives by webhook and the check is on; `served` are the channels served
    /// now (its App's other webhook channels among them).
    pub(crate) fn webhook_watch<'a>(
        &mut self,
        channel: &ChannelSettings,
        served: impl Iterator<Item = &'a LiveChannel>,
    ) -> Result<Option<WebhookWatch>, InboundError> {
        let interval = self.settings.inbound.webhook_check_interval;
        if !channel.inbound.uses_webhook() || interval.is_zero() {
            return Ok(None);
        }
        let app = self
            .app_webhooks
            .entry(channel.consumer_key.expose_secret().to_owned())
            .or_insert_with(|| AppWebhooks::new(interval))
            .clone();
        let x = WebhookClient::with_http(
            (&self.settings.x).into(),
            channel.bearer_token.clone(),
            self.auth(channel)?,
            self.http.clone(),
        )
        .map_err(|e| client_error(channel, e))?;
        Ok(Some(WebhookWatch {
            channel: channel.name.clone(),
            x: Arc::new(AppListing {
                x: Arc::new(x),
                app,
            }),
            crc: crc_self_check(self.bound, channel),
            app_channels: app_channels(served, channel),
            interval,
            shares: self.shared.shares.clone(),
        }))
    }
}

/// When a channel is polled: on the safety interval when the webhook also
/// receives its DMs, else on the poll interval; paused like the sends while its
/// credits are out.
fn poll_schedule(settings: &Settings, mode: InboundMode) -> PollSchedule {
    let interval = if mode == InboundMode::Both {
        settings.inbound.safety_poll_interval
    } else {
        settings.inbound.poll_interval
    };
    let credits = &settings.outbound.credits;
    PollSchedule {
        interval,
        credits_pause_initial: credits.probe_initial,
        credits_pause_max: credits.probe_max,
    }
}

/// How far back a channel's first poll reads: `inbound.backfill_days`, or from
/// now when that is 0.
fn backfill(settings: &Settings) -> Option<Duration> {
    let days = settings.inbound.backfill_days;
    (days > 0).then(|| Duration::from_secs(u64::from(days) * 86_400))
}

/// The other channels of `channel`'s X App that receive by webhook.
fn app_channels<'a>(
    served: impl Iterator<Item = &'a LiveChannel>,
    channel: &ChannelSettings,
) -> Vec<String> {
    served
        .map(|c| &c.settings)
        .filter(|c| c.name != channel.name && c.inbound.uses_webhook())
        .filter(|c| c.consumer_key.expose_secret() == channel.consumer_key.expose_secret())
        .map(|c| c.name.clone())
        .collect()
}

/// How the channel's webhook watch proves this process answers the CRC before it
/// asks X to revalidate the webhook: over HTTP from its own webhook server, when
/// it serves one (`bound`); without, revalidating is left to an operator.
fn crc_self_check(
    bound: Option<SocketAddr>,
    channel: &ChannelSettings,
) -> Option<Arc<dyn CrcSelfCheck>> {
    let check = LocalCrc::new(bound?, &channel.name, channel.consumer_secret.clone())?;
    Some(Arc::new(check))
}

fn client_error(channel: &ChannelSettings, error: xbridge_x_api::XError) -> InboundError {
    InboundError::Client {
        channel: channel.name.clone(),
        detail: error.to_string(),
    }
}
