//! The control consumer: the CRM's commands that add, change, pause and remove channels
//! while the bridge runs, and the only writer of the CRM's channels.
//!
//! - [`diagnosis`]: the credential check against X, shared with `xbridge check`;
//! - `record.rs`: a CRM channel as the store keeps it (credentials sealed) and back;
//! - `registry.rs`: the store's CRM channels read into, and written from, the live map;
//! - `apply.rs`: one command checked, applied and answered (or refused whole);
//! - `grant_undo.rs`: an OAuth 2.0 grant a refused command's check replaced, put back;
//! - `session.rs`: the RabbitMQ session: the command queue, whose single active
//!   consumer makes exactly one replica handle each command, and this replica's queue
//!   of change notices, which tells every replica to read a changed channel again.
//!
//! Only the store and the live map change here; both directions follow the live map.

#![warn(missing_docs)]

mod apply;
pub mod diagnosis;
mod grant_undo;
mod record;
mod registry;
mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xbridge_amqp::{SessionLog, Supervisor};
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::Settings;
use xbridge_core::live_channels::LiveChannels;
use xbridge_store::{CredentialsKey, SealError, StateStore, StoreError};
use xbridge_x_api::XClientConfig;

pub use session::{dead_letter_name, SessionError};

use apply::Applier;
use registry::Registry;
use session::ControlSession;

/// Why the CRM's channels could not be read at start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `state.credentials_key` is not usable.
    #[error(transparent)]
    Key(#[from] SealError),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Serves the CRM's channels the store holds, beside the file's (a file channel of
/// the same name wins, warned): what brings them back after a restart. Without
/// `state.credentials_key` nothing can be opened, so nothing is read.
pub async fn load_crm_channels(
    settings: &Settings,
    store: Arc<dyn StateStore>,
    live: Arc<LiveChannels>,
) -> Result<(), LoadError> {
    if settings.state.credentials_key.is_none() {
        return Ok(());
    }
    let key = Arc::new(settings.state.credentials_key()?);
    Registry::new(store, key, live).load_all().await?;
    Ok(())
}

/// The CRM's channels in the store, read again on demand: a reload that removes
/// a file channel serves the CRM's record of that name again, if the store has one.
#[derive(Clone)]
pub struct StoredChannels {
    registry: Arc<Registry>,
}

impl StoredChannels {
    /// The store's CRM channels for `live`, or `None` without
    /// `state.credentials_key` (nothing stored can be opened).
    pub fn new(
        settings: &Settings,
        store: Arc<dyn StateStore>,
        live: Arc<LiveChannels>,
    ) -> Result<Option<StoredChannels>, SealError> {
        if settings.state.credentials_key.is_none() {
            return Ok(None);
        }
        let key = Arc::new(settings.state.credentials_key()?);
        Ok(Some(StoredChannels {
            registry: Arc::new(Registry::new(store, key, live)),
        }))
    }

    /// Reads `names` again from the store and serves what it holds for them.
    /// One that cannot be read now is logged; the control consumer reads every
    /// CRM channel again each minute.
    pub async fn reread(&self, names: &[String]) {
        for name in names {
            if let Err(error) = self.registry.refresh(name).await {
                tracing::warn!(channel = %name, %error, "cannot read the CRM's channel of this name from the store; it is read again within a minute");
            }
        }
    }
}

/// The control consumer of one bridge.
pub struct Control {
    supervisor: Supervisor,
    session: ControlSession,
}

impl Control {
    /// The consumer for `settings`, or `None` when `amqp.control.allowed_users` is
    /// empty (control off).
    pub fn new(
        settings: Arc<Settings>,
        store: Arc<dyn StateStore>,
        live: Arc<LiveChannels>,
        states: Arc<ChannelStates>,
        identities: Arc<ChannelIdentities>,
    ) -> Result<Option<Control>, SealError> {
        if !settings.amqp.control.enabled() {
            return Ok(None);
        }
        let key: Arc<CredentialsKey> = Arc::new(settings.state.credentials_key()?);
        let applier = Arc::new(Applier {
            registry: Registry::new(store, key, live),
            control: settings.amqp.control.clone(),
            x: XClientConfig::from(&settings.x),
            x_settings: settings.x.clone(),
            states,
            identities,
            max_channels: settings.amqp.max_channels,
            checks: Default::default(),
        });
        let supervisor = Supervisor::new(
            settings.amqp.brokers.clone(),
            "xbridge control",
            SessionLog {
                retrying: "control cannot start on RabbitMQ; retrying",
                lost: "control lost its RabbitMQ connection; reconnecting",
            },
            Duration::from_secs(5),
        );
        Ok(Some(Control {
            supervisor,
            session: ControlSession { settings, applier },
        }))
    }

    /// `true` while commands are consumed.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.supervisor.readiness()
    }

    /// Consumes commands and change notices until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        self.supervisor.run(self.session, shutdown).await;
    }
}
