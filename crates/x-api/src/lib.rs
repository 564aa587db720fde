//! The parts of X's API that xbridge uses, for one X account at a time.
//!
//! - [`XClient`] sends DMs (with media it uploads first, [`XClient::upload_media`], each of
//!   a [`MediaCategory`] known from its MIME type) and reads DM events and users (for the
//!   inbound poller), signed with the account's OAuth 1.0a [`UserCredentials`].
//! - [`Pacer`] spreads a backlog of sends (and, with a window of its own, of reads) over
//!   X's rate-limit windows instead of running into 429s.
//! - [`WebhookClient`] registers, lists and revalidates the App's webhook and subscribes an
//!   account to it (README §4), with [`WebhookError`] saying what each of X's refusal
//!   reasons means, so X can push DMs instead of being polled; it also creates, lists and
//!   deletes the account's X Activity API subscriptions (`activity.rs`, [`ActivitySubscription`]).
//! - [`XAuth`] is how a client authenticates: OAuth 1.0a [`UserCredentials`], or an OAuth 2.0
//!   user access token from an [`AccessTokenSource`] (the bridge's keeps the grant in its
//!   state store); the [`oauth2`] module speaks X's token endpoint (PKCE, refresh, typed
//!   [`oauth2::TokenError`]).
//! - [`XClient::download_media`] fetches a DM's media with the account's signature and hands
//!   the response on unread, for the inbound media proxy to stream ([`MediaDownloadError`]).
//! - [`UserId`], [`DmEventId`] and [`ConversationId`] (`id.rs`) keep the three kinds of X id
//!   apart, so a user id cannot be passed where a DM event or conversation id belongs; on
//!   the wire each is the same JSON string as before.
//! - [`excerpt`] quotes outside input in errors and logs, bounded; the rest of the bridge
//!   uses it too (as `xbridge_core::excerpt`), so the X client, a leaf crate, owns it.
//! - [`XHttp`] is the HTTP stack (connection pool, TLS configuration) that every channel's
//!   clients in a process share, so a thousand channels do not mean a thousand of them.
//! - [`XError`] says what a failure means for the caller (retry later, never, or alert an
//!   operator), read from X's problem bodies by [`classify_send_error`], because X reuses
//!   HTTP statuses for unrelated causes.
//!
//! What X sends on the wire, and where each fact comes from, is in the project's notes on
//! the X API; the recorded bodies the tests use are in `tests/fixtures/x-api/`.

#![warn(missing_docs)]

mod activity;
pub mod activity_stream;
mod auth;
mod body;
mod client;
mod dm;
mod error;
pub mod excerpt;
mod http;
mod id;
mod media_category;
mod media_download;
mod oauth;
pub mod oauth2;
mod pacing;
#[cfg(test)]
mod properties;
mod read;
mod telemetry;
mod upload;
mod webhooks;

pub use activity::{
    parse_created as parse_activity_subscription_created,
    parse_list_page as parse_activity_subscription_page, ActivitySubscription, DM_INDICATE_TYPING,
    DM_READ, DM_RECEIVED, DM_SENT,
};
pub use auth::{AccessTokenSource, TokenFuture, XAuth, REFRESH_MARGIN};
pub use body::{MAX_ANSWER_BYTES, MAX_ERROR_BODY_BYTES};
pub use client::{AdmittedSend, MediaUploadConfig, XClient, XClientConfig, MAX_SEGMENT_BYTES};
pub use dm::{DmTarget, SentDm};
pub use error::{classify_send_error, Problem, XError, OAUTH2_GRANT_REFUSED};
pub use http::{error_chain, XHttp};
pub use id::{ConversationId, DmEventId, UserId};
pub use media_category::{MediaCategory, SUPPORTED_MIME_TYPES};
pub use media_download::{MediaDownloadError, MAX_TRANSFER};
pub use oauth::UserCredentials;
pub use pacing::{Pacer, RateLimit};
pub use read::{is_pagination_token, DmEventsRequest, DmEventsResponse, XUser};
pub use upload::{MediaUpload, UploadedMedia};
pub use webhooks::{classify_webhook_error, webhook_problem, Webhook, WebhookClient, WebhookError};
