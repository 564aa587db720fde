//! The inbound side of xbridge: customers' X Direct Messages becoming CRM events.
//!
//! [`service::Inbound`] is what `xbridge run` starts: it keeps a confirm-mode connection
//! to RabbitMQ, serves X's webhook on `inbound.listen`, and polls the channels configured
//! to be polled, each on its own schedule.
//!
//! Where things are, by role (each folder's `mod.rs` lists its files):
//!
//! - `x` (private; its types are re-exported here): X's body formats.
//!   [`parse_webhook`] reads an Account Activity or X Activity webhook body (already
//!   signature-checked by the caller) into [`InboundItem`]s plus the subscribed account
//!   they are for ([`WebhookDelivery`]); [`parse_dm_events`] reads a `GET /2/dm_events`
//!   page into the same items, with the page's `next_token` ([`DmEventsPage`]). Also
//!   there: the readers of senders and attachments, the t.co link stripping, the JSON
//!   readers, and [`PayloadError`]. What they read into (the DM with its sender and
//!   media, typing, read receipts) is the CRM contract's, in `xbridge_core::contract`.
//! - [`webhook`]: the HTTP endpoint for X ([`webhook::server::router`]): answers the
//!   CRC and checks the signature of event POSTs ([`webhook::auth`]), both with the
//!   channel's consumer secret, in constant time, before the body is read (within a
//!   memory budget, `body`); routes each body to the channel of the signing App that is
//!   the account it names (`routing`; one App's webhook carries all its accounts'
//!   events), keeps a body for an account no such channel is as a dead letter, and
//!   answers 200 only once every event is confirmed by the broker, so X retries what was
//!   not taken. [`webhook::identity::IdentityResolver`] learns the channels' accounts
//!   from X for it; [`webhook::watch`] keeps each App's webhook registered and valid,
//!   after [`webhook::crc_self_check`] proved this process answers the CRC.
//! - [`polling`]: [`polling::poller::poll_once`] polls one channel once through
//!   `GET /2/dm_events`: pages back to the stored cursor with small, growing pages (X
//!   bills every event read), publishes the new DMs oldest first, and moves the cursor
//!   only past confirmed publishes; a first poll starts from now, or
//!   `inbound.backfill_days` back. `polling::schedule` calls it on the channel's
//!   interval while this replica holds the channel's [`polling::lease`], and pauses it
//!   while the account's credits are out.
//! - `stream` (private): `inbound = "stream"`: one task per X App holds the App's
//!   activity stream (`GET /2/activity/stream`) under a lease like the poller's, and hands
//!   each event line to the webhook's routing and delivery, in order, reconnecting with a
//!   backfill after a cut.
//! - [`delivery`]: what both paths do with what they found, the same way:
//!   `delivery::dm` drops duplicates and the bridge's own echoes (through the
//!   `xbridge_store::StateStore`), [`classify`] tells a customer's DM from one the
//!   company sent ([`MessageOrigin`]), [`delivery::profiles::Profiles`] completes a
//!   sender's profile when a payload lacks it; each DM, typing indicator and read
//!   receipt becomes one of the contract's events for the CRM
//!   ([`ReceivedMessage`](xbridge_core::contract::ReceivedMessage), `MessageEcho`,
//!   `ConversationTyping`, `MessageRead`, each sent as an
//!   [`EventToCrm`](xbridge_core::contract::EventToCrm) with its routing key on
//!   `xbridge.incoming`); and [`delivery::sink::AmqpSink`] publishes them persistent,
//!   `mandatory` and confirmed.
//! - [`media`]: [`media::links::MediaLinks`] gives each published attachment a signed
//!   URL of the bridge (X's own media URLs need the channel's OAuth signature), and
//!   [`media::proxy::router`] serves it: checks the URL, fetches the media from X with
//!   the channel's signature and streams it through, bounded in size and time.
//! - [`untrusted_log`]: keeps what unsigned requests make the webhook and the media
//!   proxy log bounded (both endpoints face the internet).
//! - `parts` and `lifecycle` (private): what runs for one channel (its client,
//!   profiles, poller and webhook watch) and how it is started, changed and stopped
//!   while the bridge runs, as the live channel registry changes, without touching
//!   the other channels.
//! - [`service`]: wires the parts into the [`service::Inbound`] that `xbridge run`
//!   starts; `broker` (private) is its RabbitMQ session, run by the shared supervisor
//!   (`xbridge_amqp::Supervisor`), and the sink that publishes through whichever
//!   connection is current.
//!
//! A body that is not JSON or not shaped like an X body is a [`PayloadError`] (the
//! webhook answers 400); an event the bridge does not handle or cannot read is an
//! [`InboundItem::Ignored`] with the reason, so it never costs the other events of its
//! body. Ids are kept as strings of digits throughout (typed as `UserId`, `DmEventId`,
//! `ConversationId`, so one kind is never taken for another): X's ids have up to 19 digits,
//! more than a JSON float holds.
//!
//! How the webhook combines them:
//!
//! ```
//! use xbridge_core::contract::ReceivedMessage;
//! use xbridge_inbound::{classify, parse_webhook, InboundItem, MessageOrigin};
//! use xbridge_x_api::UserId;
//!
//! let body = br#"{"for_user_id":"4337869213","direct_message_events":[{"type":"message_create",
//!   "id":"954491830116155396","created_timestamp":"1516403560557","message_create":{
//!   "target":{"recipient_id":"4337869213"},"sender_id":"3001969357",
//!   "message_data":{"text":"Hello World!"}}}]}"#;
//! let delivery = parse_webhook(body).unwrap();
//! let own = UserId::from(delivery.for_user_id.unwrap()); // → which channel, e.g. "acme"
//! for item in delivery.items {
//!     if let InboundItem::Message(dm) = item {
//!         if classify(&dm, &own, &|_event_id| false) == MessageOrigin::Received {
//!             let event = ReceivedMessage::new("acme", dm);
//!             assert_eq!(event.routing_key(), "acme.message.received");
//!         }
//!     }
//! }
//! ```

#![warn(missing_docs)]

mod broker;
pub mod delivery;
mod lifecycle;
pub mod media;
mod parts;
pub mod polling;
pub mod service;
mod stream;
pub mod untrusted_log;
pub mod webhook;
mod x;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod test_support;

pub use delivery::echo::{classify, MessageOrigin};
pub use delivery::in_flight::{write_pending, InFlightDeliveries, PendingRecords};
pub use stream::lease_name as stream_lease_name;
pub use stream::subscriptions::is_streamed_for as is_stream_subscription_of;
pub use x::dm_events::{parse_dm_events, DmEventsPage};
pub use x::error::PayloadError;
pub use x::item::InboundItem;
pub use x::webhook_body::{parse_webhook, WebhookDelivery};
