//! Filling in a sender's profile when X's payload left it out, so the CRM
//! can still link the X account to a contact.
//!
//! Webhook payloads and polled pages normally carry the sender's username,
//! name and avatar; when one does not, the profile is looked up with
//! `GET /2/users/:id` and kept for a configured time, since an agent's
//! conversation brings many DMs from the same customer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use xbridge_core::contract::Sender;
use xbridge_x_api::{UserId, XClient};

/// The profile lookups of one channel (its X client and its cache).
pub struct Profiles {
    client: XClient,
    ttl: Duration,
    cache: Mutex<HashMap<UserId, (Instant, Sender)>>,
}

impl Profiles {
    /// Lookups through `client`, each result kept for `ttl`.
    pub fn new(client: XClient, ttl: Duration) -> Profiles {
        Profiles {
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Completes `sender` when its username or name is missing. A failed
    /// lookup is logged and leaves the sender as it was: the DM is worth
    /// delivering without a profile.
    pub async fn complete(&self, sender: &mut Sender) {
        if sender.username.is_some() && sender.name.is_some() {
            return;
        }
        if let Some(known) = self.cached(sender.id.as_str()) {
            fill(sender, &known);
            return;
        }
        match self.client.get_user(sender.id.as_str()).await {
            Ok(user) => {
                let known = Sender {
                    id: user.id,
                    username: Some(user.username),
                    name: Some(user.name),
                    avatar_url: user.profile_image_url,
                };
                fill(sender, &known);
                self.lock()
                    .insert(sender.id.clone(), (Instant::now(), known));
            }
            Err(error) => {
                tracing::warn!(user_id = %sender.id, %error, "sender profile lookup failed; delivering without it");
            }
        }
    }

    fn cached(&self, user_id: &str) -> Option<Sender> {
        let mut cache = self.lock();
        match cache.get(user_id) {
            Some((at, sender)) if at.elapsed() < self.ttl => Some(sender.clone()),
            Some(_) => {
                cache.remove(user_id);
                None
            }
            None => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (Instant, Sender)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes what `sender` lacks from `known`.
fn fill(sender: &mut Sender, known: &Sender) {
    if sender.username.is_none() {
        sender.username = known.username.clone();
    }
    if sender.name.is_none() {
        sender.name = known.name.clone();
    }
    if sender.avatar_url.is_none() {
        sender.avatar_url = known.avatar_url.clone();
    }
}
