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
//! poll starts with a single event (in steady state, with no new DMs, one poll reads and
//! pays for exactly the cursor's own event) and grows the pages only while they hold
//! nothing but new events.
//!
//! The first poll of a channel (no cursor yet) starts from now: it reads one small page,
//! delivers nothing and sets the cursor to the newest event (to `0` when the account has
//! no DM events, so everything after counts as new), or, with a backfill configured, at
//! the snowflake id of that many days ago, so the catch-up delivers every DM since.
//!
//! Delivery is at least once: a crash between a confirmed publish and its record, or a
//! webhook delivery racing a poll of the same event, can repeat an event with the same
//! AMQP `message_id`.
//!
//! The inbound service ([`crate::service`]) calls it on each polled channel's schedule.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use xbridge_store::{StateStore, StoreError};
use xbridge_x_api::{DmEventsRequest, XClient, XError};

use crate::delivery::{DeliverError, Delivery};
use crate::sink::{EventSink, SinkError};
use crate::{parse_dm_events, DirectMessage, InboundItem, PayloadError};

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
    pub profiles: Option<Arc<crate::profiles::Profiles>>,
    /// Signs the attachments' media URLs (X's need the channel's signature); without it
    /// attachments are published with `url: null`.
    pub media: Option<Arc<crate::media::MediaLinks>>,
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
/// It starts at the small size. Within a poll, while pages hold only new events, each
/// next page is as large as all the new events read so far (so sizes go 1, 1, 2, 4, 8, …
/// up to 100): a backlog takes few requests, and the page that reaches the cursor costs at
/// most as many old events as new ones were found. Once a poll reaches the cursor the
/// size drops back to the small one; a poll that fails half-way keeps the grown size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollBudget {
    small: u8,
    next: u8,
}

impl PollBudget {
    /// The default small page size: one event, the least X bills for a poll that finds
    /// nothing new.
    pub const SMALL: u8 = 1;

    /// A budget starting at `small` events per page (clamped to X's 1–100).
    pub fn new(small: u8) -> PollBudget {
        let small = small.clamp(1, MAX_PAGE);
        PollBudget { small, next: small }
    }

    /// The `max_results` of the next page.
    pub fn page_size(&self) -> u8 {
        self.next
    }

    /// The small size polls start from and return to.
    pub fn small(&self) -> u8 {
        self.small
    }

    /// A page held only new events and `new_so_far` were read in this poll: more may be
    /// waiting, so the next page grows to that many.
    fn grow(&mut self, new_so_far: usize) {
        let wanted = new_so_far.min(usize::from(MAX_PAGE)) as u8;
        self.next = self.next.max(wanted).min(MAX_PAGE);
    }

    /// A page reached the cursor: back to the small size.
    fn settle(&mut self) {
        self.next = self.small;
    }
}

impl Default for PollBudget {
    /// [`PollBudget::SMALL`] events per page.
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

impl From<DeliverError> for PollError {
    fn from(error: DeliverError) -> Self {
        match error {
            DeliverError::Sink(e) => PollError::Publish(e),
            DeliverError::Store(e) => PollError::Store(e),
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
    let cursor = match ctx.store.poll_cursor(channel).await? {
        Some(cursor) => Some(cursor.parse::<u64>().map_err(|_| {
            StoreError(format!(
                "the poll cursor of channel {channel} is {cursor:?}, not an event id"
            ))
        })?),
        None => None,
    };
    let mut outcome = PollOutcome::default();

    let cursor = match (cursor, ctx.backfill) {
        (None, Some(days)) => {
            // X's ids are snowflakes: the id of "that long ago" is a cursor
            // behind every DM written since, so the catch-up below sends them.
            let since = Utc::now() - chrono::Duration::from_std(days).unwrap_or_default();
            let start = snowflake_at(since);
            ctx.store
                .set_poll_cursor(channel, &start.to_string())
                .await?;
            tracing::info!(channel, since = %since, "first poll: backfilling");
            Some(start)
        }
        (cursor, _) => cursor,
    };
    let Some(cursor) = cursor else {
        // First start: from now on. One small page tells where "now" is.
        budget.settle();
        let page = read_page(ctx, budget.page_size(), None, &mut outcome).await?;
        let newest = page.0.iter().map(|seen| seen.id).max().unwrap_or(0);
        ctx.store
            .set_poll_cursor(channel, &newest.to_string())
            .await?;
        tracing::info!(channel, cursor = newest, "first poll: starting from now");
        return Ok(outcome);
    };

    // Newest first, as X lists them.
    let mut new: Vec<Seen> = Vec::new();
    let mut token = None;
    loop {
        let (page, next_token) =
            read_page(ctx, budget.page_size(), token.take(), &mut outcome).await?;
        let mut reached = false;
        for seen in page {
            if seen.id <= cursor {
                reached = true;
                break;
            }
            new.push(seen);
        }
        if reached || next_token.is_none() {
            budget.settle();
            break;
        }
        budget.grow(new.len());
        token = next_token;
    }

    // Oldest first; the cursor follows the confirmed publishes.
    new.reverse();
    let mut confirmed: Option<u64> = None;
    for seen in &new {
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
                tracing::error!(channel, event_id = seen.id, %error, "polled DM not delivered");
                if let Some(id) = confirmed {
                    if let Err(store_error) =
                        ctx.store.set_poll_cursor(channel, &id.to_string()).await
                    {
                        tracing::warn!(channel, %store_error, "poll cursor not moved");
                    }
                }
                return Err(error);
            }
        }
    }
    if let Some(id) = confirmed {
        ctx.store.set_poll_cursor(channel, &id.to_string()).await?;
    }
    tracing::debug!(
        channel,
        delivered = outcome.delivered,
        pages = outcome.pages,
        events_read = outcome.events_read,
        "poll done"
    );
    Ok(outcome)
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
                    tracing::debug!(channel = ctx.channel, event_id, %reason, "polled event ignored");
                    (event_id, None)
                }
                // Not listed by `GET /2/dm_events`.
                InboundItem::Typing(_) | InboundItem::Read(_) => (None, None),
            };
            let id = event_id?.parse::<u64>().ok()?;
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
        own_user_id: &ctx.own_user_id,
        store: ctx.store.as_ref(),
        sink: ctx.sink.as_ref(),
        profiles: ctx.profiles.as_deref(),
        publish_echoes: ctx.publish_echoes,
        media: ctx.media.as_deref(),
    };
    Ok(delivery.deliver(dm.clone()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn pages_grow_with_what_was_found_and_settle_back() {
        let mut budget = PollBudget::default();
        assert_eq!(budget.page_size(), 1);
        let mut sizes = vec![budget.page_size()];
        let mut found = 0;
        for _ in 0..9 {
            found += usize::from(budget.page_size());
            budget.grow(found);
            sizes.push(budget.page_size());
        }
        assert_eq!(sizes, [1, 1, 2, 4, 8, 16, 32, 64, 100, 100]);
        budget.settle();
        assert_eq!(budget.page_size(), 1);
        assert_eq!(PollBudget::new(0).page_size(), 1);
        assert_eq!(PollBudget::new(200).small(), 100);
    }
}
