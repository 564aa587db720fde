//! The HTTP surface: X's routes (logged, answered after the account's latency by the
//! [`reply::deliver`] layer, each admitted by the [`crate::authorized::Authorized`] extractor
//! with its route's gate) and the `/_sim/` admin API.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::state::SimState;
use crate::{
    activity, activity_stream, admin, dm, dm_events, media, oauth2_routes, problems, reply,
    request_log, uploads, users, webhooks,
};

pub(crate) fn router(state: Arc<SimState>) -> Router {
    let x_routes = Router::new()
        .route(
            "/2/dm_conversations/with/{participant_id}/messages",
            post(dm::send_to_participant),
        )
        .route(
            "/2/dm_conversations/{dm_conversation_id}/messages",
            post(dm::send_in_conversation),
        )
        .route("/2/dm_events", get(dm_events::list_events))
        .route("/2/users/me", get(users::me))
        .route("/2/users/{id}", get(users::by_id))
        .route("/2/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/2/webhooks/{webhook_id}",
            axum::routing::put(webhooks::revalidate).delete(webhooks::delete),
        )
        .route(
            "/2/account_activity/webhooks/{webhook_id}/subscriptions/all",
            post(webhooks::subscribe).get(webhooks::check_subscription),
        )
        .route(
            "/2/account_activity/webhooks/{webhook_id}/subscriptions/all/list",
            get(webhooks::list_subscriptions),
        )
        .route(
            "/2/account_activity/webhooks/{webhook_id}/subscriptions/{user_id}/all",
            delete(webhooks::unsubscribe),
        )
        .route(
            "/2/activity/subscriptions",
            post(activity::create).get(activity::list),
        )
        .route("/2/activity/stream", get(activity_stream::stream))
        .route(
            "/2/activity/subscriptions/{subscription_id}",
            delete(activity::delete),
        )
        .route(
            "/1.1/ton/data/dm/{event_id}/{media_id}/{name}",
            get(media::ton),
        )
        // OAuth 2.0 only; the same segments and participant check as the TON URL.
        .route(
            "/2/dm_conversations/media/{dm_id}/{media_id}/{resource_id}",
            get(media::ton),
        )
        .route("/i/oauth2/authorize", get(oauth2_routes::authorize))
        .route("/2/oauth2/authorize", get(oauth2_routes::authorize))
        .route("/2/oauth2/token", post(oauth2_routes::token))
        .route("/2/oauth2/revoke", post(oauth2_routes::revoke))
        .route("/2/media/upload/initialize", post(uploads::initialize))
        .route(
            "/2/media/upload/{id}/append",
            post(uploads::append).layer(DefaultBodyLimit::max(uploads::APPEND_BODY_LIMIT)),
        )
        .route("/2/media/upload/{id}/finalize", post(uploads::finalize))
        .route("/2/media/upload", get(uploads::status))
        .route("/dm_video/{*rest}", get(media::rendition))
        .route("/dm_video_thumb/{*rest}", get(media::rendition))
        .route("/dm_gif/{*rest}", get(media::rendition))
        .route("/dm_gif_thumb/{*rest}", get(media::rendition))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            reply::deliver,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_log::log_requests,
        ));
    x_routes.nest("/_sim", admin::router()).with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(
            axum::http::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )],
        problems::not_found(),
    )
        .into_response()
}
