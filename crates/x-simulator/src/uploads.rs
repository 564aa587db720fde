//! X's v2 media upload, as a DM sender uses it: `POST /2/media/upload/initialize`,
//! `POST /2/media/upload/{id}/append` (multipart), `POST /2/media/upload/{id}/finalize` and
//! `GET /2/media/upload?command=STATUS&media_id=…`, with the processing of videos and GIFs
//! steered per account by tests ([`MediaProcessing`]), and the checks a DM send makes of the
//! media it attaches.
//!
//! Processing advances by STATUS polls, not by time, so a test decides exactly how many polls
//! a client makes and never waits on a clock.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest as _, Path, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::authorized::{Authorized, MediaUpload, SignedBody};
use crate::rate_limit::RateLimitWindow;
use crate::reply::Reply;
use crate::state::{
    Category, Inner, MediaProcessing, MediaType, ProcessingOutcome, ProcessingState, Upload,
    UploadRecord,
};
use crate::{problems, request_body};

/// X's per-user limit on the upload routes (README §2: 1,875 per 15 minutes), the default of
/// [`crate::SimulatorConfig::upload_rate_limit`].
pub(crate) const DEFAULT_UPLOAD_RATE_LIMIT: RateLimitWindow = RateLimitWindow {
    limit: 1875,
    window: Duration::from_secs(15 * 60),
};

/// The largest `media` part one APPEND may carry: 5 MiB, X's documented bound on a chunk of
/// the chunked upload (stated for v1.1's APPEND; v2 documents none, so the simulator keeps it).
pub const MAX_SEGMENT_BYTES: usize = 5 * 1024 * 1024;

/// The largest `segment_index` X takes (0–999, from the same documentation).
pub const MAX_SEGMENT_INDEX: u32 = 999;

/// How long an upload may be attached after INITIALIZE, X's `expires_after_secs` (24 hours;
/// X says DM media must be used within 24 h).
pub const MEDIA_EXPIRES_AFTER_SECS: i64 = 86_400;

/// The body limit of the APPEND route: room for a segment twice over the limit plus the
/// multipart framing, so an oversized segment gets X's 400 rather than a bare 413.
pub(crate) const APPEND_BODY_LIMIT: usize = 2 * MAX_SEGMENT_BYTES + 64 * 1024;

impl UploadRecord {
    pub(crate) fn snapshot(&self) -> Upload {
        let bytes: Vec<u8> = self
            .parts
            .values()
            .flat_map(|part| part.iter())
            .copied()
            .collect();
        Upload {
            id: self.id.clone(),
            media_key: self.media_key.clone(),
            user_id: self.user_id.clone(),
            media_type: self.media_type.clone(),
            category: self.category.as_str().to_string(),
            total_bytes: self.total_bytes,
            shared: self.shared,
            segments: self.arrivals.clone(),
            finalized: self.finalized,
            processing: self.processing.clone(),
            size: bytes.len() as u64,
            bytes,
            created_at: self.created_at,
        }
    }

    fn expires_at(&self) -> DateTime<Utc> {
        self.created_at + chrono::Duration::seconds(MEDIA_EXPIRES_AFTER_SECS)
    }

    fn expires_after_secs(&self, now: DateTime<Utc>) -> i64 {
        (self.expires_at() - now).num_seconds().max(0)
    }

    /// `processing_info` as X renders it, `None` for an image.
    fn processing_info(&self) -> Option<Value> {
        if !self.category.processes() {
            return None;
        }
        let check_after_secs = self.settings.check_after_secs;
        Some(match &self.processing {
            ProcessingState::Uploading | ProcessingState::Pending => {
                json!({ "state": "pending", "check_after_secs": check_after_secs })
            }
            ProcessingState::InProgress { progress_percent } => json!({
                "state": "in_progress",
                "check_after_secs": check_after_secs,
                "progress_percent": progress_percent,
            }),
            ProcessingState::Succeeded => json!({ "state": "succeeded", "progress_percent": 100 }),
            ProcessingState::Failed { message } => json!({
                "state": "failed",
                "progress_percent": self.progress_percent(),
                "error": { "code": 1, "name": "InvalidMedia", "message": message },
            }),
        })
    }

