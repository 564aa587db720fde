//! X's OAuth 2.0 endpoints as routes: `GET /i/oauth2/authorize`, `POST /2/oauth2/token`
//! and `POST /2/oauth2/revoke`, over the grants `oauth2.rs` keeps. Apart from it because
//! the account registry holds those grants and must not reach the simulator's state back.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::Duration;
use serde::Deserialize;
use serde_json::json;

use crate::oauth2::{
    issue_access, json_response, random_token, ChallengeMethod, OAuth2Book, OAuth2Client,
    OAuth2Tokens, PendingCode, TokenRefusal, CODE_LIFETIME_SECS, INVALID_CODE, INVALID_TOKEN,
};
use crate::state::SimState;

/// The query of `GET /i/oauth2/authorize` (and of `/2/oauth2/authorize`, `openapi.json`'s name).
#[derive(Debug, Deserialize)]
pub(crate) struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// `GET /i/oauth2/authorize`: approves at once as the client's account and redirects (302) to
/// `redirect_uri` with `state` and a `code` valid for 30 seconds. A malformed request is 400
/// with an OAuth error body (X shows an error page to the user instead).
pub(crate) async fn authorize(
    State(state): State<Arc<SimState>>,
    query: Result<Query<AuthorizeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return TokenRefusal::invalid_request("unreadable query string").into_response();
    };
    match authorize_code(&state, query) {
        Ok(location) => {
            let mut response = StatusCode::FOUND.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Err(refusal) => refusal.into_response(),
    }
}

fn authorize_code(state: &SimState, query: AuthorizeQuery) -> Result<String, TokenRefusal> {
    let required = |value: Option<String>, name: &str| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| TokenRefusal::invalid_request(format!("missing {name}")))
    };
    if required(query.response_type, "response_type")? != "code" {
        return Err(TokenRefusal::invalid_request("response_type must be code"));
    }
    let client_id = required(query.client_id, "client_id")?;
    let redirect_uri = required(query.redirect_uri, "redirect_uri")?;
    let challenge = required(query.code_challenge, "code_challenge")?;
    let method = match required(query.code_challenge_method, "code_challenge_method")?.as_str() {
        "S256" => ChallengeMethod::S256,
        "plain" => ChallengeMethod::Plain,
        _ => {
            return Err(TokenRefusal::invalid_request(
                "code_challenge_method must be S256 or plain",
            ))
        }
    };
    let app_state = required(query.state, "state")?;
    if app_state.len() > 500 {
        return Err(TokenRefusal::invalid_request(
            "state is over 500 characters",
        ));
    }
    let mut redirect = url::Url::parse(&redirect_uri)
        .map_err(|_| TokenRefusal::invalid_request("redirect_uri is not a URL"))?;
    let scopes: Vec<String> = query
        .scope
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let code = random_token("ac1");
    let now = state.now();
    let mut inner = state.lock();
    let book = &mut inner.accounts.oauth2;
    let client = book
        .client(&client_id)
        .ok_or_else(|| TokenRefusal::invalid_request("unknown client_id"))?;
    tracing::info!(user_id = %client.user_id, client_id, "OAuth 2.0 authorize approved");
    book.codes
        .retain(|c| now - c.issued_at <= Duration::seconds(CODE_LIFETIME_SECS));
    book.codes.push(PendingCode {
        code: code.clone(),
        client_id,
        redirect_uri,
        scopes,
        challenge,
        method,
        issued_at: now,
    });
    redirect
        .query_pairs_mut()
        .append_pair("state", &app_state)
        .append_pair("code", &code);
    Ok(redirect.into())
}

