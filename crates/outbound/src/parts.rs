//! A reply as the DMs it becomes: X takes one attachment per DM, so a reply
//! with several attachments goes out as several DMs in order, the text with
//! the first. Each part is recorded once sent, so a crash or a retry between
//! parts sends no part twice: the next try starts at the first unsent part.

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use xbridge_core::contract::OutgoingReply;
use xbridge_store::{SentRecord, StoreError};
use xbridge_x_api::{DmTarget, MediaUpload, XError};

use crate::context::ChannelContext;
use crate::failpoints;
use crate::fence::{self, Claim};
use crate::media::{MediaError, PreparedMedia};
use crate::recent_events::Candidate;
use crate::reconcile::{find_earlier_send, Ambiguous, Earlier, LookupError};
use crate::store_outage::{record_part, write_durably};
use crate::unsettled::Unsettled;

/// One DM of a reply.
struct Part {
    /// The reply's text for the first part, empty for the others.
    text: String,
    /// The attachment, downloaded or decoded, while it still has to go out.
    media: Option<PreparedMedia>,
    /// X's id of the uploaded media, so a retry of the DM (a 5xx, a rate
    /// limit) does not upload the same bytes again.
    media_id: Option<String>,
    /// X's answer once the DM went out.
    sent: Option<SentRecord>,
    /// When a send of this part started that may have reached X without the
    /// bridge hearing back (a crash, a timeout): look on X before sending.
    ambiguous_since: Option<DateTime<Utc>>,
}

/// Why a reply's parts could not be made ready to send.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// An attachment is unusable (download refused or failed, too large):
    /// the reply is dead-lettered `invalid_message` before any request to X.
    #[error("{0}")]
    Invalid(String),
    /// Spooling a download to local disk failed: worth another try later.
    #[error("{0}")]
    Local(String),
    /// The state store could not say which parts were sent.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The DMs of one reply and how far they got.
pub struct ReplyParts {
    parts: Vec<Part>,
    /// The consumer's claim of the channel: each part's send intent carries
    /// it, and is refused once another consumer owns the channel.
    claim: Claim,
}

impl ReplyParts {
    /// Looks up which parts already went out (a previous delivery may have
    /// died between parts) and prepares the attachments of the others, all
    /// before the first request to X, so a bad attachment sends nothing.
    /// Sent under `claim`, the claim of the consumer that took the reply.
    pub async fn prepare(
        ctx: &ChannelContext,
        reply: &OutgoingReply,
        claim: Claim,
    ) -> Result<ReplyParts, PrepareError> {
        let count = reply.attachments.len().max(1);
        let mut parts = Vec::with_capacity(count);
        for index in 0..count {
            parts.push(prepare_part(ctx, reply, index, count).await?);
        }
        Ok(ReplyParts { parts, claim })
    }

    /// Sends every part not sent yet, in order: uploads its attachment, sends
    /// the DM, records the part. Returns the record of the whole reply, or
    /// X's refusal of the first part that failed (the parts before it stay
    /// recorded). Only the state store's failures (before a send: nothing was
    /// sent), a refused claim ([`Unsettled::Fenced`]: nothing was sent) and
    /// `stop` are `Err`: a part X accepted is recorded whatever it takes (see
    /// [`crate::store_outage`]). A stop between parts leaves the rest to a
    /// later delivery.
    ///
    /// After waiting for an earlier send to settle (see
    /// [`crate::reconcile`]), the later parts are looked up in the store
    /// again: the replica that sent the earlier one may have gone on with them
    /// meanwhile, and may even have finished the reply ([`Sent::Before`]).
    pub async fn send(
        &mut self,
        ctx: &ChannelContext,
        target: &DmTarget,
        message_id: &str,
        stop: &CancellationToken,
    ) -> Result<Result<Sent, XError>, Unsettled> {
        let count = self.parts.len();
        let mut looked = false;
        let mut went_out = false;
        for (index, part) in self.parts.iter_mut().enumerate() {
            if looked && part.sent.is_none() {
                refresh(ctx, message_id, index, part).await?;
            }
            if part.sent.is_some() {
                continue;
            }
            if went_out && stop.is_cancelled() {
                return Err(Unsettled::Interrupted);
            }
            let place = Place {
                message_id,
                index,
                count,
                claim: self.claim,
            };
            looked |= part.ambiguous_since.is_some();
            match send_part(ctx, target, place, part, stop).await? {
                Ok(Step::Next) => went_out = true,
                Ok(Step::ReplySent(record)) => return Ok(Ok(Sent::Before(record))),
                Err(error) => return Ok(Err(error)),
            }
        }
        let first = self.parts[0].sent.clone().expect("every part was sent");
        let last = self.parts[count - 1].sent.as_ref().expect("sent");
        Ok(Ok(Sent::Now(SentRecord {
            sent_at: last.sent_at,
            parts: if count > 1 {
                self.sent_ids()
            } else {
                Vec::new()
            },
            ..first
        })))
    }

