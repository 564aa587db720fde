//! The message contract with the CRM, one file per document of `docs/schemas/`, used
//! by both directions. Names say which way a message travels: the CRM sends
//! *replies* on the outgoing exchange; the bridge sends *events* to the CRM on the
//! incoming exchange.
//!
//! From the CRM (outgoing exchange):
//! - [`reply`]: [`OutgoingReply`] (`outgoing-reply.json`), parsed and validated, with
//!   its [`ReplyTarget`] and why a body is refused ([`InvalidReply`]);
//! - [`reply_attachment`]: its [`OutgoingAttachment`]s, their limits and
//!   [`MediaCategory`] (the X client's, re-exported: one definition).
//!
//! To the CRM (incoming exchange), about replies (published by the outbound side):
//! - [`status`]: [`StatusEvent`], `message.sent` and `message.failed`
//!   (`message-sent.json`, `message-failed.json`);
//! - [`reason`]: [`FailureReason`], why a reply failed: the `reason` of
//!   `message.failed` and the `x-xbridge-reason` header of its dead letter
//!   (`dead-letter-headers.json`; the headers themselves are the AMQP plumbing's);
//! - [`channel_state`]: [`ChannelStateEvent`], `channel.state` (`channel-state.json`),
//!   published by the outbound side for both directions.
//!
//! To the CRM, about DMs (published by the inbound side):
//! - [`direct_message`]: [`DirectMessage`], with its [`Sender`] and [`Attachment`]s,
//!   the body of `message.received` and `message.echo`;
//! - [`inbound_event`]: [`ReceivedMessage`], [`MessageEcho`], [`ConversationTyping`]
//!   and [`MessageRead`] (`message-received.json`, `message-echo.json`,
//!   `conversation-typing.json`, `message-read.json`), with their routing keys;
//! - [`event_to_crm`]: [`EventToCrm`], one of them serialized with its AMQP
//!   `message_id` and `type`, ready for the incoming exchange.
//!
//! Between the CRM and the bridge's control (the `xbridge.control` exchange, and answers
//! on the incoming exchange):
//! - [`control`]: [`ControlCommand`]s that manage channels at runtime, and their answers
//!   ([`CommandAnswer`], [`CommandRefused`]).
//!
//! Every timestamp is RFC 3339 in UTC with milliseconds (`timestamp`); the parsers'
//! refusals name a wrong-typed value alike (`json_kind`).

pub mod channel_state;
pub mod control;
pub mod direct_message;
pub mod event_to_crm;
pub mod inbound_event;
mod json_kind;
pub mod reason;
pub mod reply;
pub mod reply_attachment;
pub mod status;
mod timestamp;

pub use channel_state::{ChannelState, ChannelStateEvent, ChannelStatus};
pub use control::{ChannelCommand, CommandAnswer, CommandRefused, ControlCommand, RefusalReason};
pub use direct_message::{Attachment, AttachmentKind, DirectMessage, ReceivedVia, Sender};
pub use event_to_crm::EventToCrm;
pub use inbound_event::{
    ConversationTyping, MessageEcho, MessageRead, ReadReceipt, ReceivedMessage, Typing,
};
pub use reason::FailureReason;
pub use reply::{
    scan_message_id, InvalidReply, OutgoingReply, ReplyTarget, MAX_MESSAGE_ID_BYTES, MAX_TEXT_CHARS,
};
pub use reply_attachment::{
    format_bytes, redact_url, AttachmentSource, MediaCategory, OutgoingAttachment, MAX_ATTACHMENTS,
    MAX_FILENAME_CHARS, MAX_INLINE_DATA_BYTES, MAX_URL_CHARS, SUPPORTED_MIME_TYPES,
};
pub use status::StatusEvent;
