//! The message contract with the CRM: replies in, status events out, and the
//! closed set of reasons a reply can fail for.
//!
//! Parsing is strict where a mistake would send the wrong DM (ids, text
//! length, channel) and lenient where it costs nothing (unknown extra fields
//! are ignored, so the CRM can add fields without breaking the bridge).

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::excerpt::quoted;

/// X's limit on a DM's text, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Upper bound on the CRM's message id in bytes: it travels in AMQP short
/// strings (at most 255 bytes) together with the channel name.
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Most attachments one reply may carry. X takes one media per DM, so each
/// attachment is a DM of its own; ten keeps a reply a handful of DMs (and of
/// X's billed requests) and its inline data within a sane AMQP message.
pub const MAX_ATTACHMENTS: usize = 10;
/// Upper bound on an attachment's inline `data`, decoded. Inline data is for
/// small files: it travels base64-encoded (4/3 larger) inside the AMQP message,
/// and RabbitMQ 4 refuses messages over 16 MiB by default; larger media belong
/// behind a `url`. Each category's own limit applies too, whichever is lower.
pub const MAX_INLINE_DATA_BYTES: u64 = 5 * MIB;
/// Longest `filename`, in characters: a display name, never used as a path.
pub const MAX_FILENAME_CHARS: usize = 255;
/// Longest attachment `url`, in characters: longer ones are almost certainly
/// mistakes, and a bound keeps dead-letter details readable.
pub const MAX_URL_CHARS: usize = 2048;
/// The MIME types an attachment may have: those X accepts for DM media.
pub const SUPPORTED_MIME_TYPES: [&str; 6] = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "video/mp4",
    "video/quicktime",
];

const MIB: u64 = 1024 * 1024;

/// A reply the CRM asked the bridge to send, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingReply {
    /// The CRM's id: the idempotency key, echoed in every status event.
    pub message_id: String,
    /// Who or where to send to.
    pub target: ReplyTarget,
    /// The DM's text, up to 10,000 characters. Empty only when the reply
    /// carries attachments (then it holds just media); otherwise 1 to 10,000
    /// characters and not only whitespace. It goes out with the first
    /// attachment.
    pub text: String,
    /// Media to send, in order; each becomes a DM of its own (X takes one
    /// media per DM), at most [`MAX_ATTACHMENTS`].
    pub attachments: Vec<OutgoingAttachment>,
}

/// One media file a reply carries, validated: its type is one X accepts in
/// DMs and inline data is decoded and within the limits. A URL is only
/// checked for shape here; whether the bridge may fetch it is decided by the
/// outbound side's fetcher, which knows the configured allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingAttachment {
    /// Where the bytes come from.
    pub source: AttachmentSource,
    /// The MIME type the CRM declared, one of [`SUPPORTED_MIME_TYPES`]; sent
    /// to X as the upload's `media_type`.
    pub mime_type: String,
    /// X's media category, derived from the MIME type: it sets X's size limit.
    pub category: MediaCategory,
    /// A display name for logs and the agent; never used as a path.
    pub filename: Option<String>,
}

/// Where an attachment's bytes come from.
#[derive(Clone, PartialEq, Eq)]
pub enum AttachmentSource {
    /// An `http(s)` URL the bridge downloads (http only where configured).
    Url(Url),
    /// Bytes given inline (decoded from base64), at most
    /// [`MAX_INLINE_DATA_BYTES`].
    Data(Vec<u8>),
}

impl std::fmt::Debug for AttachmentSource {
    // Neither a URL's query (often a signed token) nor megabytes of data
    // belong in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachmentSource::Url(url) => f.debug_tuple("Url").field(&redact_url(url)).finish(),
            AttachmentSource::Data(data) => write!(f, "Data({} bytes)", data.len()),
        }
    }
}

/// A URL fit for logs and dead-letter details: scheme, host, port and path,
/// without credentials, query or fragment (where signed URLs keep tokens).
pub fn redact_url(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

/// X's media category for a DM attachment: X applies each one's size and
/// format limits at upload (`media_category` of `POST /2/media/upload/initialize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaCategory {
    /// JPEG, PNG or WebP image, at most 5 MiB.
    DmImage,
    /// Animated GIF, at most 15 MiB.
    DmGif,
    /// MP4 or QuickTime video, at most 512 MiB.
    DmVideo,
}

impl MediaCategory {
    /// The category of a supported MIME type, `None` for any other. GIFs are
    /// their own category because X animates them and allows them more bytes.
    /// `video/quicktime` is in X's list of upload media types and X transcodes
    /// it; MP4 (H.264/AAC) remains what X recommends.
    pub fn from_mime_type(mime_type: &str) -> Option<MediaCategory> {
        match mime_type {
            "image/jpeg" | "image/png" | "image/webp" => Some(MediaCategory::DmImage),
            "image/gif" => Some(MediaCategory::DmGif),
            "video/mp4" | "video/quicktime" => Some(MediaCategory::DmVideo),
            _ => None,
        }
    }

    /// X's wire name (`dm_image`, `dm_gif`, `dm_video`).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaCategory::DmImage => "dm_image",
            MediaCategory::DmGif => "dm_gif",
            MediaCategory::DmVideo => "dm_video",
        }
    }

    /// X's size limit for the category, in bytes; a larger file is refused
    /// before any request to X.
    pub fn max_bytes(self) -> u64 {
        match self {
            MediaCategory::DmImage => 5 * MIB,
            MediaCategory::DmGif => 15 * MIB,
            MediaCategory::DmVideo => 512 * MIB,
        }
    }
}

