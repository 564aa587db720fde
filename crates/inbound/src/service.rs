//! The inbound service of one bridge process: keeps a confirm-mode
//! connection to RabbitMQ, serves X's webhook, and polls the channels that
//! are configured to be polled; the webhook's server also serves the media
//! proxy, whose signed URLs the published attachments carry. The channels are
//! the live registry's: added, changed and removed while it runs, one at a time
//! (`lifecycle`). Stops on shutdown: the webhook finishes the requests
//! in flight, the pollers stop between polls, and only then the connection closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::Supervisor;
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{HttpSettings, Settings};
use xbridge_core::live_channels::{ChannelMap, LiveChannels};
use xbridge_store::StateStore;
use xbridge_x_api::XHttp;

use crate::broker::{BrokerSession, BrokerSink};
use crate::delivery::in_flight::{write_pending, InFlightDeliveries};
use crate::lifecycle::{Channels, Served};
use crate::media::links::MediaLinks;
use crate::media::proxy::{self as media_proxy, MediaProxy};
use crate::parts::{ChannelParts, Kit, Shared};
use crate::stream::StreamApps;
use crate::webhook::crc_self_check::loopback_if_wildcard;
use crate::webhook::identity::{AccountLookup, IdentityResolver};
use crate::webhook::server::{router, WebhookConfig, WebhookState};

pub use crate::parts::InboundError;

/// The inbound side, built and bound, ready to run.
pub struct Inbound {
    settings: Arc<Settings>,
    /// Keeps the RabbitMQ session the sink publishes through.
    supervisor: Supervisor,
    listener: Option<std::net::TcpListener>,
    /// What each channel's parts are built from, now and when channels change.
    kit: Kit,
    /// The channels served at startup, and their parts.
    initial: (ChannelMap, Vec<ChannelParts>),
    /// The registry [`Inbound::run`] follows.
    live: Arc<LiveChannels>,
    /// `true` while the webhook's server (and its media proxy) serves.
    serving: watch::Sender<bool>,
}

impl Inbound {
    /// Binds the webhook's address (when configured) and builds the X clients of
    /// the channels `live` serves now, so configuration mistakes show at startup;
    /// [`Inbound::run`] then follows `live`'s changes. The clients use the
    /// process's shared HTTP stack `http`; webhook bodies are routed by
    /// `identities`, which [`Inbound::identity_resolver`] completes. Of the
    /// polled channels, it polls those of this replica's `shares`.
    pub fn new(
        settings: Arc<Settings>,
        live: Arc<LiveChannels>,
        store: Arc<dyn StateStore>,
        states: Arc<ChannelStates>,
        http: XHttp,
        identities: Arc<ChannelIdentities>,
        shares: Arc<xbridge_sharing::Shares>,
    ) -> Result<Inbound, InboundError> {
        let listener = listener(&settings)?;
        let bound = listener.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Shared {
            store,
            sink: Arc::new(BrokerSink::default()),
            media: Arc::new(media_links(&settings, bound)),
            in_flight: Arc::new(InFlightDeliveries::default()),
            shares,
        };
        let kit = Kit::new(settings.clone(), http, bound, shared, states, identities);
        let current = live.current();
        let mut parts = Vec::new();
        for channel in current.values() {
            // The CRM's channels merged in before the sides were built, too.
            kit.know(&channel.settings);
            parts.push(kit.parts(channel.settings.clone())?);
        }
        Ok(Inbound {
            supervisor: crate::broker::supervisor(&settings),
            settings,
            listener,
            kit,
            initial: (current, parts),
            live,
            serving: watch::Sender::new(false),
        })
    }

    /// What learns the accounts of the channels that receive DMs here at
    /// startup: every channel when the webhook is served (one App's webhook
    /// brings the events of all its accounts, whatever their `inbound` mode),
    /// else the polled ones. Other channels are left to the outbound side, which
    /// asks X when it needs to. Channels added later are asked for as they come.
    pub fn identity_resolver(&self) -> IdentityResolver {
        let lookups = self
            .initial
            .1
            .iter()
            .filter(|parts| self.kit.receives(&parts.settings))
            .map(|parts| {
                let lookup = Arc::new(parts.client.clone()) as Arc<dyn AccountLookup>;
                (parts.settings.name.clone(), lookup)
            })
            .collect();
        IdentityResolver::new(self.kit.identities.clone(), lookups)
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

    /// Runs until `shutdown` is cancelled, serving the channels `live` names
    /// as it changes, one channel at a time.
    pub async fn run(self, shutdown: CancellationToken) {
        let Inbound {
            settings,
            supervisor,
            listener,
            kit,
            initial,
            live,
            serving,
        } = self;
        let shared = kit.shared.clone();
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
        let served = listener.is_some().then(|| served(&settings, &kit));
        // Its own delivery state, never served over HTTP: a stream channel gets no
        // webhook URL.
        let streams = StreamApps::new(
            settings.clone(),
            kit.http.clone(),
            shared.clone(),
            Arc::new(delivery_state(&settings, &kit)),
            shutdown.clone(),
        );
        let channels = Channels::start(kit, served.clone(), streams, initial, shutdown.clone());
        if let (Some(listener), Some(served)) = (listener, served) {
            let app = router(served.webhook).merge(media_proxy::router(served.media));
            let (limits, shutdown) = (settings.http.clone(), shutdown.clone());
            tasks.spawn(serve(listener, app, limits, serving, shutdown));
        }
        tasks.spawn(channels.follow(live));
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

/// X's webhook and the media proxy beside it, serving no channel yet: the
/// channels are added to both as they are served ([`Channels`]).
fn served(settings: &Settings, kit: &Kit) -> Served {
    let webhook = delivery_state(settings, kit);
    let shared = &kit.shared;
    let media = MediaProxy::new(
        shared.media.clone(),
        HashMap::new(),
        settings.inbound.media.max_bytes,
        settings.inbound.media.timeout,
    );
    Served {
        webhook: Arc::new(webhook),
        media: Arc::new(media),
    }
}

/// How webhook bodies (and activity stream lines) are routed and delivered: no channel yet.
fn delivery_state(settings: &Settings, kit: &Kit) -> WebhookState {
    let config = WebhookConfig {
        body_limit: settings.inbound.body_limit,
        body_memory: settings.inbound.body_memory,
        publish_echoes: settings.inbound.publish_echoes,
        publish_activity: settings.inbound.publish_activity,
    };
    let shared = &kit.shared;
    WebhookState::new(
        Vec::new(),
        shared.sink.clone(),
        shared.store.clone(),
        config,
    )
    .with_identities(kit.identities.clone())
    .with_media(shared.media.clone())
    .with_in_flight(shared.in_flight.clone())
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
