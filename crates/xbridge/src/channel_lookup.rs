//! Which channel an operator's command names: one of the config file, or one the CRM
//! created (kept in the state store), found as the bridge serves them (a file channel
//! of the same name wins). One lookup for `xbridge check` and `xbridge oauth2
//! authorize`, so a channel one of them finds the other finds too.

use std::sync::Arc;

use xbridge_core::config::{ChannelSettings, Settings};
use xbridge_core::live_channels::{LiveChannels, Origin};
use xbridge_store::StateStore;

/// The channels the CRM created, read from `store` as the bridge serves them: none
/// without `state.credentials_key` (nothing stored can be opened). A store that cannot
/// be read with the key is an error.
pub async fn crm_channels(
    settings: &Settings,
    store: Arc<dyn StateStore>,
) -> anyhow::Result<Vec<ChannelSettings>> {
    let live = Arc::new(LiveChannels::new(&settings.channels));
    xbridge_control::load_crm_channels(settings, store, live.clone()).await?;
    Ok(live
        .current()
        .values()
        .filter(|c| c.origin == Origin::Crm)
        .map(|c| (*c.settings).clone())
        .collect())
}

/// Channel `name` of the config file or, failing that, of the CRM's in `store`.
pub async fn find_channel(
    settings: &Settings,
    store: Arc<dyn StateStore>,
    name: &str,
) -> anyhow::Result<ChannelSettings> {
    if let Some(channel) = settings.channels.iter().find(|c| c.name == name) {
        return Ok(channel.clone());
    }
    crm_channels(settings, store)
        .await?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| {
            anyhow::anyhow!("no channel named {name:?} in the configuration or the CRM's channels")
        })
}