impl std::fmt::Display for MediaCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A byte count for people: `6.2 MiB`, `512 MiB`, `900 bytes`.
pub fn format_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    if bytes >= MIB {
        let mib = bytes as f64 / MIB as f64;
        if bytes.is_multiple_of(MIB) {
            format!("{} MiB", bytes / MIB)
        } else {
            format!("{mib:.1} MiB")
        }
    } else if bytes >= KIB {
        format!("{:.1} KiB", bytes as f64 / KIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

/// Where a reply goes: X has one endpoint for each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReplyTarget {
    /// A 1:1 conversation with this X user id.
    Recipient(String),
    /// An existing DM conversation.
    Conversation(String),
}

impl ReplyTarget {
    /// The key replies are ordered by: replies with the same key are sent in
    /// the order the CRM published them.
    pub fn ordering_key(&self) -> String {
        match self {
            ReplyTarget::Recipient(id) => format!("user:{id}"),
            ReplyTarget::Conversation(id) => format!("conversation:{id}"),
        }
    }
}

/// Why a reply body was refused; the text is the `detail` of the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct InvalidReply {
    /// What is wrong, naming the field.
    pub detail: String,
    /// The message id, when it could be read, so the CRM can still be told.
    pub message_id: Option<String>,
}

impl OutgoingReply {
    /// [`OutgoingReply::parse`] for a body of at most `max_bytes`; a larger
    /// one is refused without being parsed into memory (only scanned for its
    /// `message_id`, so the CRM can still be told).
    pub fn parse_bounded(
        body: &[u8],
        channel: &str,
        max_bytes: usize,
    ) -> Result<OutgoingReply, InvalidReply> {
        if body.len() > max_bytes {
            return Err(InvalidReply {
                detail: format!(
                    "the reply is {} bytes; the bridge takes at most {} (outbound.max_reply_bytes): send large attachments by url",
                    body.len(),
                    max_bytes
                ),
                message_id: scan_message_id(body),
            });
        }
        OutgoingReply::parse(body, channel)
    }

    /// Parses and validates a reply body. `channel` is the channel named by the
    /// routing key; a `channel` field in the body must agree with it.
    pub fn parse(body: &[u8], channel: &str) -> Result<OutgoingReply, InvalidReply> {
        let text = std::str::from_utf8(body).map_err(|e| InvalidReply {
            detail: format!("body is not valid UTF-8 (at byte {})", e.valid_up_to()),
            message_id: None,
        })?;
        let value: Value = serde_json::from_str(text).map_err(|e| InvalidReply {
            detail: format!("body is not valid JSON: {e}"),
            message_id: None,
        })?;
        let Value::Object(object) = value else {
            return Err(InvalidReply {
                detail: "body must be a JSON object".into(),
                message_id: None,
            });
        };

        let message_id = match object.get("message_id") {
            Some(Value::String(id)) if !id.trim().is_empty() => {
                if id.len() > MAX_MESSAGE_ID_BYTES {
                    return Err(InvalidReply {
                        detail: format!("message_id must be at most {MAX_MESSAGE_ID_BYTES} bytes"),
                        message_id: None,
                    });
                }
                id.clone()
            }
            Some(Value::String(_)) => return Err(invalid(None, "message_id must not be empty")),
            Some(other) => {
                return Err(invalid(
                    None,
                    &format!("message_id must be a string, not {}", kind(other)),
                ))
            }
            None => return Err(invalid(None, "message_id is missing")),
        };
        let fail = |detail: String| InvalidReply {
            detail,
            message_id: Some(message_id.clone()),
        };

        match object.get("channel") {
            None | Some(Value::Null) => {}
            Some(Value::String(c)) if c == channel => {}
            Some(Value::String(c)) => {
                return Err(fail(format!(
                    "channel {} does not match the routing key {}",
                    quoted(c),
                    quoted(channel)
                )))
            }
            Some(other) => {
                return Err(fail(format!(
                    "channel must be a string, not {}",
                    kind(other)
                )))
            }
        }

        let recipient = id_field(&object, "recipient_id").map_err(&fail)?;
        let conversation = match object.get("conversation_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if is_conversation_id(id) => Some(id.clone()),
            Some(Value::String(id)) => {
                return Err(fail(format!(
                "conversation_id {} is not an X conversation id (digits, or two ids joined by -)",
                quoted(id)
            )))
            }
            Some(other) => {
                return Err(fail(format!(
                    "conversation_id must be a string, not {}",
                    kind(other)
                )))
            }
        };
        let target = match (recipient, conversation) {
            (Some(id), None) => ReplyTarget::Recipient(id),
            (None, Some(id)) => ReplyTarget::Conversation(id),
            (Some(_), Some(_)) => {
                return Err(fail(
                    "give either recipient_id or conversation_id, not both".into(),
                ))
            }
            (None, None) => return Err(fail("recipient_id or conversation_id is required".into())),
        };

        let attachments = attachments(&object).map_err(&fail)?;

        // With attachments the text is optional: the DMs can carry media only.
        let text = match object.get("text") {
            Some(Value::String(text)) => text.clone(),
            None | Some(Value::Null) if !attachments.is_empty() => String::new(),
            Some(Value::Null) | None => {
                return Err(fail(
                    "text is missing (it is required when there are no attachments)".into(),
                ))
            }
            Some(other) => return Err(fail(format!("text must be a string, not {}", kind(other)))),
        };
        let chars = text.chars().count();
        if attachments.is_empty() && text.trim().is_empty() {
            return Err(fail("text must not be empty".into()));
        }
        if !text.is_empty() && text.trim().is_empty() {
            return Err(fail(
                "text must not be only whitespace; leave it out or empty to send the attachments alone"
                    .into(),
            ));
        }
        if chars > MAX_TEXT_CHARS {
            return Err(fail(format!(
                "text is {chars} characters; X allows at most {MAX_TEXT_CHARS}"
            )));
        }

        Ok(OutgoingReply {
            message_id,
            target,
            text,
            attachments,
        })
    }
}

