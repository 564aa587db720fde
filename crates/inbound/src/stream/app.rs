//! One App's activity stream: the lease, the App's XAA subscriptions, the connection with
//! its reconnections, backfills and catch-ups, and the delivery of each line (see [`super`]).
//!
//! A cut usually follows a healthy connection (a deploy at X, a network blip): reconnecting at
//! once then loses nothing. But X may also end a stream right after accepting it
//! (`TooManyConnections` on the body, an immediate end): reconnecting at once would loop
//! against X's 450 connections per 15 minutes. So the backoff is reset, and the reconnection
//! immediate, only after a connection that proved healthy ([`proved_healthy`]); else the
//! task waits longer each time.
//!
//! What the stream is known to have delivered ([`Gap`]) is kept across this process's
//! tenures of the lease: a replica that loses the lease (a broker blip) and takes it again
//! still knows the gap it must catch up. Another replica taking over cannot know it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use xbridge_core::config::Settings;
use xbridge_x_api::activity_stream::{
    reconnect_backoff, ActivityStream, ActivityStreamClient, StreamError, StreamItem, KEEP_ALIVE,
    MAX_BACKFILL_MINUTES,
};
use xbridge_x_api::XHttp;

use super::catch_up::CatchUp;
use super::{subscriptions, Member, Members};
use crate::parts::Shared;
use crate::polling::lease::{self, PollLease};
use crate::webhook::server::{Streamed, WebhookState};

/// No byte for this long (three of X's keep-alive intervals) and the stream is dead.
const STALL_AFTER: Duration = Duration::from_secs(3 * KEEP_ALIVE.as_secs());
/// A connection that lived this long (longer than one of X's keep-alive intervals) was
/// healthy, even if it carried nothing.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How often the holder, while connected, makes sure of the subscriptions (deleted
/// elsewhere: a lagging replica's retire, an operator's `xbridge webhook unsubscribe`, and
/// no event would say so) and tries again the catch-ups that failed. Each (re)connection
/// does both too.
pub(crate) const UPKEEP_EVERY: Duration = Duration::from_secs(10 * 60);
/// How many catch-up reads, each from when the one before began, before the stream connects
/// anyway (see [`catch_up`]).
const CATCH_UP_ROUNDS: usize = 3;

/// What an App's stream task runs with.
pub(crate) struct AppContext {
    /// The App's digest, for logs.
    pub(crate) app: String,
    pub(crate) lease_queue: String,
    pub(crate) settings: Arc<Settings>,
    pub(crate) http: XHttp,
    pub(crate) deliver: Arc<WebhookState>,
    /// What a catch-up read delivers through.
    pub(crate) shared: Shared,
    pub(crate) connections: watch::Receiver<Option<Arc<lapin::Connection>>>,
}

/// What the App's stream is known to have delivered, kept across this process's tenures of
/// the lease.
#[derive(Default)]
struct Gap {
    /// When the stream was last known to have delivered everything before it; `None`: not
    /// since this process holds the lease, so ask for X's whole backfill.
    good_until: Option<Instant>,
    /// By channel, the start of a gap longer than the catch-up window not caught up yet
    /// (its read failed): only those channels are read again.
    uncaught: BTreeMap<String, DateTime<Utc>>,
    /// By channel, when its subscriptions were last found complete (or made so).
    subscribed: BTreeMap<String, DateTime<Utc>>,
}

impl Gap {
    /// `name`'s DMs are to be read back from `start`, or from its earlier start if it
    /// already has one: a read-back covers every gap noted for the channel.
    fn read_back_from(&mut self, name: String, start: DateTime<Utc>) {
        let since = self.uncaught.entry(name).or_insert(start);
        *since = (*since).min(start);
    }