    /// A note for a failure after some parts went out: the CRM must know
    /// the customer already has them, and that a replay sends only the rest.
    pub fn partial_note(&self) -> Option<String> {
        let sent = self.sent_ids();
        (!sent.is_empty()).then(|| {
            format!(
                " ({} of {} DMs of this reply were sent before this: {}; a replay sends only the others)",
                sent.len(),
                self.parts.len(),
                sent.join(", ")
            )
        })
    }

    fn sent_ids(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|p| p.sent.as_ref().map(|s| s.dm_event_id.clone()))
            .collect()
    }
}

/// Part `index` of `count`: its record if a previous delivery sent it (only a reply in
/// parts records parts), else when a send of it may have reached X unheard, and its
/// attachment prepared while it still has to go out.
async fn prepare_part(
    ctx: &ChannelContext,
    reply: &OutgoingReply,
    index: usize,
    count: usize,
) -> Result<Part, PrepareError> {
    let sent = if count > 1 {
        ctx.store
            .sent_part(&ctx.name, &reply.message_id, index)
            .await?
    } else {
        None
    };
    let ambiguous_since = match sent {
        Some(_) => None,
        None => {
            ctx.store
                .send_intent(&ctx.name, &reply.message_id, index)
                .await?
        }
    };
    let media = match (reply.attachments.get(index), &sent) {
        (Some(attachment), None) => Some(ctx.media.prepare(index, attachment).await.map_err(
            |e: MediaError| {
                if e.is_invalid_message() {
                    PrepareError::Invalid(e.detail())
                } else {
                    PrepareError::Local(e.detail())
                }
            },
        )?),
        _ => None,
    };
    Ok(Part {
        text: if index == 0 {
            reply.text.clone()
        } else {
            String::new()
        },
        media,
        media_id: None,
        sent,
        ambiguous_since,
    })
}

/// How a reply's sending ended well.
#[derive(Debug)]
pub enum Sent {
    /// Its DMs went out (or the last ones did, earlier ones before): its record.
    Now(SentRecord),
    /// Another delivery (another replica, the old owner of the channel) sent
    /// and recorded the whole reply while this one waited to look: its record,
    /// which that delivery reported.
    Before(SentRecord),
}

/// What comes after a part.
enum Step {
    /// The part is sent (or found sent): the next one.
    Next,
    /// The whole reply was found sent and recorded by another delivery.
    ReplySent(SentRecord),
}

/// Reads part `index` again from the store: its record, or an intent another
/// delivery took since this one prepared the reply.
async fn refresh(
    ctx: &ChannelContext,
    message_id: &str,
    index: usize,
    part: &mut Part,
) -> Result<(), Unsettled> {
    part.sent = ctx.store.sent_part(&ctx.name, message_id, index).await?;
    if part.sent.is_some() {
        part.media = None;
    } else if part.ambiguous_since.is_none() {
        part.ambiguous_since = ctx.store.send_intent(&ctx.name, message_id, index).await?;
    }
    Ok(())
}

