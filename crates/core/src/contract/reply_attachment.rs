//! The attachments of a reply (`attachments` in `docs/schemas/outgoing-reply.json`):
//! media files the CRM sends with a reply, each given by `url` or inline `data`, of a
//! MIME type X accepts in DMs ([`SUPPORTED_MIME_TYPES`], each in one
//! [`MediaCategory`], defined once by the X client and re-exported here).
//!
//! Every refusal names the field as `attachments[i].<field>`; it becomes the `detail`
//! of the dead letter and of the `message.failed` event.

use base64::Engine as _;
use serde_json::Value;
use url::Url;

pub use xbridge_x_api::{MediaCategory, SUPPORTED_MIME_TYPES};

use crate::contract::json_kind::kind;
use crate::excerpt::quoted;

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
pub(super) const MIB: u64 = 1024 * 1024;

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

/// Canonical base64 (RFC 4648 section 4, padded): what the schema's pattern
/// describes, so the two agree on what is valid.
pub(super) const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The `attachments` field: absent, null or an array of at most
/// [`MAX_ATTACHMENTS`] attachment objects.
pub(super) fn attachments(
    object: &serde_json::Map<String, Value>,
) -> Result<Vec<OutgoingAttachment>, String> {
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
    let field = |name: &str| string_field(object, i, name);
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
        check_filename(i, name)?;
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

/// An optional string field of attachment `i`; any other JSON type is
/// refused rather than read as absent.
fn string_field<'a>(
    object: &'a serde_json::Map<String, Value>,
    i: usize,
    name: &str,
) -> Result<Option<&'a String>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "attachments[{i}].{name} must be a string, not {}",
            kind(other)
        )),
    }
}

/// A filename X shows the customer: bounded, and without control
/// characters that could disguise it.
fn check_filename(i: usize, name: &str) -> Result<(), String> {
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
    Ok(())
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
