//! `inbound = "stream"`: the channels' DMs from their X App's activity stream
//! (`GET /2/activity/stream`, docs/x-api-facts.md "Activity stream"), in real time and
//! without a public URL.
//!
//! One stream carries every subscribed account of an App, so the stream is per **App**, not
//! per channel: [`StreamApps`] groups the stream channels by consumer key and runs one
//! [`app::run`] task per App. That task holds the App's lease (the poll lease's
//! single-active-consumer queue, named `<poll_lease_prefix>app.<hash of the consumer key>`,
//! never the key itself) so only one replica reads the stream, and another takes over when it
//! dies; while held it keeps the App's channels' XAA subscriptions to what they want
//! ([`subscriptions`]), holds the stream open, and hands each event line to the webhook's own
//! routing and delivery ([`WebhookState::deliver_streamed`]), one at a time, in stream order —
//! so a DM is delivered once (the same delivered-record check as the webhook and the poller)
//! and in order per conversation.
//!
//! After a cut, a stall or a failed delivery it reconnects (backoff from
//! `xbridge_x_api::activity_stream::reconnect_backoff`, reset only by a connection that
//! proved healthy, see [`app`]) asking X for a backfill that covers the time since the stream
//! was last known good, capped at X's 5 minutes; a new holder asks for the full 5 minutes,
//! since it cannot know what the previous one delivered. Replayed events that were delivered
//! already are dropped by the delivered record. A known gap longer than
//! `inbound.stream_catch_up_after` (X's 5 minutes by default) is counted
//! (`xbridge_stream_backfill_gaps_total` when past X's 5) and filled by [`catch_up`]: one read
//! of each stream channel's DMs back to the gap's start with the poller's own paging and
//! delivery, before the stream reconnects.
//!
//! A channel that leaves the stream (removed, or another `inbound` mode) has its stream
//! subscriptions deleted by [`StreamApps::leave`] in every replica that serves it — also when
//! it was the App's last stream channel and the App's task stops (see [`subscriptions`]).

pub(crate) mod app;
mod catch_up;
pub(crate) mod subscriptions;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use xbridge_core::config::{ChannelSettings, Settings};
use xbridge_x_api::{XAuth, XClient, XHttp};

use crate::delivery::profiles::Profiles;
use crate::parts::{ChannelParts, Shared};
use crate::webhook::server::{WebhookChannel, WebhookState};

/// A stream channel of an App, as its task needs it: its settings, and its client and
/// profiles for a catch-up read of its DMs.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) settings: Arc<ChannelSettings>,
    pub(crate) client: XClient,
    pub(crate) profiles: Arc<Profiles>,
    /// How the account authenticates when its subscriptions are made (OAuth 1.0a or 2.0).
    pub(crate) auth: XAuth,
}

