//! The `/_sim/` admin API: what tests do through [`crate::Simulator`]'s methods, over HTTP, for
//! CRM developers and docker-compose setups that run the binary. It takes no credentials.
//!
//! | file | role |
//! |---|---|
//! | `extract.rs` | what every admin route reads and refuses alike: the JSON body, `?user_id=`, an unknown account |
//! | `observe.rs` | the `GET` routes: what the simulator saw (DMs, events, requests, uploads, deliveries…) |
//! | `oauth2.rs` | OAuth 2.0 clients and grants: add, grant, expire, revoke |
//! | `steer.rs` | the routes that change it: customer DMs, accounts, faults, media processing, redeliveries, reset |

mod extract;
mod oauth2;
mod observe;
mod steer;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::state::SimState;

pub(crate) fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/customer_dm", post(steer::customer_dm))
        .route("/customer_typing", post(steer::customer_typing))
        .route("/customer_read", post(steer::customer_read))
        .route("/dm_events", get(observe::dm_events))
        .route("/billing", get(observe::billing))
        .route("/webhooks", get(observe::webhooks))
        .route("/webhooks/invalidate", post(steer::invalidate_webhook))
        .route("/deliveries", get(observe::deliveries))
        .route("/redeliver", post(steer::redeliver))
        .route("/dms", get(observe::dms))
        .route("/requests", get(observe::requests))
        .route("/counters", get(observe::counters))
        .route("/accounts", get(observe::accounts).post(steer::add_account))
        .route(
            "/faults",
            post(steer::set_fault).delete(steer::clear_faults),
        )
        .route("/reset", post(steer::reset))
        .route(
            "/activity_stream",
            get(crate::activity_stream::admin_counters),
        )
        .route(
            "/activity_stream/cut",
            post(crate::activity_stream::admin_cut),
        )
        .route("/uploads", get(observe::uploads))
        .route("/media_processing", post(steer::set_media_processing))
        .route("/oauth2/clients", post(oauth2::add_client))
        .route("/oauth2/grants", post(oauth2::grant))
        .route("/oauth2/expire", post(oauth2::expire))
        .route("/oauth2/revoke", post(oauth2::revoke))
}