    fn progress_percent(&self) -> u8 {
        let steps = u64::from(self.settings.status_polls_before_done) + 1;
        u8::try_from((u64::from(self.polls) * 100 / steps).min(99)).unwrap_or(99)
    }

    /// One STATUS poll moves processing one step: `in_progress` for the configured number of
    /// polls, then the outcome.
    fn poll(&mut self) {
        if !matches!(
            self.processing,
            ProcessingState::Pending | ProcessingState::InProgress { .. }
        ) {
            return;
        }
        if self.polls < self.settings.status_polls_before_done {
            self.polls += 1;
            self.processing = ProcessingState::InProgress {
                progress_percent: self.progress_percent(),
            };
            return;
        }
        self.processing = match &self.settings.outcome {
            ProcessingOutcome::Succeeded => ProcessingState::Succeeded,
            ProcessingOutcome::Failed { message } => ProcessingState::Failed {
                message: message.clone(),
            },
        };
    }
}

/// The answer to a request for an upload id: the record, or X's 400 naming the id.
fn own_upload<'a>(
    inner: &'a mut Inner,
    user_id: &str,
    id: &str,
) -> Result<&'a mut UploadRecord, String> {
    let invalid = |why: &str| {
        problems::invalid_request(
            &format!("The `id` path parameter value [{id}] {why}"),
            Some(("id", id)),
        )
    };
    match inner.uploads.iter_mut().find(|upload| upload.id == id) {
        None => Err(invalid("is not a media id of an upload in progress")),
        Some(upload) if upload.user_id != user_id => {
            Err(invalid("belongs to an upload of another user"))
        }
        Some(upload) => Ok(upload),
    }
}

/// `POST /2/media/upload/initialize`.
pub(crate) async fn initialize(caller: Authorized<MediaUpload>) -> Reply {
    let init = match parse_initialize(&caller.headers, &caller.body) {
        Ok(init) => init,
        Err(problem) => return caller.reply.answer(StatusCode::BAD_REQUEST, problem),
    };
    let now = caller.now;
    let mut inner = caller.state.lock();
    let id = inner.next_event_id(now);
    let record = UploadRecord {
        media_key: format!("{}_{id}", init.category.key_prefix()),
        id,
        user_id: caller.account.user_id.clone(),
        media_type: init.media_type,
        category: init.category,
        total_bytes: init.total_bytes,
        shared: init.shared,
        arrivals: Vec::new(),
        parts: BTreeMap::new(),
        finalized: false,
        processing: ProcessingState::Uploading,
        settings: MediaProcessing::default(),
        polls: 0,
        created_at: now,
    };
    tracing::info!(
        user_id = %record.user_id,
        media_id = %record.id,
        category = record.category.as_str(),
        total_bytes = record.total_bytes,
        "media upload initialized"
    );
    let body = json!({ "data": {
        "id": record.id,
        "media_key": record.media_key,
        "expires_after_secs": MEDIA_EXPIRES_AFTER_SECS,
    }})
    .to_string();
    inner.uploads.push(record);
    caller.reply.answer(StatusCode::OK, body)
}

/// INITIALIZE's body, checked.
struct Initialize {
    media_type: String,
    category: Category,
    total_bytes: u64,
    shared: bool,
}

fn invalid(message: &str, parameter: Option<(&str, &str)>) -> String {
    problems::invalid_request(message, parameter)
}

fn parse_initialize(headers: &HeaderMap, body: &[u8]) -> Result<Initialize, String> {
    request_body::require_json(headers)?;
    let fields = request_body::json_object(
        body,
        &[
            "media_type",
            "total_bytes",
            "media_category",
            "shared",
            "additional_owners",
        ],
    )?;
    let init = Initialize {
        media_type: media_type_of(&fields)?,
        total_bytes: total_bytes_of(&fields)?,
        category: category_of(&fields)?,
        shared: shared_of(&fields)?,
    };
    init.check_fits()?;
    Ok(init)
}

fn media_type_of(fields: &Map<String, Value>) -> Result<String, String> {
    match fields.get("media_type") {
        Some(Value::String(value)) => Ok(value.trim().to_ascii_lowercase()),
        Some(_) => Err(invalid("$.media_type: expected a string", None)),
        None => Err(invalid("$.media_type: is required", None)),
    }
}

