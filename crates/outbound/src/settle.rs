//! What becomes of a reply once `worker::process` has decided it: the
//! one place where a reply's outcome is published (its status event, the
//! delay queue, the dead-letter queue), its conversation's order is updated
//! and its delivery acknowledged, in that order, so an ack never comes before
//! what it stands for is confirmed by the broker.
//!
//! A sent reply is finished beside its lane's next sends (`finish`): its
//! record, its `message.sent` (in the order X got the lane's replies) and its
//! ack need not hold up the conversation's next reply.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use xbridge_amqp::FailureHeaders;
use xbridge_core::contract::{FailureReason, InvalidReply, StatusEvent};
use xbridge_store::SentRecord;
use xbridge_x_api::{ConversationId, DmEventId};

use crate::context::ChannelContext;
use crate::failpoints;
use crate::report::{Failure, Reporter};
use crate::store_outage;
use crate::unsettled::Unsettled;

/// What should happen to a reply, as `worker::process` decided it.
#[derive(Debug)]
pub enum Settlement {
    /// X accepted it as this record: record it, tell the CRM in its lane's
    /// order and ack, beside the lane's next sends (`finish`).
    Sent(SentRecord),
    /// An earlier delivery of it went out as this record: tell the CRM if it
    /// was not told yet, then ack.
    AlreadySent(SentRecord),
    /// Put it in the delay queue for `delay` with `history` in its headers,
    /// holding its conversation's later replies behind it, then ack.
    Park {
        /// How long it stays away.
        delay: Duration,
        /// Its failure history, carried to its next delivery.
        history: FailureHeaders,
    },
    /// Give up: dead-letter it (telling the CRM), let its conversation go on,
    /// then ack.
    DeadLetter {
        /// Why.
        failure: Failure,
        /// Its failure history, for the dead letter's headers.
        history: FailureHeaders,
    },
}

/// One lane's settling: carries out each reply's [`Settlement`], and keeps
/// the sent ones finishing beside the lane's next sends.
pub struct Settler {
    ctx: Arc<ChannelContext>,
    reporter: Reporter,
    stop: CancellationToken,
    /// The finishes of sent replies; each yields its message id.
    finishing: JoinSet<String>,
    /// The message ids of `finishing`.
    message_ids: HashSet<String>,
    /// The lane's count of replies not yet settled: a reply stays counted
    /// until it is finished, so the lane (and this) outlives its finish.
    pending: Arc<AtomicUsize>,
    /// Where a failure goes: the channel's consumer then reconnects.
    failures: mpsc::UnboundedSender<Unsettled>,
    /// Resolves once the last started reply's `message.sent` is confirmed (or
    /// its finish gave up), so the next one's follows it: the CRM hears of a
    /// conversation's replies in the order X got them.
    last_reported: Option<oneshot::Receiver<()>>,
}

impl Settler {
    /// A lane's settler; `pending` is the lane's count of unsettled replies.
    pub fn new(
        ctx: Arc<ChannelContext>,
        reporter: Reporter,
        stop: CancellationToken,
        pending: Arc<AtomicUsize>,
        failures: mpsc::UnboundedSender<Unsettled>,
    ) -> Settler {
        Settler {
            ctx,
            reporter,
            stop,
            finishing: JoinSet::new(),
            message_ids: HashSet::new(),
            pending,
            failures,
            last_reported: None,
        }
    }

    /// Carries out `settlement` for the reply `message_id` of `conversation`
    /// taken as `delivery`: publishes, updates the order, acks (a sent reply's
    /// finish does the last two beside the lane's next sends, in `span`).
    pub async fn settle(
        &mut self,
        delivery: Delivery,
        message_id: String,
        conversation: &str,
        settlement: Settlement,
        span: tracing::Span,
    ) -> Result<(), Unsettled> {
        let ctx = &*self.ctx;
        match settlement {
            Settlement::Sent(record) => {
                // On X, so no longer holding up its conversation.
                ctx.parked.settled(conversation, &message_id);
                self.start_finish(delivery, message_id, record, span);
                return Ok(());
            }
            Settlement::AlreadySent(record) => {
                if !record.reported {
                    let event = sent_event(&ctx.name, &message_id, &record);
                    self.reporter.status(&event).await?;
                    mark_reported(ctx, &message_id).await;
                }
                tracing::info!(channel = %ctx.name, message_id, dm_event_id = %record.dm_event_id, "reply was already sent; not sending it again");
                ack(&delivery).await?;
                ctx.parked.settled(conversation, &message_id);
            }
            Settlement::Park { delay, history } => {
                self.reporter.park(&delivery, delay, &history).await?;
                ctx.parked.park(conversation, &message_id, due_by(delay));
                ack(&delivery).await?;
            }
            Settlement::DeadLetter { failure, history } => {
                let id = Some(message_id.as_str());
                dead_letter(&self.reporter, &delivery, &ctx.name, id, &failure, history).await?;
                ctx.parked.settled(conversation, &message_id);
            }
        }
        self.pending.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    fn start_finish(
        &mut self,
        delivery: Delivery,
        message_id: String,
        record: SentRecord,
        span: tracing::Span,
    ) {
        let (ctx, reporter, stop) = (self.ctx.clone(), self.reporter.clone(), self.stop.clone());
        let (pending, failures) = (self.pending.clone(), self.failures.clone());
        self.message_ids.insert(message_id.clone());
        let (reported, next_may_report) = oneshot::channel();
        let order = Reported {
            after: self.last_reported.replace(next_may_report),
            done: reported,
        };
        let sent = SentReply {
            delivery,
            message_id,
            record,
        };
        self.finishing.spawn(
            async move {
                let message_id = sent.message_id.clone();
                let result = finish(&ctx, &reporter, sent, order, &stop).await;
                pending.fetch_sub(1, Ordering::SeqCst);
                if let Err(failure) = result {
                    let _ = failures.send(failure);
                }
                message_id
            }
            .instrument(span),
        );
    }

    /// Lets `message_id` be taken: a second copy of a reply still being
    /// recorded (the CRM may publish one twice) waits for the record, so it
    /// is not sent again. Forgets the finished replies either way.
    pub async fn make_way(&mut self, message_id: &str) {
        if self.message_ids.contains(message_id) {
            self.wait_all().await;
        } else {
            while let Some(finished) = self.finishing.try_join_next() {
                self.forget(finished);
            }
        }
    }

    /// Waits until every sent reply is finished.
    pub async fn wait_all(&mut self) {
        while let Some(finished) = self.finishing.join_next().await {
            self.forget(finished);
        }
    }

    fn forget(&mut self, finished: Result<String, tokio::task::JoinError>) {
        match finished {
            Ok(message_id) => {
                self.message_ids.remove(&message_id);
            }
            // A bug. The delivery stays unacked; the reconnect brings it back.
            Err(panicked) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                let _ = self
                    .failures
                    .send(Unsettled::Panicked(panicked.to_string()));
            }
        }
    }
}