/// Canonical base64 (RFC 4648 section 4, padded): what the schema's pattern
/// describes, so the two agree on what is valid.
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The `attachments` field: absent, null or an array of at most
/// [`MAX_ATTACHMENTS`] attachment objects.
fn attachments(object: &serde_json::Map<String, Value>) -> Result<Vec<OutgoingAttachment>, String> {
    let items = match object.get("attachments") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("attachments must be an array, not {}", kind(other))),
    };
    if items.len() > MAX_ATTACHMENTS {
        return Err(format!(
            "attachments has {} items; a reply carries at most {MAX_ATTACHMENTS}",
            items.len()
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| attachment(i, item))
        .collect()
}

/// One attachment object; every refusal names `attachments[i].<field>`.
fn attachment(i: usize, item: &Value) -> Result<OutgoingAttachment, String> {
    let Value::Object(object) = item else {
        return Err(format!(
            "attachments[{i}] must be an object, not {}",
            kind(item)
        ));
    };
    let field = |name: &str| -> Result<Option<&String>, String> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "attachments[{i}].{name} must be a string, not {}",
                kind(other)
            )),
        }
    };

    let mime_type =
        field("mime_type")?.ok_or_else(|| format!("attachments[{i}].mime_type is missing"))?;
    let category = MediaCategory::from_mime_type(mime_type).ok_or_else(|| {
        format!(
            "attachments[{i}].mime_type {} is not supported: X DMs take {}",
            quoted(mime_type),
            SUPPORTED_MIME_TYPES.join(", ")
        )
    })?;

    let filename = field("filename")?;
    if let Some(name) = filename {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_FILENAME_CHARS {
            return Err(format!(
                "attachments[{i}].filename must be 1 to {MAX_FILENAME_CHARS} characters, not {chars}"
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(format!(
                "attachments[{i}].filename must not contain control characters"
            ));
        }
    }

    let source = match (field("url")?, field("data")?) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "attachments[{i}] must have either url or data, not both"
            ))
        }
        (None, None) => return Err(format!("attachments[{i}] needs url or data")),
        (Some(url), None) => AttachmentSource::Url(attachment_url(i, url)?),
        (None, Some(data)) => AttachmentSource::Data(attachment_data(i, data, category)?),
    };

    Ok(OutgoingAttachment {
        source,
        mime_type: mime_type.clone(),
        category,
        filename: filename.cloned(),
    })
}

fn attachment_url(i: usize, text: &str) -> Result<Url, String> {
    let chars = text.chars().count();
    if chars > MAX_URL_CHARS {
        return Err(format!(
            "attachments[{i}].url is {chars} characters; at most {MAX_URL_CHARS}"
        ));
    }
    // The parser's own message never quotes the input, so no token leaks.
    let url =
        Url::parse(text).map_err(|e| format!("attachments[{i}].url is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!(
            "attachments[{i}].url must be https, not {}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "attachments[{i}].url must not carry credentials (user:password@)"
        ));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(format!("attachments[{i}].url must not contain whitespace"));
    }
    Ok(url)
}

fn attachment_data(i: usize, text: &str, category: MediaCategory) -> Result<Vec<u8>, String> {
    let limit = category.max_bytes().min(MAX_INLINE_DATA_BYTES);
    // Judge the size from the text's length first, so an oversized value is
    // refused without decoding megabytes.
    let padding = text.bytes().rev().take_while(|&b| b == b'=').count().min(2) as u64;
    let estimate = (text.len() as u64).div_ceil(4) * 3 - padding;
    let too_large = |size: u64| {
        if limit < category.max_bytes() {
            format!(
                "attachments[{i}].data is {} ({size} bytes); inline data is at most {} (give a url for larger files)",
                format_bytes(size),
                format_bytes(limit)
            )
        } else {
            format!(
                "attachments[{i}].data is {} ({size} bytes); {category} media are at most {}",
                format_bytes(size),
                format_bytes(limit)
            )
        }
    };
    if estimate > limit {
        return Err(too_large(estimate));
    }
    let data = BASE64
        .decode(text)
        .map_err(|_| format!("attachments[{i}].data is not valid base64 (RFC 4648, padded)"))?;
    if data.is_empty() {
        return Err(format!("attachments[{i}].data is empty"));
    }
    if data.len() as u64 > limit {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
}

/// The `message_id` of a reply body that is not parsed (too large, or for no
/// configured channel), if it has a usable one: read by skipping every other
/// value, so nothing but the id is kept in memory, whatever the body's size.
pub fn scan_message_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        message_id: Option<String>,
    }
    let id = serde_json::from_slice::<IdOnly>(body).ok()?.message_id?;
    (!id.trim().is_empty() && id.len() <= MAX_MESSAGE_ID_BYTES).then_some(id)
}

fn invalid(message_id: Option<String>, detail: &str) -> InvalidReply {
    InvalidReply {
        detail: detail.into(),
        message_id,
    }
}

/// An X user id: a string of digits, or a JSON integer (never a float, which
/// would lose digits of a 19-digit id).
fn id_field(
    object: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<String>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if is_user_id(id) => Ok(Some(id.clone())),
        Some(Value::String(id)) => Err(format!(
            "{field} {} is not an X user id (1 to 19 digits)",
            quoted(id)
        )),
        Some(Value::Number(n)) => match n.as_u64().map(|id| id.to_string()) {
            Some(id) if is_user_id(&id) => Ok(Some(id)),
            _ => Err(format!(
                "{field} must be a whole number or a string of digits, not {n}"
            )),
        },
        Some(other) => Err(format!(
            "{field} must be a string of digits, not {}",
            kind(other)
        )),
    }
}

