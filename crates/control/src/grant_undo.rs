//! An OAuth 2.0 channel's grant as it was before a `channel.upsert`'s credential check,
//! put back when the command is refused after it. The check asks X with the command's
//! settings, and a new `oauth2_refresh_token` is spent then and its grant stored over the
//! channel's (X rotated it: it cannot wait for the verdict). A refused command must leave
//! nothing behind: not another account's grant for the served channel to send as.

use xbridge_core::config::ChannelSettings;
use xbridge_store::{GrantBase, GrantWrite, OAuth2GrantRow, StateStore, StoreError};

/// The grant before the check (`None`: there was none).
pub struct GrantBefore {
    name: String,
    row: Option<OAuth2GrantRow>,
}

impl GrantBefore {
    /// The grant of `settings`' channel now, if it is an OAuth 2.0 channel.
    pub async fn read(
        store: &dyn StateStore,
        settings: &ChannelSettings,
    ) -> Result<Option<GrantBefore>, StoreError> {
        if settings.oauth2.is_none() {
            return Ok(None);
        }
        Ok(Some(GrantBefore {
            name: settings.name.clone(),
            row: store.oauth2_grant(&settings.name).await?,
        }))
    }

    /// Puts the grant back if the check stored another: over the generation it stored
    /// (a newer one is left alone), with the refused mark it had; deleted if there was
    /// none. The old grant's refresh token is still good at X: only the command's was spent.
    pub async fn restore(self, store: &dyn StateStore) -> Result<(), StoreError> {
        let Some(now) = store.oauth2_grant(&self.name).await? else {
            return Ok(());
        };
        if self.row.as_ref().map(|r| r.generation) == Some(now.generation) {
            return Ok(());
        }
        match self.row {
            None => {
                store.delete_oauth2_grant(&self.name).await?;
            }
            Some(row) => {
                let base = GrantBase::Generation(now.generation);
                let written = store
                    .store_oauth2_grant(&self.name, base, &row.sealed, row.expires_at)
                    .await?;
                if let (GrantWrite::Stored(generation), true) = (written, row.refused) {
                    store.mark_oauth2_refused(&self.name, generation).await?;
                }
            }
        }
        tracing::info!(channel = %self.name, "the OAuth 2.0 grant a refused command's check stored is undone");
        Ok(())
    }
}
