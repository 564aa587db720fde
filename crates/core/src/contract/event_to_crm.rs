//! The envelope of an inbound event on the incoming exchange: its routing key, AMQP
//! `message_id` and `type`, and its JSON body, as `docs/integrator.md` documents them
//! (the `message_id`s are what a CRM drops duplicates by).

use serde::Serialize;

use crate::contract::inbound_event::{
    ConversationTyping, MessageEcho, MessageRead, ReceivedMessage,
};

/// One event on its way to the CRM, ready for the incoming exchange: everything the
/// broker needs, serialized once.
///
/// Named for where it travels: "incoming" and "outgoing" name the exchanges from the
/// CRM's side, while "inbound" and "outbound" name the bridge's directions from X's side,
/// so an event the inbound side publishes to the incoming exchange was once called an
/// `OutboundEvent`. *To the CRM* reads the same from every side. (The other way, the CRM
/// sends an [`OutgoingReply`](super::OutgoingReply), named after the exchange it comes
/// from, as `docs/schemas/outgoing-reply.json` is.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventToCrm {
    /// `<channel>.<type>` on the incoming exchange.
    pub routing_key: String,
    /// The AMQP `message_id`: the same X event on the same channel always gets the same
    /// id, so a consumer can drop the duplicates at-least-once delivery allows.
    pub message_id: String,
    /// The AMQP `type` property (`message.received`, …), so a consumer can dispatch
    /// without parsing the body.
    pub event_type: &'static str,
    /// The JSON body, as the contract in `docs/schemas/` describes it.
    pub body: Vec<u8>,
}

impl EventToCrm {
    /// `message.received`, id `<channel>:<event_id>:received`.
    pub fn received(event: &ReceivedMessage) -> EventToCrm {
        EventToCrm::new(
            event.routing_key(),
            format!("{}:{}:received", event.channel, event.message.event_id),
            ReceivedMessage::EVENT_TYPE,
            event,
        )
    }

    /// `message.echo`, id `<channel>:<event_id>:echo`: distinct from the `received` of
    /// the same X event on another channel (two configured accounts writing to each
    /// other).
    pub fn echo(event: &MessageEcho) -> EventToCrm {
        EventToCrm::new(
            event.routing_key(),
            format!("{}:{}:echo", event.channel, event.message.event_id),
            MessageEcho::EVENT_TYPE,
            event,
        )
    }

    /// `conversation.typing`, id `<channel>:typing:<sender>:<created_at millis>`
    /// (X gives typing events no id).
    pub fn typing(event: &ConversationTyping) -> EventToCrm {
        EventToCrm::new(
            event.routing_key(),
            format!(
                "{}:typing:{}:{}",
                event.channel,
                event.typing.sender_id,
                event.typing.created_at.timestamp_millis()
            ),
            ConversationTyping::EVENT_TYPE,
            event,
        )
    }

    /// `message.read`, id `<channel>:read:<reader>:<created_at millis>` (X gives read
    /// events no id).
    pub fn read(event: &MessageRead) -> EventToCrm {
        EventToCrm::new(
            event.routing_key(),
            format!(
                "{}:read:{}:{}",
                event.channel,
                event.read.reader_id,
                event.read.created_at.timestamp_millis()
            ),
            MessageRead::EVENT_TYPE,
            event,
        )
    }

    fn new(
        routing_key: String,
        message_id: String,
        event_type: &'static str,
        event: &impl Serialize,
    ) -> EventToCrm {
        EventToCrm {
            routing_key,
            message_id,
            event_type,
            // Plain structs of strings and timestamps: serializing cannot fail.
            body: serde_json::to_vec(event).unwrap_or_default(),
        }
    }
}