    /// Notes what [`subscriptions::ensure`] did at `checked`: a channel whose
    /// `dm.received` subscription had to be made again, though it was complete at the
    /// last check, lost it in between (deleted elsewhere: a lagging replica, an operator's
    /// `xbridge webhook unsubscribe`) and no DM of that time came by the stream, so its
    /// DMs are read back from that last check.
    fn note_subscriptions(
        &mut self,
        outcomes: BTreeMap<String, subscriptions::Ensured>,
        checked: DateTime<Utc>,
    ) {
        self.subscribed
            .retain(|name, _| outcomes.contains_key(name));
        for (name, ensured) in outcomes {
            if ensured.received_made {
                if let Some(since) = self.subscribed.get(&name).copied() {
                    tracing::warn!(channel = name, %since, "the channel's dm.received subscription was gone; its DMs since it was last seen are read back");
                    self.read_back_from(name.clone(), since);
                }
            }
            if ensured.done {
                self.subscribed.insert(name, checked);
            }
        }
    }
}

/// Holds the App's stream while this replica holds the App's lease, until `stop`.
/// `xbridge_stream_apps_held` counts the Apps whose stream this replica holds.
pub(crate) async fn run(mut ctx: AppContext, members: Members, stop: CancellationToken) {
    let held = metrics::gauge!("xbridge_stream_apps_held");
    let mut retry = reconnect_backoff();
    let mut gap = Gap::default();
    loop {
        let Some(mut lease) = take_lease(&mut ctx, &mut retry, &stop).await else {
            return;
        };
        retry = reconnect_backoff();
        held.increment(1.0);
        tracing::info!(
            app = ctx.app,
            "stream lease acquired: this replica holds the X App's activity stream"
        );
        let ended = stream_while_held(&ctx, members.clone(), &mut lease, &mut gap, &stop).await;
        held.decrement(1.0);
        lease.release().await;
        match ended {
            None => {
                tracing::info!(app = ctx.app, "activity stream stopped; lease released");
                return;
            }
            Some(error) => {
                tracing::info!(app = ctx.app, %error, "stream lease lost: this replica stopped reading the X App's activity stream");
            }
        }
    }
}

