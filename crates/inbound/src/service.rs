//! The inbound service of one bridge process: keeps a confirm-mode
//! connection to RabbitMQ, serves X's webhook, and polls the channels that
//! are configured to be polled; the webhook's server also serves the media
//! proxy, whose signed URLs the published attachments carry. Stops on shutdown: the webhook finishes the
//! requests in flight, the pollers stop between polls, and only then the connection closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::Supervisor;
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{ChannelSettings, HttpSettings, Settings};
use xbridge_core::live_channels::LiveChannels;
use xbridge_store::StateStore;
use xbridge_x_api::{WebhookClient, XClient, XHttp};

use crate::broker::{BrokerSession, BrokerSink};
use crate::delivery::in_flight::{write_pending, InFlightDeliveries};
use crate::delivery::profiles::Profiles;
use crate::media::links::MediaLinks;
use crate::media::proxy::{self as media_proxy, MediaProxy};
use crate::polling::poller::PollContext;
use crate::polling::schedule::{poll_loop, PollSchedule};
use crate::webhook::crc_self_check::{loopback_if_wildcard, CrcSelfCheck, LocalCrc};
use crate::webhook::identity::{AccountLookup, IdentityResolver};
use crate::webhook::server::{router, WebhookChannel, WebhookConfig, WebhookState};
use crate::webhook::watch::{watch_webhook, AppListing, AppWebhooks, WebhookWatch};

/// Why the inbound side could not start.
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

/// The inbound side, built and bound, ready to run.
pub struct Inbound {
    settings: Arc<Settings>,
    states: Arc<ChannelStates>,
    /// Keeps the RabbitMQ session the sink publishes through.
    supervisor: Supervisor,
    shared: Shared,
    listener: Option<std::net::TcpListener>,
    channels: ChannelParts,
    /// Every channel's account and App, shared with the outbound side.
    identities: Arc<ChannelIdentities>,
    /// `true` while the webhook's server (and its media proxy) serves.
    serving: watch::Sender<bool>,
}

/// What the webhook and the pollers share.
#[derive(Clone)]
struct Shared {
    store: Arc<dyn StateStore>,
    sink: Arc<BrokerSink>,
    media: Arc<MediaLinks>,
    /// Shared by the webhook and the pollers (see [`InFlightDeliveries`]).
    in_flight: Arc<InFlightDeliveries>,
}

impl Inbound {
    /// Binds the webhook's address (when configured) and builds the pollers'
    /// X clients, so configuration mistakes show at startup. The clients use
    /// the process's shared HTTP stack `http`; webhook bodies are routed by
    /// `identities`, which [`Inbound::identity_resolver`] completes.
    pub fn new(
        settings: Arc<Settings>,
        live: Arc<LiveChannels>,
        store: Arc<dyn StateStore>,
        states: Arc<ChannelStates>,
        http: XHttp,
        identities: Arc<ChannelIdentities>,
    ) -> Result<Inbound, InboundError> {
        let listener = listener(&settings)?;
        let bound = listener.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Shared {
            store,
            sink: Arc::new(BrokerSink::default()),
            media: Arc::new(media_links(&settings, bound)),
            in_flight: Arc::new(InFlightDeliveries::default()),
        };
        let mut channels = ChannelParts::default();
        for channel in live.current().values() {
            channels.add(&settings, &channel.settings, &http, bound, &shared)?;
        }
        Ok(Inbound {
            supervisor: crate::broker::supervisor(&settings),
            settings,
            states,
            shared,
            listener,
            channels,
            identities,
            serving: watch::Sender::new(false),
        })
    }

    /// What learns the accounts of the channels that receive DMs here: every
    /// channel when the webhook is served (one App's webhook brings the events of
    /// all its accounts, whatever their `inbound` mode), else the polled ones.
    /// Other channels are left to the outbound side, which asks X when it needs to.
    pub fn identity_resolver(&self) -> IdentityResolver {
        let serves_webhook = self.listener.is_some();
        let lookups = self
            .settings
            .channels
            .iter()
            .filter(|c| serves_webhook || c.inbound.polls())
            .filter_map(|c| {
                let client = self.channels.clients.get(&c.name)?.clone();
                Some((c.name.clone(), Arc::new(client) as Arc<dyn AccountLookup>))
            })
            .collect();
        IdentityResolver::new(self.identities.clone(), lookups)
    }

