//! Uploading DM media with X's v2 chunked upload (README §5 "Sending"): INITIALIZE, one
//! multipart APPEND per segment, FINALIZE, then STATUS polls while X processes a video or
//! GIF. The media id it yields goes into a DM's `attachments`.
//!
//! The bytes come from a reader, a segment at a time, so a large video spooled to disk is
//! never held in memory whole.

use std::fmt;
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use reqwest::multipart::{Form, Part};
use reqwest::Method;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::time::Instant;
use url::Url;

use crate::client::{hold_on_rate_limit, Exchange, Paced};
use crate::dm::local_invalid;
use crate::error::body_snippet;
use crate::{classify_send_error, MediaCategory, XClient, XError};

/// X numbers segments 0 to 999, so an upload has at most this many.
const MAX_SEGMENTS: u32 = 1000;

/// How long to wait between STATUS polls when X gives no `check_after_secs`.
const DEFAULT_CHECK_AFTER: Duration = Duration::from_secs(1);

/// One file to upload: what it is and where its bytes come from.
pub struct MediaUpload<'a> {
    /// The MIME type, e.g. `image/jpeg`, `image/gif`, `video/mp4`; X checks it against the
    /// category.
    pub media_type: &'a str,
    /// The kind of DM media.
    pub category: MediaCategory,
    /// The exact size; X wants it at INITIALIZE and checks the segments add up to it.
    pub total_bytes: u64,
    /// The bytes, read a segment at a time (a `tokio::fs::File` of the spooled download, or
    /// any reader); it must yield exactly `total_bytes`.
    pub reader: &'a mut (dyn AsyncRead + Unpin + Send),
}

impl fmt::Debug for MediaUpload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaUpload")
            .field("media_type", &self.media_type)
            .field("category", &self.category)
            .field("total_bytes", &self.total_bytes)
            .finish_non_exhaustive()
    }
}

/// Media X accepted and processed, ready to attach to a DM of the same account within 24 h.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedMedia {
    /// The id to put in `attachments[0].media_id`.
    pub media_id: String,
    /// X's `media_key` (`3_…`, `16_…`, `7_…`), the key DM events list media under.
    pub media_key: String,
}

/// The steps of an upload, each with its own bounded metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Initialize,
    Append,
    Finalize,
    Status,
}

impl Step {
    fn endpoint(self) -> &'static str {
        match self {
            Step::Initialize => "media_upload_initialize",
            Step::Append => "media_upload_append",
            Step::Finalize => "media_upload_finalize",
            Step::Status => "media_upload_status",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Step::Initialize => "media upload INITIALIZE",
            Step::Append => "media upload APPEND",
            Step::Finalize => "media upload FINALIZE",
            Step::Status => "media upload STATUS",
        }
    }
}

/// What a request carries besides its signature.
enum Body {
    Json(serde_json::Value),
    Multipart(Form),
    Empty,
}

/// `{"data":{…}}` of INITIALIZE, FINALIZE and STATUS.
#[derive(Deserialize)]
pub(crate) struct Envelope {
    pub(crate) data: MediaData,
}

#[derive(Deserialize)]
pub(crate) struct MediaData {
    /// Digits only: it goes into the APPEND and FINALIZE paths.
    #[serde(deserialize_with = "crate::id::deserialize")]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) media_key: Option<String>,
    #[serde(default)]
    pub(crate) processing_info: Option<ProcessingInfo>,
}

/// X's `processing_info`: `pending → in_progress → succeeded | failed`.
#[derive(Debug, Deserialize)]
pub(crate) struct ProcessingInfo {
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) check_after_secs: Option<u64>,
    #[serde(default)]
    pub(crate) progress_percent: Option<u64>,
    #[serde(default)]
    pub(crate) error: Option<ProcessingError>,
}

/// X's processing error, v1.1's shape: `{"code":1,"name":"InvalidMedia","message":"…"}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ProcessingError {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
}

/// How much of X's processing error is kept: it becomes the reply's failure detail.
const PROCESSING_ERROR_BYTES: usize = 500;

impl ProcessingInfo {
    /// The failure detail of a `failed` processing: X's message, else its name, cut short.
    pub(crate) fn failure_detail(&self) -> String {
        let error = self.error.as_ref();
        // X's text when it gave one that says something: an empty or blank message
        // (seen as `"error":[""]` read leniently) falls back to the name, then to ours.
        let detail = error
            .and_then(|error| {
                [error.message.as_deref(), error.name.as_deref()]
                    .into_iter()
                    .flatten()
                    .find(|text| !text.trim().is_empty())
            })
            .unwrap_or("processing failed");
        crate::excerpt::cut(detail, PROCESSING_ERROR_BYTES)
    }
}