fn total_bytes_of(fields: &Map<String, Value>) -> Result<u64, String> {
    match fields.get("total_bytes") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| invalid("$.total_bytes: expected a non-negative integer", None)),
        Some(_) => Err(invalid("$.total_bytes: expected an integer", None)),
        None => Err(invalid("$.total_bytes: is required", None)),
    }
}

fn category_of(fields: &Map<String, Value>) -> Result<Category, String> {
    match fields.get("media_category") {
        Some(Value::String(value)) => Category::parse(value).ok_or_else(|| {
            invalid(
                &format!(
                    "The `media_category` value [{value}] is not one of [dm_image,dm_gif,dm_video]"
                ),
                Some(("media_category", value)),
            )
        }),
        Some(_) => Err(invalid("$.media_category: expected a string", None)),
        None => Err(invalid(
            "$.media_category: is required for Direct Message media (dm_image, dm_gif or dm_video)",
            None,
        )),
    }
}

fn shared_of(fields: &Map<String, Value>) -> Result<bool, String> {
    match fields.get("shared") {
        None => Ok(false),
        Some(Value::Bool(shared)) => Ok(*shared),
        Some(_) => Err(invalid("$.shared: expected a boolean", None)),
    }
}

impl Initialize {
    /// The media type and size must fit the category.
    fn check_fits(&self) -> Result<(), String> {
        let Initialize {
            media_type,
            category,
            total_bytes,
            ..
        } = self;
        if !category.media_types().contains(&media_type.as_str()) {
            return Err(invalid(
                &format!(
                    "The `media_type` value [{media_type}] does not match the `media_category` {} (one of [{}])",
                    category.as_str(),
                    category.media_types().join(",")
                ),
                Some(("media_type", media_type)),
            ));
        }
        if *total_bytes == 0 || *total_bytes > category.max_bytes() {
            let value = total_bytes.to_string();
            return Err(invalid(
                &format!(
                    "The `total_bytes` value [{total_bytes}] is not between 1 and {} for {}",
                    category.max_bytes(),
                    category.as_str()
                ),
                Some(("total_bytes", &value)),
            ));
        }
        Ok(())
    }
}

/// The parts of an APPEND the simulator reads.
#[derive(Default)]
struct AppendParts {
    media: Option<Bytes>,
    segment_index: Option<String>,
}

/// Reads the whole multipart body, before the state is locked; a body that is not multipart
/// or cannot be read is reported after authentication, as X checks credentials first.
async fn read_parts(
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<AppendParts, String> {
    let mut multipart = multipart.map_err(|rejection| rejection.body_text())?;
    let mut parts = AppendParts::default();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|error| error.body_text())?
    {
        let name = field.name().unwrap_or_default().to_string();
        let data = field.bytes().await.map_err(|error| error.body_text())?;
        let slot_taken = match name.as_str() {
            "media" => parts.media.replace(data).is_some(),
            "segment_index" => parts
                .segment_index
                .replace(String::from_utf8_lossy(&data).trim().to_string())
                .is_some(),
            _ => false,
        };
        if slot_taken {
            return Err(format!("the `{name}` part appears twice"));
        }
    }
    Ok(parts)
}

/// An APPEND's multipart body, read whole before the checks; not part of the OAuth signature
/// (only query and `oauth_*` are). A body that is not multipart or cannot be read is reported
/// after authentication, as X checks credentials first.
pub(crate) struct AppendBody(Result<AppendParts, String>);

impl SignedBody for AppendBody {
    async fn read(request: Request) -> Result<Self, Response> {
        let multipart = Multipart::from_request(request, &()).await;
        Ok(AppendBody(read_parts(multipart).await))
    }

    fn signed(&self) -> &[u8] {
        &[]
    }
}