/// The App of a consumer key, as named in logs and the lease queue: a digest, so the key
/// never shows.
pub(crate) fn app_label(consumer_key: &str) -> String {
    let digest = Sha256::digest(consumer_key.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What stands for the channel name in the App's lease queue
/// (`<poll_lease_prefix>app.<digest>`), so operators and tests can name the queue.
pub fn lease_name(consumer_key: &str) -> String {
    format!("app.{}", app_label(consumer_key))
}

/// One App's stream task and who it streams for.
struct AppStream {
    members: watch::Sender<BTreeMap<String, Member>>,
    stop: CancellationToken,
}

/// The stream channels of this process, grouped by App, and their tasks.
pub(crate) struct StreamApps {
    settings: Arc<Settings>,
    http: XHttp,
    /// The broker connection, and what a catch-up read delivers through.
    shared: Shared,
    /// Routes and delivers the stream's lines; never served over HTTP.
    deliver: Arc<WebhookState>,
    apps: HashMap<String, AppStream>,
    /// Deletions of the stream subscriptions of channels that left, by channel: stopped if
    /// the channel streams again before they are done.
    retiring: HashMap<String, tokio::task::AbortHandle>,
    shutdown: CancellationToken,
}

impl StreamApps {
    pub(crate) fn new(
        settings: Arc<Settings>,
        http: XHttp,
        shared: Shared,
        deliver: Arc<WebhookState>,
        shutdown: CancellationToken,
    ) -> StreamApps {
        StreamApps {
            settings,
            http,
            shared,
            deliver,
            apps: HashMap::new(),
            retiring: HashMap::new(),
            shutdown,
        }
    }

    /// `channel` streams from now on: it joins its App's stream, which starts when it is the
    /// App's first stream channel.
    pub(crate) fn join(&mut self, parts: &ChannelParts, auth: XAuth, tasks: &mut JoinSet<()>) {
        let channel = parts.settings.clone();
        let profiles = parts.profiles.clone();
        self.detach(&channel.name);
        if let Some(retiring) = self.retiring.remove(&channel.name) {
            retiring.abort();
        }
        let app = app_label(channel.consumer_key.expose_secret());
        self.deliver.serve_channel(
            WebhookChannel {
                name: channel.name.clone(),
                consumer_key: channel.consumer_key.clone(),
                consumer_secret: channel.consumer_secret.clone(),
                own_user_id: channel.user_id.clone(),
            },
            Some(profiles.clone()),
        );
        let member = Member {
            settings: channel.clone(),
            client: parts.client.clone(),
            profiles,
            auth,
        };
        if let Some(running) = self.apps.get(&app) {
            running.members.send_modify(|members| {
                members.insert(channel.name.clone(), member);
            });
            tracing::info!(channel = %channel.name, app, "channel joined its X App's activity stream");
            return;
        }
        let members = watch::Sender::new(BTreeMap::from([(channel.name.clone(), member)]));
        let stop = self.shutdown.child_token();
        let context = app::AppContext {
            app: app.clone(),
            lease_queue: self
                .settings
                .amqp
                .topology
                .poll_lease_queue(&lease_name(channel.consumer_key.expose_secret())),
            settings: self.settings.clone(),
            http: self.http.clone(),
            deliver: self.deliver.clone(),
            shared: self.shared.clone(),
            connections: self.shared.sink.connection.subscribe(),
        };
        tasks.spawn(app::run(context, members.subscribe(), stop.clone()));
        tracing::info!(channel = %channel.name, app, "channel starts its X App's activity stream");
        self.apps.insert(app, AppStream { members, stop });
    }

    /// `name` no longer streams (removed, or another mode): it leaves its App's stream, which
    /// stops when no channel of the App is left, and its stream subscriptions are deleted, so
    /// X stops billing and streaming its events. Every replica does it (deleting lists first,
    /// and a subscription gone already is no error): when the App's last stream channel goes,
    /// no App task is left to do it.
    pub(crate) fn leave(&mut self, name: &str) {
        let Some(member) = self.detach(name) else {
            return;
        };
        let (settings, http) = (self.settings.clone(), self.http.clone());
        let retire = tokio::spawn(async move {
            subscriptions::retire(&settings, &http, &member).await;
        });
        self.retiring.retain(|_, task| !task.is_finished());
        self.retiring.insert(name.to_owned(), retire.abort_handle());
    }

    /// Takes `name` out of its App's stream, stopping the App's task when it was the last:
    /// the member it was, if it streamed.
    fn detach(&mut self, name: &str) -> Option<Member> {
        let app = self
            .apps
            .iter()
            .find(|(_, a)| a.members.borrow().contains_key(name))
            .map(|(app, _)| app.clone())?;
        self.deliver.stop_serving(name);
        let mut left = None;
        let empty = {
            let running = &self.apps[&app];
            running.members.send_modify(|members| {
                left = members.remove(name);
            });
            running.members.borrow().is_empty()
        };
        tracing::info!(
            channel = name,
            app,
            "channel left its X App's activity stream"
        );
        if empty {
            if let Some(running) = self.apps.remove(&app) {
                running.stop.cancel();
            }
        }
        left
    }
}