impl XClient {
    /// Uploads one DM media file: `POST /2/media/upload/initialize`, one
    /// `POST /2/media/upload/{id}/append` per segment of [`MediaUploadConfig::segment_bytes`]
    /// (multipart `media` + `segment_index`), `POST /2/media/upload/{id}/finalize`, then, if
    /// X says it is processing, `GET /2/media/upload?command=STATUS&media_id=…` until it
    /// succeeds, waiting `check_after_secs` (at most [`MediaUploadConfig::max_status_wait`])
    /// between polls.
    ///
    /// Every request is signed with the channel's OAuth 1.0a user token (the multipart body
    /// is not part of the signature). Every refusal is sorted by the same rules as a DM send
    /// ([`classify_send_error`]), so credits, rate limits, outages and bad requests are the
    /// errors the send path already handles; a plain 403, having no recipient here, is
    /// [`XError::InvalidRequest`] rather than [`XError::RecipientRefuses`]. Processing that
    /// ends `failed` is [`XError::MediaProcessingFailed`] (permanent); processing still
    /// running after [`MediaUploadConfig::processing_timeout`] is [`XError::Transient`], as
    /// a later attempt (a fresh upload) may well pass. A reader that fails is
    /// [`XError::Transient`]; one that yields more or fewer bytes than `total_bytes`, or a
    /// size or type X would refuse, fails locally as [`XError::InvalidRequest`].
    ///
    /// Pacing: uploads count against X's media window (1,875 per 15 minutes per user), not
    /// the DM send window, so they go through a pacer of their own ([`XClient::upload_pacer`]):
    /// INITIALIZE, APPEND and FINALIZE teach it the window X announces and a 429 on any step
    /// blocks it until the reset, so the next upload of the channel waits instead of earning
    /// another 429. STATUS polls wait for it but do not teach it their headers, as X lists no
    /// limit for them in the media window. The 429 itself still ends this upload with
    /// [`XError::RateLimited`] for the caller to retry at the reset, from INITIALIZE.
    #[tracing::instrument(skip_all, fields(category = %media.category, media_type = media.media_type, total_bytes = media.total_bytes))]
    pub async fn upload_media(&self, media: MediaUpload<'_>) -> Result<UploadedMedia, XError> {
        let MediaUpload {
            media_type,
            category,
            total_bytes,
            reader,
        } = media;
        check_upload(media_type, category, total_bytes)?;
        let initialized = self
            .initialize_upload(media_type, category, total_bytes)
            .await?;
        let media_id = initialized.id;
        tracing::debug!(%media_id, "media upload initialized");
        let segments = self.append_segments(&media_id, reader, total_bytes).await?;
        let finalized = self
            .media_request(
                Step::Finalize,
                self.media_url(&[&media_id, "finalize"])?,
                Body::Empty,
            )
            .await?;
        if let Some(info) = finalized.processing_info {
            self.await_processing(&media_id, info).await?;
        }
        tracing::info!(%media_id, segments, "media uploaded");
        let media_key = finalized
            .media_key
            .unwrap_or_else(|| initialized.media_key.unwrap_or_default());
        Ok(UploadedMedia {
            media_id,
            media_key,
        })
    }

    /// INITIALIZE: tells X what is coming (type, size, category) and gets the media id.
    async fn initialize_upload(
        &self,
        media_type: &str,
        category: MediaCategory,
        total_bytes: u64,
    ) -> Result<MediaData, XError> {
        self.media_request(
            Step::Initialize,
            self.media_url(&["initialize"])?,
            Body::Json(serde_json::json!({
                "media_type": media_type,
                "total_bytes": total_bytes,
                "media_category": category.as_str(),
                "shared": false,
            })),
        )
        .await
    }

