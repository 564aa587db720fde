//! The store's key-check record: replicas with different
//! `state.credentials_key`s would each seal channels the others cannot open,
//! and only find out channel by channel. So the first key to use a store
//! leaves a constant sealed with it there ([`CredentialsKey::seal_key_check`]);
//! a key that cannot open it is refused as a whole, before any channel.

use crate::sealed::{CredentialsKey, SealError, SealedCredentials};
use crate::{StateStore, StoreError};

/// Why `state.credentials_key` cannot be used with this store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyCheckError {
    /// The store's credentials were sealed with another key.
    #[error("state.credentials_key does not match the key this store was sealed with: every replica needs the key the store's credentials were first sealed with")]
    Mismatch,
    /// The key-check record could not be sealed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks that `key` is the key `store` is sealed with, recording it if the
/// store has none yet: call it before the registry seals or opens anything.
pub async fn check_credentials_key(
    store: &dyn StateStore,
    key: &CredentialsKey,
) -> Result<(), KeyCheckError> {
    let candidate = key.seal_key_check()?;
    let stored = store.keep_key_check(candidate.as_bytes()).await?;
    if key.opens_key_check(&SealedCredentials::from_stored(stored)) {
        Ok(())
    } else {
        tracing::error!("state.credentials_key does not open the store's key-check record");
        Err(KeyCheckError::Mismatch)
    }
}
