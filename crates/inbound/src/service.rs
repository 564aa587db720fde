//! The inbound service of one bridge process: keeps a confirm-mode
//! connection to RabbitMQ, serves X's webhook, and polls the channels that
//! are configured to be polled; the webhook's server also serves the media
//! proxy, whose signed URLs the published attachments carry. Stops on shutdown: the webhook finishes the
//! requests in flight, the pollers stop between polls, and only then the connection closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use secrecy::ExposeSecret as _;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use xbridge_core::amqp::{self, declare_topology, PublishError, Publisher, TopologyPlan};
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::{ChannelState, ChannelStates};
use xbridge_core::config::{ChannelSettings, Settings};
use xbridge_store::StateStore;
use xbridge_x_api::{WebhookClient, XClient, XHttp};

use crate::crc_self_check::{loopback_if_wildcard, CrcSelfCheck, LocalCrc};
use crate::delivery::InFlightDeliveries;
use crate::identity::{AccountLookup, IdentityResolver};
use crate::lease::{self, LeaseError, PollLease};
use crate::media::MediaLinks;
use crate::media_proxy::{self, MediaProxy};
use crate::poller::{poll_once, PollBudget, PollContext, PollError};
use crate::profiles::Profiles;
use crate::sink::{AmqpSink, EventSink, InboundDeadLetter, OutboundEvent, SinkError};
use crate::webhook::{router, WebhookChannel, WebhookConfig, WebhookState};
use crate::webhook_watch::{watch_webhook, AppListing, AppWebhooks, WebhookWatch};

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
    store: Arc<dyn StateStore>,
    sink: Arc<BrokerSink>,
    listener: Option<std::net::TcpListener>,
    pollers: Vec<PollContext>,
    profiles: Vec<(String, Arc<Profiles>)>,
    webhook_watches: Vec<WebhookWatch>,
    media: Arc<MediaLinks>,
    clients: HashMap<String, XClient>,
    /// Shared by the webhook and the pollers (see [`InFlightDeliveries`]).
    in_flight: Arc<InFlightDeliveries>,
    /// Every channel's account and App, shared with the outbound side.
    identities: Arc<ChannelIdentities>,
    /// `true` while the webhook's server (and its media proxy) serves.
    serving: watch::Sender<bool>,
}

