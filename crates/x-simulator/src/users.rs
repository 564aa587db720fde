//! `GET /2/users/me`: the credential check clients run at startup. As on X, it answers 200 even
//! while DM sends fail for credits or permissions; only `x-access-level` hints at the latter.
//!
//! `GET /2/users/:id`: any account or customer the simulator knows, with a user or App token.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use serde_json::json;

use crate::authorized::{Authorized, UserLookup, UsersMe};
use crate::customers::find_user;
use crate::dm_events::{render_user, user_fields};
use crate::problems;
use crate::reply::Reply;

/// `GET /2/users/me`: the signing account.
pub(crate) async fn me(caller: Authorized<UsersMe>) -> Reply {
    let account = &caller.account;
    let body = json!({ "data": {
        "id": account.user_id,
        "name": account.name,
        "username": account.username,
    }})
    .to_string();
    caller.reply.answer(StatusCode::OK, body)
}

/// `GET /2/users/:id`: after the gate (credentials, the account states), the id and fields
/// (400), then the user (200) or 404.
pub(crate) async fn by_id(
    id: Result<Path<String>, PathRejection>,
    caller: Authorized<UserLookup>,
) -> Reply {
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let reply = caller.reply;
    if !(1..=19).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
        let message =
            format!("The `id` query parameter value [{id}] does not match ^[0-9]{{1,19}}$");
        return reply.answer(
            StatusCode::BAD_REQUEST,
            problems::invalid_request(&message, Some(("id", &id))),
        );
    }
    let fields = match user_fields(caller.uri.query()) {
        Ok(fields) => fields,
        Err(problem) => return reply.answer(StatusCode::BAD_REQUEST, problem),
    };
    let mut inner = caller.state.lock();
    match find_user(&inner.accounts, &inner.customers, &id) {
        Some(user) => {
            inner.counters.users_read += 1;
            let body = json!({ "data": render_user(&user, &fields) }).to_string();
            reply.answer(StatusCode::OK, body)
        }
        None => reply.answer(StatusCode::NOT_FOUND, problems::user_not_found(&id)),
    }
}
