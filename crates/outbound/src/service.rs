//! The outbound service: builds every channel's context, and runs the
//! outbound session ([`crate::session`]) under the shared supervisor, which
//! connects, starts over after a lost connection, and on shutdown lets
//! in-flight sends finish within a grace period.

use std::sync::Arc;

use rand::seq::SliceRandom as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::Supervisor;
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{ChannelSettings, Settings};
use xbridge_core::live_channels::LiveChannels;
use xbridge_store::StateStore;
use xbridge_x_api::{XClient, XHttp};

use crate::context::ChannelContext;
use crate::credits::CreditsGate;
use crate::fate::Policy;
use crate::media::MediaFetcher;
use crate::ordering::ParkedReplies;
use crate::session::ReplySession;
use crate::OutboundError;

/// The outbound side of one bridge process.
pub struct Outbound {
    supervisor: Supervisor,
    session: ReplySession,
}

impl Outbound {
    /// Builds every channel's X client and state, the clients on the
    /// process's shared HTTP stack `http` (one connection pool and TLS
    /// configuration for all channels, since they all talk to X), sharing the
    /// channels' accounts through `identities`. Fails only on a client that
    /// cannot be built (bad base URL).
    pub fn new(
        settings: Arc<Settings>,
        live: Arc<LiveChannels>,
        store: Arc<dyn StateStore>,
        states: Arc<ChannelStates>,
        http: XHttp,
        identities: Arc<ChannelIdentities>,
    ) -> Result<Outbound, OutboundError> {
        let shared = Shared {
            store,
            states: states.clone(),
            identities,
            media: Arc::new(MediaFetcher::new(settings.outbound.media.clone())?),
            http,
        };
        let mut channels = live
            .current()
            .values()
            .map(|channel| shared.context(&settings, &channel.settings))
            .collect::<Result<Vec<_>, OutboundError>>()?;
        // Reply queues are single-active-consumer queues: of the replicas
        // consuming a channel's queue, the one that registered first is the
        // active one. Registering in an order of this process's own makes
        // replicas started together split the channels between them instead
        // of one replica winning every channel.
        channels.shuffle(&mut rand::rng());
        Ok(Outbound {
            supervisor: crate::session::supervisor(&settings),
            session: ReplySession {
                settings,
                states,
                channels,
                published_states: Arc::default(),
            },
        })
    }

    /// `true` while connected with the topology declared and every consumer
    /// running: what a readiness probe (or a test) waits for.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.supervisor.readiness()
    }

    /// Runs until `shutdown` is cancelled, reconnecting as often as needed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), OutboundError> {
        self.supervisor.run(self.session, shutdown).await;
        tracing::info!("outbound stopped");
        Ok(())
    }
}

/// What every channel's context shares.
struct Shared {
    store: Arc<dyn StateStore>,
    states: Arc<ChannelStates>,
    identities: Arc<ChannelIdentities>,
    media: Arc<MediaFetcher>,
    http: XHttp,
}

impl Shared {
    /// `channel`'s context, with its X client on the shared HTTP stack.
    fn context(
        &self,
        settings: &Settings,
        channel: &ChannelSettings,
    ) -> Result<Arc<ChannelContext>, OutboundError> {
        let client = XClient::with_http((&settings.x).into(), channel.into(), self.http.clone())
            .map_err(|e| OutboundError::Client {
                channel: channel.name.clone(),
                detail: e.to_string(),
            })?;
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