impl Inbound {
    /// Binds the webhook's address (when configured) and builds the pollers'
    /// X clients, so configuration mistakes show at startup. The clients use
    /// the process's shared HTTP stack `http`; webhook bodies are routed by
    /// `identities`, which [`Inbound::identity_resolver`] completes.
    pub fn new(
        settings: Arc<Settings>,
        store: Arc<dyn StateStore>,
        states: Arc<ChannelStates>,
        http: XHttp,
        identities: Arc<ChannelIdentities>,
    ) -> Result<Inbound, InboundError> {
        let listener = match settings.inbound.listen {
            Some(addr) => {
                Some(
                    xbridge_core::server::bind(addr).map_err(|e| InboundError::Listen {
                        addr,
                        detail: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let sink = Arc::new(BrokerSink::default());
        let bound = listener.as_ref().and_then(|l| l.local_addr().ok());
        let media = Arc::new(media_links(&settings, bound));
        let mut profiles = Vec::new();
        let mut pollers = Vec::new();
        let mut webhook_watches = Vec::new();
        let mut clients = HashMap::new();
        let in_flight = Arc::new(InFlightDeliveries::default());
        // One webhook list per X App (by consumer key), shared by its channels' checks.
        let mut app_webhooks: HashMap<String, Arc<AppWebhooks>> = HashMap::new();
        for channel in &settings.channels {
            let client = client(&settings, channel, &http)?;
            clients.insert(channel.name.clone(), client.clone());
            if channel.inbound.uses_webhook() && !settings.inbound.webhook_check_interval.is_zero()
            {
                let app = app_webhooks
                    .entry(channel.consumer_key.expose_secret().to_owned())
                    .or_insert_with(|| AppWebhooks::new(settings.inbound.webhook_check_interval))
                    .clone();
                webhook_watches.push(WebhookWatch {
                    channel: channel.name.clone(),
                    x: Arc::new(AppListing {
                        x: Arc::new(webhook_client(&settings, channel, &http)?),
                        app,
                    }),
                    crc: crc_self_check(bound, channel),
                    app_channels: app_channels(&settings, channel),
                    interval: settings.inbound.webhook_check_interval,
                });
            }
            let channel_profiles = Arc::new(Profiles::new(
                client.clone(),
                settings.inbound.profile_cache_ttl,
            ));
            profiles.push((channel.name.clone(), channel_profiles.clone()));
            if channel.inbound.polls() {
                pollers.push(PollContext {
                    channel: channel.name.clone(),
                    own_user_id: channel.user_id.clone().unwrap_or_default(),
                    client,
                    store: store.clone(),
                    sink: sink.clone(),
                    publish_echoes: settings.inbound.publish_echoes,
                    backfill: (settings.inbound.backfill_days > 0).then(|| {
                        Duration::from_secs(u64::from(settings.inbound.backfill_days) * 86_400)
                    }),
                    profiles: Some(channel_profiles),
                    media: Some(media.clone()),
                    in_flight: in_flight.clone(),
                });
            }
        }
        Ok(Inbound {
            settings,
            states,
            store,
            sink,
            listener,
            pollers,
            profiles,
            webhook_watches,
            media,
            clients,
            in_flight,
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
                let client = self.clients.get(&c.name)?.clone();
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
        self.sink.ready.subscribe()
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
            store,
            sink,
            listener,
            pollers,
            profiles,
            webhook_watches,
            media,
            clients,
            in_flight,
            identities,
            serving,
        } = self;
        let mut tasks = JoinSet::new();
        // The connection outlives `shutdown` until every task that publishes
        // has stopped: the webhook's requests in flight at shutdown, which it
        // lets finish, get their events published and X its 200, instead of
        // finding the connection closed under them (a 503, or a confirm lost
        // after the publish, and X delivering the events again).
        let disconnect = CancellationToken::new();
        let connected = tokio::spawn(keep_connected(
            settings.clone(),
            sink.clone(),
            disconnect.clone(),
        ));
        // Records of delivered DMs the store could not take when they were made.
        tasks.spawn({
            let (in_flight, store, shutdown) = (in_flight.clone(), store.clone(), shutdown.clone());
            async move { crate::delivery::write_pending(&in_flight, store.as_ref(), shutdown).await }
        });

        if let Some(listener) = listener {
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
            let state = profiles.into_iter().fold(
                WebhookState::new(channels, sink.clone(), store, config)
                    .with_identities(identities)
                    .with_media(media.clone())
                    .with_in_flight(in_flight.clone()),
                |state, (channel, profiles)| state.with_profiles(&channel, profiles),
            );
            let state = Arc::new(state);
            let proxy = Arc::new(MediaProxy::new(
                media,
                clients,
                settings.inbound.media.max_bytes,
                settings.inbound.media.timeout,
            ));
            let app = router(state).merge(media_proxy::router(proxy));
            let shutdown = shutdown.clone();
            let limits = settings.http.clone();
            tasks.spawn(async move {
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!(%addr, "serving X's webhook and the media proxy");
                }
                serving.send_replace(true);
                let serve = xbridge_core::server::serve(
                    "webhook",
                    listener,
                    app,
                    &limits,
                    shutdown.clone(),
                );
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
            });
        }

        for ctx in pollers {
            let mode = settings
                .channel(&ctx.channel)
                .map(|c| c.inbound)
                .unwrap_or_default();
            let interval = if mode == xbridge_core::config::InboundMode::Both {
                settings.inbound.safety_poll_interval
            } else {
                settings.inbound.poll_interval
            };
            let credits = &settings.outbound.credits;
            let schedule = PollSchedule {
                interval,
                credits_pause_initial: credits.probe_initial,
                credits_pause_max: credits.probe_max,
            };
            let lease_queue = settings.amqp.topology.poll_lease_queue(&ctx.channel);
            tasks.spawn(poll_loop(
                ctx,
                states.clone(),
                schedule,
                lease_queue,
                sink.clone(),
                shutdown.clone(),
            ));
        }
        for watch in webhook_watches {
            tasks.spawn(watch_webhook(watch, states.clone(), shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
        disconnect.cancel();
        let _ = connected.await;
        tracing::info!("inbound stopped");
    }
}

/// The media URL signer of this process, from `[inbound.media]`: the configured key (or a
/// random one, with a warning), the public URL (or one derived from the bound webhook
/// address), and the allowed X origins plus the API base URL's (X serves
/// `/2/dm_conversations/media/…` there, and a simulator all its media). On every origin
/// only DM media paths are fetched ([`crate::media::is_dm_media`]): the API origin's other
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

/// Failed polls in a row (other than credits and rate limits) after which the
/// channel is reported as `polling_paused`.
const POLL_FAILURES_BEFORE_PAUSED: u32 = 3;

/// When one channel's polls happen.
#[derive(Debug, Clone, Copy)]
struct PollSchedule {
    /// Between polls.
    interval: Duration,
    /// The first pause while the account's credits are out; it doubles...
    credits_pause_initial: Duration,
    /// ...up to this.
    credits_pause_max: Duration,
}

/// Polls one channel until shutdown, but only while this replica holds the
/// channel's poll lease ([`crate::lease`]): contends for it on the inbound
/// connection, waits while another replica holds it, polls once it is held,
/// and stops polling (and contends again on the next connection) when it is
/// lost. `xbridge_poll_lease_held{channel}` is 1 while held.
async fn poll_loop(
    ctx: PollContext,
    states: Arc<ChannelStates>,
    schedule: PollSchedule,
    lease_queue: String,
    sink: Arc<BrokerSink>,
    shutdown: CancellationToken,
) {
    let channel = ctx.channel.clone();
    let held = metrics::gauge!("xbridge_poll_lease_held", "channel" => channel.clone());
    held.set(0.0);
    let mut connections = sink.connection.subscribe();
    let mut retry = amqp::reconnect_backoff();
    // Kept between leases: the page size is about the account, not the holder.
    let mut budget = PollBudget::default();
    loop {
        // No point reading (and paying for) events that cannot be published,
        // and no lease without a connection.
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return,
            connection = connections.wait_for(Option::is_some) => match connection {
                Ok(connection) => connection.clone(),
                Err(_) => return,
            },
        };
        let Some(connection) = connection else {
            continue;
        };
        let contended =
            PollLease::contend(&connection, &lease_queue, &channel, lease::RENEW_EVERY).await;
        drop(connection);
        let mut lease = match contended {
            Ok(lease) => lease,
            Err(error) => {
                let wait = retry.next().unwrap_or(Duration::from_secs(15));
                tracing::warn!(channel, error = %error, retry_in_ms = wait.as_millis() as u64, "cannot contend for the poll lease");
                // A new connection (the old one broke) or the pause, whichever first.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = connections.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        tracing::debug!(channel, queue = %lease_queue, "contending for the poll lease");
        let acquired = tokio::select! {
            _ = shutdown.cancelled() => {
                lease.release().await;
                return;
            }
            acquired = lease.acquired() => acquired,
        };
        if let Err(error) = acquired {
            tracing::info!(channel, error = %error, "stopped waiting for the poll lease");
            continue;
        }
        retry = amqp::reconnect_backoff();
        held.set(1.0);
        tracing::info!(
            channel,
            "poll lease acquired: this replica polls the channel"
        );
        let ended =
            poll_while_held(&ctx, &mut lease, &mut budget, &states, schedule, &shutdown).await;
        held.set(0.0);
        match ended {
            None => {
                lease.release().await;
                tracing::info!(channel, "poll lease released on shutdown");
                return;
            }
            Some(error) => {
                tracing::info!(channel, error = %error, "poll lease lost: this replica stopped polling the channel");
                lease.release().await;
            }
        }
    }
}

/// Reports `polling_paused` for a channel that is `ok`, and only then: every
/// other state says more (credentials, credits, rate limit and permission stop
/// replies; `webhook_invalid` outranks paused polling), and overwriting it would
/// hide that cause. It would also make the poller and whoever reported the
/// other state take turns, each turn a `channel.state` for the CRM: a failed
/// poll every interval against the webhook check, or against each reply that
/// fails the same way.
fn report_polling_paused(states: &ChannelStates, channel: &str, detail: String) {
    if states.get(channel).map(|status| status.state) == Some(ChannelState::Ok) {
        states.set(channel, ChannelState::PollingPaused, None, Some(detail));
    }
}

/// Polls `ctx`'s channel while `lease` is held: every `interval`, sooner after
/// a rate-limit reset, and with a growing pause while its credits are out.
/// `None` on shutdown, else why the lease ended.
async fn poll_while_held(
    ctx: &PollContext,
    lease: &mut PollLease,
    budget: &mut PollBudget,
    states: &ChannelStates,
    schedule: PollSchedule,
    shutdown: &CancellationToken,
) -> Option<LeaseError> {
    let channel = ctx.channel.clone();
    let interval = schedule.interval;
    let mut credits_pause = schedule.credits_pause_initial;
    let mut failures_in_a_row = 0u32;
    loop {
        // The broker may have given the lease to another replica while this
        // one could not hear it (a partition): ask before every poll.
        if let Err(error) = lease.confirm(lease::CONFIRM_TIMEOUT).await {
            return Some(error);
        }
        // Not cut short by shutdown: pollers stop between polls.
        let result = poll_once(ctx, budget).await;
        if result.is_err() {
            metrics::counter!("xbridge_poll_errors_total", "channel" => channel.clone())
                .increment(1);
        }
        let wait = match result {
            Ok(outcome) => {
                failures_in_a_row = 0;
                metrics::counter!("xbridge_dm_events_read_total", "channel" => channel.clone())
                    .increment(outcome.events_read as u64);
                // Poll lag is `time() - this` in Prometheus.
                metrics::gauge!(
                    "xbridge_last_poll_success_timestamp_seconds",
                    "channel" => channel.clone()
                )
                .set(Utc::now().timestamp() as f64);
                // Polling owns these two states; others are the sends' to clear.
                if matches!(
                    states.get(&channel).map(|s| s.state),
                    Some(ChannelState::CreditsExhausted | ChannelState::PollingPaused)
                ) {
                    states.set(&channel, ChannelState::Ok, None, None);
                }
                credits_pause = schedule.credits_pause_initial;
                if outcome.delivered > 0 {
                    tracing::info!(
                        channel,
                        delivered = outcome.delivered,
                        pages = outcome.pages,
                        events_read = outcome.events_read,
                        "poll delivered new DMs"
                    );
                }
                interval
            }
            Err(PollError::RateLimited { until }) => until
                .and_then(|at| (at - Utc::now()).to_std().ok())
                .unwrap_or(interval)
                .max(interval),
            Err(PollError::CreditsExhausted(error)) => {
                states.set(
                    &channel,
                    ChannelState::CreditsExhausted,
                    None,
                    Some(format!("polling paused: {error}")),
                );
                tracing::warn!(channel, error = %error, retry_in_secs = credits_pause.as_secs(), "polling paused: the X account has no credits");
                let wait = credits_pause;
                credits_pause = (credits_pause * 2).min(schedule.credits_pause_max);
                wait
            }
            Err(error) => {
                failures_in_a_row += 1;
                tracing::warn!(channel, error = %error, failures_in_a_row, "poll failed");
                if failures_in_a_row >= POLL_FAILURES_BEFORE_PAUSED {
                    report_polling_paused(
                        states,
                        &channel,
                        format!("polling keeps failing: {error}"),
                    );
                }
                interval
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            error = lease.ended() => return Some(error),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Keeps a confirm-mode publisher on a live connection for the sink, and
/// makes a new one when the old one breaks.
async fn keep_connected(
    settings: Arc<Settings>,
    sink: Arc<BrokerSink>,
    shutdown: CancellationToken,
) {
    let mut backoff = amqp::reconnect_backoff();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match connect(&settings).await {
            Ok((connection, publisher)) => {
                backoff = amqp::reconnect_backoff();
                let mut events = Box::pin(connection.events_listener());
                let connection = Arc::new(connection);
                sink.set(Some(
                    AmqpSink::new(
                        publisher.clone(),
                        settings.amqp.topology.incoming_exchange.clone(),
                    )
                    .with_dead_letters(settings.amqp.topology.dead_letter_exchange.clone()),
                ));
                // The poll leases live on this connection too.
                sink.connection.send_replace(Some(connection.clone()));
                tracing::info!("inbound connected: events can be published");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = sink.broken.notified() => {
                        tracing::warn!("inbound lost its RabbitMQ connection; reconnecting");
                    }
                    // Without a publish to fail, only the connection tells:
                    // the poll leases on it are gone, so reconnect.
                    error = connection_failed(&connection, &mut events) => {
                        tracing::warn!(error = %error, "inbound lost its RabbitMQ connection; reconnecting");
                    }
                }
                sink.set(None);
                sink.connection.send_replace(None);
                // Held until here, so its channel is closed before the
                // connection (see amqp::close_channels).
                amqp::close_channels(&[publisher.channel().clone()]).await;
                amqp::close(&connection, 200, "xbridge inbound stopping").await;
            }
            Err(e) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(15));
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "inbound cannot reach RabbitMQ");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// How often the inbound connection's state is looked at, for closes that
/// come without an error event (the broker closing it, for one).
const CONNECTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Waits until `connection` fails: `events` reports an error (which a broker
/// closing one of its channels also does), or its state is no longer
/// connected. What it says happened.
async fn connection_failed(
    connection: &lapin::Connection,
    events: &mut (impl futures::Stream<Item = lapin::Event> + Unpin),
) -> String {
    use futures::StreamExt as _;
    let mut check = tokio::time::interval(CONNECTION_CHECK_INTERVAL);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) => return error.to_string(),
                Some(_) => {}
                None => return "the connection closed".to_owned(),
            },
            _ = check.tick() => {
                if !connection.status().connected() {
                    return "the connection closed".to_owned();
                }
            }
        }
    }
}

async fn connect(settings: &Settings) -> Result<(lapin::Connection, Publisher), String> {
    let connection = amqp::connect(&settings.amqp.url, "xbridge inbound")
        .await
        .map_err(|e| e.to_string())?;
    let publisher = Publisher::open(&connection)
        .await
        .map_err(|e| e.to_string())?;
    let plan = TopologyPlan::for_settings(settings);
    declare_topology(publisher.channel(), &plan)
        .await
        .map_err(|e| format!("declaring the topology failed: {e}"))?;
    Ok((connection, publisher))
}

/// An [`EventSink`] that outlives connections: publishes through the current
/// connection's publisher, refuses (so the webhook answers 503 and X retries)
/// while there is none, and reports a broken connection.
#[derive(Default)]
struct BrokerSink {
    current: RwLock<Option<AmqpSink>>,
    ready: watch::Sender<bool>,
    broken: Notify,
    /// The current connection, for the poll leases.
    connection: watch::Sender<Option<Arc<lapin::Connection>>>,
}

impl BrokerSink {
    fn set(&self, sink: Option<AmqpSink>) {
        let ready = sink.is_some();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = sink;
        self.ready.send_replace(ready);
    }
}

impl BrokerSink {
    /// The current connection's sink, or why there is none.
    fn current(&self) -> Result<AmqpSink, SinkError> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| SinkError::Unavailable("not connected to RabbitMQ".into()))
    }

    /// Passes `result` on, first reporting a broken connection.
    fn noticed<T>(&self, result: Result<T, SinkError>) -> Result<T, SinkError> {
        if let Err(SinkError::Publish(PublishError::Broker(_))) = &result {
            self.broken.notify_one();
        }
        result
    }
}

#[async_trait]
impl EventSink for BrokerSink {
    async fn publish(&self, event: &OutboundEvent) -> Result<(), SinkError> {
        let sink = self.current()?;
        self.noticed(sink.publish(event).await)
    }

    async fn dead_letter(&self, letter: &InboundDeadLetter) -> Result<(), SinkError> {
        let sink = self.current()?;
        self.noticed(sink.dead_letter(letter).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_polling_does_not_replace_a_state_that_says_more() {
        for other in [
            ChannelState::WebhookInvalid,
            ChannelState::Unauthorized,
            ChannelState::MissingPermission,
            ChannelState::CreditsExhausted,
            ChannelState::RateLimited,
        ] {
            let states = ChannelStates::new(["acme"]);
            states.set("acme", other, None, Some("why".into()));
            let mut changes = states.subscribe();
            report_polling_paused(&states, "acme", "polling keeps failing".into());
            assert_eq!(states.get("acme").unwrap().state, other);
            assert!(
                changes.try_recv().is_err(),
                "{other:?}: nothing for the CRM"
            );
        }
        let states = ChannelStates::new(["acme"]);
        report_polling_paused(&states, "acme", "polling keeps failing".into());
        assert_eq!(
            states.get("acme").unwrap().state,
            ChannelState::PollingPaused
        );
    }
}
