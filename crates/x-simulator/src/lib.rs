//! A local fake of X's API, speaking X's real wire format, so the bridge's tests, its demo and CRM
//! developers never need a real X account.
//!
//! It serves both directions of the bridge's DM traffic:
//!
//! - **outbound**: the two 1:1 DM send endpoints, the media upload and the credential check, with OAuth 1.0a
//!   signatures checked by code of its own (so a signing bug in the bridge's client is caught, not
//!   mirrored), X's body rules and a per-account rate limit;
//! - **inbound**: a DM event store per account (its own sends plus DMs injected "from customers"),
//!   `GET /2/dm_events` for polling, `GET /2/users/:id`, webhook registration with X's CRC,
//!   Account Activity subscriptions and signed, retried webhook deliveries.
//!
//! Everything can be told to fail the way X is known to fail ([`Fault`]).
//!
//! # In tests
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use x_simulator::{Account, Customer, Fault, MediaSpec, Simulator, SimulatorConfig, WebhookConfig};
//!
//! let account = Account::generate("acme_support");
//! let sim = Simulator::start(SimulatorConfig {
//!     accounts: vec![account.clone()],
//!     // Retry failed webhook deliveries after 10 ms, 20 ms, 40 ms instead of seconds.
//!     webhooks: WebhookConfig { retry_backoff: Duration::from_millis(10), ..WebhookConfig::default() },
//!     ..SimulatorConfig::default()
//! })
//! .await?;
//! // Point the bridge's X client at `sim.base_url()` with `account`'s credentials, then:
//! sim.set_fault(&account.user_id, Fault::ServerError { status: 503, times: Some(1) });
//! let dms = tokio::time::timeout(Duration::from_secs(10), sim.wait_for_dms(&account.user_id, 1)).await?;
//! assert_eq!(dms[0].text, "Hello from the CRM");
//!
//! // Inbound: a customer writes; the bridge sees it by polling GET /2/dm_events, and by webhook
//! // once it has registered one and subscribed the account.
//! let jane = Customer::generate("jane_doe");
//! let event = sim.customer_dm(&account.user_id, &jane, "Where is my order?", Some(MediaSpec::photo()));
//! let deliveries = tokio::time::timeout(Duration::from_secs(10), sim.wait_for_deliveries(1)).await?;
//! assert_eq!(deliveries[0].event_id.as_deref(), Some(event.id.as_str()));
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # X routes
//!
//! | Route | Auth | Answer |
//! |---|---|---|
//! | `POST /2/dm_conversations/with/:participant_id/messages` | user | 201 `{"data":{"dm_conversation_id":"<smaller>-<larger>","dm_event_id":"<19 digits>"}}` |
//! | `POST /2/dm_conversations/:dm_conversation_id/messages` | user | the same, for an id matching `^([0-9]{1,19}-[0-9]{1,19}\|[0-9]{15,19})$`; 403 if the sender is not in a 1:1 conversation |
//! | `GET /2/users/me` | user | 200 `{"data":{"id","name","username"}}`, unaffected by faults other than `unauthorized` and `latency` |
//! | `GET /2/dm_events` | user | the account's DM events, newest first (below) |
//! | `GET /2/users/:id` | user or App | 200 `{"data":{"id","name","username"}}` plus the `user.fields` asked for, for any account or customer; 404 otherwise (below) |
//! | `POST /2/webhooks` `{"url"}` | App or user | runs a CRC against the URL at once; 200 `{"data":{"id","url","valid":true,"created_at"}}` |
//! | `GET /2/webhooks` | App or user | 200 `{"data":[{"id","url","valid","created_at"}],"meta":{"result_count"}}`, `{"meta":{"result_count":0}}` if none |
//! | `PUT /2/webhooks/:id` | App or user | runs the CRC again; 200 `{"data":{"valid":true}}`, or 400 `CrcValidationFailed` and the webhook is marked invalid |
//! | `DELETE /2/webhooks/:id` | App or user | 200 `{"data":{"deleted":true}}`; its subscriptions go too |
//! | `POST /2/account_activity/webhooks/:webhook_id/subscriptions/all` `{}` | user (the subscribing account) | 200 `{"data":{"subscribed":true}}` |
//! | `GET /2/account_activity/webhooks/:webhook_id/subscriptions/all` | user | 200 `{"data":{"subscribed":true\|false}}` (v2 style; v1.1 answered 204/404) |
//! | `GET /2/account_activity/webhooks/:webhook_id/subscriptions/all/list` | App or user | 200 `{"data":{"application_id","webhook_id","webhook_url","subscriptions":[{"user_id"}]}}` |
//! | `DELETE /2/account_activity/webhooks/:webhook_id/subscriptions/:user_id/all` | App or user | 200 `{"data":{"subscribed":false}}` |
//! | `POST /2/activity/subscriptions` `{"event_type","filter":{"user_id"},"tag"?,"webhook_id"?}` | user (its own account) or App (an account of the App) | 200 `{"data":{"subscription":{…}},"meta":{"total_subscriptions"}}` (X's spec shape); 400 `DuplicateSubscriptionFailed` / `WebhookIdInvalid` / `SubscriptionLimitExceeded`, 403 for another user's `dm.*` |
//! | `GET /2/activity/subscriptions` | App or user | 200 `{"data":[…],"meta":{"total_subscriptions"}}`, the App's, unpaged |
//! | `DELETE /2/activity/subscriptions/:subscription_id` | App or user | 200 `{"data":{"deleted":true},"meta":{…}}`, 404 `resource-not-found` |
//! | `POST /2/media/upload/initialize` `{"media_type","total_bytes","media_category","shared"?}` | user | 200 `{"data":{"id","media_key","expires_after_secs":86400}}` (below) |
//! | `POST /2/media/upload/:id/append` multipart `media`, `segment_index` | user | 200 `{"data":{"expires_at":<epoch secs>}}` |
//! | `POST /2/media/upload/:id/finalize` | user | 200 `{"data":{"id","media_key","size","expires_after_secs"}}`, plus `processing_info` for videos and GIFs |
//! | `GET /2/media/upload?command=STATUS&media_id=…` | user | 200 `{"data":{"id","media_key","processing_info":{"state",…}}}` |
//! | `GET /1.1/ton/data/dm/:event_id/:media_id/:name` | user (a participant) | the media's bytes (a placeholder, not a real image); 403 for others |
//! | `GET /dm_video/…`, `/dm_video_thumb/…`, `/dm_gif/…`, `/dm_gif_thumb/…` | none | video and GIF renditions and previews (placeholders) |
//! | anything else | | 404 |
//!
//! "user" is `Authorization: OAuth …` (HMAC-SHA1) signed with an account's four credentials; the
//! base string uses scheme `http`, the `Host` header as sent and the path, plus query (and
//! form-body) parameters; JSON bodies are not signed. A wrong signature, unknown keys, a timestamp
//! more than 5 minutes off or a nonce the account reused within that window gets 401 with X's
//! body; the reason (and the base string the simulator expected) is logged at WARN. "App" is
//! `Authorization: Bearer <an account's bearer_token>`; where only "user" is listed, a Bearer
//! token gets X's 403 `unsupported-authentication`. An App is a consumer key: accounts sharing
//! one share its webhooks and its subscription allowance. "User" also takes an OAuth 2.0 user
//! access token (`Authorization: Bearer`, from `/2/oauth2/token`, checked for expiry and X's
//! scopes per route); `/2/dm_conversations/media/…` takes only that ([`OAuth2Client`],
//! docs/simulator.md "OAuth 2.0 user context").
//!
//! A send is checked in this order: credentials (401); the account's send window, which counts
//! every authenticated send (429, default 1000 per 15 minutes); the account's faults; the body —
//! JSON content type, `text` (at most 10,000 characters) and/or exactly one `attachments` item
//! `{"media_id":"<digits>"}`, nothing else (400 `invalid-request`); then a refusing recipient
//! (403). Answers to authenticated sends and DM reads carry `x-rate-limit-limit`,
//! `x-rate-limit-remaining`, `x-rate-limit-reset` (epoch seconds) and `x-access-level`; a 201 also
//! carries `location`. Error bodies are X's recorded ones, byte for byte, from
//! `tests/fixtures/x-api/`.
//!
//! # Media upload
//!
//! X's v2 chunked upload, for DM media. Every step is checked like a send — credentials, then
//! the account's **upload** window (429; default X's 1,875 per 15 minutes, see
//! [`SimulatorConfig::upload_rate_limit`] and [`Fault::UploadRateLimitWindow`]), then the
//! account's faults — and answers carry the `x-rate-limit-*` and `x-access-level` headers.
//! Then, each refusal being 400 `invalid-request` with a message naming the problem:
//!
//! - INITIALIZE takes a JSON body with `media_category` `dm_image` (`image/jpeg`, `image/pjpeg`,
//!   `image/png`, `image/webp`, `image/bmp`; at most 5 MiB), `dm_gif` (`image/gif`; 15 MiB) or
//!   `dm_video` (`video/mp4`, `video/quicktime`; 512 MiB), `total_bytes` from 1 to that limit,
//!   optional `shared` and `additional_owners`, nothing else. The media id comes from the one
//!   id sequence; the `media_key` is `3_`, `16_` or `7_` plus the id.
//! - APPEND (not signed over its multipart body, as OAuth 1.0a says) takes `media` (1 byte to
//!   [`MAX_SEGMENT_BYTES`], 5 MiB, X's documented chunk bound) and `segment_index` (0 to
//!   [`MAX_SEGMENT_INDEX`], 999), for an upload of the same account that is not finalized. A
//!   repeated index replaces the earlier segment (X lets a chunk be retried).
//! - FINALIZE wants segments `0..n` without a gap whose sizes add up to `total_bytes`; the
//!   upload stays open after a refusal. A repeated FINALIZE answers the current state.
//! - STATUS (for a finalized upload of the account) moves processing one step per poll: a
//!   video or GIF answers `pending` at FINALIZE, then `in_progress` (with `progress_percent`)
//!   for [`MediaProcessing::status_polls_before_done`] polls, then `succeeded`, or `failed`
//!   with `"error":{"code":1,"name":"InvalidMedia","message":…}` inside `processing_info` (X's
//!   v1.1 shape). Images are `succeeded` at FINALIZE and have no `processing_info` there.
//!   [`Simulator::set_media_processing`] (or `POST /_sim/media_processing`) sets an account's
//!   polls, outcome and `check_after_secs`; the default is one poll, `succeeded`, 1 s.
//!
//! A send's `attachments[0].media_id` must name an upload of the sending account that is
//! finalized, processed (`succeeded`) and younger than 24 hours; otherwise 400 naming why.
//! Its DM event then shows the media as a photo, video or animated GIF after its category.
//! [`Simulator::uploads`] lists every [`Upload`] with its segments in arrival order and the
//! bytes assembled by index (all kept in memory).
//!
//! # DM events
//!
//! Every DM the simulator records is a [`DmEvent`] of both participants: each accepted send (same
//! id as its `dm_event_id`, `source_app_id` set, its media shown as a photo) and each customer DM
//! ([`Simulator::customer_dm`], `POST /_sim/customer_dm`). Ids are 19-digit snowflakes from one
//! sequence shared with sends, media and webhooks; [`Simulator::customer_dm_at`] mints the id from
//! the given `created_at`, so a back-dated DM sorts among older events, as on X. A media DM gets a
//! media id minted just before its event id, a `media_key` of `3_` (photo), `7_` (video) or `16_`
//! (animated GIF) plus that id, a TON-like URL `{base_url}/1.1/ton/data/dm/{event_id}/{media_id}/{name}`,
//! and for videos and GIFs a preview image and mp4 variants.
//!
//! `GET /2/dm_events` checks, in order: credentials (401, Bearer 403); the account's **read**
//! window, separate from the send window (429; default 1000 per 15 minutes, X's is 15; see
//! [`SimulatorConfig::read_rate_limit`] and [`Fault::ReadRateLimitWindow`]); the account's faults;
//! the query (400 `invalid-request` naming the parameter). Then:
//!
//! - events newer than 30 days ([`RETENTION_DAYS`]) only, newest first (by id);
//! - `max_results` 1–100, default 100; unknown parameters (there is no `since_id`), repeated
//!   parameters and values outside X's enums for `dm_event.fields`, `expansions` and
//!   `event_types` are 400; `user.fields` and `media.fields` accept any names and render the
//!   ones the simulator knows;
//! - `pagination_token`: `meta.next_token` resumes strictly after the page's last event, so events
//!   arriving meanwhile never shift a walk; `meta.previous_token` (on pages after the first) leads
//!   back to the newer events. Tokens are 21 characters of X's alphabet with a check; one that
//!   does not decode or names no event of this account is 400;
//! - an empty result is exactly `{"meta":{"result_count":0}}`;
//! - fields: `id`, `event_type`, `text` always; `created_at` (RFC 3339, milliseconds, `Z`),
//!   `dm_conversation_id`, `sender_id`, `attachments` when `dm_event.fields` asks (an expansion
//!   also brings its field); `entities`, `participant_ids` and `referenced_tweets` are accepted
//!   but never present;
//! - `expansions=sender_id` adds `includes.users` (`id`, `name`, `username`, plus
//!   `profile_image_url`, `protected`, `verified`, `receives_your_dm` when `user.fields` asks);
//!   `expansions=attachments.media_keys` adds `includes.media` (`media_key`, `type`, plus `url`,
//!   `preview_image_url`, `variants`, `width`, `height`, `duration_ms` when `media.fields` asks
//!   and the media has them);
//! - billing: every event in `data` counts ([`Counters::dm_events_billed`],
//!   [`Simulator::billed_dm_events`], `GET /_sim/billing`), as X bills "DM Event: Read" per
//!   event returned; refused and empty answers bill nothing.
//!
//! `GET /2/users/:id` answers a non-numeric id with 400 and an unknown one with 404
//! `{"errors":[{…,"title":"Not Found Error","type":"…/problems/resource-not-found"}],"title":"Not Found Error","detail":"Could not find user with id: [<id>].","type":"…/problems/resource-not-found","status":404}`.
//! Successful lookups count in [`Counters::users_read`].
//!
//! # Webhooks
//!
//! `POST /2/webhooks` checks the URL, then runs X's CRC: `GET <url>?crc_token=<random>` must
//! answer 200 with `{"response_token":"sha256=<base64 HMAC-SHA256(consumer_secret, crc_token)>"}`,
//! keyed with the consumer secret of the account whose token registered it. Every refusal of the
//! webhook and subscription routes has one shape, 400 `invalid-request` with X's reason as the
//! message: `{"errors":[{"message":"CrcValidationFailed","parameters":{"url":["…"]}}],"title":"Invalid Request","detail":"One or more parameters to your request was invalid.","type":"https://api.twitter.com/2/problems/invalid-request"}`.
//! Reasons: `UrlValidationFailed` (not http(s), no host, over 200 characters), `DuplicateUrlFailed`
//! (the App has that URL), `WebhookLimitExceeded` (the App has [`WebhookConfig::max_webhooks_per_app`],
//! 1 on Pay Per Use), `CrcValidationFailed` (no answer, not 200, not JSON, wrong token), and for
//! the ids and subscriptions `WebhookIdInvalid` (unknown, or another App's),
//! `DuplicateSubscriptionFailed`, `SubscriptionLimitExceeded` (beyond
//! [`WebhookConfig::max_subscriptions_per_app`], 3 on Pay Per Use).
//!
//! When a DM event involves a subscribed account — a customer's DM to it, or its own send (the
//! echo X also delivers) — the Account Activity payload is POSTed, in the background, to every
//! **valid** webhook the account is subscribed to (a DM between two subscribed accounts goes
//! once for each):
//!
//! ```text
//! {"for_user_id":"<account>",
//!  "direct_message_events":[{"type":"message_create","id":"<event id>","created_timestamp":"<epoch ms>",
//!    "message_create":{"target":{"recipient_id":"…"},"sender_id":"…","source_app_id":"<sends only>",
//!      "message_data":{"text":"…","entities":{"hashtags":[],"symbols":[],"user_mentions":[],"urls":[…]},
//!                      "attachment":{"type":"media","media":{…}}}}}],
//!  "apps":{"<source_app_id>":{"id","name","url"}},
//!  "users":{"<id>":{"id","name","screen_name","profile_image_url_https"}}}
//! ```
//!
//! with `content-type: application/json` and
//! `x-twitter-webhooks-signature: sha256=<base64 HMAC-SHA256(consumer_secret, body)>`. A media DM's
//! text ends with ` https://t.co/<10 characters>` (just the link if there is no text), whose
//! `indices` (in characters) are in `entities.urls` and `attachment.media`, as in
//! `webhook_aaa_dm_media.json`; videos and GIFs add `video_info`, and their `media_url_https` is
//! the preview image, as in v1.1 entities. `apps` is only there for sends;
//! `users` has both participants when the simulator knows them (a send to an unknown user id lists
//! only the sender). Group sends are not delivered. A receiver answering anything but 2xx (or
//! not answering within [`WebhookConfig::timeout`]) is retried [`WebhookConfig::delivery_retries`]
//! times, waiting [`WebhookConfig::retry_backoff`] then twice as long each time. Every attempt is
//! a [`Delivery`] in [`Simulator::deliveries`]; [`Simulator::wait_for_deliveries`] waits for them.
//! Test hooks: [`Simulator::deliver_again`] (a duplicate, byte for byte),
//! [`Simulator::deliver_raw`] (any body, with a correct, chosen or no signature) and
//! [`Simulator::check_webhook`] (X's periodic CRC, on demand) and
//! [`Simulator::invalidate_webhook`] (its outcome after an outage, without running it).
//!
//! # Faults
//!
//! [`Fault`] lists them all. Account *states* reach every X route that reads or writes DM data:
//! `credits_depleted`, `payment_required`, `usage_capped`, `spend_cap_reached` and `not_enrolled`
//! apply to sends, `GET /2/dm_events` and `GET /2/users/:id` (X bills and blocks reads too);
//! `missing_permission` to sends and DM reads; `unauthorized` and `latency` to every user-token
//! request but media downloads, which feel only the `media_*` faults (`media_server_error`,
//! `media_timeout`, `media_large_body`), which reach nothing else. One-off *incidents* are scoped so that a counted fault meant for one direction is not
//! used up by the other (a poller would otherwise eat a `server_error` meant for a send):
//! `server_error`, `timeout`, `rate_limit_window` and `recipient_refuses` reach sends only;
//! `read_server_error`, `read_timeout` and `read_rate_limit_window` reach the two reads only.
//! Media uploads belong to the sending direction: they feel the states but
//! `missing_permission` (uploading needs no DM permission), `server_error` and `timeout`
//! (shared with sends), and `upload_rate_limit_window`.
//! Webhook management feels only `latency`; subscriptions `latency` and `unauthorized`; the CRC
//! X runs against a webhook (registration, `PUT`, [`Simulator::check_webhook`]) only
//! `crc_fails` of the account that registered it.
//!
//! # Faithful and simplified
//!
//! Faithful: wire formats and error bodies, OAuth 1.0a checks, the CRC and signature algorithms,
//! newest-first paging with no `since_id`, default fields, the 30-day window, per-event billing,
//! a read window separate from the send window, Pay Per Use's 1 webhook and 3 subscriptions,
//! echoes of the account's own sends, duplicate deliveries. Simplified or unconfirmed:
//!
//! - webhook URLs may be `http` with any port (X demands public `https` without a port), so
//!   tests can register `http://127.0.0.1:<port>/…`; X re-runs the CRC periodically, the
//!   simulator only on `PUT` or [`Simulator::check_webhook`];
//! - the refusal shape of the webhook routes, 404 rather than a 200 with `errors[]` for an
//!   unknown user (X has been seen to do the latter; the body carries both forms), the retry
//!   schedule of deliveries (v2's is undocumented), and v2's `text` of a media DM (the simulator
//!   follows the documented sample: the text without the t.co link) are not confirmed;
//! - there are no group conversations, `ParticipantsJoin`/`Leave` events, typing or read events
//!   other than [`Simulator::customer_typing`] / [`Simulator::customer_read`] (delivered, never
//!   listed), per-conversation lookups (`/2/dm_conversations/…/dm_events`), replay, XAA's
//!   `GET /2/activity/stream` (its subscriptions and webhook deliveries are served), the one-shot
//!   `POST /2/media/upload`, base64 `media_data` APPENDs, or `shared` media reuse checks; the
//!   media bytes served for a DM are placeholders unless a test gives them
//!   ([`MediaSpec`]`::content`, read back with [`Simulator::media_content`]), not the uploaded
//!   ones; media processing advances by STATUS polls rather than time, and the MIME types
//!   accepted per category are a plausible subset (X's exact DM lists are unconfirmed);
//! - AAA deliveries are not billed (UNCONFIRMED on X); expanded users are not counted as reads.
//!
//! # Admin API (`/_sim/`, no credentials)
//!
//! | Route | Does |
//! |---|---|
//! | `GET /_sim/dms[?user_id=…]` | JSON array of [`SentDm`], oldest first |
//! | `POST /_sim/customer_dm` | body `{"user_id":"<account>","customer":{"username":"jane","user_id"?,"name"?,"profile_image_url"?},"text":"…","media"?:{"type":"photo"\|"video"\|"animated_gif",…},"created_at"?:"<RFC 3339>"}` (missing customer fields are generated, see [`MediaSpec`] for `media`); 201 with the [`DmEvent`], 404 for an unknown account |
//! | `GET /_sim/dm_events[?user_id=…]` | JSON array of [`DmEvent`], oldest first, retention ignored |
//! | `GET /_sim/billing` | `{"dm_events_billed":{"<user_id>":n}}` |
//! | `GET /_sim/webhooks` | `{"webhooks":[`[`Webhook`]`],"subscriptions":[`[`Subscription`]`],"activity_subscriptions":[`[`ActivitySubscription`]`]}` |
//! | `POST /_sim/customer_typing` | body `{"user_id","customer":{…}}`: [`Simulator::customer_typing`]; `{"deliveries":n}` |
//! | `POST /_sim/customer_read` | body `{"user_id","customer":{…},"last_read_event_id"}`: [`Simulator::customer_read`]; `{"deliveries":n}` |
//! | `POST /_sim/webhooks/invalidate` | body `{"webhook_id":"…"}`: [`Simulator::invalidate_webhook`] (what X does after failed periodic CRCs); `{"webhook_id","valid":false}`, 404 for an unknown webhook |
//! | `GET /_sim/deliveries` | JSON array of [`Delivery`] |
//! | `POST /_sim/redeliver` | body `{"event_id":"…"}`: [`Simulator::deliver_again`]; `{"deliveries_started":n}`, 404 for an unknown event |
//! | `GET /_sim/requests[?user_id=…]` | JSON array of [`RequestRecord`] (admin calls are not logged) |
//! | `GET /_sim/counters` | [`Counters`] |
//! | `GET /_sim/accounts` | JSON array of [`Account`] |
//! | `POST /_sim/accounts` | adds an [`Account`] (JSON with its eight fields); 201 |
//! | `POST /_sim/faults` | body `{"user_id":"…","fault":{"kind":"credits_depleted"}}`; 204, 404 for an unknown account, 400 for a bad body |
//! | `DELETE /_sim/faults?user_id=…` | clears that account's faults (all accounts' without `user_id`); 204 |
//! | `GET /_sim/uploads[?user_id=…]` | JSON array of [`Upload`] (without the bytes; `size` is their count) |
//! | `POST /_sim/media_processing` | body `{"user_id":"…","processing":{"status_polls_before_done":1,"outcome":{"kind":"succeeded"}\|{"kind":"failed","message":"…"},"check_after_secs":1}}` (every field optional): [`Simulator::set_media_processing`]; 204, 404 for an unknown account |
//! | `POST /_sim/oauth2/clients` | body `{"user_id","confidential"?,"access_token_secs"?}`: a new [`OAuth2Client`]; 201 with it, 404 for an unknown account |
//! | `POST /_sim/oauth2/grants` | body `{"client_id","scopes":[…]}`: [`Simulator::oauth2_grant`]; 201 with [`OAuth2Tokens`] |
//! | `POST /_sim/oauth2/expire`, `/_sim/oauth2/revoke` | body `{"user_id"}`: [`Simulator::oauth2_expire_access_tokens`], [`Simulator::oauth2_revoke_grants`]; `{"expired":n}`, `{"revoked":n}` |
//! | `POST /_sim/reset` | forgets DMs, DM events, uploads, deliveries, billing, requests, counters, faults, windows and nonces; keeps accounts, customers, webhooks and subscriptions; 204 |
//!
//! Fault kinds (see [`Fault`]): `credits_depleted`, `payment_required`, `usage_capped`,
//! `spend_cap_reached`, `missing_permission`, `not_enrolled`, `unauthorized`,
//! `recipient_refuses` (`participant_id`), `server_error` (`status`, optional `times`),
//! `latency` (`millis`), `timeout` (optional `times`), `rate_limit_window` (`limit`,
//! `window_secs`), `read_rate_limit_window` (`limit`, `window_secs`),
//! `upload_rate_limit_window` (`limit`, `window_secs`), `read_server_error`
//! (`status`, optional `times`), `read_timeout` (optional `times`), `media_server_error`
//! (`status`, optional `times`), `media_timeout` (optional `times`), `media_large_body`
//! (`bytes`, `content_length`). For example, with the binary
//! running:
//!
//! ```text
//! curl -X POST localhost:8081/_sim/faults -H 'content-type: application/json' \
//!   -d '{"user_id":"1000000000000000001","fault":{"kind":"server_error","status":503,"times":2}}'
//! curl -X POST localhost:8081/_sim/customer_dm -H 'content-type: application/json' \
//!   -d '{"user_id":"1000000000000000001","customer":{"username":"jane_doe"},"text":"Hi!"}'
//! ```
//!
//! # The binary
//!
//! `x-simulator --bind 127.0.0.1:8081 --accounts accounts.toml [--demo]` serves the accounts of a
//! TOML file made of `[[accounts]]` tables with [`Account`]'s eight fields. `--read-rate-limit`,
//! `--read-rate-limit-window-secs`, `--webhook-retries` and `--webhook-backoff-ms` (and their
//! `X_SIMULATOR_…` variables, see `--help`) tune the read window and the delivery retries.
//! `--demo` adds [`Account::demo`], whose credentials are fixed so docker-compose and the
//! bridge's demo config work with no setup:
//!
//! | field | value |
//! |---|---|
//! | `user_id` | `1000000000000000001` |
//! | `username` | `xbridge_demo` |
//! | `name` | `xbridge demo` |
//! | `consumer_key` | `demo-consumer-key` |
//! | `consumer_secret` | `demo-consumer-secret` |
//! | `access_token` | `demo-access-token` |
//! | `access_token_secret` | `demo-access-token-secret` |
//! | `bearer_token` | `demo-bearer-token` |
//!
//! # Layout
//!
//! An X route is a handler that takes `Authorized<Route>` and returns a `Reply`: the
//! extractor has already checked the signature or token and run the route's gate (revoked
//! token, rate-limit window, faults), and the `deliver` layer applies latency and holds, so a
//! handler holds only what its endpoint does.
//!
//! | module | what lives there |
//! |---|---|
//! | `routes` | the router: X's routes, their layers (request log, `deliver`), the `/_sim/` nest |
//! | `authorized` | the `Authorized<R, B>` extractor, one route type per gate, `SignedBody` |
//! | `gate` | the shared checks in X's order and the table of which ones reach which route |
//! | `auth` | OAuth 1.0a and Bearer authentication, the nonce cache, `AuthFailure` |
//! | `oauth` | signature base strings and HMAC-SHA1 (public, for tests that sign) |
//! | `reply` | `Reply` (status, body, X's headers) and the `deliver` layer (latency, holds) |
//! | `request_body` | X's checks of JSON bodies (content type, object, unknown fields) |
//! | `problems` | X's error bodies, from the shared fixtures |
//! | `faults` | [`Fault`] and the per-account fault book |
//! | `rate_limit` | [`RateLimitWindow`] and the fixed-window counter |
//! | `request_log` | the logging middleware, which fills in [`RequestRecord`]s and [`Counters`] |
//! | `dm` | the two DM send routes, which record [`SentDm`]s |
//! | `dm_events` | `GET /2/dm_events`: paging, fields, expansions, billing |
//! | `users` | `GET /2/users/me` and `GET /2/users/:id` |
//! | `uploads` | the media upload routes and how processing advances by STATUS polls |
//! | `media` | downloads of DM media (TON URL, renditions) |
//! | `webhooks` | webhook and subscription routes, the CRC |
//! | `delivery` | signed, retried Account Activity deliveries and their payloads |
//! | `events` | recording DM events (sends and customers' DMs, with [`MediaSpec`] media) and reading an account's |
//! | `accounts`, `customers` | who the simulator knows: [`Account`], [`Customer`] |
//! | `state/` | everything remembered: `mod.rs` the container behind one mutex and the one id sequence; one file per kind of record, importing nothing of the routes that fill it in: `dm_event` ([`DmEvent`], its media), `sent_dm` ([`SentDm`]), `upload` ([`Upload`], [`MediaProcessing`]), `webhook` ([`Webhook`], [`Subscription`], [`WebhookConfig`]), `delivery` ([`Delivery`]), `request_record` ([`RequestRecord`], [`Counters`]) |
//! | `clock` | where time is read |
//! | `admin/` | the `/_sim/` admin API: `extract` (the JSON body, `?user_id=`, unknown accounts), `observe` (the `GET` listings), `steer` (what changes the simulator) |
//! | `simulator` | [`Simulator`] (start, steer, observe, shut down) and [`SimulatorConfig`] |
//! | `tests` | the crate's own HTTP-level tests, one file per area |

