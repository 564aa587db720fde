//! Whether the state store can write: for the health endpoints and the
//! metrics (an operator must see a full disk, not guess it from silence), and
//! for the callers that wait until the store heals instead of failing over and
//! over.
//!
//! A store flips it to "cannot write" when a write fails because of the store
//! as a whole (an I/O error, a database that refuses writes or cannot be
//! reached), and back once a write (or the store's own probe) succeeds.

use std::sync::Arc;

use tokio::sync::watch;

use crate::StoreError;

/// The store's ability to write, shared by the store and whoever watches it.
/// Cloning shares it.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    writable: Arc<watch::Sender<bool>>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth::new()
    }
}

impl StoreHealth {
    /// A store that can write (every store starts so: it just opened).
    pub fn new() -> StoreHealth {
        metrics::gauge!("xbridge_state_store_writable").set(1.0);
        StoreHealth {
            writable: Arc::new(watch::Sender::new(true)),
        }
    }

    /// Whether the last write (or probe) succeeded.
    pub fn is_writable(&self) -> bool {
        *self.writable.borrow()
    }

    /// Follows every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.writable.subscribe()
    }

    /// Resolves once the store can write (at once if it can).
    pub async fn wait_writable(&self) {
        let mut writable = self.writable.subscribe();
        // The sender lives as long as `self`.
        let _ = writable.wait_for(|writable| *writable).await;
    }

    /// A write failed with `error`: counted, and when the store as a whole
    /// cannot write, the store is marked so.
    pub fn write_failed(&self, error: &StoreError) {
        metrics::counter!("xbridge_state_store_write_failures_total").increment(1);
        if error.is_unavailable() && self.writable.send_replace(false) {
            metrics::gauge!("xbridge_state_store_writable").set(0.0);
            tracing::error!(%error, "the state store cannot write; replies and DMs wait until it can");
        }
    }

    /// A write (or the store's probe) succeeded: the store can write.
    pub fn write_succeeded(&self) {
        if !self.writable.send_replace(true) {
            metrics::gauge!("xbridge_state_store_writable").set(1.0);
            tracing::info!("the state store writes again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unavailable_store_is_unwritable_until_a_write_succeeds() {
        let health = StoreHealth::new();
        assert!(health.is_writable());
        health.write_failed(&StoreError::Failed("a bad record".into()));
        assert!(
            health.is_writable(),
            "one bad write says nothing of the store"
        );
        health.write_failed(&StoreError::Unavailable("disk full".into()));
        assert!(!health.is_writable());

        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.wait_writable().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        health.write_succeeded();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .unwrap();
        assert!(health.is_writable());
    }
}