/// Where a part is: which reply, which of its parts.
#[derive(Debug, Clone, Copy)]
struct Place<'a> {
    message_id: &'a str,
    index: usize,
    count: usize,
    /// The claim its send intent carries.
    claim: Claim,
}

/// Sends one part not sent yet: unless an earlier send of it turns out to
/// have reached X, uploads its attachment, sends the DM and records the part.
/// `Ok(Err)` is X's refusal (of the lookup, the upload or the DM).
async fn send_part(
    ctx: &ChannelContext,
    target: &DmTarget,
    place: Place<'_>,
    part: &mut Part,
    stop: &CancellationToken,
) -> Result<Result<Step, XError>, Unsettled> {
    if let Some(since) = part.ambiguous_since {
        let ambiguous = Ambiguous {
            target,
            message_id: place.message_id,
            index: place.index,
            count: place.count,
            text: &part.text,
            has_media: part.media.is_some(),
            since,
        };
        match find_earlier_send(ctx, ambiguous, stop).await {
            Ok(Some(Earlier::ReplySent(record))) => {
                tracing::warn!(
                    channel = %ctx.name,
                    message_id = place.message_id,
                    dm_event_id = %record.dm_event_id,
                    "another delivery sent and recorded this whole reply while this one waited to look; not sending it again"
                );
                return Ok(Ok(Step::ReplySent(record)));
            }
            Ok(Some(Earlier::OnX(event))) => {
                let record = earlier_record(ctx, place, event);
                return mark_sent(ctx, place, part, record, stop)
                    .await
                    .map(|()| Ok(Step::Next));
            }
            Ok(Some(Earlier::Recorded(record))) => {
                tracing::warn!(
                    channel = %ctx.name,
                    message_id = place.message_id,
                    dm_event_id = %record.dm_event_id,
                    part = place.index + 1,
                    "another replica sent and recorded this DM while this one took the reply over; not sending it again"
                );
                return mark_sent(ctx, place, part, record, stop)
                    .await
                    .map(|()| Ok(Step::Next));
            }
            Ok(None) => part.ambiguous_since = None,
            Err(LookupError::X(error)) => return Ok(Err(error)),
            Err(LookupError::Store(error)) => return Err(error.into()),
            Err(LookupError::Interrupted) => return Err(Unsettled::Interrupted),
        }
    }
    if let (Some(media), None) = (part.media.as_mut(), &part.media_id) {
        match upload(ctx, media).await {
            Ok(media_id) => part.media_id = Some(media_id),
            Err(error) => return Ok(Err(error)),
        }
    }
    let record = match send_dm(ctx, target, place, part, stop).await? {
        Ok(record) => record,
        Err(error) => return Ok(Err(error)),
    };
    mark_sent(ctx, place, part, record, stop).await?;
    if place.index + 1 < place.count {
        failpoints::freeze_if_armed(failpoints::BETWEEN_PARTS).await;
    }
    Ok(Ok(Step::Next))
}

/// The record of a part whose earlier send was found on X as `event`.
fn earlier_record(ctx: &ChannelContext, place: Place<'_>, event: Candidate) -> SentRecord {
    tracing::warn!(
        channel = %ctx.name,
        message_id = place.message_id,
        dm_event_id = %event.id,
        part = place.index + 1,
        "an earlier send of this DM reached X before the bridge could record it; not sending it again"
    );
    SentRecord {
        dm_event_id: event.id.into(),
        conversation_id: event.dm_conversation_id.into(),
        sent_at: event.created_at,
        reported: false,
        parts: Vec::new(),
    }
}