    /// One APPEND per segment read from the media's reader, checking that the reader yields
    /// exactly the declared size in at most [`MAX_SEGMENTS`]; the number of segments sent.
    async fn append_segments(
        &self,
        media_id: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        total_bytes: u64,
    ) -> Result<u32, XError> {
        let segment_bytes = self.inner.media.segment_bytes;
        let append_url = self.media_url(&[media_id, "append"])?;
        let mut sent: u64 = 0;
        let mut segment_index: u32 = 0;
        loop {
            let segment = read_segment(reader, segment_bytes, total_bytes).await?;
            if segment.is_empty() {
                break;
            }
            sent += segment.len() as u64;
            check_segment(sent, total_bytes, segment_index, segment_bytes)?;
            let form = Form::new()
                .text("segment_index", segment_index.to_string())
                .part("media", Part::bytes(segment));
            self.media_request(Step::Append, append_url.clone(), Body::Multipart(form))
                .await?;
            segment_index += 1;
        }
        if sent != total_bytes {
            return Err(local_invalid(format!(
                "the media ended after {sent} of the {total_bytes} bytes it was declared with"
            )));
        }
        Ok(segment_index)
    }

    /// The pacer of this channel's media uploads, for status reports: X counts uploads in a
    /// window of their own, apart from DM sends and reads.
    pub fn upload_pacer(&self) -> &crate::Pacer {
        &self.inner.upload_pacer
    }

    /// Polls STATUS until processing ends or the timeout passes.
    async fn await_processing(&self, media_id: &str, first: ProcessingInfo) -> Result<(), XError> {
        let config = &self.inner.media;
        let deadline = Instant::now() + config.processing_timeout;
        let mut status_url = self.media_url(&[])?;
        status_url
            .query_pairs_mut()
            .append_pair("command", "STATUS")
            .append_pair("media_id", media_id);
        let mut info = first;
        loop {
            if let Some(outcome) = processing_outcome(media_id, &info) {
                return outcome;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(processing_timed_out(media_id, config.processing_timeout));
            }
            let hint = info
                .check_after_secs
                .map_or(DEFAULT_CHECK_AFTER, Duration::from_secs);
            tokio::time::sleep(hint.min(config.max_status_wait).min(deadline - now)).await;
            let answer = self
                .media_request(Step::Status, status_url.clone(), Body::Empty)
                .await?;
            info = match answer.processing_info {
                Some(info) => info,
                // No processing_info any more: nothing left to wait for.
                None => return Ok(()),
            };
        }
    }

    /// `{base}/2/media/upload[/segments…]`.
    fn media_url(&self, segments: &[&str]) -> Result<Url, XError> {
        let mut url = self.inner.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| local_invalid(format!("{} cannot be a base URL", self.inner.base_url)))?
            .pop_if_empty()
            .extend(["2", "media", "upload"])
            .extend(segments);
        Ok(url)
    }

    /// One signed, upload-paced request; the `data` of a 2xx, or the classified error (a 429
    /// also blocks the upload pacer until its reset).
    async fn media_request(&self, step: Step, url: Url, body: Body) -> Result<MediaData, XError> {
        let pacer = &self.inner.upload_pacer;
        pacer.ready().await;
        let method = if step == Step::Status {
            Method::GET
        } else {
            Method::POST
        };
        // Query parameters are signed; JSON and multipart bodies are not (README §7).
        let authorization = self.authorization(method.as_str(), &url).await?;
        let request = self
            .request(method, url)
            .header(AUTHORIZATION, authorization.header.clone());
        let request = match body {
            Body::Json(json) => request.json(&json),
            Body::Multipart(form) => request.multipart(form),
            Body::Empty => request,
        };
        let paced = Paced {
            pacer,
            endpoint: step.endpoint(),
            what: step.what(),
            // X lists no limit for STATUS polls in the media window.
            learns_window: step != Step::Status,
        };
        let answer = self.exchange(request, paced).await?;
        authorization.answered(answer.status.as_u16());
        if answer.status.is_success() {
            return media_data(step, &answer);
        }
        let error = media_refusal(&answer);
        hold_on_rate_limit(pacer, &error);
        tracing::warn!(
            status = answer.status.as_u16(),
            problem = error.problem_type().unwrap_or("none"),
            detail = %error.detail(),
            what = step.what(),
            "X refused a media upload request"
        );
        Err(error)
    }
}

/// Refuses locally what X would refuse: media without a MIME type, or with a size outside
/// 1 byte to the category's limit.
fn check_upload(media_type: &str, category: MediaCategory, total_bytes: u64) -> Result<(), XError> {
    if media_type.trim().is_empty() {
        return Err(local_invalid("the media has no MIME type".to_owned()));
    }
    if total_bytes == 0 || total_bytes > category.max_bytes() {
        return Err(local_invalid(format!(
            "the media has {total_bytes} bytes; X takes 1 to {} for {category}",
            category.max_bytes()
        )));
    }
    Ok(())
}