    /// Where the webhook listens (the bound port when the configuration said
    /// port 0).
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// `true` while events can be published (connected, topology declared).
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.supervisor.readiness()
    }

    /// `true` while X's webhook and the media proxy are served: from the
    /// start of [`Inbound::run`] until shutdown begins, whatever RabbitMQ and
    /// the store do (the CRC and the media proxy need neither, and a POST
    /// that cannot be published is answered 503 so X sends it again). `None`
    /// when no webhook is configured.
    pub fn webhook_serving(&self) -> Option<watch::Receiver<bool>> {
        self.listener.as_ref().map(|_| self.serving.subscribe())
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let Inbound {
            settings,
            states,
            supervisor,
            shared,
            listener,
            channels,
            identities,
            serving,
        } = self;
        // The connection outlives `shutdown` until every task that publishes
        // has stopped: the webhook's requests in flight at shutdown, which it
        // lets finish, get their events published and X its 200, instead of
        // finding the connection closed under them (a 503, or a confirm lost
        // after the publish, and X delivering the events again).
        let disconnect = CancellationToken::new();
        let session = BrokerSession {
            settings: settings.clone(),
            sink: shared.sink.clone(),
        };
        let connected = tokio::spawn(supervisor.run(session, disconnect.clone()));
        let mut tasks = JoinSet::new();
        tasks.spawn(write_pending_records(shared.clone(), shutdown.clone()));
        if let Some(listener) = listener {
            let webhook = WebhookParts {
                shared: shared.clone(),
                identities,
                profiles: channels.profiles,
            };
            let app = webhook.app(&settings, channels.clients);
            let (limits, shutdown) = (settings.http.clone(), shutdown.clone());
            tasks.spawn(serve(listener, app, limits, serving, shutdown));
        }
        for ctx in channels.pollers {
            tasks.spawn(poll(ctx, &settings, &states, &shared.sink, &shutdown));
        }
        for watch in channels.webhook_watches {
            tasks.spawn(watch_webhook(watch, states.clone(), shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
        disconnect.cancel();
        let _ = connected.await;
        tracing::info!("inbound stopped");
    }
}

/// Records of delivered DMs the store could not take when they were made.
async fn write_pending_records(shared: Shared, shutdown: CancellationToken) {
    write_pending(&shared.in_flight, shared.store.as_ref(), shutdown).await
}

/// The webhook's listener, bound, when `inbound.listen` is set.
fn listener(settings: &Settings) -> Result<Option<std::net::TcpListener>, InboundError> {
    let Some(addr) = settings.inbound.listen else {
        return Ok(None);
    };
    let listener = xbridge_core::server::bind(addr).map_err(|e| InboundError::Listen {
        addr,
        detail: e.to_string(),
    })?;
    Ok(Some(listener))
}

/// Every channel's X client, profiles, poller and webhook watch, as it has them.
#[derive(Default)]
struct ChannelParts {
    clients: HashMap<String, XClient>,
    profiles: Vec<(String, Arc<Profiles>)>,
    pollers: Vec<PollContext>,
    webhook_watches: Vec<WebhookWatch>,
    /// One webhook list per X App (by consumer key), shared by its channels' checks.
    app_webhooks: HashMap<String, Arc<AppWebhooks>>,
}

impl ChannelParts {
    /// Builds `channel`'s parts: its client (from `http`), its profiles, a
    /// poller when it polls and a webhook watch when it receives by webhook.
    fn add(
        &mut self,
        settings: &Settings,
        channel: &ChannelSettings,
        http: &XHttp,
        bound: Option<SocketAddr>,
        shared: &Shared,
    ) -> Result<(), InboundError> {
        let client = client(settings, channel, http)?;
        self.clients.insert(channel.name.clone(), client.clone());
        if channel.inbound.uses_webhook() && !settings.inbound.webhook_check_interval.is_zero() {
            let app = self
                .app_webhooks
                .entry(channel.consumer_key.expose_secret().to_owned())
                .or_insert_with(|| AppWebhooks::new(settings.inbound.webhook_check_interval))
                .clone();
            let watch = webhook_watch(settings, channel, http, app, bound)?;
            self.webhook_watches.push(watch);
        }
        let ttl = settings.inbound.profile_cache_ttl;
        let profiles = Arc::new(Profiles::new(client.clone(), ttl));
        self.profiles.push((channel.name.clone(), profiles.clone()));
        if channel.inbound.polls() {
            self.pollers.push(PollContext {
                channel: channel.name.clone(),
                own_user_id: channel.user_id.clone().unwrap_or_default(),
                client,
                store: shared.store.clone(),
                sink: shared.sink.clone(),
                publish_echoes: settings.inbound.publish_echoes,
                backfill: backfill(settings),
                profiles: Some(profiles),
                media: Some(shared.media.clone()),
                in_flight: shared.in_flight.clone(),
            });
        }
        Ok(())
    }
}

/// `ctx`'s channel polled on its schedule, while this replica holds its lease
/// on the current connection.
fn poll(
    ctx: PollContext,
    settings: &Settings,
    states: &Arc<ChannelStates>,
    sink: &BrokerSink,
    shutdown: &CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let schedule = poll_schedule(settings, &ctx.channel);
    let lease_queue = settings.amqp.topology.poll_lease_queue(&ctx.channel);
    let connections = sink.connection.subscribe();
    poll_loop(
        ctx,
        states.clone(),
        schedule,
        lease_queue,
        connections,
        shutdown.clone(),
    )
}

/// What the webhook's endpoint shares with the rest of the service.
struct WebhookParts {
    shared: Shared,
    identities: Arc<ChannelIdentities>,
    profiles: Vec<(String, Arc<Profiles>)>,
}

impl WebhookParts {
    /// X's webhook for the channels that receive by webhook, and the media proxy
    /// beside it (`clients` fetch the media).
    fn app(self, settings: &Settings, clients: HashMap<String, XClient>) -> axum::Router {
        let channels = settings
            .channels
            .iter()
            .filter(|c| c.inbound != xbridge_core::config::InboundMode::Poll)
            .map(|c| WebhookChannel {
                name: c.name.clone(),
                consumer_key: c.consumer_key.clone(),
                consumer_secret: c.consumer_secret.clone(),
                own_user_id: c.user_id.clone(),
            })
            .collect();
        let config = WebhookConfig {
            body_limit: settings.inbound.body_limit,
            body_memory: settings.inbound.body_memory,
            publish_echoes: settings.inbound.publish_echoes,
            publish_activity: settings.inbound.publish_activity,
        };
        let shared = self.shared;
        let state = self.profiles.into_iter().fold(
            WebhookState::new(channels, shared.sink, shared.store, config)
                .with_identities(self.identities)
                .with_media(shared.media.clone())
                .with_in_flight(shared.in_flight),
            |state, (channel, profiles)| state.with_profiles(&channel, profiles),
        );
        let proxy = Arc::new(MediaProxy::new(
            shared.media,
            clients,
            settings.inbound.media.max_bytes,
            settings.inbound.media.timeout,
        ));
        router(Arc::new(state)).merge(media_proxy::router(proxy))
    }
}

/// Serves `app` on `listener` until shutdown, then lets the requests in flight
/// finish; `serving` is `true` until shutdown begins.
async fn serve(
    listener: std::net::TcpListener,
    app: axum::Router,
    limits: HttpSettings,
    serving: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving X's webhook and the media proxy");
    }
    serving.send_replace(true);
    let serve = xbridge_core::server::serve("webhook", listener, app, &limits, shutdown.clone());
    tokio::pin!(serve);
    tokio::select! {
        () = &mut serve => {}
        () = shutdown.cancelled() => {
            // No new connection is taken from here on, while the
            // requests in flight finish.
            serving.send_replace(false);
            serve.await;
        }
    }
    serving.send_replace(false);
}

/// When `channel` is polled: on the safety interval when the webhook also
/// receives its DMs, else on the poll interval; paused like the sends while its
/// credits are out.
fn poll_schedule(settings: &Settings, channel: &str) -> PollSchedule {
    let mode = settings
        .channel(channel)
        .map(|c| c.inbound)
        .unwrap_or_default();
    let interval = if mode == xbridge_core::config::InboundMode::Both {
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

/// The media URL signer of this process, from `[inbound.media]`: the configured key (or a
/// random one, with a warning), the public URL (or one derived from the bound webhook
/// address), and the allowed X origins plus the API base URL's (X serves
/// `/2/dm_conversations/media/…` there, and a simulator all its media). On every origin
/// only DM media paths are fetched ([`crate::media::links::is_dm_media`]): the API origin's other
/// endpoints never are. Public so the deployment kit's checks build URLs exactly as a
/// running bridge would from a shipped configuration.
pub fn media_links(settings: &Settings, bound: Option<SocketAddr>) -> MediaLinks {
    let media = &settings.inbound.media;
    let key = match &media.signing_key {
        Some(key) => key.clone(),
        None => {
            tracing::warn!(
                "inbound.media.signing_key is not set: media URLs are signed with a random key, so they stop working when the bridge restarts and other replicas refuse them"
            );
            MediaLinks::random_key()
        }
    };
    let public_base_url = media.public_base_url.clone().or_else(|| {
        let url = url::Url::parse(&format!("http://{}/", loopback_if_wildcard(bound?))).ok()?;
        tracing::warn!(
            public_base_url = %url,
            "inbound.media.public_base_url is not set: media URLs point at the webhook's own address, which only a CRM on this host reaches"
        );
        Some(url)
    });
    if public_base_url.is_none() {
        tracing::warn!(
            "neither inbound.listen nor inbound.media.public_base_url is set: DM attachments are published without media URLs"
        );
    }
    let mut origins = media.allowed_origins.clone();
    let api_origin = settings.x.api_base_url.origin().ascii_serialization();
    if !origins.contains(&api_origin) {
        origins.push(api_origin);
    }
    MediaLinks::new(key, public_base_url, media.url_ttl, origins)
}

fn client(
    settings: &Settings,
    channel: &ChannelSettings,
    http: &XHttp,
) -> Result<XClient, InboundError> {
    XClient::with_http((&settings.x).into(), channel.into(), http.clone())
        .map_err(|e| client_error(channel, e))
}

fn webhook_client(
    settings: &Settings,
    channel: &ChannelSettings,
    http: &XHttp,
) -> Result<WebhookClient, InboundError> {
    WebhookClient::with_http(
        (&settings.x).into(),
        channel.bearer_token.clone(),
        channel.into(),
        http.clone(),
    )
    .map_err(|e| client_error(channel, e))
}

/// The check that keeps `channel`'s webhook registered and valid; `app` is the
/// webhook list its X App's channels share.
fn webhook_watch(
    settings: &Settings,
    channel: &ChannelSettings,
    http: &XHttp,
    app: Arc<AppWebhooks>,
    bound: Option<SocketAddr>,
) -> Result<WebhookWatch, InboundError> {
    Ok(WebhookWatch {
        channel: channel.name.clone(),
        x: Arc::new(AppListing {
            x: Arc::new(webhook_client(settings, channel, http)?),
            app,
        }),
        crc: crc_self_check(bound, channel),
        app_channels: app_channels(settings, channel),
        interval: settings.inbound.webhook_check_interval,
    })
}

/// How far back a channel's first poll reads: `inbound.backfill_days`, or from
/// now when that is 0.
fn backfill(settings: &Settings) -> Option<Duration> {
    let days = settings.inbound.backfill_days;
    (days > 0).then(|| Duration::from_secs(u64::from(days) * 86_400))
}

/// The other channels of `channel`'s X App that receive by webhook.
fn app_channels(settings: &Settings, channel: &ChannelSettings) -> Vec<String> {
    settings
        .channels
        .iter()
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
