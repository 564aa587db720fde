//! One poll of one channel's DMs through `GET /2/dm_events`: the catch-up path for what
//! the webhook missed (or for accounts without a webhook).
//!
//! X lists DM events newest first and has no `since_id`, so [`poll_once`] pages back from
//! the newest event until it reaches the channel's stored cursor (the newest event id
//! already handled; ids are compared as numbers), then publishes the new messages
//! **oldest first** and moves the cursor only once their publishes are confirmed. Each
//! published id is also recorded as delivered, so the webhook and the poller share one
//! dedupe: an event the webhook already delivered is skipped (not published again), but
//! the poll still pages past it to the cursor, so an older event the webhook missed is
//! not lost.
//!
//! X bills every event a read returns, so the page size is kept in a [`PollBudget`]: a
//! poll's first page is sized for what recent polls found, plus the cursor's own event (an
//! idle channel pays for exactly that one event per poll), and further pages are read
//! only while pages hold nothing but new events.
//!
//! The first poll of a channel (no cursor yet) starts from now: it reads one small page,
//! delivers nothing and sets the cursor to the newest event (to `0` when the account has
//! no DM events, so everything after counts as new), or, with a backfill configured, at
//! the snowflake id of that many days ago, so the catch-up delivers every DM since.
//!
//! Delivery is at least once: a crash between a confirmed publish and its record, or a
//! webhook delivery racing a poll of the same event, can repeat an event with the same
//! AMQP `message_id`. While the store cannot write, the cursor and the delivered events
//! are kept in memory until it can (see [`crate::delivery`]), so polls go on without
//! publishing an event twice.
//!
//! The inbound service ([`crate::service`]) calls it on each polled channel's schedule.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use xbridge_core::contract::DirectMessage;
use xbridge_store::{StateStore, StoreError};
use xbridge_x_api::{DmEventsRequest, UserId, XClient, XError};

use crate::delivery::dm::{Delivery, DeliveryError};
use crate::delivery::sink::{EventSink, SinkError};
use crate::x::dm_events::parse_dm_events;
use crate::x::error::PayloadError;
use crate::x::item::InboundItem;

/// X's largest `max_results` for `GET /2/dm_events`.
const MAX_PAGE: u8 = 100;

/// What a poll needs for one channel.
#[derive(Clone)]
pub struct PollContext {
    /// The channel name: the store's key and the first word of the routing keys.
    pub channel: String,
    /// The channel account's X user id: DMs it sent are echoes, not customers' messages.
    pub own_user_id: String,
    /// The channel's X client (its read pacer paces the polls).
    pub client: XClient,
    /// Holds the cursor, the delivered ids (shared with the webhook) and the bridge's own
    /// sends.
    pub store: Arc<dyn StateStore>,
    /// Where the events go; `publish` returns once the event is safe.
    pub sink: Arc<dyn EventSink>,
    /// Publish `message.echo` for DMs the account sent outside the bridge.
    pub publish_echoes: bool,
    /// On the channel's first start, deliver the DMs of this many past days
    /// (X keeps 30); `None` starts from now.
    pub backfill: Option<Duration>,
    /// Where to look up a sender's profile when a page lacks it.
    pub profiles: Option<Arc<crate::delivery::profiles::Profiles>>,
    /// Signs the attachments' media URLs (X's need the channel's signature); without it
    /// attachments are published with `url: null`.
    pub media: Option<Arc<crate::media::links::MediaLinks>>,
    /// The events being delivered right now, shared with the webhook of the same
    /// process, so a poll and the webhook cannot both publish one event.
    pub in_flight: Arc<crate::delivery::in_flight::InFlightDeliveries>,
}

/// Milliseconds of X's snowflake epoch (2010-11-04T01:42:54.657Z).
const SNOWFLAKE_EPOCH_MS: i64 = 1_288_834_974_657;

/// The smallest X id minted at `at`: ids carry their creation time in
/// milliseconds since X's epoch above their low 22 bits.
pub fn snowflake_at(at: DateTime<Utc>) -> u64 {
    let ms = (at.timestamp_millis() - SNOWFLAKE_EPOCH_MS).max(0) as u64;
    ms << 22
}