/// The next segment of at most `segment_bytes`, empty at the end of the reader; a reader
/// that fails is transient, as a later attempt may read it.
async fn read_segment(
    reader: &mut (dyn AsyncRead + Unpin + Send),
    segment_bytes: usize,
    total_bytes: u64,
) -> Result<Vec<u8>, XError> {
    let mut segment = Vec::with_capacity(segment_bytes.min(total_bytes as usize));
    reader
        .take(segment_bytes as u64)
        .read_to_end(&mut segment)
        .await
        .map_err(|error| XError::Transient {
            status: None,
            detail: format!("cannot read the media to upload: {error}"),
        })?;
    Ok(segment)
}

/// Refuses a reader that yields more than it declared, or media needing more segments than
/// X numbers, before the segment is sent.
fn check_segment(
    sent: u64,
    total_bytes: u64,
    segment_index: u32,
    segment_bytes: usize,
) -> Result<(), XError> {
    if sent > total_bytes {
        return Err(local_invalid(format!(
            "the media has more bytes than the {total_bytes} it was declared with"
        )));
    }
    if segment_index >= MAX_SEGMENTS {
        return Err(local_invalid(format!(
            "the media needs more than X's {MAX_SEGMENTS} segments of {segment_bytes} bytes"
        )));
    }
    Ok(())
}

/// How processing ended, if it has: `Ok` once it succeeded, the permanent
/// [`XError::MediaProcessingFailed`] if it failed, `None` while X is still at it (pending,
/// in_progress, or a state X adds later).
fn processing_outcome(media_id: &str, info: &ProcessingInfo) -> Option<Result<(), XError>> {
    match info.state.as_str() {
        "succeeded" => Some(Ok(())),
        "failed" => {
            let detail = info.failure_detail();
            tracing::warn!(%media_id, %detail, "X could not process the media");
            Some(Err(XError::MediaProcessingFailed {
                media_id: media_id.to_owned(),
                detail,
            }))
        }
        state => {
            tracing::debug!(
                %media_id,
                state,
                progress_percent = info.progress_percent,
                "X is processing the media"
            );
            None
        }
    }
}

/// Processing still running at the timeout is transient: a later attempt (a fresh upload)
/// may well pass.
fn processing_timed_out(media_id: &str, timeout: Duration) -> XError {
    tracing::warn!(%media_id, timeout = ?timeout, "X did not finish processing the media in time");
    XError::Transient {
        status: None,
        detail: format!("X was still processing the media {media_id} after {timeout:?}"),
    }
}

/// The `data` of a 2xx answer to `step`; nothing in APPEND's answer is needed (X has
/// answered it with no body at all).
fn media_data(step: Step, answer: &Exchange) -> Result<MediaData, XError> {
    if step == Step::Append {
        return Ok(MediaData {
            id: String::new(),
            media_key: None,
            processing_info: None,
        });
    }
    let status = answer.status.as_u16();
    serde_json::from_slice::<Envelope>(&answer.body)
        .map(|envelope| envelope.data)
        .map_err(|error| XError::Transient {
            status: Some(status),
            detail: format!(
                "X answered a {} with an unexpected body ({}): {}",
                step.what(),
                crate::error::why_unreadable(&error),
                body_snippet(status, &answer.body)
            ),
        })
}

/// A refusal sorted by the rules of a DM send, except that a plain 403, having no
/// recipient here, is an invalid request.
fn media_refusal(answer: &Exchange) -> XError {
    let status = answer.status.as_u16();
    match classify_send_error(status, &answer.headers, &answer.body) {
        XError::RecipientRefuses { problem } => XError::InvalidRequest { status, problem },
        error => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_status_body_parses() {
        let body = br#"{"data":{"id":1880028106020515840,"media_key":"7_1880028106020515840","processing_info":{"state":"failed","progress_percent":50,"error":{"code":1,"name":"InvalidMedia","message":"Unsupported video format"}}}}"#;
        let data = serde_json::from_slice::<Envelope>(body).unwrap().data;
        assert_eq!(data.id, "1880028106020515840");
        let info = data.processing_info.unwrap();
        assert_eq!(info.state, "failed");
        assert_eq!(
            info.error.unwrap().message.as_deref(),
            Some("Unsupported video format")
        );
    }
}
