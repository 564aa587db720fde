//! What every admin route reads and refuses the same way: a JSON body (400 naming serde's
//! complaint, whatever the content type), `?user_id=` (400 if unreadable) and an account the
//! simulator does not know (404). Refusals are `{"error":"…"}`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::state::Inner;

/// An admin refusal: `status` with `{"error": message}`.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The body of an admin `POST`, read as JSON without asking for a JSON content type (curl
/// users often leave it out).
pub(super) struct AdminBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AdminBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&body)
            .map(AdminBody)
            .map_err(|why| error(StatusCode::BAD_REQUEST, why.to_string()))
    }
}

/// `?user_id=`: narrows a listing to one account, or names whose faults to clear.
pub(super) struct ForAccount(pub Option<String>);

#[derive(Deserialize)]
struct ByAccount {
    user_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ForAccount {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Query::<ByAccount>::from_request_parts(parts, state).await {
            Ok(Query(query)) => Ok(ForAccount(query.user_id)),
            Err(_) => Err(error(StatusCode::BAD_REQUEST, "unreadable query string")),
        }
    }
}

impl ForAccount {
    /// Whether something of `owner` belongs in the listing: everything without `?user_id=`,
    /// else only what that account owns.
    pub(super) fn admits(&self, owner: Option<&str>) -> bool {
        self.0.as_deref().is_none_or(|id| owner == Some(id))
    }
}

/// The refusal of a request naming an account the simulator does not have: 404.
pub(super) struct UnknownAccount(String);

impl IntoResponse for UnknownAccount {
    fn into_response(self) -> Response {
        error(
            StatusCode::NOT_FOUND,
            format!("no account with user_id {}", self.0),
        )
    }
}

/// [`UnknownAccount`] unless the simulator has an account `user_id`.
pub(super) fn known_account(inner: &Inner, user_id: &str) -> Result<(), UnknownAccount> {
    if inner.accounts.contains(user_id) {
        Ok(())
    } else {
        Err(UnknownAccount(user_id.to_owned()))
    }
}
