//! The retention of sent and delivered records: what a prune removed, and
//! the background task that prunes at an interval.
//!
//! Every reply sent and every DM delivered leaves a record, and nothing else
//! ever removes one, so without pruning the state grows for as long as the
//! bridge runs. A record is needed only while something can still ask for it:
//! a RabbitMQ redelivery of the reply, or X returning the DM (its DM history
//! reaches 30 days back). Records older than the retention are removed by
//! [`StateStore::prune`], in small batches so the hot path's writes go on
//! between them; channels, the registry and poll cursors are never pruned.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;

use crate::StateStore;

/// How many records one [`StateStore::prune`] removed, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Records of sent replies.
    pub sent_replies: u64,
    /// Records of the parts of replies sent as several DMs.
    pub sent_reply_parts: u64,
    /// Send intents (a part about to go to X).
    pub send_intents: u64,
    /// The bridge's own DM event ids (echo detection).
    pub own_sends: u64,
    /// Ids of inbound DM events that reached the CRM.
    pub delivered_events: u64,
}

impl Pruned {
    /// Each kind's count with its table's name, as the metric labels it.
    pub fn by_table(&self) -> [(&'static str, u64); 5] {
        [
            ("sent_replies", self.sent_replies),
            ("sent_reply_parts", self.sent_reply_parts),
            ("send_intents", self.send_intents),
            ("own_sends", self.own_sends),
            ("delivered_events", self.delivered_events),
        ]
    }

    /// Every record removed.
    pub fn total(&self) -> u64 {
        self.by_table().iter().map(|(_, n)| n).sum()
    }
}

/// Prunes `store` of the records older than `retention` now and then every
/// `every`, until the task is aborted. A prune that fails is logged and tried
/// again at the next interval: the records it left are only kept longer.
pub fn spawn_pruner(
    store: Arc<dyn StateStore>,
    retention: Duration,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            prune_once(store.as_ref(), retention).await;
        }
    })
}

/// One prune of the records older than `retention`, counted in
/// `xbridge_state_pruned_total` and logged.
pub async fn prune_once(store: &dyn StateStore, retention: Duration) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let Some(older_than) = Utc::now().checked_sub_signed(retention) else {
        return;
    };
    match store.prune(older_than).await {
        Ok(pruned) => {
            for (table, count) in pruned.by_table() {
                if count > 0 {
                    metrics::counter!("xbridge_state_pruned_total", "table" => table)
                        .increment(count);
                }
            }
            if pruned.total() > 0 {
                tracing::info!(
                    %older_than,
                    sent_replies = pruned.sent_replies,
                    sent_reply_parts = pruned.sent_reply_parts,
                    send_intents = pruned.send_intents,
                    own_sends = pruned.own_sends,
                    delivered_events = pruned.delivered_events,
                    "pruned the state store's records older than the retention"
                );
            }
        }
        Err(error) => {
            tracing::warn!(%error, %older_than, "cannot prune the state store now; trying again at the next interval");
        }
    }
}
