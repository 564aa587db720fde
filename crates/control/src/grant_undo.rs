//! An OAuth 2.0 channel's grant as it was before a `channel.upsert`'s credential check,
//! put back when the command is refused after it. The check asks X with the command's
//! settings: a new `oauth2_refresh_token` (one the stored grant does not descend from) is
//! spent then and its grant stored over the channel's, since X rotated it and it cannot
//! wait for the verdict. A refused command must leave nothing behind: not another
//! account's grant for the served channel to send as, nor a refused mark its spent token
//! put on the channel's grant.
//!
//! Only what the command's token did is undone. Without a new token the check can only
//! have refreshed the channel's own grant, whose old refresh token X has spent since:
//! putting the old row back would lose the channel.

use std::sync::Arc;

use secrecy::SecretString;
use xbridge_core::config::ChannelSettings;
use xbridge_core::oauth2_held::ProcessGrants;
use xbridge_core::oauth2_tokens::{is_new_authorisation, sealed_seeds, seed_digest};
use xbridge_store::{
    CredentialsKey, GrantBase, GrantWrite, OAuth2GrantRow, StateStore, StoreError,
};

/// The grant before the check, when the command carries a new authorisation over it.
pub struct GrantBefore {
    name: String,
    row: Option<OAuth2GrantRow>,
    /// The command's refresh token, which the check spends.
    token: SecretString,
    key: Arc<CredentialsKey>,
}

impl GrantBefore {
    /// The grant of `settings`' channel now, if the check may replace it: an OAuth 2.0
    /// channel whose settings carry a refresh token the stored grant does not descend from.
    pub async fn read(
        store: &dyn StateStore,
        key: Arc<CredentialsKey>,
        settings: &ChannelSettings,
    ) -> Result<Option<GrantBefore>, StoreError> {
        let Some(token) = settings
            .oauth2
            .as_ref()
            .and_then(|o| o.refresh_token.clone())
        else {
            return Ok(None);
        };
        let row = store.oauth2_grant(&settings.name).await?;
        if let Some(row) = &row {
            // A grant that does not open is replaced by the check as well.
            let seeds = sealed_seeds(&key, &settings.name, &row.sealed);
            if seeds.is_some_and(|seeds| !is_new_authorisation(&token, seeds.as_deref())) {
                return Ok(None);
            }
        }
        Ok(Some(GrantBefore {
            name: settings.name.clone(),
            row,
            token,
            key,
        }))
    }

    /// Undoes what the command's token did to the grant:
    /// - its grant stored right over the old one: the old one is put back (its refresh
    ///   token is unspent: only the command's was), or deleted if there was none;
    /// - its grant refreshed since (a newer generation of it): nothing of the old one is
    ///   left to put back, so it is marked refused (the channel says to authorise again)
    ///   rather than sending as the command's account;
    /// - X refused the token and the check marked the old grant refused: the old grant is
    ///   stored again, unrefused.
    ///
    /// Then this process's held token of the channel is dropped, so its sources read the
    /// store at their next use instead of sending with the command's.
    pub async fn restore(self, store: &dyn StateStore) -> Result<(), StoreError> {
        let Some(now) = store.oauth2_grant(&self.name).await? else {
            return Ok(());
        };
        let digest = seed_digest(&self.token);
        let from_command = sealed_seeds(&self.key, &self.name, &now.sealed)
            .flatten()
            .is_some_and(|seeds| seeds.contains(&digest));
        let undone = match (&self.row, from_command) {
            (None, true) => {
                store.delete_oauth2_grant(&self.name).await?;
                true
            }
            (Some(before), true) if now.generation == before.generation + 1 => {
                self.put_back(store, before, now.generation).await?;
                true
            }
            (Some(_), true) => {
                tracing::warn!(channel = %self.name, "the grant a refused command's check stored was refreshed since; it is marked refused, the channel must be authorised again");
                store
                    .mark_oauth2_refused(&self.name, now.generation)
                    .await?;
                true
            }
            (Some(before), false)
                if now.generation == before.generation && now.refused && !before.refused =>
            {
                self.put_back(store, before, now.generation).await?;
                true
            }
            _ => false,
        };
        if undone {
            ProcessGrants::global().forget_access(&self.name);
            tracing::info!(channel = %self.name, "the OAuth 2.0 grant a refused command's check stored is undone");
        }
        Ok(())
    }

    /// Stores `before` again over generation `over`, with the refused mark it had.
    async fn put_back(
        &self,
        store: &dyn StateStore,
        before: &OAuth2GrantRow,
        over: u64,
    ) -> Result<(), StoreError> {
        let base = GrantBase::Generation(over);
        let written = store
            .store_oauth2_grant(&self.name, base, &before.sealed, before.expires_at)
            .await?;
        if let (GrantWrite::Stored(generation), true) = (written, before.refused) {
            store.mark_oauth2_refused(&self.name, generation).await?;
        }
        Ok(())
    }
}