/// The page size a channel's polls ask for, kept between polls.
///
/// X bills every event a page returns, old or new, so a page should end just past the
/// cursor. A poll's first page is sized for what the channel's recent polls found: the
/// smaller of the last two polls' counts of new events, plus one for the cursor's own
/// event (a steady stream of about `n` DMs per interval then costs `n + 1` events per
/// poll; an idle channel costs one). The smaller of two, so a single burst does not make
/// the next, quiet poll pay for a large page. When a page holds only new events, more are
/// waiting. X's ids carry their creation time, so once a poll has seen a few new events
/// it knows their pace and how far back the cursor lies, and the next page asks for about
/// the number written in between, plus the cursor. Before that, follow-up pages double
/// from one (1, 2, 4, … up to 100), so an overflow costs at most about as many old events
/// as it found new ones, and a backlog after downtime still takes few requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollBudget {
    small: u8,
    /// New events found by the last two complete polls, older first.
    recent: [usize; 2],
    next: u8,
    follow_up: u8,
}

impl PollBudget {
    /// The default smallest page: one event, the least X bills for a poll that finds
    /// nothing new.
    pub const SMALL: u8 = 1;

    /// A budget whose pages are at least `small` events (clamped to X's 1–100).
    pub fn new(small: u8) -> PollBudget {
        let small = small.clamp(1, MAX_PAGE);
        PollBudget {
            small,
            recent: [0, 0],
            next: small,
            follow_up: small,
        }
    }

    /// The `max_results` of the next page.
    pub fn page_size(&self) -> u8 {
        self.next
    }

    /// The smallest page.
    pub fn small(&self) -> u8 {
        self.small
    }

    /// The first page of a poll: what the recent polls suggest will reach the cursor.
    fn begin(&mut self) {
        let expected = self.recent[0].min(self.recent[1]);
        self.next = clamp_page(expected.saturating_add(1), self.small);
        self.follow_up = self.small;
    }

    /// Pages held only new events, `newest` to `oldest` (ids), `found` of them:
    /// more are waiting back to `cursor`, so read another page.
    fn grow(&mut self, found: usize, newest: u64, oldest: u64, cursor: u64) {
        let doubled = self.follow_up;
        self.follow_up = clamp_page(usize::from(self.follow_up) * 2, self.small);
        self.next = match expected_between(found, newest, oldest, cursor) {
            Some(expected) => clamp_page(expected.saturating_add(1), self.small),
            None => doubled,
        };
    }

    /// A poll reached the cursor having found `new` events: sizes the next poll's
    /// first page.
    fn settle(&mut self, new: usize) {
        self.recent = [self.recent[1], new];
        self.begin();
    }

    /// Forgets the recent polls: the next page is the smallest.
    fn reset(&mut self) {
        self.recent = [0, 0];
        self.begin();
    }
}

/// The fewest events whose pace tells the rest.
const PACE_SAMPLE: usize = 3;

/// About how many events lie between the `oldest` of `found` new events and
/// the `cursor`, at the pace the new ones were written (ids are snowflakes:
/// their creation time in milliseconds sits above the low 22 bits). `None`
/// while too few were seen to tell a pace.
fn expected_between(found: usize, newest: u64, oldest: u64, cursor: u64) -> Option<usize> {
    let span = (newest >> 22).checked_sub(oldest >> 22)?;
    let behind = (oldest >> 22).checked_sub(cursor >> 22)?;
    if found < PACE_SAMPLE || span == 0 {
        return None;
    }
    // `found` events span `found - 1` gaps.
    let gaps = (found - 1) as u64;
    Some(usize::try_from(behind.saturating_mul(gaps).div_ceil(span)).unwrap_or(usize::MAX))
}

fn clamp_page(size: usize, small: u8) -> u8 {
    size.clamp(usize::from(small), usize::from(MAX_PAGE)) as u8
}

impl Default for PollBudget {
    /// Pages of at least [`PollBudget::SMALL`] events.
    fn default() -> Self {
        PollBudget::new(PollBudget::SMALL)
    }
}

