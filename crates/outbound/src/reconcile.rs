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

use xbridge_store::StoreError;
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

/// Looks for an earlier send of the part on X: its DM event, if found.
///
/// It reads X only once that send has settled (see [`settled_at`]): the
/// replica that sent it may have died or lost its broker connection with the
/// request still on its way, and X may create the DM after a quicker read.
pub async fn find_earlier_send(
    ctx: &ChannelContext,
    target: &DmTarget,
    text: &str,
    has_media: bool,
    since: DateTime<Utc>,
    stop: &CancellationToken,
) -> Result<Option<Candidate>, LookupError> {
    let settled = settled_at(since, ctx.client.request_timeout());
    if let Ok(wait) = (settled - Utc::now()).to_std() {
        tracing::info!(
            channel = %ctx.name,
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "waiting for an earlier send of this DM to settle before looking for it on X"
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return Err(LookupError::Interrupted),
        }
    }
    let sought = Sought {
        own_user_id: ctx.own_user_id().await?,
        target,
        text,
        has_media,
        since,
    };
    let mut recent = ctx.recent_events.lock().await;
    if !recent.covers(since, settled) {
        recent.keep(read_back_to(ctx, since - SKEW).await?);
    }
    // Oldest first, so the earliest unclaimed match wins.
    for event in recent.events().iter().rev() {
        if matches(event, &sought) && !ctx.store.is_own_send(&ctx.name, event.id.as_str()).await? {
            return Ok(Some(event.clone()));
        }
    }
    Ok(None)
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
