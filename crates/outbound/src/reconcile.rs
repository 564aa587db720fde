//! Closing the window between X's answer and the bridge's record.
//!
//! X's DM endpoints take no idempotency key. If the bridge dies (or loses
//! X's answer) after X created a DM and before the bridge recorded it, a
//! blind retry would send the customer the same DM twice. The bridge records
//! an intent before each send; a part with an intent and no record is
//! ambiguous, and before sending it again the bridge looks for it among the
//! account's recent DM events: a DM of its own, in the same conversation,
//! with the same text (and media, if any), created after the intent and not
//! already recorded for another reply. That read is billed by X, so it only
//! happens for ambiguous parts, which take a crash or a lost answer.

use chrono::{DateTime, Utc};

use xbridge_store::{SentRecord, StoreError};
use xbridge_x_api::{DmEventsRequest, DmTarget, XError};

use crate::context::ChannelContext;
use tokio_util::sync::CancellationToken;

use crate::recent_events::{matches, read_page, settled_at, Candidate, ReadEvents, Sought, SKEW};

/// Events per page read while looking (X bills each one).
const PAGE_SIZE: u8 = 100;
/// Pages read at most: a send that old is past any crash recovery.
const MAX_PAGES: usize = 4;

/// Why a look for an earlier send found nothing certain.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// X's read failed: the reply's fate decides, like a failed send.
    #[error(transparent)]
    X(#[from] XError),
    /// The store could not say whether a DM is already another reply's: the
    /// reply waits for the store, and no attempt is used up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Shutdown came while the look waited for the earlier send to settle.
    #[error("interrupted")]
    Interrupted,
}

/// The part of a reply whose earlier send is looked for.
#[derive(Debug, Clone, Copy)]
pub struct Ambiguous<'a> {
    /// Where it was sent.
    pub target: &'a DmTarget,
    /// The reply's CRM message id.
    pub message_id: &'a str,
    /// Which part (0-based), of how many.
    pub index: usize,
    /// How many parts the reply has.
    pub count: usize,
    /// The part's text.
    pub text: &'a str,
    /// Whether it carries an attachment.
    pub has_media: bool,
    /// When the earlier send started (its intent).
    pub since: DateTime<Utc>,
}

/// An earlier send of the part, found.
#[derive(Debug)]
pub enum Earlier {
    /// The whole reply was sent and recorded meanwhile (by the replica that
    /// sent the part, which went on): its record.
    ReplySent(SentRecord),
    /// The replica that sent it recorded it meanwhile: this reply's record.
    Recorded(SentRecord),
    /// X has it, and no reply's record does: its DM event.
    OnX(Candidate),
}

