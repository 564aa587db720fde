//! The outbound service: builds the context of every channel served at
//! startup, and runs the outbound session ([`crate::session`]) under the
//! shared supervisor, which connects, starts over after a lost connection,
//! and on shutdown lets in-flight sends finish within a grace period.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use xbridge_amqp::Supervisor;
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::Settings;
use xbridge_core::live_channels::LiveChannels;
use xbridge_sharing::Shares;
use xbridge_store::StateStore;
use xbridge_x_api::XHttp;

use crate::channel_contexts::{ChannelContexts, ContextBuilder};
use crate::media::MediaFetcher;
use crate::session::ReplySession;
use crate::OutboundError;

/// The outbound side of one bridge process.
pub struct Outbound {
    supervisor: Supervisor,
    session: ReplySession,
}

impl Outbound {
    /// Builds the X client and state of every channel served now, the
    /// clients on the process's shared HTTP stack `http` (one connection pool
    /// and TLS configuration for all channels, since they all talk to X),
    /// sharing the channels' accounts through `identities`; the session then
    /// follows `live` while it runs, consuming the channels of this replica's
    /// `shares`. Fails only on a client that cannot be
    /// built (bad base URL).
    pub fn new(
        settings: Arc<Settings>,
        live: Arc<LiveChannels>,
        store: Arc<dyn StateStore>,
        states: Arc<ChannelStates>,
        http: XHttp,
        identities: Arc<ChannelIdentities>,
        shares: Arc<Shares>,
    ) -> Result<Outbound, OutboundError> {
        let mut contexts = ChannelContexts::new(ContextBuilder {
            settings: settings.clone(),
            store,
            states: states.clone(),
            identities,
            media: Arc::new(MediaFetcher::new(settings.outbound.media.clone())?),
            http,
        });
        // Built here so that a client that cannot be built fails the start;
        // the first session starts their consumers.
        for channel in live.current().values() {
            contexts.upsert(channel)?;
        }
        Ok(Outbound {
            supervisor: crate::session::supervisor(&settings),
            session: ReplySession {
                settings,
                states,
                live,
                contexts,
                published_states: Arc::default(),
                shares,
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