/// Sends the part's DM, its intent recorded first: X's record of it, or X's
/// refusal (after which the part is ambiguous if the DM may exist anyway).
/// No DM when the store refuses the intent: another consumer claimed the
/// channel since this one did ([`crate::fence`]).
async fn send_dm(
    ctx: &ChannelContext,
    target: &DmTarget,
    place: Place<'_>,
    part: &mut Part,
    stop: &CancellationToken,
) -> Result<Result<SentRecord, XError>, Unsettled> {
    let Place {
        message_id,
        index,
        count,
        claim,
    } = place;
    // The intent is taken once X's rate limit lets the request go, right before it
    // leaves: a lookup for this send waits `x.request_timeout` from then (see
    // `recent_events::settled_at`), which a wait for the pacer before it would eat into.
    let admitted = ctx.client.admit_dm_send().await;
    let started = Utc::now();
    let intent = ctx
        .store
        .record_send_intent(&ctx.name, message_id, index, started, claim.0)
        .await;
    match intent {
        Ok(()) => {}
        Err(StoreError::Fenced { .. }) => return Err(fence::fenced(ctx, message_id, claim)),
        Err(error) => return Err(error.into()),
    }
    let sent = match admitted
        .send_dm_with_media(target, &part.text, part.media_id.as_deref())
        .await
    {
        Ok(sent) => sent,
        Err(error) => {
            not_sent(ctx, place, part, started, &error, stop).await?;
            return Ok(Err(error));
        }
    };
    failpoints::freeze_if_armed(failpoints::BEFORE_SEND_RECORDED).await;
    metrics::counter!("xbridge_dms_sent_total", "channel" => ctx.name.clone()).increment(1);
    if count > 1 {
        tracing::info!(channel = %ctx.name, message_id, dm_event_id = %sent.dm_event_id, part = index + 1, of = count, "DM of a reply in parts sent");
    }
    Ok(Ok(SentRecord {
        dm_event_id: sent.dm_event_id.into(),
        conversation_id: sent.dm_conversation_id.into(),
        sent_at: Utc::now(),
        reported: false,
        parts: Vec::new(),
    }))
}

/// After X's refusal of a part's DM: the part is ambiguous if the DM may exist anyway (a
/// lookup comes before the next send); otherwise (X refused it, or the connection never
/// opened) no DM was created, so the intent is cleared and the next try needs no lookup.
async fn not_sent(
    ctx: &ChannelContext,
    place: Place<'_>,
    part: &mut Part,
    started: DateTime<Utc>,
    error: &XError,
    stop: &CancellationToken,
) -> Result<(), Unsettled> {
    if crate::fate::send_may_have_gone_out(error) {
        part.ambiguous_since = Some(started);
        return Ok(());
    }
    write_durably(ctx, stop, || {
        ctx.store
            .clear_send_intent(&ctx.name, place.message_id, place.index)
    })
    .await
}

/// Marks `part` as sent with X's `record`; a reply in several parts records
/// each part as it goes, so a later try starts at the first unsent one.
async fn mark_sent(
    ctx: &ChannelContext,
    place: Place<'_>,
    part: &mut Part,
    record: SentRecord,
    stop: &CancellationToken,
) -> Result<(), Unsettled> {
    if place.count > 1 {
        record_part(ctx, place.message_id, place.index, &record, stop).await?;
    }
    part.media = None;
    part.sent = Some(record);
    Ok(())
}

/// Uploads one prepared attachment from its first byte.
async fn upload(ctx: &ChannelContext, media: &mut PreparedMedia) -> Result<String, XError> {
    media.rewind().await.map_err(|e| XError::Transient {
        status: None,
        detail: format!(
            "cannot read attachments[{}] from the local spool: {e}",
            media.index
        ),
    })?;
    let media_type = media.mime_type.clone();
    let category = media.category;
    let total_bytes = media.total_bytes;
    let uploaded = ctx
        .client
        .upload_media(MediaUpload {
            media_type: &media_type,
            category,
            total_bytes,
            reader: media,
        })
        .await?;
    tracing::info!(channel = %ctx.name, media_id = %uploaded.media_id, category = category.as_str(), total_bytes, "attachment uploaded to X");
    Ok(uploaded.media_id)
}
