//! The inbound side following the live channel registry ([`LiveChannels`]):
//! each change is applied to the one channel it is about, while the others go
//! on untouched.
//!
//! - **Added**: its client and profiles are built, it is recorded in the shared
//!   identities (and X is asked for its account when the configuration does not
//!   give it), the webhook serves its URL and routes its account's bodies to it,
//!   the media proxy serves its media, its poller starts (contending for the
//!   channel's poll lease, whose queue it declares, so one replica polls it) and
//!   its webhook watch too.
//! - **Removed**: its poller stops between two polls and releases the lease, its
//!   watch stops, and it leaves the identities, the webhook and the media proxy:
//!   a request to its URL is answered 404 like one for a name no channel has, and
//!   a body for its account arriving at the URL of another channel of its App is
//!   kept as an `unknown_account` dead letter, as for any account no channel is.
//! - **Changed**: the channel's client signs from its next request with the new
//!   credentials, the webhook checks the next signature with the new consumer
//!   secret; a new `inbound` mode or `user_id` restarts its poller (the lease
//!   moves from the old poller to the new one, never both polling), new App
//!   credentials or mode restart its webhook watch.
//! - **Paused**: nothing: a paused channel's replies are held, its DMs flow.
//!
//! A change missed while applying another is not lost: the registry is a watch of
//! the whole map, compared with what was applied last.

use std::collections::HashMap;
use std::sync::Arc;

use secrecy::ExposeSecret as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use xbridge_core::config::ChannelSettings;
use xbridge_core::live_channels::{ChannelMap, Delta, LiveChannel, LiveChannels};

use crate::media::proxy::MediaProxy;
use crate::parts::{ChannelParts, Kit};
use crate::stream::StreamApps;
use crate::webhook::identity::{AccountLookup, IdentityResolver};
use crate::webhook::server::{WebhookChannel, WebhookState};
use crate::webhook::watch::watch_webhook;

/// What the HTTP server serves per channel, when it is served.
#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) webhook: Arc<WebhookState>,
    pub(crate) media: Arc<MediaProxy>,
}

/// One channel served: its parts and what stops its tasks.
struct Running {
    parts: ChannelParts,
    /// Stops its poller (between polls).
    poll_stop: CancellationToken,
    /// Stops asking X for its account.
    lookup_stop: CancellationToken,
    /// Stops its webhook watch.
    watch_stop: CancellationToken,
}

impl Running {
    /// Stops all its tasks: the poller after the poll in progress.
    fn stop(&self) {
        self.poll_stop.cancel();
        self.watch_stop.cancel();
        self.lookup_stop.cancel();
    }
}

/// Every channel the inbound side serves, and their tasks.
pub(crate) struct Channels {
    kit: Kit,
    served: Option<Served>,
    /// The stream channels' App streams (`inbound = "stream"`).
    streams: StreamApps,
    running: HashMap<String, Running>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    /// The registry as last applied.
    applied: ChannelMap,
}

impl Channels {
    /// Starts the channels of `initial` (their parts built at startup, so a
    /// mistake showed then), whose accounts the startup's resolver asks X for.
    pub(crate) fn start(
        kit: Kit,
        served: Option<Served>,
        streams: StreamApps,
        initial: (ChannelMap, Vec<ChannelParts>),
        shutdown: CancellationToken,
    ) -> Channels {
        let (applied, parts) = initial;
        let mut channels = Channels {
            kit,
            served,
            streams,
            running: HashMap::new(),
            tasks: JoinSet::new(),
            shutdown,
            applied,
        };
        let map = channels.applied.clone();
        for parts in parts {
            channels.serve(parts, &map, false);
        }
        channels
    }

