//! A local fake of X's API, speaking X's real wire format, so the bridge's tests, its demo and CRM
//! developers never need a real X account.
//!
//! It serves the two 1:1 DM send endpoints and the credential check, checks OAuth 1.0a
//! signatures with code of its own (so a signing bug in the bridge's client is caught, not
//! mirrored), enforces X's body rules and a per-account rate limit, records every accepted DM,
//! and can be told to fail the way X is known to fail ([`Fault`]).
//!
//! # In tests
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use x_simulator::{Account, Fault, Simulator, SimulatorConfig};
//!
//! let account = Account::generate("acme_support");
//! let sim = Simulator::start(SimulatorConfig {
//!     accounts: vec![account.clone()],
//!     ..SimulatorConfig::default()
//! })
//! .await?;
//! // Point the bridge's X client at `sim.base_url()` with `account`'s credentials, then:
//! sim.set_fault(&account.user_id, Fault::ServerError { status: 503, times: Some(1) });
//! let dms = tokio::time::timeout(Duration::from_secs(10), sim.wait_for_dms(&account.user_id, 1)).await?;
//! assert_eq!(dms[0].text, "Hello from the CRM");
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # X routes
//!
//! | Route | Answer |
//! |---|---|
//! | `POST /2/dm_conversations/with/:participant_id/messages` | 201 `{"data":{"dm_conversation_id":"<smaller>-<larger>","dm_event_id":"<19 digits>"}}` |
//! | `POST /2/dm_conversations/:dm_conversation_id/messages` | the same, for an id matching `^([0-9]{1,19}-[0-9]{1,19}\|[0-9]{15,19})$`; 403 if the sender is not in a 1:1 conversation |
//! | `GET /2/users/me` | 200 `{"data":{"id","name","username"}}`, unaffected by faults other than `unauthorized` and `latency` |
//! | anything else | 404 |
//!
//! Every request needs `Authorization: OAuth …` (HMAC-SHA1) signed with an account's four
//! credentials; the base string uses scheme `http`, the `Host` header as sent and the path, plus
//! query (and form-body) parameters; JSON bodies are not signed. A wrong signature, unknown keys,
//! a timestamp more than 5 minutes off or a nonce the account reused within that window gets 401
//! with X's body; the reason (and the base string the simulator expected) is logged at WARN. An
//! App-only `Bearer` token gets X's 403 `unsupported-authentication`.
//!
//! A send is checked in this order: credentials (401); the account's rate-limit window, which
//! counts every authenticated send (429, default 1000 per 15 minutes); the account's faults;
//! the body — JSON content type, `text` (at most 10,000 characters) and/or exactly one
//! `attachments` item `{"media_id":"<digits>"}`, nothing else (400 `invalid-request`); then a
//! refusing recipient (403). Answers to authenticated sends carry `x-rate-limit-limit`,
//! `x-rate-limit-remaining`, `x-rate-limit-reset` (epoch seconds) and `x-access-level`; a 201 also
//! carries `location`. Error bodies are X's recorded ones, byte for byte, from
//! `tests/fixtures/x-api/`.
//!
//! # Admin API (`/_sim/`, no credentials)
//!
//! | Route | Does |
//! |---|---|
//! | `GET /_sim/dms[?user_id=…]` | JSON array of [`SentDm`], oldest first |
//! | `GET /_sim/requests[?user_id=…]` | JSON array of [`RequestRecord`] (admin calls are not logged) |
//! | `GET /_sim/counters` | [`Counters`] |
//! | `GET /_sim/accounts` | JSON array of [`Account`] |
//! | `POST /_sim/accounts` | adds an [`Account`] (JSON with its eight fields); 201 |
//! | `POST /_sim/faults` | body `{"user_id":"…","fault":{"kind":"credits_depleted"}}`; 204, 404 for an unknown account, 400 for a bad body |
//! | `DELETE /_sim/faults?user_id=…` | clears that account's faults (all accounts' without `user_id`); 204 |
//! | `POST /_sim/reset` | forgets DMs, requests, counters, faults, windows and nonces, keeps accounts; 204 |
//!
//! Fault kinds (see [`Fault`]): `credits_depleted`, `payment_required`, `usage_capped`,
//! `spend_cap_reached`, `missing_permission`, `not_enrolled`, `unauthorized`,
//! `recipient_refuses` (`participant_id`), `server_error` (`status`, optional `times`),
//! `latency` (`millis`), `timeout` (optional `times`), `rate_limit_window` (`limit`,
//! `window_secs`). For example, with the binary running:
//!
//! ```text
//! curl -X POST localhost:8081/_sim/faults -H 'content-type: application/json' \
//!   -d '{"user_id":"1000000000000000001","fault":{"kind":"server_error","status":503,"times":2}}'
//! ```
//!
//! # The binary
//!
//! `x-simulator --bind 127.0.0.1:8081 --accounts accounts.toml [--demo]` serves the accounts of a
//! TOML file made of `[[accounts]]` tables with [`Account`]'s eight fields. `--demo` adds
//! [`Account::demo`], whose credentials are fixed so docker-compose and the bridge's demo config
//! work with no setup:
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

#![warn(missing_docs)]

mod accounts;
mod admin;
mod auth;
mod clock;
mod dm;
mod faults;
pub mod oauth;
mod problems;
mod rate_limit;
mod reply;
mod request_log;
mod routes;
mod simulator;
mod state;
mod users;

#[cfg(test)]
mod tests;

pub use accounts::{load_accounts, Account, DEMO_USER_ID};
pub use dm::{SentDm, MAX_TEXT_CHARS};
pub use faults::Fault;
pub use rate_limit::RateLimitWindow;
pub use request_log::{Counters, RequestRecord, CLIENT_CLOSED_REQUEST};
pub use simulator::{Simulator, SimulatorConfig};