/// What one poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollOutcome {
    /// Events published (and confirmed) by this poll.
    pub delivered: usize,
    /// Pages read from X.
    pub pages: usize,
    /// Events X returned over all pages (what it bills this poll for).
    pub events_read: usize,
}

/// Why a poll stopped. In every case the cursor stays at (or before) the last event whose
/// publish was confirmed, so the next poll picks up the rest.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// X's read window is used up; the client's read pacer already holds further reads
    /// until `until` (when X said).
    #[error("X's DM read rate limit is reached until {}", .until.map_or_else(|| "an unknown time".to_owned(), |at| at.to_rfc3339()))]
    RateLimited {
        /// When the window resets, if X said.
        until: Option<DateTime<Utc>>,
    },
    /// The X account is out of credits or over its spending cap: the caller should pause
    /// polling until an operator tops up.
    #[error(transparent)]
    CreditsExhausted(XError),
    /// Any other failure of the read (credentials, permissions, network, 5xx, …).
    #[error(transparent)]
    X(XError),
    /// X answered with a page the bridge cannot read.
    #[error("unreadable DM events page: {0}")]
    Page(#[from] PayloadError),
    /// An event was not confirmed by the sink.
    #[error("publish failed: {0}")]
    Publish(#[from] SinkError),
    /// The state store failed (or holds a cursor that is not an event id).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DeliveryError> for PollError {
    fn from(error: DeliveryError) -> Self {
        match error {
            DeliveryError::Sink(e) => PollError::Publish(e),
            DeliveryError::Store(e) => PollError::Store(e),
        }
    }
}

impl From<XError> for PollError {
    fn from(error: XError) -> PollError {
        match error {
            XError::RateLimited { reset_at, .. } => PollError::RateLimited { until: reset_at },
            error @ XError::CreditsExhausted { .. } => PollError::CreditsExhausted(error),
            error => PollError::X(error),
        }
    }
}

/// One event of a page, as far as the poll cares.
struct Seen {
    id: u64,
    message: Option<DirectMessage>,
}

/// Polls `ctx.channel` once: reads back to the cursor, publishes what is new oldest first,
/// then moves the cursor. See the [module documentation](self).
pub async fn poll_once(
    ctx: &PollContext,
    budget: &mut PollBudget,
) -> Result<PollOutcome, PollError> {
    let channel = ctx.channel.as_str();
    let mut outcome = PollOutcome::default();
    let Some(cursor) = start_cursor(ctx).await? else {
        // First start: from now on. One small page tells where "now" is.
        budget.reset();
        let page = read_page(ctx, budget.page_size(), None, &mut outcome).await?;
        let newest = page.0.iter().map(|seen| seen.id).max().unwrap_or(0);
        move_cursor(ctx, &newest.to_string()).await;
        tracing::info!(channel, cursor = newest, "first poll: starting from now");
        return Ok(outcome);
    };
    let mut new = read_back_to(ctx, cursor, budget, &mut outcome).await?;
    // Oldest first; the cursor follows the confirmed publishes.
    new.reverse();
    publish_in_order(ctx, &new, &mut outcome).await?;
    tracing::debug!(
        channel,
        delivered = outcome.delivered,
        pages = outcome.pages,
        events_read = outcome.events_read,
        "poll done"
    );
    Ok(outcome)
}

/// Where this poll reads back to: the channel's cursor (kept in memory while
/// the store could not take it), or on a first poll with a backfill, the id of
/// "that long ago"; `None` for a first poll that starts from now.
async fn start_cursor(ctx: &PollContext) -> Result<Option<u64>, PollError> {
    let channel = ctx.channel.as_str();
    let cursor = match ctx.in_flight.pending().cursor(channel) {
        Some(cursor) => Some(cursor),
        None => ctx.store.poll_cursor(channel).await?,
    };
    let cursor = match cursor {
        Some(cursor) => Some(cursor.parse::<u64>().map_err(|_| {
            StoreError::Failed(format!(
                "the poll cursor of channel {channel} is {cursor:?}, not an event id"
            ))
        })?),
        None => None,
    };
    Ok(match (cursor, ctx.backfill) {
        (None, Some(days)) => {
            // X's ids are snowflakes: the id of "that long ago" is a cursor
            // behind every DM written since, so the catch-up sends them.
            let since = Utc::now() - chrono::Duration::from_std(days).unwrap_or_default();
            let start = snowflake_at(since);
            move_cursor(ctx, &start.to_string()).await;
            tracing::info!(channel, since = %since, "first poll: backfilling");
            Some(start)
        }
        (cursor, _) => cursor,
    })
}

/// Reads pages, newest first as X lists them, until one reaches `cursor` (or
/// the last page): the events newer than it, newest first.
async fn read_back_to(
    ctx: &PollContext,
    cursor: u64,
    budget: &mut PollBudget,
    outcome: &mut PollOutcome,
) -> Result<Vec<Seen>, PollError> {
    budget.begin();
    let mut new: Vec<Seen> = Vec::new();
    let mut token: Option<String> = None;
    let mut oldest_read: Option<u64> = None;
    loop {
        let asked = token.take();
        let (page, next_token) = read_page(ctx, budget.page_size(), asked.clone(), outcome).await?;
        repeats_no_page(&page, oldest_read, asked.as_deref(), next_token.as_deref())?;
        oldest_read = page.iter().map(|seen| seen.id).min().or(oldest_read);
        let mut reached = false;
        for seen in page {
            if seen.id <= cursor {
                reached = true;
                break;
            }
            new.push(seen);
        }
        if reached || next_token.is_none() {
            budget.settle(new.len());
            return Ok(new);
        }
        if let (Some(newest), Some(oldest)) = (new.first(), new.last()) {
            budget.grow(new.len(), newest.id, oldest.id, cursor);
        }
        token = next_token;
    }
}

/// Reads `ctx.channel`'s DMs back to `since` (an event id, such as [`snowflake_at`] of a
/// time) and delivers, oldest first, those the delivered record lacks — a poll's pages and
/// delivery, but leaving the channel's poll cursor alone: a one-off read that fills a gap
/// another path left (the activity stream down longer than X's backfill), not a poll, so a
/// poller of the channel (if it ever gets one) still reads back to where it was.
pub async fn catch_up(ctx: &PollContext, since: u64) -> Result<PollOutcome, PollError> {
    let mut outcome = PollOutcome::default();
    let mut budget = PollBudget::default();
    let mut new = read_back_to(ctx, since, &mut budget, &mut outcome).await?;
    new.reverse();
    let (_, delivered) = deliver_in_order(ctx, &new, &mut outcome).await;
    delivered.map(|()| outcome)
}

/// Delivers `new` in its order, stopping at the first failure, and moves the
/// cursor past the last event confirmed (also when one failed).
async fn publish_in_order(
    ctx: &PollContext,
    new: &[Seen],
    outcome: &mut PollOutcome,
) -> Result<(), PollError> {
    let (confirmed, delivered) = deliver_in_order(ctx, new, outcome).await;
    if let Some(id) = confirmed {
        move_cursor(ctx, &id.to_string()).await;
    }
    delivered
}

/// Delivers `new` in its order, stopping at the first failure: the id of the last event
/// confirmed, and how it ended.
async fn deliver_in_order(
    ctx: &PollContext,
    new: &[Seen],
    outcome: &mut PollOutcome,
) -> (Option<u64>, Result<(), PollError>) {
    let mut confirmed: Option<u64> = None;
    let mut failed = None;
    for seen in new {
        let result = match &seen.message {
            Some(dm) => deliver(ctx, dm).await,
            None => Ok(false),
        };
        match result {
            Ok(published) => {
                outcome.delivered += usize::from(published);
                confirmed = Some(seen.id);
            }
            Err(error) => {
                let channel = ctx.channel.as_str();
                tracing::error!(channel, event_id = seen.id, %error, "polled DM not delivered");
                failed = Some(error);
                break;
            }
        }
    }
    (confirmed, failed.map_or(Ok(()), Err))
}

/// Checks that a page goes on from the one before: X lists DM events newest first, so
/// every event of a page is older than the `oldest_read` before it, and its
/// `next_token` is not the token (`asked`) that fetched it. A page that repeats
/// events, or hands back its own token, would have the poll follow it for ever,
/// paying for every read and never reaching the cursor; the poll stops with an error
/// instead (and the next one starts again from the newest page).
fn repeats_no_page(
    page: &[Seen],
    oldest_read: Option<u64>,
    asked: Option<&str>,
    next_token: Option<&str>,
) -> Result<(), PollError> {
    let newest = page.iter().map(|seen| seen.id).max();
    let repeats_events =
        matches!((newest, oldest_read), (Some(newest), Some(oldest)) if newest >= oldest);
    let repeats_token = asked.is_some() && asked == next_token;
    if repeats_events || repeats_token {
        return Err(PollError::Page(PayloadError::Invalid {
            field: "meta.next_token".into(),
            detail: "led to a page that repeats the one before (its events or its token), so paging back to the cursor would never end".into(),
        }));
    }
    Ok(())
}

/// Moves the channel's cursor to `event_id`, in the store or, while the store
/// cannot take it, in memory until it can (see [`crate::delivery`]): the
/// events up to it were published, so a poll must not publish them again.
async fn move_cursor(ctx: &PollContext, event_id: &str) {
    let channel = ctx.channel.as_str();
    match ctx.store.set_poll_cursor(channel, event_id).await {
        Ok(()) => ctx.in_flight.pending().forget_cursor(channel),
        Err(error) => {
            tracing::warn!(channel, event_id, %error, "poll cursor not recorded; kept in memory until the store can write");
            ctx.in_flight.pending().keep_cursor(channel, event_id);
        }
    }
}

/// Reads one page: its events with numeric ids, newest first, and the next page's token.
async fn read_page(
    ctx: &PollContext,
    max_results: u8,
    pagination_token: Option<String>,
    outcome: &mut PollOutcome,
) -> Result<(Vec<Seen>, Option<String>), PollError> {
    let response = ctx
        .client
        .list_dm_events(&DmEventsRequest {
            max_results,
            pagination_token,
        })
        .await?;
    let page = parse_dm_events(&response.body, &ctx.own_user_id)?;
    outcome.pages += 1;
    outcome.events_read += page.items.len();
    let seen = page
        .items
        .into_iter()
        .filter_map(|item| {
            let (event_id, message) = match item {
                InboundItem::Message(dm) => (Some(dm.event_id.clone()), Some(dm)),
                InboundItem::Ignored { event_id, reason } => {
                    tracing::debug!(channel = ctx.channel, event_id = event_id.as_ref().map(|id| id.as_str()), %reason, "polled event ignored");
                    (event_id, None)
                }
                // Not listed by `GET /2/dm_events`.
                InboundItem::Typing(_) | InboundItem::Read(_) => (None, None),
            };
            let id = event_id?.as_str().parse::<u64>().ok()?;
            Some(Seen { id, message })
        })
        .collect();
    Ok((seen, page.next_token))
}

/// One new DM: skipped if already delivered, classified, published, recorded. `Ok(true)`
/// when it was published.
async fn deliver(ctx: &PollContext, dm: &DirectMessage) -> Result<bool, PollError> {
    let delivery = Delivery {
        channel: &ctx.channel,
        own_user_id: &UserId::from(ctx.own_user_id.as_str()),
        store: ctx.store.as_ref(),
        sink: ctx.sink.as_ref(),
        profiles: ctx.profiles.as_deref(),
        publish_echoes: ctx.publish_echoes,
        media: ctx.media.as_deref(),
        in_flight: &ctx.in_flight,
    };
    Ok(delivery.deliver(dm.clone()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_must_be_older_than_the_one_before_and_bring_a_new_token() {
        let page = |ids: &[u64]| -> Vec<Seen> {
            ids.iter().map(|&id| Seen { id, message: None }).collect()
        };
        // The first page, and pages going back in time.
        assert!(repeats_no_page(&page(&[9, 8]), None, None, Some("a")).is_ok());
        assert!(repeats_no_page(&page(&[7, 6]), Some(8), Some("a"), Some("b")).is_ok());
        assert!(repeats_no_page(&page(&[]), Some(8), Some("a"), None).is_ok());
        // The same events again, one as new as the last page's oldest, or the same token.
        assert!(repeats_no_page(&page(&[9, 8]), Some(8), Some("a"), Some("b")).is_err());
        assert!(repeats_no_page(&page(&[8]), Some(8), Some("a"), Some("b")).is_err());
        assert!(repeats_no_page(&page(&[]), Some(8), Some("a"), Some("a")).is_err());
    }

    #[test]
    fn snowflake_cursors_sort_by_time() {
        // An id and its time from X's documented sample.
        let id: u64 = 1_585_047_616_894_574_596;
        let written = DateTime::parse_from_rfc3339("2022-10-25T23:16:15.000Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(snowflake_at(written - chrono::Duration::milliseconds(1)) < id);
        assert!(snowflake_at(written + chrono::Duration::seconds(1)) > id);
    }

    #[test]
    fn with_a_pace_the_next_page_reaches_just_past_the_cursor() {
        let mut budget = PollBudget::default();
        budget.begin();
        // Two events are too few to tell a pace.
        budget.grow(2, id_at(10_000), id_at(9_900), id_at(1_000));
        assert_eq!(budget.page_size(), 1);
        // 4 events 100 ms apart, the oldest 1.6 s after the cursor: about 16
        // more, then the cursor.
        budget.grow(4, id_at(10_000), id_at(9_700), id_at(8_100));
        assert_eq!(budget.page_size(), 17);
        // Capped at X's largest page.
        budget.grow(4, id_at(10_000), id_at(9_970), id_at(1_000));
        assert_eq!(budget.page_size(), 100);
        // Ids out of order (a cursor newer than the page) fall back to the
        // doubling follow-ups (1, 2 and 4 went by).
        budget.grow(4, id_at(10_000), id_at(9_700), id_at(20_000));
        assert_eq!(budget.page_size(), 8);
    }

    #[test]
    fn an_idle_channel_reads_one_event_per_poll() {
        let mut budget = PollBudget::default();
        for _ in 0..3 {
            budget.begin();
            assert_eq!(budget.page_size(), 1);
            budget.settle(0);
        }
        assert_eq!(PollBudget::new(0).page_size(), 1);
        assert_eq!(PollBudget::new(200).small(), 100);
    }

    #[test]
    fn a_steady_stream_is_read_in_one_page_ending_at_the_cursor() {
        let mut budget = PollBudget::default();
        budget.settle(20);
        budget.settle(20);
        budget.begin();
        assert_eq!(budget.page_size(), 21);
        // A slower poll sizes the next first page down at once.
        budget.settle(12);
        assert_eq!(budget.page_size(), 13);
    }

    #[test]
    fn one_burst_does_not_make_the_next_quiet_poll_read_a_large_page() {
        let mut budget = PollBudget::default();
        budget.settle(0);
        budget.settle(80);
        assert_eq!(budget.page_size(), 1);
    }

    /// An id minted `ms` milliseconds after X's epoch.
    fn id_at(ms: u64) -> u64 {
        (ms << 22) | 7
    }

    #[test]
    fn follow_up_pages_double_from_one_up_to_x_maximum_without_a_pace() {
        let mut budget = PollBudget::default();
        budget.settle(30);
        budget.settle(30);
        let mut sizes = vec![budget.page_size()];
        for _ in 0..8 {
            // All new events written in the same millisecond: no pace to go by.
            budget.grow(50, id_at(5_000), id_at(5_000), id_at(1_000));
            sizes.push(budget.page_size());
        }
        assert_eq!(sizes, [31, 1, 2, 4, 8, 16, 32, 64, 100]);
        // The next poll starts from what was found again.
        budget.settle(25);
        assert_eq!(budget.page_size(), 26);
        budget.reset();
        assert_eq!(budget.page_size(), 1);
    }
}