/// Who is calling the token endpoint: a confidential client by HTTP Basic, or a public one by
/// `client_id` in the form. A confidential client without its Basic header is X's 401.
fn token_client(
    book: &OAuth2Book,
    headers: &HeaderMap,
    form_client_id: Option<&str>,
) -> Result<OAuth2Client, TokenRefusal> {
    let missing_auth = || {
        TokenRefusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Missing valid authorization header",
        )
    };
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    if let Some(encoded) = basic {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(missing_auth)?;
        let (id, secret) = decoded.split_once(':').ok_or_else(missing_auth)?;
        return book
            .client(id)
            .filter(|c| c.client_secret.as_deref() == Some(secret))
            .cloned()
            .ok_or_else(missing_auth);
    }
    let client = form_client_id
        .and_then(|id| book.client(id))
        .ok_or_else(|| TokenRefusal::invalid_request("Missing required parameter [client_id]."))?;
    if client.client_secret.is_some() {
        return Err(missing_auth());
    }
    Ok(client.clone())
}

/// `POST /2/oauth2/token`: the `authorization_code` (with PKCE) and `refresh_token` grants.
/// A refresh rotates the refresh token: the one used is refused from then on.
pub(crate) async fn token(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match token_answer(&state, &headers, &body) {
        Ok(tokens) => json_response(
            StatusCode::OK,
            serde_json::to_string(&tokens).expect("tokens serialize"),
        ),
        Err(refusal) => {
            tracing::warn!(error = refusal.error, description = %refusal.description, "token request refused");
            refusal.into_response()
        }
    }
}

fn token_answer(
    state: &SimState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<OAuth2Tokens, TokenRefusal> {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let now = state.now();
    let mut inner = state.lock();
    let book = &mut inner.accounts.oauth2;
    let client = token_client(book, headers, field("client_id"))?;
    match field("grant_type") {
        Some("authorization_code") => {
            let code = field("code").ok_or_else(|| TokenRefusal::invalid_request(INVALID_CODE))?;
            let pending = book
                .take_code(code)
                .ok_or_else(|| TokenRefusal::invalid_request(INVALID_CODE))?;
            let verifier = field("code_verifier").unwrap_or_default();
            let fresh = now - pending.issued_at <= Duration::seconds(CODE_LIFETIME_SECS);
            if !fresh
                || pending.client_id != client.client_id
                || field("redirect_uri") != Some(pending.redirect_uri.as_str())
                || !pending.method.verifies(&pending.challenge, verifier)
            {
                return Err(TokenRefusal::invalid_request(INVALID_CODE));
            }
            Ok(book
                .grant(&client.client_id, pending.scopes, now)
                .expect("the client exists"))
        }
        Some("refresh_token") => {
            let presented = field("refresh_token").unwrap_or_default();
            let grant = book
                .grants
                .iter_mut()
                .find(|g| {
                    !g.revoked
                        && g.client_id == client.client_id
                        && g.refresh_token.as_deref() == Some(presented)
                })
                .ok_or_else(|| TokenRefusal::invalid_request(INVALID_TOKEN))?;
            grant.refresh_token = Some(random_token("rt1"));
            tracing::info!(user_id = %grant.user_id, "OAuth 2.0 refresh token rotated");
            Ok(issue_access(grant, &client, now))
        }
        _ => Err(TokenRefusal::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        )),
    }
}

/// `POST /2/oauth2/revoke`: revokes an access token (that token only) or a refresh token
/// (the whole grant), answering `{"revoked":true}` even for an unknown token (RFC 7009).
pub(crate) async fn revoke(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut inner = state.lock();
    let book = &mut inner.accounts.oauth2;
    let client = match token_client(book, &headers, field("client_id").as_deref()) {
        Ok(client) => client,
        Err(refusal) => return refusal.into_response(),
    };
    let token = field("token").unwrap_or_default();
    for grant in book
        .grants
        .iter_mut()
        .filter(|g| g.client_id == client.client_id)
    {
        if grant.refresh_token.as_deref() == Some(token.as_str()) {
            grant.revoked = true;
        }
        grant.access.retain(|a| a.token != token);
    }
    json_response(StatusCode::OK, json!({ "revoked": true }).to_string())
}