fn is_user_id(id: &str) -> bool {
    (1..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// X's dm_conversation_id: `^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$`.
fn is_conversation_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((a, b)) => is_user_id(a) && is_user_id(b),
        None => (15..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Why a reply ended in the dead-letter queue. A closed set: these are
/// documented for operators and used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The reply body broke the contract.
    InvalidMessage,
    /// The routing key names no configured channel.
    UnknownChannel,
    /// Transient X failures outlasted the retry budget.
    RetriesExhausted,
    /// The account had no credits (or hit a cap) for longer than allowed.
    CreditsExhausted,
    /// X refused the request as invalid (400 and other 4xx).
    InvalidRequest,
    /// The recipient does not accept DMs from this account (403).
    RecipientRefuses,
    /// X refused the credentials (401).
    Unauthorized,
    /// The access token lacks DM permission (403 oauth1-permissions).
    MissingPermission,
    /// The X App is not enrolled / attached to a Project (403 client-forbidden).
    NotEnrolled,
}

impl FailureReason {
    /// The wire name (`credits_exhausted`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidMessage => "invalid_message",
            FailureReason::UnknownChannel => "unknown_channel",
            FailureReason::RetriesExhausted => "retries_exhausted",
            FailureReason::CreditsExhausted => "credits_exhausted",
            FailureReason::InvalidRequest => "invalid_request",
            FailureReason::RecipientRefuses => "recipient_refuses",
            FailureReason::Unauthorized => "unauthorized",
            FailureReason::MissingPermission => "missing_permission",
            FailureReason::NotEnrolled => "not_enrolled",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event the bridge publishes to the CRM about one of its replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum StatusEvent {
    /// The reply went out as a DM.
    #[serde(rename = "message.sent")]
    Sent {
        /// The CRM's id of the reply.
        message_id: String,
        /// The channel it went out on.
        channel: String,
        /// X's id of the DM event (the first, when the reply became several
        /// DMs): lets the CRM match the echo X sends back.
        dm_event_id: String,
        /// Every DM the reply became, in order: one, or one per attachment
        /// (X takes one attachment per DM; the text goes with the first).
        dm_event_ids: Vec<String>,
        /// X's conversation id, for replies addressed by recipient.
        conversation_id: String,
        /// When X accepted it.
        #[serde(serialize_with = "rfc3339")]
        sent_at: DateTime<Utc>,
    },
    /// The reply will not go out; it is in the dead-letter queue.
    #[serde(rename = "message.failed")]
    Failed {
        /// The CRM's id of the reply.
        message_id: String,
        /// The channel it was for.
        channel: String,
        /// Machine-readable reason.
        reason: FailureReason,
        /// Human-readable explanation for the agent.
        detail: String,
        /// Requests made to X for this reply.
        attempts: u32,
    },
}

impl StatusEvent {
    /// `message.sent` / `message.failed`: the AMQP `type` and the last words
    /// of the routing key.
    pub fn event_type(&self) -> &'static str {
        match self {
            StatusEvent::Sent { .. } => "message.sent",
            StatusEvent::Failed { .. } => "message.failed",
        }
    }

    /// The reply's CRM id.
    pub fn message_id(&self) -> &str {
        match self {
            StatusEvent::Sent { message_id, .. } | StatusEvent::Failed { message_id, .. } => {
                message_id
            }
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        match self {
            StatusEvent::Sent { channel, .. } | StatusEvent::Failed { channel, .. } => channel,
        }
    }

    /// Routing key on the incoming exchange: `<channel>.<type>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.channel(), self.event_type())
    }

    /// Deterministic AMQP message id (`<channel>:<message_id>:sent`), so the
    /// CRM can drop the rare duplicate a crash can cause.
    pub fn amqp_message_id(&self) -> String {
        let suffix = match self {
            StatusEvent::Sent { .. } => "sent",
            StatusEvent::Failed { .. } => "failed",
        };
        format!("{}:{}:{suffix}", self.channel(), self.message_id())
    }
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<OutgoingReply, InvalidReply> {
        OutgoingReply::parse(body.as_bytes(), "acme")
    }

    #[test]
    fn a_body_over_the_bound_is_refused_unparsed_but_keeps_its_id() {
        let padding = "x".repeat(2000);
        let body = format!(
            r#"{{"recipient_id":"1","text":"{padding}","message_id":"big-1","more":[1,{{"a":"é"}}]}}"#
        );
        assert!(OutgoingReply::parse_bounded(body.as_bytes(), "acme", body.len()).is_ok());
        let refused =
            OutgoingReply::parse_bounded(body.as_bytes(), "acme", body.len() - 1).unwrap_err();
        assert_eq!(refused.message_id.as_deref(), Some("big-1"));
        assert!(
            refused.detail.contains("outbound.max_reply_bytes"),
            "{}",
            refused.detail
        );
        for (body, why) in [
            (r#"{"message_id":"","text":"x"}"#, "blank"),
            (r#"{"message_id":7}"#, "not a string"),
            ("not json at all", "not JSON"),
        ] {
            let refused = OutgoingReply::parse_bounded(body.as_bytes(), "acme", 3).unwrap_err();
            assert_eq!(refused.message_id, None, "{why}");
        }
        let long_id = format!(r#"{{"message_id":"{}"}}"#, "i".repeat(129));
        let refused = OutgoingReply::parse_bounded(long_id.as_bytes(), "acme", 3).unwrap_err();
        assert_eq!(
            refused.message_id, None,
            "an id too long for AMQP is not used"
        );
    }

    #[test]
    fn a_reply_to_a_recipient() {
        let reply =
            parse(r#"{"message_id":"m1","recipient_id":"944480690","text":"Hi","extra":1}"#)
                .unwrap();
        assert_eq!(reply.target, ReplyTarget::Recipient("944480690".into()));
        assert_eq!(reply.text, "Hi");
    }

    #[test]
    fn a_numeric_recipient_keeps_all_19_digits() {
        let reply =
            parse(r#"{"message_id":"m1","recipient_id":1553086854915936256,"text":"Hi"}"#).unwrap();
        assert_eq!(
            reply.target,
            ReplyTarget::Recipient("1553086854915936256".into())
        );
    }

    #[test]
    fn a_reply_to_a_conversation_with_matching_channel() {
        let reply = parse(r#"{"message_id":"m1","conversation_id":"944480690-906948460078698496","text":"Hi","channel":"acme"}"#).unwrap();
        assert_eq!(
            reply.target,
            ReplyTarget::Conversation("944480690-906948460078698496".into())
        );
    }

    #[test]
    fn each_invalid_class_names_its_problem() {
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        let cases: Vec<(Vec<u8>, &str, bool)> = vec![
            (b"not json".to_vec(), "not valid JSON", false),
            (vec![0xff, 0xfe, b'{'], "not valid UTF-8", false),
            (b"[1,2]".to_vec(), "JSON object", false),
            (
                br#"{"recipient_id":"1","text":"a"}"#.to_vec(),
                "message_id is missing",
                false,
            ),
            (
                br#"{"message_id":7,"recipient_id":"1","text":"a"}"#.to_vec(),
                "message_id must be a string",
                false,
            ),
            (
                br#"{"message_id":"m","text":"a"}"#.to_vec(),
                "recipient_id or conversation_id is required",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"12a","text":"a"}"#.to_vec(),
                "not an X user id",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":1.5,"text":"a"}"#.to_vec(),
                "whole number",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1","conversation_id":"1-2","text":"a"}"#
                    .to_vec(),
                "not both",
                true,
            ),
            (
                br#"{"message_id":"m","conversation_id":"abc","text":"a"}"#.to_vec(),
                "not an X conversation id",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1"}"#.to_vec(),
                "text is missing",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1","attachments":[]}"#.to_vec(),
                "text is missing",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1","text":5}"#.to_vec(),
                "text must be a string",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1","text":"  "}"#.to_vec(),
                "text must not be empty",
                true,
            ),
            (
                format!(r#"{{"message_id":"m","recipient_id":"1","text":"{long}"}}"#).into_bytes(),
                "at most 10000",
                true,
            ),
            (
                br#"{"message_id":"m","recipient_id":"1","text":"a","channel":"other"}"#.to_vec(),
                "does not match the routing key",
                true,
            ),
        ];
        for (body, expected, has_id) in cases {
            let err = OutgoingReply::parse(&body, "acme").unwrap_err();
            assert!(
                err.detail.contains(expected),
                "{:?}: {}",
                String::from_utf8_lossy(&body),
                err.detail
            );
            assert_eq!(err.message_id.is_some(), has_id, "{}", err.detail);
        }
    }

    fn with_attachments(attachments: Value) -> Value {
        serde_json::json!({"message_id":"m","recipient_id":"1","attachments":attachments})
    }

    fn parse_value(body: &Value) -> Result<OutgoingReply, InvalidReply> {
        OutgoingReply::parse(body.to_string().as_bytes(), "acme")
    }

    #[test]
    fn attachments_are_typed_in_order_and_text_becomes_optional() {
        let png = BASE64.encode(b"\x89PNG...");
        let body = with_attachments(serde_json::json!([
            {"url":"https://cdn.example.com/a.mp4?sig=secret","mime_type":"video/mp4","filename":"clip.mp4"},
            {"data": png, "mime_type":"image/png"},
            {"url":"http://cdn.example.com/b.gif","mime_type":"image/gif","data":null,"filename":null},
        ]));
        let reply = parse_value(&body).unwrap();
        assert_eq!(reply.text, "");
        assert_eq!(reply.attachments.len(), 3);
        let first = &reply.attachments[0];
        assert_eq!(first.category, MediaCategory::DmVideo);
        assert_eq!(first.filename.as_deref(), Some("clip.mp4"));
        let AttachmentSource::Url(url) = &first.source else {
            panic!("{first:?}")
        };
        assert_eq!(url.host_str(), Some("cdn.example.com"));
        assert!(
            !format!("{first:?}").contains("secret"),
            "Debug hides the query"
        );
        assert_eq!(
            reply.attachments[1].source,
            AttachmentSource::Data(b"\x89PNG...".to_vec())
        );
        assert_eq!(reply.attachments[1].category, MediaCategory::DmImage);
        assert_eq!(reply.attachments[2].category, MediaCategory::DmGif);

        // Text goes with the attachments when given; null text is absent.
        let mut body = body;
        body["text"] = "Here you go".into();
        assert_eq!(parse_value(&body).unwrap().text, "Here you go");
        body["text"] = Value::Null;
        assert_eq!(parse_value(&body).unwrap().text, "");
        // No attachments field at all keeps the old contract.
        let plain =
            parse(r#"{"message_id":"m","recipient_id":"1","text":"Hi","attachments":null}"#)
                .unwrap();
        assert!(plain.attachments.is_empty());
    }

    #[test]
    fn categories_follow_the_mime_type() {
        for (mime, category, max) in [
            ("image/jpeg", "dm_image", 5 * MIB),
            ("image/png", "dm_image", 5 * MIB),
            ("image/webp", "dm_image", 5 * MIB),
            ("image/gif", "dm_gif", 15 * MIB),
            ("video/mp4", "dm_video", 512 * MIB),
            ("video/quicktime", "dm_video", 512 * MIB),
        ] {
            let c = MediaCategory::from_mime_type(mime).unwrap();
            assert_eq!((c.as_str(), c.max_bytes()), (category, max), "{mime}");
        }
        assert_eq!(
            SUPPORTED_MIME_TYPES
                .iter()
                .filter(|m| MediaCategory::from_mime_type(m).is_some())
                .count(),
            SUPPORTED_MIME_TYPES.len()
        );
        assert_eq!(MediaCategory::from_mime_type("IMAGE/PNG"), None);
        assert_eq!(MediaCategory::from_mime_type("application/pdf"), None);
    }

    #[test]
    fn each_invalid_attachment_names_its_field_and_problem() {
        let ok = BASE64.encode(b"gif89a");
        let big_image = BASE64.encode(vec![0u8; 5 * MIB as usize + 300_000]);
        let over_inline = BASE64.encode(vec![0u8; 6 * MIB as usize]);
        let eleven: Vec<Value> = (0..11)
            .map(|_| serde_json::json!({"data": ok, "mime_type": "image/gif"}))
            .collect();
        let cases: Vec<(Value, &str)> = vec![
            (serde_json::json!("x"), "attachments must be an array, not a string"),
            (serde_json::json!(eleven), "attachments has 11 items; a reply carries at most 10"),
            (serde_json::json!([1]), "attachments[0] must be an object, not a number"),
            (serde_json::json!([{"data": ok}]), "attachments[0].mime_type is missing"),
            (serde_json::json!([{"data": ok, "mime_type": 5}]), "attachments[0].mime_type must be a string, not a number"),
            (
                serde_json::json!([{"data": ok, "mime_type": "image/gif"}, {"data": ok, "mime_type": "application/pdf"}]),
                r#"attachments[1].mime_type "application/pdf" is not supported: X DMs take image/jpeg, image/png, image/webp, image/gif, video/mp4, video/quicktime"#,
            ),
            (serde_json::json!([{"mime_type": "image/gif"}]), "attachments[0] needs url or data"),
            (
                serde_json::json!([{"data": ok, "url": "https://a.example/x.gif", "mime_type": "image/gif"}]),
                "attachments[0] must have either url or data, not both",
            ),
            (serde_json::json!([{"data": "not base64!", "mime_type": "image/gif"}]), "attachments[0].data is not valid base64"),
            (serde_json::json!([{"data": "R0lGOD", "mime_type": "image/gif"}]), "attachments[0].data is not valid base64"),
            (serde_json::json!([{"data": "", "mime_type": "image/gif"}]), "attachments[0].data is empty"),
            (serde_json::json!([{"data": 7, "mime_type": "image/gif"}]), "attachments[0].data must be a string, not a number"),
            (
                serde_json::json!([{"data": big_image, "mime_type": "image/png"}]),
                "attachments[0].data is 5.3 MiB (5542880 bytes); dm_image media are at most 5 MiB",
            ),
            (
                serde_json::json!([{"data": over_inline, "mime_type": "video/mp4"}]),
                "attachments[0].data is 6 MiB (6291456 bytes); inline data is at most 5 MiB (give a url for larger files)",
            ),
            (
                serde_json::json!([{"url": "ftp://a.example/x.gif", "mime_type": "image/gif"}]),
                "attachments[0].url must be https, not ftp",
            ),
            (serde_json::json!([{"url": "a.example/x.gif", "mime_type": "image/gif"}]), "attachments[0].url is not a valid URL"),
            (
                serde_json::json!([{"url": "https://user:pw@a.example/x.gif", "mime_type": "image/gif"}]),
                "attachments[0].url must not carry credentials",
            ),
            (
                serde_json::json!([{"url": "https://a.example/x y.gif", "mime_type": "image/gif"}]),
                "attachments[0].url must not contain whitespace",
            ),
            (
                serde_json::json!([{"url": format!("https://a.example/{}", "x".repeat(MAX_URL_CHARS)), "mime_type": "image/gif"}]),
                "attachments[0].url is 2066 characters; at most 2048",
            ),
            (serde_json::json!([{"url": 1, "mime_type": "image/gif"}]), "attachments[0].url must be a string, not a number"),
            (
                serde_json::json!([{"data": ok, "mime_type": "image/gif", "filename": ""}]),
                "attachments[0].filename must be 1 to 255 characters, not 0",
            ),
            (
                serde_json::json!([{"data": ok, "mime_type": "image/gif", "filename": "a".repeat(256)}]),
                "attachments[0].filename must be 1 to 255 characters, not 256",
            ),
            (
                serde_json::json!([{"data": ok, "mime_type": "image/gif", "filename": "a\nb"}]),
                "attachments[0].filename must not contain control characters",
            ),
        ];
        for (attachments, expected) in cases {
            let body = with_attachments(attachments);
            let err = parse_value(&body).unwrap_err();
            assert!(
                err.detail.starts_with(expected),
                "expected {expected:?}, got {:?}",
                err.detail
            );
            assert_eq!(err.message_id.as_deref(), Some("m"));
        }

        // Text rules with attachments: whitespace only is refused, the length bound stays.
        let one = serde_json::json!([{"data": ok, "mime_type": "image/gif"}]);
        let mut body = with_attachments(one);
        body["text"] = "  ".into();
        assert!(parse_value(&body)
            .unwrap_err()
            .detail
            .contains("only whitespace"));
        body["text"] = "x".repeat(MAX_TEXT_CHARS + 1).into();
        assert!(parse_value(&body)
            .unwrap_err()
            .detail
            .contains("at most 10000"));
        body["text"] = 5.into();
        assert!(parse_value(&body)
            .unwrap_err()
            .detail
            .contains("text must be a string"));
    }

    #[test]
    fn inline_data_at_the_limit_is_accepted() {
        let data = BASE64.encode(vec![7u8; MAX_INLINE_DATA_BYTES as usize]);
        let body = with_attachments(serde_json::json!([{"data": data, "mime_type": "image/jpeg"}]));
        let reply = parse_value(&body).unwrap();
        let AttachmentSource::Data(bytes) = &reply.attachments[0].source else {
            panic!()
        };
        assert_eq!(bytes.len() as u64, MAX_INLINE_DATA_BYTES);
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        let url = Url::parse("https://cdn.example.com:8443/media/a.png?X-Amz-Signature=abc#frag")
            .unwrap();
        assert_eq!(
            redact_url(&url),
            "https://cdn.example.com:8443/media/a.png?…"
        );
        let url = Url::parse("https://cdn.example.com/a.png").unwrap();
        assert_eq!(redact_url(&url), "https://cdn.example.com/a.png");
    }

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(format_bytes(900), "900 bytes");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(5 * MIB), "5 MiB");
        assert_eq!(format_bytes(6_500_000), "6.2 MiB");
    }

    fn schema() -> jsonschema::Validator {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/schemas/outgoing-reply.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let schema: Value = serde_json::from_str(&text).unwrap();
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap()
    }

    /// The schema is what CRM developers read; the parser is what the bridge
    /// does. Each body here is accepted by both or refused by both.
    #[test]
    fn the_schema_and_the_parser_agree() {
        let validator = schema();
        let gif = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
        let base = serde_json::json!({"message_id":"m","recipient_id":"1"});
        let with = |changes: Value| {
            let mut body = base.clone();
            for (key, value) in changes.as_object().unwrap() {
                body[key] = value.clone();
            }
            body
        };
        let att = |a: Value| with(serde_json::json!({ "attachments": [a] }));
        let bodies = vec![
            with(serde_json::json!({"text":"Hi"})),
            with(serde_json::json!({"text":""})),
            with(serde_json::json!({"text":"  "})),
            with(serde_json::json!({"text":null})),
            with(serde_json::json!({})),
            with(serde_json::json!({"text":"x".repeat(MAX_TEXT_CHARS + 1)})),
            with(serde_json::json!({"text":"Hi","attachments":null})),
            with(serde_json::json!({"text":"Hi","attachments":[]})),
            with(serde_json::json!({"attachments":[]})),
            with(serde_json::json!({"attachments":{}})),
            with(
                serde_json::json!({"text":"Hi","attachments":[{"data":gif,"mime_type":"image/gif"}]}),
            ),
            with(
                serde_json::json!({"text":"","attachments":[{"data":gif,"mime_type":"image/gif"}]}),
            ),
            with(
                serde_json::json!({"text":" ","attachments":[{"data":gif,"mime_type":"image/gif"}]}),
            ),
            with(
                serde_json::json!({"text":null,"attachments":[{"data":gif,"mime_type":"image/gif"}]}),
            ),
            with(
                serde_json::json!({"attachments":vec![serde_json::json!({"data":gif,"mime_type":"image/gif"}); 10]}),
            ),
            with(
                serde_json::json!({"attachments":vec![serde_json::json!({"data":gif,"mime_type":"image/gif"}); 11]}),
            ),
            with(serde_json::json!({"attachments":[1]})),
            att(
                serde_json::json!({"data":gif,"mime_type":"image/gif","filename":"dot.gif","extra":true}),
            ),
            att(serde_json::json!({"data":gif,"mime_type":"image/gif","url":null,"filename":null})),
            att(serde_json::json!({"data":gif})),
            att(serde_json::json!({"data":gif,"mime_type":null})),
            att(serde_json::json!({"data":gif,"mime_type":"application/pdf"})),
            att(serde_json::json!({"data":gif,"mime_type":"IMAGE/GIF"})),
            att(serde_json::json!({"mime_type":"image/gif"})),
            att(serde_json::json!({"url":null,"data":null,"mime_type":"image/gif"})),
            att(
                serde_json::json!({"url":"https://a.example/x.gif","data":gif,"mime_type":"image/gif"}),
            ),
            att(serde_json::json!({"data":"","mime_type":"image/gif"})),
            att(serde_json::json!({"data":"R0lGOD","mime_type":"image/gif"})),
            att(serde_json::json!({"data":"R0lGODlh","mime_type":"image/gif"})),
            att(serde_json::json!({"data":"R0lGODk=","mime_type":"image/gif"})),
            att(serde_json::json!({"data":"R0lGODl=","mime_type":"image/gif"})),
            att(serde_json::json!({"data":"R0lGOA==","mime_type":"image/gif"})),
            att(serde_json::json!({"data":"R0lGOB==","mime_type":"image/gif"})),
            att(serde_json::json!({"data":"R0lG\nODlh","mime_type":"image/gif"})),
            att(serde_json::json!({"data":"R0lG_-lh","mime_type":"image/gif"})),
            att(serde_json::json!({"data":7,"mime_type":"image/gif"})),
            att(
                serde_json::json!({"url":"https://cdn.example.com/a.png?sig=1","mime_type":"image/png"}),
            ),
            att(serde_json::json!({"url":"HTTPS://cdn.example.com/a.png","mime_type":"image/png"})),
            att(serde_json::json!({"url":"http://cdn.example.com:8080","mime_type":"image/png"})),
            att(serde_json::json!({"url":"https://[::1]/a.png","mime_type":"image/png"})),
            att(serde_json::json!({"url":"ftp://cdn.example.com/a.png","mime_type":"image/png"})),
            att(serde_json::json!({"url":"cdn.example.com/a.png","mime_type":"image/png"})),
            att(
                serde_json::json!({"url":"https://u:p@cdn.example.com/a.png","mime_type":"image/png"}),
            ),
            att(
                serde_json::json!({"url":"https://cdn.example.com/a b.png","mime_type":"image/png"}),
            ),
            att(
                serde_json::json!({"url":format!("https://a.example/{}", "x".repeat(MAX_URL_CHARS)),"mime_type":"image/png"}),
            ),
            att(serde_json::json!({"url":5,"mime_type":"image/png"})),
            att(serde_json::json!({"data":gif,"mime_type":"image/gif","filename":""})),
            att(serde_json::json!({"data":gif,"mime_type":"image/gif","filename":"é".repeat(255)})),
            att(serde_json::json!({"data":gif,"mime_type":"image/gif","filename":"a".repeat(256)})),
            att(serde_json::json!({"data":gif,"mime_type":"image/gif","filename":"a\tb"})),
            att(serde_json::json!({"data":gif,"mime_type":"image/gif","filename":"a\u{85}b"})),
            att(
                serde_json::json!({"data":gif,"mime_type":"image/gif","filename":"../../etc/passwd"}),
            ),
            att(serde_json::json!({"data":gif,"mime_type":"image/gif","filename":3})),
            att(
                serde_json::json!({"data":BASE64.encode(vec![1u8; 5 * MIB as usize]),"mime_type":"video/mp4"}),
            ),
            // One length cannot agree: 6,990,508 characters without padding
            // decode to 5 MiB + 1 byte, which the schema's maxLength cannot
            // tell from 5 MiB with padding. Here is the next size up.
            att(
                serde_json::json!({"data":BASE64.encode(vec![1u8; 5 * MIB as usize + 3]),"mime_type":"video/mp4"}),
            ),
        ];
        for body in bodies {
            let schema_ok = validator.is_valid(&body);
            let parsed = parse_value(&body);
            let shown: String = body.to_string().chars().take(300).collect();
            assert_eq!(
                schema_ok,
                parsed.is_ok(),
                "schema says {schema_ok}, parser says {:?} for {shown}",
                parsed.map(|_| ()).map_err(|e| e.detail)
            );
        }
    }

    #[test]
    fn the_schemas_examples_parse() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/schemas/outgoing-reply.json"
        );
        let document: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let validator = schema();
        let examples = document["examples"].as_array().unwrap();
        assert!(examples.iter().any(|e| e.get("attachments").is_some()));
        for example in examples {
            assert!(validator.is_valid(example), "{example}");
            parse_value(example).unwrap_or_else(|e| panic!("{example}: {}", e.detail));
        }
    }

    /// Found by the property tests: a refusal quoted the whole wrong value, so a 20,000
    /// character id made a 20 KB detail for the dead letter's header and the status event.
    #[test]
    fn a_refusal_quotes_only_the_start_of_a_long_value() {
        let long = "x".repeat(20_000);
        let bodies = [
            serde_json::json!({"message_id":"m","recipient_id":long,"text":"Hi"}),
            serde_json::json!({"message_id":"m","conversation_id":long,"text":"Hi"}),
            serde_json::json!({"message_id":"m","channel":long,"recipient_id":"1","text":"Hi"}),
            serde_json::json!({"message_id":"m","recipient_id":"1","attachments":[{"data":"R0lGODlh","mime_type":long}]}),
        ];
        for body in bodies {
            let err = parse_value(&body).unwrap_err();
            assert!(err.detail.len() < 400, "{}", err.detail);
            assert!(err.detail.contains("(20000 bytes)"), "{}", err.detail);
        }
    }

    #[test]
    fn text_length_counts_characters_not_bytes() {
        let text = "é".repeat(MAX_TEXT_CHARS);
        let body = format!(r#"{{"message_id":"m","recipient_id":"1","text":"{text}"}}"#);
        assert!(parse(&body).is_ok());
    }

    #[test]
    fn status_events_serialize_to_the_contract() {
        let sent = StatusEvent::Sent {
            message_id: "m1".into(),
            channel: "acme".into(),
            dm_event_id: "1585800613253812228".into(),
            dm_event_ids: vec!["1585800613253812228".into()],
            conversation_id: "1-2".into(),
            sent_at: DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
                .unwrap()
                .into(),
        };
        assert_eq!(
            serde_json::to_value(&sent).unwrap(),
            serde_json::json!({"type":"message.sent","message_id":"m1","channel":"acme","dm_event_id":"1585800613253812228","dm_event_ids":["1585800613253812228"],"conversation_id":"1-2","sent_at":"2026-11-25T10:00:00.000Z"})
        );
        assert_eq!(sent.routing_key(), "acme.message.sent");
        assert_eq!(sent.amqp_message_id(), "acme:m1:sent");
        let failed = StatusEvent::Failed {
            message_id: "m1".into(),
            channel: "acme".into(),
            reason: FailureReason::CreditsExhausted,
            detail: "no credits".into(),
            attempts: 2,
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap()["reason"],
            "credits_exhausted"
        );
    }
}