    /// Applies every change of `live` until shutdown, then waits for the
    /// channels' tasks (pollers stop between polls).
    pub(crate) async fn follow(mut self, live: Arc<LiveChannels>) {
        let mut changes = live.subscribe();
        self.apply(changes.borrow_and_update().clone());
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                changed = changes.changed() => match changed {
                    Ok(()) => self.apply(changes.borrow_and_update().clone()),
                    // Not while `live` is held here; nothing more to follow.
                    Err(_) => self.shutdown.cancelled().await,
                },
                // Reaps the tasks of stopped channels.
                Some(ended) = self.tasks.join_next() => {
                    if let Err(failure) = ended {
                        tracing::error!(%failure, "a channel's inbound task failed");
                    }
                }
            }
        }
        while self.tasks.join_next().await.is_some() {}
    }

    /// Brings what runs in line with `now`, channel by channel.
    fn apply(&mut self, now: ChannelMap) {
        for delta in Delta::between(&self.applied, &now) {
            match delta {
                Delta::Added(name) => self.add(&now[&name], &now),
                Delta::Removed(name) => self.remove(&name, &now),
                Delta::Changed(name) => self.change(&now[&name], &now),
                // Replies are held; the customers' DMs keep flowing.
                Delta::Paused(..) => {}
            }
        }
        self.applied = now;
    }

    /// A channel served from now on.
    fn add(&mut self, channel: &LiveChannel, now: &ChannelMap) {
        let name = channel.name();
        self.kit.know(&channel.settings);
        let parts = match self.kit.parts(channel.settings.clone()) {
            Ok(parts) => parts,
            Err(error) => {
                tracing::error!(channel = name, %error, "channel added, but inbound cannot serve it");
                return;
            }
        };
        tracing::info!(
            channel = name,
            inbound = ?channel.settings.inbound,
            "channel added: inbound serves it"
        );
        self.serve(parts, now, true);
        if channel.settings.inbound.uses_webhook() {
            self.rewatch_app(&channel.settings, now);
        }
    }

    /// Starts serving `parts`' channel: its routes, its poller and watch, and
    /// (when `learn`: the startup's own resolver asks for the first channels)
    /// asks X for its account when that is not known yet.
    fn serve(&mut self, parts: ChannelParts, now: &ChannelMap, learn: bool) {
        let name = parts.settings.name.clone();
        self.route(&parts);
        self.stream(&parts);
        let mut running = Running {
            parts,
            poll_stop: self.shutdown.child_token(),
            watch_stop: self.shutdown.child_token(),
            lookup_stop: self.shutdown.child_token(),
        };
        self.spawn_poller(&running);
        self.spawn_watch(&running, now);
        if learn {
            self.learn_account(&mut running);
        }
        if let Some(old) = self.running.insert(name, running) {
            old.stop();
        }
    }

    /// The webhook's and the media proxy's routes to `parts`' channel.
    fn route(&self, parts: &ChannelParts) {
        let Some(served) = &self.served else {
            return;
        };
        let channel = &parts.settings;
        if channel.inbound.uses_webhook() {
            let route = WebhookChannel {
                name: channel.name.clone(),
                consumer_key: channel.consumer_key.clone(),
                consumer_secret: channel.consumer_secret.clone(),
                own_user_id: channel.user_id.clone(),
            };
            served
                .webhook
                .serve_channel(route, Some(parts.profiles.clone()));
        } else {
            served.webhook.stop_serving(&channel.name);
        }
        served
            .media
            .serve_channel(&channel.name, parts.client.clone());
    }

    /// Joins `parts`' channel to its App's activity stream when it streams, else takes it
    /// out of it. The stream subscribes the account with its own authentication (an OAuth
    /// 2.0 channel's grant from the store, like its DMs).
    fn stream(&mut self, parts: &ChannelParts) {
        let channel = &parts.settings;
        if !channel.inbound.streams() {
            return self.streams.leave(&channel.name);
        }
        match self.kit.auth(channel) {
            Ok(auth) => self.streams.join(parts, auth, &mut self.tasks),
            Err(error) => {
                tracing::error!(channel = %channel.name, %error, "the channel cannot subscribe its account for the activity stream");
                self.streams.leave(&channel.name);
            }
        }
    }

    fn spawn_poller(&mut self, running: &Running) {
        let Some(poll) = self.kit.poller(&running.parts, &running.poll_stop) else {
            return;
        };
        let channel = running.parts.settings.name.clone();
        self.tasks.spawn(async move {
            poll.await;
            tracing::info!(channel, "poller stopped");
        });
    }

    fn spawn_watch(&mut self, running: &Running, now: &ChannelMap) {
        let channel = &running.parts.settings;
        match self.kit.webhook_watch(channel, now.values()) {
            Ok(Some(watch)) => {
                let (states, stop) = (self.kit.states.clone(), running.watch_stop.clone());
                self.tasks.spawn(watch_webhook(watch, states, stop));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(channel = channel.name, %error, "the channel's webhook is not checked");
            }
        }
    }

    /// Asks X who a channel this process receives for is (as the startup does
    /// for the first channels): learns an id the configuration does not give,
    /// confirms one it gives; asks again (growing pauses) while X does not
    /// answer, until the channel stops or changes. An id X contradicts would
    /// route one account's DMs to another's channel: the channel leaves the
    /// identities instead, and bodies that would have been routed to it are kept
    /// as dead letters, until its settings change.
    fn learn_account(&mut self, running: &mut Running) {
        running.lookup_stop.cancel();
        running.lookup_stop = self.shutdown.child_token();
        let channel = &running.parts.settings;
        if !self.kit.receives(channel) {
            return;
        }
        let name = channel.name.clone();
        let identities = self.kit.identities.clone();
        let lookup: Arc<dyn AccountLookup> = Arc::new(running.parts.client.clone());
        let resolver = IdentityResolver::new(identities.clone(), vec![(name.clone(), lookup)]);
        let stop = running.lookup_stop.clone();
        self.tasks.spawn(async move {
            let asked = async {
                let unanswered = resolver.resolve_once().await?;
                resolver.run(unanswered, stop.clone()).await
            };
            let result = tokio::select! {
                _ = stop.cancelled() => Ok(()),
                result = asked => result,
            };
            if let Err(mismatch) = result {
                identities.remove(&name);
                tracing::error!(channel = name, error = %mismatch, "the channel is not the X account its configuration names: its webhook bodies are not routed to it until its settings change");
            }
        });
    }

    fn restart_watch(&mut self, running: &mut Running, now: &ChannelMap) {
        running.watch_stop.cancel();
        running.watch_stop = self.shutdown.child_token();
        self.spawn_watch(running, now);
    }

    /// Restarts the webhook watches of `channel`'s App's other channels: which
    /// of the App's channels receive by webhook here tells each watch whose URL
    /// the App's one webhook is (see [`crate::webhook::watch::verdict`]).
    fn rewatch_app(&mut self, channel: &ChannelSettings, now: &ChannelMap) {
        let key = channel.consumer_key.expose_secret();
        let siblings: Vec<String> = self
            .running
            .values()
            .map(|r| &r.parts.settings)
            .filter(|c| c.name != channel.name && c.inbound.uses_webhook())
            .filter(|c| c.consumer_key.expose_secret() == key)
            .map(|c| c.name.clone())
            .collect();
        for name in siblings {
            if let Some(mut running) = self.running.remove(&name) {
                self.restart_watch(&mut running, now);
                self.running.insert(name, running);
            }
        }
    }

    /// Stops serving `name`: its tasks stop (its poller between two polls,
    /// releasing the lease), and its routes and identity go.
    fn remove(&mut self, name: &str, now: &ChannelMap) {
        let Some(running) = self.running.remove(name) else {
            return;
        };
        running.stop();
        self.streams.leave(name);
        if running.parts.settings.inbound.uses_webhook() {
            self.rewatch_app(&running.parts.settings, now);
        }
        if let Some(served) = &self.served {
            served.webhook.stop_serving(name);
            served.media.stop_serving(name);
        }
        self.kit.identities.remove(name);
        self.forget_app_unless_served(&running.parts.settings);
        tracing::info!(
            channel = name,
            "channel removed: its poller stops after the poll in progress, its webhook URL is no longer served"
        );
    }

    /// New settings for a served channel: new credentials from the next
    /// request on, and its poller or watch restarted when what they run by changed.
    fn change(&mut self, channel: &LiveChannel, now: &ChannelMap) {
        let name = channel.name();
        let Some(mut running) = self.running.remove(name) else {
            return self.add(channel, now);
        };
        let (old, new) = (running.parts.settings.clone(), channel.settings.clone());
        match self.kit.auth(&new) {
            Ok(auth) => running.parts.client.set_auth(auth),
            Err(error) => {
                tracing::error!(channel = name, %error, "the channel's new credentials cannot be used; it keeps the old ones")
            }
        }
        running.parts.settings = new.clone();
        self.kit.know(&new);
        self.route(&running.parts);
        if old.inbound != new.inbound
            || old.user_id != new.user_id
            || old.xaa_events != new.xaa_events
            || !same_app_credentials(&old, &new)
            || !same_account_credentials(&old, &new)
        {
            self.stream(&running.parts);
        }
        self.restart_what_changed(&mut running, &old, now);
        tracing::info!(
            channel = name,
            "channel changed: inbound uses its new settings from the next request"
        );
        self.running.insert(name.to_owned(), running);
        self.forget_app_unless_served(&old);
    }

    /// Drops the webhook list of `channel`'s X App when no channel served is of
    /// it any more, so channels coming and going leave nothing behind.
    fn forget_app_unless_served(&mut self, channel: &ChannelSettings) {
        let key = channel.consumer_key.expose_secret();
        let served = self
            .running
            .values()
            .any(|r| r.parts.settings.consumer_key.expose_secret() == key);
        if !served {
            self.kit.forget_app(key);
        }
    }
}