/// `POST /2/media/upload/{id}/append`.
pub(crate) async fn append(
    id: Result<Path<String>, PathRejection>,
    caller: Authorized<MediaUpload, AppendBody>,
) -> Reply {
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let Authorized {
        state,
        account,
        reply,
        body: AppendBody(parts),
        ..
    } = caller;
    let mut inner = state.lock();
    let outcome = own_upload(&mut inner, &account.user_id, &id)
        .and_then(|upload| take_segment(upload, &id, parts));
    match outcome {
        Ok(body) => reply.answer(StatusCode::OK, body),
        Err(problem) => reply.answer(StatusCode::BAD_REQUEST, problem),
    }
}

/// Keeps an APPEND's segment in an upload still open; the answer's body, or X's 400.
fn take_segment(
    upload: &mut UploadRecord,
    id: &str,
    parts: Result<AppendParts, String>,
) -> Result<String, String> {
    if upload.finalized {
        return Err(invalid(
            &format!("The upload [{id}] is already finalized; no more segments are accepted"),
            Some(("id", id)),
        ));
    }
    let parts = parts.map_err(|why| {
        invalid(
            &format!("The request body is not a readable multipart/form-data body: {why}"),
            None,
        )
    })?;
    let (segment_index, media) = parts.segment()?;
    upload.arrivals.push((segment_index, media.len() as u64));
    upload.parts.insert(segment_index, media);
    tracing::debug!(media_id = %upload.id, segment_index, "media segment appended");
    Ok(json!({ "data": { "expires_at": upload.expires_at().timestamp() } }).to_string())
}

impl AppendParts {
    /// The segment's index and bytes, each within X's bounds.
    fn segment(self) -> Result<(u32, Bytes), String> {
        let Some(media) = self.media else {
            return Err(invalid("The `media` part is required", None));
        };
        let Some(index) = self.segment_index else {
            return Err(invalid("The `segment_index` part is required", None));
        };
        let segment_index = match index.parse::<u32>() {
            Ok(n) if n <= MAX_SEGMENT_INDEX => n,
            _ => {
                return Err(invalid(
                    &format!(
                    "The `segment_index` value [{index}] is not between 0 and {MAX_SEGMENT_INDEX}"
                ),
                    Some(("segment_index", &index)),
                ))
            }
        };
        if media.is_empty() || media.len() > MAX_SEGMENT_BYTES {
            let length = media.len().to_string();
            return Err(invalid(
                &format!(
                    "The `media` part has {length} bytes; a segment must have 1 to {MAX_SEGMENT_BYTES}"
                ),
                Some(("media", &length)),
            ));
        }
        Ok((segment_index, media))
    }
}

/// `POST /2/media/upload/{id}/finalize`.
pub(crate) async fn finalize(
    id: Result<Path<String>, PathRejection>,
    caller: Authorized<MediaUpload>,
) -> Reply {
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let Authorized {
        state,
        account,
        now,
        reply,
        ..
    } = caller;
    let mut guard = state.lock();
    let inner = &mut *guard;
    let settings = inner
        .media_processing
        .get(&account.user_id)
        .cloned()
        .unwrap_or_default();
    let upload = match own_upload(inner, &account.user_id, &id) {
        Ok(upload) => upload,
        Err(problem) => return reply.answer(StatusCode::BAD_REQUEST, problem),
    };
    // A FINALIZE repeated (a client retrying after a lost answer) gets the current state.
    if !upload.finalized {
        if let Err(problem) = upload.finish(&id, settings) {
            return reply.answer(StatusCode::BAD_REQUEST, problem);
        }
    }
    let mut data = json!({
        "id": upload.id,
        "media_key": upload.media_key,
        "size": upload.total_bytes,
        "expires_after_secs": upload.expires_after_secs(now),
    });
    if let Some(info) = upload.processing_info() {
        data["processing_info"] = info;
    }
    reply.answer(StatusCode::OK, json!({ "data": data }).to_string())
}