/// Looks for an earlier send of the part: in the store, where the replica
/// that sent it may have recorded it since, then on X.
///
/// It looks only once that send has settled (see [`settled_at`]): the
/// replica that sent it may have died or lost its broker connection with the
/// request still on its way, and X may create the DM after a quicker read.
/// A DM X has that is recorded for this very part is this part's, not another
/// reply's: the old owner recorded it while this replica was looking.
pub async fn find_earlier_send(
    ctx: &ChannelContext,
    part: Ambiguous<'_>,
    stop: &CancellationToken,
) -> Result<Option<Earlier>, LookupError> {
    let Ambiguous {
        target,
        text,
        has_media,
        since,
        ..
    } = part;
    let settled = settled_at(since, ctx.client.request_timeout());
    ctx.recent_events.lock().await.expect(settled);
    let waited = wait_until(ctx, settled, stop).await;
    let mut recent = ctx.recent_events.lock().await;
    recent.forget(settled);
    waited?;
    if let Some(earlier) = recorded(ctx, &part).await? {
        return Ok(Some(earlier));
    }
    let sought = Sought {
        own_user_id: ctx.own_user_id().await?,
        target,
        text,
        has_media,
        since,
    };
    if !recent.covers(since, settled) {
        // Late enough for the other lanes waiting to look, so one read serves them;
        // they wait for this lock meanwhile.
        let read_at = recent.read_at(settled);
        wait_until(ctx, read_at, stop).await?;
        recent.keep(read_back_to(ctx, since - SKEW).await?);
    }
    // Oldest first, so the earliest unclaimed match wins.
    let mut claimed = 0;
    for event in recent.events().iter().rev() {
        if !matches(event, &sought) {
            continue;
        }
        if !ctx.store.is_own_send(&ctx.name, event.id.as_str()).await? {
            return Ok(Some(Earlier::OnX(event.clone())));
        }
        match recorded(ctx, &part).await? {
            Some(Earlier::Recorded(record)) if record.dm_event_id == event.id.as_str() => {
                return Ok(Some(Earlier::Recorded(record)));
            }
            Some(Earlier::ReplySent(record)) => return Ok(Some(Earlier::ReplySent(record))),
            _ => {}
        }
        claimed += 1;
    }
    let events = recent.events();
    tracing::info!(
        channel = %ctx.name,
        message_id = part.message_id,
        part = part.index + 1,
        events = events.len(),
        same_words = events.iter().filter(|e| e.text.trim_end() == text.trim_end()).count(),
        claimed_by_other_replies = claimed,
        newest = ?events.first().map(|e| e.created_at),
        oldest = ?events.last().map(|e| e.created_at),
        %since,
        "no earlier send of this DM on X: sending it"
    );
    Ok(None)
}

/// Waits until `when` (by this process's clock), or for `stop`.
async fn wait_until(
    ctx: &ChannelContext,
    when: DateTime<Utc>,
    stop: &CancellationToken,
) -> Result<(), LookupError> {
    let Ok(wait) = (when - Utc::now()).to_std() else {
        return Ok(());
    };
    tracing::info!(
        channel = %ctx.name,
        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "waiting for an earlier send of this DM to settle before looking for it"
    );
    tokio::select! {
        () = tokio::time::sleep(wait) => Ok(()),
        () = stop.cancelled() => Err(LookupError::Interrupted),
    }
}

/// What the store says of `part` now: the whole reply recorded, else (a
/// reply of several DMs) the part recorded.
async fn recorded(
    ctx: &ChannelContext,
    part: &Ambiguous<'_>,
) -> Result<Option<Earlier>, StoreError> {
    if let Some(record) = ctx.store.sent(&ctx.name, part.message_id).await? {
        return Ok(Some(Earlier::ReplySent(record)));
    }
    if part.count == 1 {
        return Ok(None);
    }
    let record = ctx
        .store
        .sent_part(&ctx.name, part.message_id, part.index)
        .await?;
    Ok(record.map(Earlier::Recorded))
}

/// Reads the account's DM events, newest first, back to `until` (or
/// [`MAX_PAGES`] pages).
async fn read_back_to(ctx: &ChannelContext, until: DateTime<Utc>) -> Result<ReadEvents, XError> {
    let at = Utc::now();
    let mut request = DmEventsRequest::first(PAGE_SIZE);
    let mut events = Vec::new();
    let mut back_to = at;
    for _ in 0..MAX_PAGES {
        let page = ctx.client.list_dm_events(&request).await?;
        let page = read_page(&page.body)?;
        if let Some(oldest) = page.data.iter().map(|e| e.created_at).min() {
            back_to = back_to.min(oldest);
        }
        events.extend(page.data);
        match page.meta.next_token {
            Some(token) if back_to > until => request.pagination_token = Some(token),
            Some(_) => break,
            None => {
                // X has nothing older: the read covers all time.
                back_to = DateTime::<Utc>::MIN_UTC;
                break;
            }
        }
    }
    tracing::info!(
        channel = %ctx.name,
        events = events.len(),
        "read the account's recent DM events to find sends the bridge did not record"
    );
    Ok(ReadEvents {
        at,
        back_to,
        events,
    })
}
