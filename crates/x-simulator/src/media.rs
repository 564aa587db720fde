//! The media URLs of DM events, so a client can download what `GET /2/dm_events` and webhook
//! payloads point at: the TON URL needs an OAuth 1.0a-signed GET by one of the conversation's
//! accounts (as on X); video and GIF renditions and previews are public. The bytes are the
//! media's [`crate::MediaSpec::content`], or a placeholder naming the media, never a decodable
//! image or video. The `media_*` faults ([`crate::Fault::MediaServerError`],
//! [`crate::Fault::MediaTimeout`], [`crate::Fault::MediaLargeBody`]) of the downloading account
//! (TON) or of the conversation's accounts (renditions) replace the answer.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse as _, Response};
use axum::Extension;

use crate::authorized::{Authorized, MediaDownload};
use crate::faults::MediaFailure;
use crate::problems;
use crate::reply::Reply;
use crate::request_log::RequestIdentity;
use crate::state::{DmAttachment, DmEvent, Inner, SimState};

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

/// What a download of `name` (the URL's last segment) of `attachment` serves: the spec's bytes,
/// or a placeholder naming the media.
fn body_of(attachment: &DmAttachment, name: &str) -> (&'static str, Vec<u8>) {
    let bytes = attachment.content.clone().unwrap_or_else(|| {
        format!("x-simulator media {} {name}\n", attachment.media_id).into_bytes()
    });
    (content_type(name), bytes)
}

/// The content type and bytes the simulator serves at `url` (a TON URL, a rendition or a
/// preview of a known DM event), for tests to compare a download with.
pub(crate) fn content_at(events: &[DmEvent], url: &str) -> Option<(String, Vec<u8>)> {
    let attachment = events.iter().find_map(|event| {
        event.attachment.as_ref().filter(|a| {
            a.url == url
                || a.preview_image_url.as_deref() == Some(url)
                || a.variants.iter().any(|v| v.url == url)
        })
    })?;
    let name = url.rsplit('/').next().unwrap_or_default();
    let (content_type, bytes) = body_of(attachment, name);
    Some((content_type.to_owned(), bytes))
}

/// What a download answers, decided under the state lock and sent after it is released.
enum Outcome {
    Media(&'static str, Vec<u8>),
    Failure(&'static str, MediaFailure),
    Problem(StatusCode, String),
}

impl Outcome {
    fn answer(self) -> Response {
        match self {
            Outcome::Media(content_type, bytes) => media_response(content_type, Body::from(bytes)),
            Outcome::Problem(status, body) => problem(status, body),
            Outcome::Failure(_, MediaFailure::Hold) => {
                Reply::new(StatusCode::OK, "").hold().into_response()
            }
            Outcome::Failure(_, MediaFailure::Answer { status, body }) => problem(status, body),
            Outcome::Failure(
                content_type,
                MediaFailure::LargeBody {
                    bytes,
                    content_length: true,
                },
            ) => media_response(content_type, Body::from(vec![b'x'; bytes as usize])),
            Outcome::Failure(
                content_type,
                MediaFailure::LargeBody {
                    bytes,
                    content_length: false,
                },
            ) => {
                // Streamed in chunks: the body has no size the client could learn up front.
                const CHUNK: u64 = 16 * 1024;
                let chunks = (0..bytes.div_ceil(CHUNK)).map(move |i| {
                    let len = CHUNK.min(bytes - i * CHUNK) as usize;
                    Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'x'; len]))
                });
                media_response(
                    content_type,
                    Body::from_stream(futures::stream::iter(chunks)),
                )
            }
        }
    }
}

fn media_response(content_type: &'static str, body: Body) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
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

/// The TON URL's segments; one that does not decode is X's 404, before any credential check.
pub(crate) struct TonPath {
    event_id: String,
    media_id: String,
    name: String,
}

impl<S: Send + Sync> FromRequestParts<S> for TonPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<(String, String, String)>::from_request_parts(parts, state).await {
            Ok(Path((event_id, media_id, name))) => Ok(TonPath {
                event_id,
                media_id,
                name,
            }),
            Err(_) => Err(problem(StatusCode::NOT_FOUND, problems::not_found())),
        }
    }
}

/// `GET /1.1/ton/data/dm/:event_id/:media_id/:name`: the media, for a participant only.
pub(crate) async fn ton(
    Extension(identity): Extension<RequestIdentity>,
    path: TonPath,
    caller: Authorized<MediaDownload>,
) -> Response {
    let user_id = caller.account.user_id.as_str();
    identity.set(user_id);
    let mut guard = caller.state.lock();
    let inner = &mut *guard;
    let event = inner.events.iter().find(|event| {
        event.id == path.event_id
            && event.attachment.as_ref().is_some_and(|a| {
                a.media_id == path.media_id && a.url.rsplit('/').next() == Some(path.name.as_str())
            })
    });
    let outcome = match event {
        None => Outcome::Problem(StatusCode::NOT_FOUND, problems::not_found()),
        Some(event) if !event.involves(user_id) => {
            Outcome::Problem(StatusCode::FORBIDDEN, problems::FORBIDDEN.to_string())
        }
        Some(event) => {
            let body = body_of(
                event.attachment.as_ref().expect("matched above"),
                &path.name,
            );
            served(inner, body, &[user_id.to_owned()])
        }
    };
    drop(guard);
    outcome.answer()
}

/// The media's `body`, or the first `media_*` fault of one of `accounts` (counted as injected).
fn served(inner: &mut Inner, body: (&'static str, Vec<u8>), accounts: &[String]) -> Outcome {
    let (content_type, bytes) = body;
    match accounts
        .iter()
        .find_map(|user_id| inner.faults.take_media_failure(user_id))
    {
        Some(failure) => {
            inner.counters.faults_injected += 1;
            Outcome::Failure(content_type, failure)
        }
        None => Outcome::Media(content_type, bytes),
    }
}

/// `GET /dm_video/…`, `/dm_video_thumb/…`, `/dm_gif/…`, `/dm_gif_thumb/…`: public renditions,
/// found by the media id that follows the prefix. The `media_*` faults of the conversation's
/// accounts apply.
pub(crate) async fn rendition(State(state): State<Arc<SimState>>, uri: Uri) -> Response {
    let mut segments = uri.path().trim_start_matches('/').split('/').skip(1);
    let media_id = segments.next().unwrap_or_default().to_string();
    let name = uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let outcome = {
        let mut guard = state.lock();
        let inner = &mut *guard;
        let event = inner.events.iter().find(|event: &&DmEvent| {
            event.attachment.as_ref().is_some_and(|a| {
                a.media_id == media_id
                    && (a
                        .preview_image_url
                        .as_deref()
                        .is_some_and(|url| url.ends_with(uri.path()))
                        || a.variants.iter().any(|v| v.url.ends_with(uri.path())))
            })
        });
        let outcome = match event {
            None => Outcome::Problem(StatusCode::NOT_FOUND, problems::not_found()),
            Some(event) => {
                let body = body_of(event.attachment.as_ref().expect("matched above"), &name);
                let participants: Vec<String> = std::iter::once(event.sender_id.clone())
                    .chain(event.recipient_id.clone())
                    .collect();
                served(inner, body, &participants)
            }
        };
        outcome
    };
    outcome.answer()
}