impl Channels {
    /// Restarts what of `running`'s channel runs by what changed from `old`:
    /// its poller (mode, id), its watch and its App's other watches (mode, App
    /// credentials), the question to X of who it is (mode, id, account).
    fn restart_what_changed(
        &mut self,
        running: &mut Running,
        old: &ChannelSettings,
        now: &ChannelMap,
    ) {
        let new = running.parts.settings.clone();
        if old.inbound != new.inbound || old.user_id != new.user_id {
            running.poll_stop.cancel();
            running.poll_stop = self.shutdown.child_token();
            self.spawn_poller(running);
        }
        if old.inbound != new.inbound || !same_app_credentials(old, &new) {
            self.restart_watch(running, now);
        }
        let key = |c: &ChannelSettings| c.consumer_key.expose_secret().to_owned();
        if old.inbound.uses_webhook() != new.inbound.uses_webhook() || key(old) != key(&new) {
            self.rewatch_app(old, now);
            if key(old) != key(&new) {
                self.rewatch_app(&new, now);
            }
        }
        if old.inbound != new.inbound
            || old.user_id != new.user_id
            || old.xaa_events != new.xaa_events
            || !same_account_credentials(old, &new)
        {
            self.learn_account(running);
        }
    }
}

/// Whether the credentials that name the account (its App's key, its token)
/// are the same in both.
fn same_account_credentials(a: &ChannelSettings, b: &ChannelSettings) -> bool {
    a.consumer_key.expose_secret() == b.consumer_key.expose_secret()
        && a.access_token.expose_secret() == b.access_token.expose_secret()
}

/// Whether what a webhook watch runs by (the App's keys, its bearer token, the
/// account's token) is the same in both.
fn same_app_credentials(a: &ChannelSettings, b: &ChannelSettings) -> bool {
    let secrets = |c: &ChannelSettings| {
        [
            &c.consumer_key,
            &c.consumer_secret,
            &c.access_token,
            &c.access_token_secret,
            &c.bearer_token,
        ]
        .map(|s| s.expose_secret().to_owned())
    };
    secrets(a) == secrets(b)
}