#![warn(missing_docs)]

mod accounts;
mod activity;
mod activity_delivery;
mod activity_stream;
mod admin;
mod auth;
mod authorized;
mod clock;
mod customers;
mod delivery;
mod dm;
mod dm_events;
mod dm_json;
mod events;
mod faults;
mod gate;
mod media;
pub mod oauth;
mod oauth2;
mod oauth2_controls;
mod oauth2_routes;
mod problems;
mod rate_limit;
mod reply;
mod request_body;
mod request_log;
mod routes;
mod signal;
mod simulator;
mod state;
mod uploads;
mod users;
mod webhooks;

#[cfg(test)]
mod tests;

pub use accounts::{load_accounts, Account, DEMO_USER_ID};
pub use activity_stream::{StreamCounters, MAX_BACKFILL_MINUTES, MAX_CONNECTIONS_PER_APP};
pub use customers::Customer;
pub use delivery::SIGNATURE_HEADER;
pub use dm::MAX_TEXT_CHARS;
pub use dm_events::RETENTION_DAYS;
pub use events::MediaSpec;
pub use faults::Fault;
pub use oauth2::{OAuth2Client, OAuth2Tokens, DEFAULT_ACCESS_TOKEN_SECS};
pub use rate_limit::RateLimitWindow;
pub use simulator::{Simulator, SimulatorConfig};
pub use state::{
    ActivitySubscription, Counters, CreatedWith, Delivery, DmAttachment, DmEvent, MediaProcessing,
    MediaType, MediaVariant, ProcessingOutcome, ProcessingState, RequestRecord, SentDm,
    Subscription, Upload, Webhook, WebhookConfig, CLIENT_CLOSED_REQUEST, DM_EVENT_TYPES,
    MESSAGE_CREATE,
};
pub use uploads::{MAX_SEGMENT_BYTES, MAX_SEGMENT_INDEX, MEDIA_EXPIRES_AFTER_SECS};
pub use webhooks::MAX_WEBHOOK_URL_CHARS;