/// Dead-letters a delivery whose body is no valid reply, then acks it.
pub async fn dead_letter_invalid(
    reporter: &Reporter,
    delivery: &Delivery,
    channel: &str,
    invalid: InvalidReply,
) -> Result<(), Unsettled> {
    let failure = Failure::local(FailureReason::InvalidMessage, invalid.detail);
    let history = FailureHeaders::read(delivery.properties.headers().as_ref());
    let id = invalid.message_id.as_deref();
    dead_letter(reporter, delivery, channel, id, &failure, history).await
}

async fn dead_letter(
    reporter: &Reporter,
    delivery: &Delivery,
    channel: &str,
    message_id: Option<&str>,
    failure: &Failure,
    history: FailureHeaders,
) -> Result<(), Unsettled> {
    reporter
        .dead_letter(delivery, channel, message_id, failure, history)
        .await?;
    ack(delivery).await
}

/// A reply X accepted, not yet recorded, reported or acknowledged.
struct SentReply {
    delivery: Delivery,
    message_id: String,
    record: SentRecord,
}

/// Where a reply's `message.sent` goes among its lane's: after the one
/// before it, and before the one after it.
struct Reported {
    /// The previous reply's signal; `None` for a lane's first.
    after: Option<oneshot::Receiver<()>>,
    /// This reply's signal, sent once its `message.sent` is confirmed, or
    /// dropped if its finish fails first.
    done: oneshot::Sender<()>,
}

/// Records a sent reply, tells the CRM, then acks. Runs beside the lane's
/// next sends: their order is X's, already kept; a crash before the record
/// leaves the send's intent, so the redelivered reply is looked up on X
/// instead of sent again. While the store cannot write, the record waits in
/// memory (see [`crate::store_outage`]), and so do the CRM and the ack.
async fn finish(
    ctx: &ChannelContext,
    reporter: &Reporter,
    sent: SentReply,
    order: Reported,
    stop: &CancellationToken,
) -> Result<(), Unsettled> {
    let SentReply {
        delivery,
        message_id,
        record,
    } = sent;
    let channel = ctx.name.as_str();
    store_outage::record_reply(ctx, &message_id, &record, stop).await?;
    failpoints::freeze_if_armed(failpoints::AFTER_SEND_RECORDED).await;
    if let Some(previous) = order.after {
        // Either way the previous reply is done reporting.
        let _ = previous.await;
    }
    reporter
        .status(&sent_event(channel, &message_id, &record))
        .await?;
    let _ = order.done.send(());
    // The mark only spares a redelivery a second `message.sent`; an acked
    // reply is never redelivered, so neither waits for the other.
    let ((), acked) = tokio::join!(mark_reported(ctx, &message_id), ack(&delivery));
    acked
}

/// Remembers that the CRM was told of `message_id`. Only spares a copy of the
/// reply a second `message.sent` (with the same AMQP `message_id`), so it is
/// not waited for: the store makes it durable with a later write, and one
/// that cannot write it is logged.
async fn mark_reported(ctx: &ChannelContext, message_id: &str) {
    if let Err(error) = ctx.store.mark_reported_soon(&ctx.name, message_id).await {
        tracing::warn!(channel = %ctx.name, message_id, %error, "could not mark the reply as reported; a copy of it would be reported again");
    }
}

async fn ack(delivery: &Delivery) -> Result<(), Unsettled> {
    delivery.acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}

fn sent_event(channel: &str, message_id: &str, record: &SentRecord) -> StatusEvent {
    StatusEvent::Sent {
        message_id: message_id.to_owned(),
        channel: channel.to_owned(),
        dm_event_id: DmEventId::from(record.dm_event_id.as_str()),
        dm_event_ids: record
            .dm_event_ids()
            .into_iter()
            .map(DmEventId::from)
            .collect(),
        conversation_id: ConversationId::from(record.conversation_id.as_str()),
        sent_at: record.sent_at,
    }
}

/// When a parked reply should be back at the latest; past it the reply is
/// presumed gone and stops holding up its conversation.
fn due_by(delay: Duration) -> Instant {
    Instant::now() + delay * 2 + Duration::from_secs(60)
}