/// Contends for the App's lease once there is a broker connection, and waits until held.
/// `None` on stop.
async fn take_lease(
    ctx: &mut AppContext,
    retry: &mut impl Iterator<Item = Duration>,
    stop: &CancellationToken,
) -> Option<PollLease> {
    let label = format!("app.{}", ctx.app);
    loop {
        let connection = tokio::select! {
            _ = stop.cancelled() => return None,
            connection = ctx.connections.wait_for(Option::is_some) => match connection {
                Ok(connection) => connection.clone(),
                Err(_) => return None,
            },
        };
        let Some(connection) = connection else {
            continue;
        };
        match PollLease::contend(&connection, &ctx.lease_queue, &label, lease::RENEW_EVERY).await {
            Ok(mut lease) => {
                drop(connection);
                tracing::info!(app = ctx.app, "contending for the X App's stream lease");
                tokio::select! {
                    _ = stop.cancelled() => {
                        lease.release().await;
                        return None;
                    }
                    acquired = lease.acquired() => match acquired {
                        Ok(()) => return Some(lease),
                        Err(error) => {
                            tracing::info!(app = ctx.app, %error, "stopped waiting for the stream lease");
                        }
                    },
                }
            }
            Err(error) => {
                drop(connection);
                let wait = retry.next().unwrap_or(Duration::from_secs(15));
                tracing::warn!(app = ctx.app, %error, retry_in_ms = wait.as_millis() as u64, "cannot contend for the stream lease");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = ctx.connections.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Reads the stream while the lease is held: `None` on stop, else why the lease ended.
async fn stream_while_held(
    ctx: &AppContext,
    mut members: Members,
    lease: &mut PollLease,
    gap: &mut Gap,
    stop: &CancellationToken,
) -> Option<lease::LeaseError> {
    let mut backoff = reconnect_backoff();
    loop {
        let current = members.borrow_and_update().clone();
        // At every (re)connection, not only when the members change: subscriptions deleted
        // elsewhere come back (a failure is logged and tried again at the next).
        let checked = Utc::now();
        let outcomes = subscriptions::ensure(&ctx.settings, &ctx.http, &current).await;
        gap.note_subscriptions(outcomes, checked);
        // No member left: the task is being stopped.
        let client = stream_client(ctx, &current)?;
        let catch_up = catch_up(ctx, &members, gap);
        tokio::select! {
            _ = stop.cancelled() => return None,
            error = lease.ended() => return Some(error),
            () = catch_up => {}
        }
        let backfill = backfill_minutes(gap.good_until);
        let connected = tokio::select! {
            _ = stop.cancelled() => return None,
            error = lease.ended() => return Some(error),
            connected = client.connect(Some(backfill)) => connected,
        };
        let wait = match connected {
            Ok(stream) => {
                metrics::counter!("xbridge_stream_connects_total").increment(1);
                tracing::info!(
                    app = ctx.app,
                    backfill_minutes = backfill,
                    "activity stream connected"
                );
                let connected_at = Instant::now();
                let read = read_stream(ctx, stream, &mut members, gap);
                let ended = tokio::select! {
                    _ = stop.cancelled() => return None,
                    error = lease.ended() => return Some(error),
                    ended = read => ended,
                };
                match ended {
                    Ended::MembersChanged => continue,
                    Ended::Stream { error, heard } => {
                        metrics::counter!("xbridge_stream_disconnects_total").increment(1);
                        if proved_healthy(connected_at.elapsed(), heard) {
                            // Most ends are cuts: reconnect at once.
                            tracing::warn!(app = ctx.app, %error, "activity stream ended; reconnecting with a backfill");
                            backoff = reconnect_backoff();
                            Duration::ZERO
                        } else {
                            let wait = backoff.next().unwrap_or(Duration::from_secs(300));
                            tracing::warn!(app = ctx.app, %error, retry_in_ms = wait.as_millis() as u64, "activity stream ended right after connecting; reconnecting with a backfill later");
                            wait
                        }
                    }
                    Ended::Undelivered(why) => {
                        // The broker or the store cannot take events: reconnecting at once
                        // would fail on the backfill's first event again, over and over,
                        // spending X's connections. Wait longer each time instead.
                        let wait = backoff.next().unwrap_or(Duration::from_secs(300));
                        tracing::warn!(app = ctx.app, why, retry_in_s = wait.as_secs(), "activity stream event not delivered; reconnecting with a backfill later");
                        wait
                    }
                }
            }
            Err(error) => connect_failed(ctx, &error, &mut backoff),
        };
        tokio::select! {
            _ = stop.cancelled() => return None,
            error = lease.ended() => return Some(error),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Whether a connection that ended proved healthy, so reconnecting at once is right: it
/// carried a keep-alive or an event, or lived past [`HEALTHY_AFTER`]. One X closed at once
/// did not: reconnecting at once would spend X's connections in a tight loop.
fn proved_healthy(lived: Duration, heard: bool) -> bool {
    heard || lived >= HEALTHY_AFTER
}

/// Before reconnecting: when the stream was down longer than `inbound.stream_catch_up_after`
/// (X's backfill), reads the members' DMs back to the gap's start (see [`super::catch_up`]),
/// and again from when that read began while the read itself outlasted the window (paced
/// reads of many accounts take long, and the stream is down meanwhile). The stream counts as
/// good from when the last read began; a member whose read failed is kept in
/// [`Gap::uncaught`] and read again alone, at the next reconnection or [`UPKEEP_EVERY`].
/// After [`CATCH_UP_ROUNDS`] reads the stream connects anyway, and what came during the last
/// read is read at once while connected: reads that never get within the window (X slow, many
/// accounts paced) must not keep the stream down for good.
async fn catch_up(ctx: &AppContext, members: &Members, gap: &mut Gap) {
    let window = ctx.settings.inbound.stream_catch_up_after;
    // One outage is one gap, however many reads it takes.
    let mut first = true;
    for round in 1.. {
        let current: Vec<String> = members.borrow().keys().cloned().collect();
        gap.uncaught.retain(|name, _| current.contains(name));
        if let Some(start) = long_gap_start(&ctx.app, gap.good_until, window, first) {
            for name in current {
                gap.read_back_from(name, start);
            }
        }
        first = false;
        if gap.uncaught.is_empty() {
            return;
        }
        tracing::info!(
            app = ctx.app,
            round,
            channels = gap.uncaught.len(),
            "activity stream gap longer than the catch-up window: reading the stream channels' DMs back before reconnecting"
        );
        let began = Instant::now();
        read_back(ctx, members, gap).await;
        gap.good_until = Some(began);
        if began.elapsed() <= window {
            return;
        }
        if round == CATCH_UP_ROUNDS {
            let read_for = began.elapsed();
            tracing::warn!(
                app = ctx.app,
                read_for_s = read_for.as_secs(),
                "the activity stream's catch-up keeps outlasting its window: connecting, and reading back what came meanwhile while connected"
            );
            if let Some(start) = long_gap_start(&ctx.app, gap.good_until, Duration::ZERO, false) {
                for name in members.borrow().keys() {
                    gap.read_back_from(name.clone(), start);
                }
            }
            return;
        }
    }
}

/// Reads back the DMs of the members in [`Gap::uncaught`]; those that failed stay there.
async fn read_back(ctx: &AppContext, members: &Members, gap: &mut Gap) {
    let catch_up = CatchUp {
        app: &ctx.app,
        shared: &ctx.shared,
        publish_echoes: ctx.settings.inbound.publish_echoes,
    };
    let failed = catch_up.run(members, &gap.uncaught).await;
    gap.uncaught.retain(|name, _| failed.contains(name));
}

/// When the gap since `good_until` began, if it is longer than `catch_up_after`; with
/// `count`, counts and logs one longer than X's 5-minute backfill.
fn long_gap_start(
    app: &str,
    good_until: Option<Instant>,
    catch_up_after: Duration,
    count: bool,
) -> Option<DateTime<Utc>> {
    let gap = good_until?.elapsed();
    if count && gap.as_secs() > 60 * u64::from(MAX_BACKFILL_MINUTES) {
        metrics::counter!("xbridge_stream_backfill_gaps_total").increment(1);
        tracing::warn!(
            app,
            gap_s = gap.as_secs(),
            "the activity stream was down longer than X's 5-minute backfill: catching up by reading the channels' DMs"
        );
    }
    if gap <= catch_up_after {
        return None;
    }
    Some(Utc::now() - chrono::Duration::from_std(gap).unwrap_or(chrono::Duration::MAX))
}

/// How long to wait after a refused or failed connection.
fn connect_failed(
    ctx: &AppContext,
    error: &StreamError,
    backoff: &mut impl Iterator<Item = Duration>,
) -> Duration {
    metrics::counter!("xbridge_stream_connect_failures_total").increment(1);
    let mut wait = backoff.next().unwrap_or(Duration::from_secs(300));
    if error.is_permanent() {
        // An operator must act; try again now and then, since credentials change live.
        wait = wait.max(Duration::from_secs(60));
        tracing::error!(app = ctx.app, %error, retry_in_s = wait.as_secs(), "X refused the activity stream");
    } else {
        if let Some(reset) = error.retry_at() {
            let until = (reset - chrono::Utc::now()).to_std().unwrap_or_default();
            wait = wait.max(until);
        }
        tracing::warn!(app = ctx.app, %error, retry_in_ms = wait.as_millis() as u64, "activity stream not connected");
    }
    wait
}

/// How a connection ended.
enum Ended {
    /// X or the network ended it; `heard`: it carried a keep-alive or an event first.
    Stream { error: StreamError, heard: bool },
    /// An event could not be delivered to the CRM (the broker or the store failed).
    Undelivered(String),
    /// The App's stream channels changed: make sure of the subscriptions, then go on.
    MembersChanged,
}

/// Delivers the stream's events one at a time, in order, until it ends.
async fn read_stream(
    ctx: &AppContext,
    mut stream: ActivityStream,
    members: &mut Members,
    gap: &mut Gap,
) -> Ended {
    let mut heard = false;
    // A catch-up left to do (failed, or cut short) is tried at once, then every upkeep.
    let first = if gap.uncaught.is_empty() {
        Instant::now() + UPKEEP_EVERY
    } else {
        Instant::now()
    };
    let mut upkeep = tokio::time::interval_at(first, UPKEEP_EVERY);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let item = tokio::select! {
            changed = members.changed() => {
                if changed.is_err() {
                    let error = StreamError::Disconnected("stopped".to_owned());
                    return Ended::Stream { error, heard };
                }
                return Ended::MembersChanged;
            }
            _ = upkeep.tick() => {
                keep_up(ctx, members, gap).await;
                continue;
            }
            item = stream.next() => item,
        };
        if matches!(item, Ok(StreamItem::KeepAlive | StreamItem::Event(_))) {
            heard = true;
        }
        match item {
            Err(error) => return Ended::Stream { error, heard },
            Ok(StreamItem::KeepAlive) => {
                gap.good_until = Some(Instant::now());
            }
            Ok(StreamItem::Skipped(why)) => {
                metrics::counter!("xbridge_stream_lines_skipped_total").increment(1);
                tracing::warn!(app = ctx.app, why, "activity stream line skipped");
            }
            Ok(StreamItem::Event(event)) => {
                let via = members
                    .borrow()
                    .values()
                    .find(|m| m.settings.user_id.as_deref() == Some(&event.for_user_id))
                    .map(|m| m.settings.name.clone());
                let Some(via) = via else {
                    // Another mode's channel of the App (its webhook or poller has it), or
                    // an account no channel streams for.
                    tracing::debug!(
                        app = ctx.app,
                        for_user_id = event.for_user_id,
                        event_type = event.event_type,
                        "stream event for an account no stream channel is; skipped"
                    );
                    continue;
                };
                match ctx.deliver.deliver_streamed(&via, &event.body).await {
                    Streamed::Delivered => {
                        metrics::counter!("xbridge_stream_events_total").increment(1);
                        gap.good_until = Some(Instant::now());
                    }
                    Streamed::Unreadable(why) => {
                        metrics::counter!("xbridge_stream_lines_skipped_total").increment(1);
                        tracing::warn!(
                            app = ctx.app,
                            channel = via,
                            why,
                            "activity stream event unreadable; skipped"
                        );
                    }
                    Streamed::Failed(error) => {
                        // Read it again from the backfill once the CRM's side takes it.
                        return Ended::Undelivered(format!(
                            "an event for channel {via} was not delivered: {error}"
                        ));
                    }
                }
            }
        }
    }
}

/// While connected, every [`UPKEEP_EVERY`]: makes sure of the subscriptions and tries the
/// failed catch-ups again. The stream waits meanwhile (X keeps what it sends).
async fn keep_up(ctx: &AppContext, members: &Members, gap: &mut Gap) {
    let current = members.borrow().clone();
    let checked = Utc::now();
    let outcomes = subscriptions::ensure(&ctx.settings, &ctx.http, &current).await;
    gap.note_subscriptions(outcomes, checked);
    if !gap.uncaught.is_empty() {
        read_back(ctx, members, gap).await;
    }
}

/// The backfill that covers the time since `good_until` (a minute more for clocks and
/// rounding), capped at X's 5; X's whole 5 when unknown.
fn backfill_minutes(good_until: Option<Instant>) -> u8 {
    let Some(good_until) = good_until else {
        return MAX_BACKFILL_MINUTES;
    };
    let minutes = good_until.elapsed().as_secs().div_ceil(60) + 1;
    minutes.min(u64::from(MAX_BACKFILL_MINUTES)) as u8
}

/// The stream client of the App, with the Bearer token of its first channel (they share it).
fn stream_client(
    ctx: &AppContext,
    members: &BTreeMap<String, Member>,
) -> Option<ActivityStreamClient> {
    let first = members.values().next()?;
    Some(ActivityStreamClient::new(
        &ctx.http,
        ctx.settings.x.api_base_url.clone(),
        first.settings.bearer_token.clone(),
        STALL_AFTER,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_subscription_made_again_reads_the_channel_back_from_its_last_check() {
        use subscriptions::Ensured;
        let at = |minute: u32| {
            DateTime::parse_from_rfc3339(&format!("2026-12-05T10:{minute:02}:00Z"))
                .unwrap()
                .with_timezone(&Utc)
        };
        let made = Ensured {
            done: true,
            received_made: true,
        };
        let there = Ensured {
            done: true,
            received_made: false,
        };
        let mut gap = Gap::default();
        // The channel's first subscriptions: nothing came before them.
        gap.note_subscriptions(BTreeMap::from([("acme".to_owned(), made)]), at(0));
        assert!(gap.uncaught.is_empty());
        gap.note_subscriptions(BTreeMap::from([("acme".to_owned(), there)]), at(10));
        assert!(gap.uncaught.is_empty());
        // Deleted elsewhere since 10:10, made again at 10:20, while a catch-up from 10:15
        // is still pending: the read-back starts at the earlier of the two.
        gap.uncaught.insert("acme".to_owned(), at(15));
        gap.note_subscriptions(BTreeMap::from([("acme".to_owned(), made)]), at(20));
        assert_eq!(gap.uncaught.get("acme"), Some(&at(10)));
        // A channel gone from the stream is forgotten: back later, it starts afresh.
        gap.uncaught.clear();
        gap.note_subscriptions(BTreeMap::new(), at(30));
        gap.note_subscriptions(BTreeMap::from([("acme".to_owned(), made)]), at(40));
        assert!(gap.uncaught.is_empty());
    }

    #[test]
    fn the_backfill_covers_the_gap_up_to_xs_five_minutes() {
        assert_eq!(backfill_minutes(None), 5);
        assert_eq!(backfill_minutes(Some(Instant::now())), 1);
        let long_ago = Instant::now().checked_sub(Duration::from_secs(3600));
        if let Some(long_ago) = long_ago {
            assert_eq!(backfill_minutes(Some(long_ago)), 5);
        }
    }

    #[test]
    fn only_a_connection_that_proved_healthy_reconnects_at_once() {
        // X closed it at once (TooManyConnections on the body, an immediate end): back off.
        assert!(!proved_healthy(Duration::ZERO, false));
        assert!(!proved_healthy(Duration::from_secs(29), false));
        // A keep-alive or an event, or long enough alive: a cut, reconnect at once.
        assert!(proved_healthy(Duration::ZERO, true));
        assert!(proved_healthy(HEALTHY_AFTER, false));
    }

    #[test]
    fn only_a_gap_longer_than_the_catch_up_window_is_caught_up_from_its_start() {
        let five = Duration::from_secs(300);
        assert_eq!(long_gap_start("a", None, five, true), None);
        assert_eq!(long_gap_start("a", Some(Instant::now()), five, true), None);
        let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(600)) else {
            return;
        };
        let start = long_gap_start("a", Some(long_ago), five, true).expect("a long gap");
        let ago = Utc::now() - start;
        assert!((599..=601).contains(&ago.num_seconds()), "{ago}");
    }
}
