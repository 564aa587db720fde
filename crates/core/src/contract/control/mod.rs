//! The control contract: commands the CRM publishes to the `xbridge.control` exchange to
//! manage channels at runtime (`docs/schemas/channel-upsert.json`,
//! `docs/schemas/channel-command.json`), and the answers the bridge publishes back on the
//! incoming exchange (`docs/schemas/command-refused.json`, and `channel.state` with its
//! `command_id`).
//!
//! - [`command`]: [`ControlCommand`], parsed and validated from a body, with the
//!   credentials of `channel.upsert` held as secrets;
//! - [`refusal`]: [`CommandRefused`], why a command was refused, with its
//!   [`RefusalReason`] code; its text never quotes a credential;
//! - [`answer`]: [`CommandAnswer`], the `channel.state` that answers a command.
//!
//! An answer's AMQP `message_id` comes from the command (`<channel>:state:<command_id>`,
//! `command.refused:<command_id>`), so however many replicas or redeliveries produce it,
//! the CRM's dedupe by `message_id` keeps one.
//!
//! Only the contract is here; the `xbridge-control` crate consumes the commands.

pub mod answer;
pub mod command;
pub mod refusal;
#[cfg(test)]
mod schema_tests;

pub use answer::{AnswerAccount, CommandAnswer};
pub use command::{
    ChannelCommand, ControlCommand, CONTROL_EXCHANGE, MAX_COMMAND_BYTES, MAX_SECRET_BYTES,
};

/// Upper bound on the command id (printable ASCII, so bytes and characters agree): it
/// travels back as the AMQP `correlation_id` and inside the answer's `message_id`
/// (`<channel>:state:<id>`, at most 63 + 7 + 128 bytes), short strings of at most 255.
pub const MAX_COMMAND_ID_BYTES: usize = 128;

pub use refusal::{CommandRefused, RefusalReason};
