//! The HTTP surface: X's routes (logged, authenticated per request) and the `/_sim/` admin API.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::SimState;
use crate::{admin, dm, problems, request_log, users};

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
        .route("/2/users/me", get(users::me))
        .fallback(not_found)
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
