//! Replies while the state store cannot write (a full disk, a database that
//! refuses writes).
//!
//! Nothing is sent that could not be recorded: a reply waits, unacknowledged
//! and in its conversation's order, until the store takes writes again, and
//! the RabbitMQ session carries on (ending it would only bring the same
//! replies back to the same store). A send X already accepted is different:
//! its DM exists, so its record must not be lost. It is kept here, in memory,
//! and written as soon as the store can: by the reply's own finish, or, if
//! that was interrupted (a lost RabbitMQ connection), before the redelivered
//! reply is looked at, so it is neither sent again nor looked up on X. Only a
//! process that ends while a record is still held loses it; the send's intent,
//! written before the request, then makes the next process look on X before
//! sending (see [`crate::reconcile`]).

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use xbridge_store::{SentRecord, StoreError};

use crate::context::ChannelContext;
use crate::unrecorded::Unrecorded;
use crate::unsettled::Unsettled;

/// The first pause before a failed store operation is tried again once the
/// store says it can write; it grows to [`MAX_PAUSE`]. Keeps an operation
/// that fails on its own (not the whole store) from spinning.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest such pause.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// The pauses between tries of one store operation.
pub fn pauses() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_PAUSE)
        .with_max_delay(MAX_PAUSE)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Waits after `error` until the store can write (a short pause at least, so
/// an operation that keeps failing does not spin); `Interrupted` on `stop`.
pub async fn wait_for_store(
    ctx: &ChannelContext,
    error: &StoreError,
    pauses: &mut impl Iterator<Item = Duration>,
    stop: &CancellationToken,
) -> Result<(), Unsettled> {
    let pause = pauses.next().unwrap_or(MAX_PAUSE);
    tracing::warn!(channel = %ctx.name, %error, "the state store failed; the reply waits until it can write");
    let health = ctx.store.health();
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(Unsettled::Interrupted),
        _ = async {
            health.wait_writable().await;
            tokio::time::sleep(pause).await;
        } => Ok(()),
    }
}

/// Waits, if the store cannot write now, until it can; `Interrupted` on `stop`.
pub async fn until_writable(
    ctx: &ChannelContext,
    stop: &CancellationToken,
) -> Result<(), Unsettled> {
    let health = ctx.store.health();
    if health.is_writable() {
        return Ok(());
    }
    tracing::info!(channel = %ctx.name, "the state store cannot write; replies wait for it");
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(Unsettled::Interrupted),
        _ = health.wait_writable() => Ok(()),
    }
}

/// Runs `write` until it succeeds, waiting for the store between tries;
/// `Interrupted` on `stop`. For writes that record what already happened on X.
pub async fn write_durably<F, Fut>(
    ctx: &ChannelContext,
    stop: &CancellationToken,
    mut write: F,
) -> Result<(), Unsettled>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut pauses = pauses();
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(error) => wait_for_store(ctx, &error, &mut pauses, stop).await?,
        }
    }
}

/// Records that part `part` of `message_id` went out as `record`: held in
/// memory until the store took it.
pub async fn record_part(
    ctx: &ChannelContext,
    message_id: &str,
    part: usize,
    record: &SentRecord,
    stop: &CancellationToken,
) -> Result<(), Unsettled> {
    ctx.unrecorded.update(message_id, |held| {
        held.parts.insert(part, record.clone());
    });
    write_durably(ctx, stop, || {
        ctx.store
            .record_sent_part(&ctx.name, message_id, part, record)
    })
    .await?;
    ctx.unrecorded.update(message_id, |held| {
        held.parts.remove(&part);
    });
    Ok(())
}

/// Records that `message_id` went out as `record`: held in memory until the
/// store took it.
pub async fn record_reply(
    ctx: &ChannelContext,
    message_id: &str,
    record: &SentRecord,
    stop: &CancellationToken,
) -> Result<(), Unsettled> {
    ctx.unrecorded.update(message_id, |held| {
        held.reply = Some(record.clone());
    });
    write_durably(ctx, stop, || {
        ctx.store.record_sent(&ctx.name, message_id, record)
    })
    .await?;
    // The reply's record covers its parts.
    ctx.unrecorded
        .update(message_id, |held| *held = Unrecorded::default());
    Ok(())
}

/// Writes what is held of `message_id` (a previous delivery's finish was
/// interrupted), so the reply is then judged by the store alone.
pub async fn write_held(
    ctx: &ChannelContext,
    message_id: &str,
    stop: &CancellationToken,
) -> Result<(), Unsettled> {
    let Some(held) = ctx.unrecorded.held(message_id) else {
        return Ok(());
    };
    tracing::info!(channel = %ctx.name, message_id, "writing the record of a send X accepted before the store could take it");
    if let Some(record) = &held.reply {
        return record_reply(ctx, message_id, record, stop).await;
    }
    for (part, record) in &held.parts {
        record_part(ctx, message_id, *part, record, stop).await?;
    }
    Ok(())
}