impl UploadRecord {
    /// FINALIZE of an open upload: its segments must run `0..n` without a gap and add up to
    /// `total_bytes`; then it is closed and starts processing with the account's `settings`.
    fn finish(&mut self, id: &str, settings: MediaProcessing) -> Result<(), String> {
        let contiguous = self
            .parts
            .keys()
            .enumerate()
            .all(|(position, index)| usize::try_from(*index).is_ok_and(|i| i == position));
        if self.parts.is_empty() || !contiguous {
            let indices: Vec<String> = self.parts.keys().map(u32::to_string).collect();
            return Err(invalid(
                &format!(
                    "The segments of upload [{id}] are not contiguous from 0: got [{}]",
                    indices.join(",")
                ),
                Some(("id", id)),
            ));
        }
        let received: u64 = self.parts.values().map(|part| part.len() as u64).sum();
        if received != self.total_bytes {
            return Err(invalid(
                &format!(
                    "The segments of upload [{id}] add up to {received} bytes, not the {} of total_bytes",
                    self.total_bytes
                ),
                Some(("id", id)),
            ));
        }
        self.finalized = true;
        self.settings = settings;
        self.processing = if self.category.processes() {
            ProcessingState::Pending
        } else {
            ProcessingState::Succeeded
        };
        tracing::info!(media_id = %self.id, size = received, "media upload finalized");
        Ok(())
    }
}

/// `GET /2/media/upload?command=STATUS&media_id=…`.
pub(crate) async fn status(caller: Authorized<MediaUpload>) -> Reply {
    let Authorized {
        state,
        account,
        reply,
        uri,
        ..
    } = caller;
    let media_id = match status_media_id(uri.query()) {
        Ok(media_id) => media_id,
        Err(problem) => return reply.answer(StatusCode::BAD_REQUEST, problem),
    };
    let mut inner = state.lock();
    let upload = match own_upload(&mut inner, &account.user_id, &media_id) {
        Ok(upload) => upload,
        Err(problem) => return reply.answer(StatusCode::BAD_REQUEST, problem),
    };
    if !upload.finalized {
        return reply.answer(
            StatusCode::BAD_REQUEST,
            invalid(
                &format!("The upload [{media_id}] is not finalized yet"),
                Some(("media_id", &media_id)),
            ),
        );
    }
    upload.poll();
    let mut data = json!({ "id": upload.id, "media_key": upload.media_key });
    data["processing_info"] = upload
        .processing_info()
        .unwrap_or_else(|| json!({ "state": "succeeded", "progress_percent": 100 }));
    reply.answer(StatusCode::OK, json!({ "data": data }).to_string())
}

/// STATUS's query: `command=STATUS` and the `media_id`, nothing else.
fn status_media_id(query: Option<&str>) -> Result<String, String> {
    let mut command = None;
    let mut media_id = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "command" => command = Some(value.into_owned()),
            "media_id" => media_id = Some(value.into_owned()),
            other => {
                return Err(invalid(
                    &format!("The query parameter [{other}] is not one of [command,media_id]"),
                    Some((other, &value)),
                ))
            }
        }
    }
    if command.as_deref() != Some("STATUS") {
        let value = command.unwrap_or_default();
        return Err(invalid(
            &format!("The `command` query parameter value [{value}] is not one of [STATUS]"),
            Some(("command", &value)),
        ));
    }
    media_id.ok_or_else(|| invalid("The `media_id` query parameter is required", None))
}

/// What a DM send checks of its attachment, as X does: the media exists, this account
/// uploaded it, it was finalized, its processing succeeded and it has not expired. The media's
/// kind, for the DM event, or X's 400 body naming the problem.
pub(crate) fn check_attachment(
    inner: &Inner,
    user_id: &str,
    media_id: &str,
    now: DateTime<Utc>,
) -> Result<MediaType, String> {
    let refuse = |why: &str| {
        invalid(
            &format!("$.attachments[0].media_id: the media [{media_id}] {why}"),
            Some(("media_id", media_id)),
        )
    };
    let Some(upload) = inner.uploads.iter().find(|upload| upload.id == media_id) else {
        return Err(refuse("does not exist"));
    };
    if upload.user_id != user_id {
        return Err(refuse("was not uploaded by the sending user"));
    }
    if !upload.finalized {
        return Err(refuse("has not been finalized"));
    }
    if now >= upload.expires_at() {
        return Err(refuse("has expired"));
    }
    match &upload.processing {
        ProcessingState::Succeeded => Ok(upload.category.media_kind()),
        ProcessingState::Failed { message } => {
            Err(refuse(&format!("failed processing: {message}")))
        }
        _ => Err(refuse("is still processing")),
    }
}
