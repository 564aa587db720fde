//! The media URLs of DM events, so a client can download what `GET /2/dm_events` and webhook
//! payloads point at: the TON URL needs an OAuth 1.0a-signed GET by one of the conversation's
//! accounts (as on X); video and GIF renditions and previews are public. The bytes are a
//! placeholder naming the media, not a decodable image or video.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse as _, Response};
use axum::Extension;

use crate::auth::{self, SignedRequest};
use crate::events::DmEvent;
use crate::problems;
use crate::request_log::RequestIdentity;
use crate::state::SimState;

fn content_type(name: &str) -> &'static str {
    match name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
    {
        Some(ext) if ext == "jpg" || ext == "jpeg" => "image/jpeg",
        Some(ext) if ext == "png" => "image/png",
        Some(ext) if ext == "gif" => "image/gif",
        Some(ext) if ext == "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

fn media_bytes(media_id: &str, name: &str) -> Response {
    let mut response = format!("x-simulator media {media_id} {name}\n").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    response
}

fn problem(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// `GET /1.1/ton/data/dm/:event_id/:media_id/:name`.
pub(crate) async fn ton(
    State(state): State<Arc<SimState>>,
    Extension(identity): Extension<RequestIdentity>,
    segments: Result<Path<(String, String, String)>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Path((event_id, media_id, name))) = segments else {
        return problem(StatusCode::NOT_FOUND, problems::not_found());
    };
    let request = SignedRequest {
        method: &method,
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let now = state.now();
    let mut guard = state.lock();
    let inner = &mut *guard;
    let account = match auth::authenticate(&request, &inner.accounts, &mut inner.nonces, now) {
        Ok(account) => account.clone(),
        Err(failure) => {
            tracing::warn!(?failure, "refused a media download's credentials");
            return problem(failure.status(), failure.body());
        }
    };
    identity.set(&account.user_id);
    let event = inner.events.iter().find(|event| {
        event.id == event_id
            && event.attachment.as_ref().is_some_and(|a| {
                a.media_id == media_id && a.url.rsplit('/').next() == Some(name.as_str())
            })
    });
    match event {
        None => problem(StatusCode::NOT_FOUND, problems::not_found()),
        Some(event) if !event.involves(&account.user_id) => {
            problem(StatusCode::FORBIDDEN, problems::FORBIDDEN.to_string())
        }
        Some(_) => media_bytes(&media_id, &name),
    }
}

/// `GET /dm_video/…`, `/dm_video_thumb/…`, `/dm_gif/…`, `/dm_gif_thumb/…`: public renditions,
/// found by the media id that follows the prefix.
pub(crate) async fn rendition(State(state): State<Arc<SimState>>, uri: Uri) -> Response {
    let mut segments = uri.path().trim_start_matches('/').split('/').skip(1);
    let media_id = segments.next().unwrap_or_default().to_string();
    let name = uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let known = state.lock().events.iter().any(|event: &DmEvent| {
        event.attachment.as_ref().is_some_and(|a| {
            a.media_id == media_id
                && (a
                    .preview_image_url
                    .as_deref()
                    .is_some_and(|url| url.ends_with(uri.path()))
                    || a.variants.iter().any(|v| v.url.ends_with(uri.path())))
        })
    });
    if known {
        media_bytes(&media_id, &name)
    } else {
        problem(StatusCode::NOT_FOUND, problems::not_found())
    }
}
