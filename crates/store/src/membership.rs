//! Which replicas are alive and which channels each one holds, for fair
//! sharing ([`crate::StateStore::heartbeat`]). Replicas on one PostgreSQL
//! store see each other here, and nowhere else: there is no protocol of
//! xbridge's own between them. A store that only one process uses (the
//! embedded file) has no other replica, so every channel is its own.

use std::collections::BTreeSet;

/// What a replica's heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Every replica alive now (its heartbeat not expired), the caller
    /// included, sorted: every replica that reads the same rows computes the
    /// same shares from them.
    pub replicas: Vec<String>,
    /// The channels the store says the caller holds, when the store is
    /// shared: a hold taken over by another replica while the caller's
    /// heartbeat had expired is no longer listed, and the caller must stop
    /// serving it. `None` for a store no other replica uses.
    pub held: Option<BTreeSet<String>>,
}

impl Heartbeat {
    /// A store only `replica` uses: it alone, holding whatever it takes.
    pub fn alone(replica: &str) -> Heartbeat {
        Heartbeat {
            replicas: vec![replica.to_owned()],
            held: None,
        }
    }
}
