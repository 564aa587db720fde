//! A reply's attachments turned into local bytes, ready to upload to X.
//!
//! Every attachment is prepared before anything is sent, so a bad one makes
//! the whole reply `invalid_message` before any request to X (a half-sent
//! reply could not be retried without repeating DMs). Inline data is already
//! decoded by the parser; a URL is downloaded by [`MediaFetcher`] under the
//! rules of `[outbound.media]`: allowed hosts only, no internal addresses, no
//! redirects, within the size limit and the timeout. Downloads are spooled to
//! an unnamed temporary file, so a 512 MiB video never sits in memory.
//!
//! - [`address`]: which IP addresses are out of reach, and why.
//! - [`fetch`]: the download itself.

pub mod address;
pub mod fetch;

use std::io::SeekFrom;
use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use xbridge_core::contract::{format_bytes, MediaCategory};

pub use address::{classify, AddressClass};
pub use fetch::{FetcherInitError, MediaFetcher};

/// One attachment's bytes, validated and local, with what X's upload needs to
/// know about them.
#[derive(Debug)]
pub struct PreparedMedia {
    /// Position in the reply's `attachments`: the DM order, and what details name.
    pub index: usize,
    /// The declared MIME type, for the upload's `media_type`.
    pub mime_type: String,
    /// X's media category, for the upload's `media_category`.
    pub category: MediaCategory,
    /// Exact size, for the upload's `total_bytes`.
    pub total_bytes: u64,
    /// The CRM's display name, if any.
    pub filename: Option<String>,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// Inline data: small by contract, already in memory.
    Memory { bytes: Vec<u8>, position: usize },
    /// A download, in an unnamed temporary file that vanishes when dropped.
    Spooled(tokio::fs::File),
}

impl PreparedMedia {
    /// Media given inline: no I/O needed.
    pub fn from_bytes(
        index: usize,
        mime_type: String,
        category: MediaCategory,
        filename: Option<String>,
        bytes: Vec<u8>,
    ) -> PreparedMedia {
        PreparedMedia {
            index,
            mime_type,
            category,
            total_bytes: bytes.len() as u64,
            filename,
            body: Body::Memory { bytes, position: 0 },
        }
    }

    /// Whether the bytes are in a spool file rather than memory.
    pub fn is_spooled(&self) -> bool {
        matches!(self.body, Body::Spooled(_))
    }

    /// The next at most `max_len` bytes, `None` at the end: X's upload takes
    /// media in appended segments. Only the last chunk is shorter than `max_len`.
    pub async fn read_chunk(&mut self, max_len: usize) -> std::io::Result<Option<Vec<u8>>> {
        match &mut self.body {
            Body::Memory { bytes, position } => {
                if *position >= bytes.len() {
                    return Ok(None);
                }
                let end = bytes.len().min(*position + max_len.max(1));
                let chunk = bytes[*position..end].to_vec();
                *position = end;
                Ok(Some(chunk))
            }
            Body::Spooled(file) => {
                let mut chunk = vec![0; max_len.max(1)];
                let mut filled = 0;
                while filled < chunk.len() {
                    let read = file.read(&mut chunk[filled..]).await?;
                    if read == 0 {
                        break;
                    }
                    filled += read;
                }
                chunk.truncate(filled);
                Ok((filled > 0).then_some(chunk))
            }
        }
    }

    /// Back to the first byte, so a failed upload can start over from the
    /// same bytes without downloading them again.
    pub async fn rewind(&mut self) -> std::io::Result<()> {
        match &mut self.body {
            Body::Memory { position, .. } => *position = 0,
            Body::Spooled(file) => {
                file.seek(SeekFrom::Start(0)).await?;
            }
        }
        Ok(())
    }

    /// All the bytes from the start (tests and small media); rewinds first.
    pub async fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        self.rewind().await?;
        let mut all = Vec::with_capacity(self.total_bytes as usize);
        while let Some(chunk) = self.read_chunk(1024 * 1024).await? {
            all.extend_from_slice(&chunk);
        }
        self.rewind().await?;
        Ok(all)
    }
}

/// The bytes from the current position, so X's chunked upload can read a
/// prepared attachment like any stream ([`PreparedMedia::rewind`] first to
/// start over).
impl tokio::io::AsyncRead for PreparedMedia {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().body {
            Body::Memory { bytes, position } => {
                let rest = &bytes[(*position).min(bytes.len())..];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                *position += n;
                std::task::Poll::Ready(Ok(()))
            }
            Body::Spooled(file) => std::pin::Pin::new(file).poll_read(cx, buf),
        }
    }
}

/// Which bound a download broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLimit {
    /// X's limit for the media category.
    Category(MediaCategory),
    /// `outbound.media.max_download_bytes`, lower than the category's.
    Configured,
}

/// Why an attachment could not be prepared. Every variant but
/// [`MediaError::Spool`] is the reply's fault (`invalid_message`); the
/// message is the dead letter's detail: it names `attachments[i]` and the
/// host, and shows URLs without their query string (where signed URLs keep
/// their tokens).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// An `http://` URL while only https is allowed.
    #[error("attachments[{index}].url must be https: {url} (outbound.media.allow_http is off)")]
    SchemeNotAllowed {
        /// Attachment index.
        index: usize,
        /// The URL, redacted.
        url: String,
    },
    /// The host is not on `outbound.media.allowed_hosts`.
    #[error("attachments[{index}].url: host {host} is not on outbound.media.allowed_hosts{}",
        if *.list_empty { " (the list is empty, so the bridge downloads no URL; send the file as data or configure the host)" } else { "" })]
    HostNotAllowed {
        /// Attachment index.
        index: usize,
        /// The URL's host.
        host: String,
        /// Whether the allow-list is empty (then no URL is ever fetched).
        list_empty: bool,
    },
    /// The host is, or resolves only to, an address in a refused range.
    #[error("attachments[{index}].url: host {host} {} {address}, {class}; the bridge does not download from internal networks",
        if .host.trim_matches(['[', ']']) == .address.to_string() { "is" } else { "resolves to" })]
    AddressNotAllowed {
        /// Attachment index.
        index: usize,
        /// The URL's host.
        host: String,
        /// The refused address (the first one, when a name had several).
        address: IpAddr,
        /// Why it is refused.
        class: AddressClass,
    },
    /// The host name does not resolve.
    #[error("attachments[{index}].url: host {host} does not resolve: {detail}")]
    Resolve {
        /// Attachment index.
        index: usize,
        /// The URL's host.
        host: String,
        /// The resolver's error.
        detail: String,
    },
    /// The server answered with a redirect, which the bridge does not follow
    /// (the target could be anywhere, including inside the network).
    #[error("attachments[{index}].url ({url}) redirects (HTTP {status}) to {location}; the bridge does not follow redirects, give the final URL")]
    Redirect {
        /// Attachment index.
        index: usize,
        /// The URL, redacted.
        url: String,
        /// The 3xx status.
        status: u16,
        /// The `Location` header, redacted, or `(no location)`.
        location: String,
    },
    /// The server answered with a status other than 2xx or 3xx.
    #[error("attachments[{index}].url ({url}) answered HTTP {status}")]
    Status {
        /// Attachment index.
        index: usize,
        /// The URL, redacted.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The file is larger than allowed, by `Content-Length` or while streaming.
    #[error("attachments[{index}].url ({url}) is {}; {}",
        match .size { Some(size) => format!("{} ({size} bytes)", format_bytes(*size)), None => format!("more than {}", format_bytes(*.limit)) },
        match .limit_by { SizeLimit::Category(c) => format!("{c} media are at most {}", format_bytes(*.limit)), SizeLimit::Configured => format!("outbound.media.max_download_bytes allows at most {}", format_bytes(*.limit)) })]
    TooLarge {
        /// Attachment index.
        index: usize,
        /// The URL, redacted.
        url: String,
        /// The announced size, when `Content-Length` gave it; `None` when the
        /// stream was cut off at the limit.
        size: Option<u64>,
        /// The limit broken, in bytes.
        limit: u64,
        /// Which limit it is.
        limit_by: SizeLimit,
    },
    /// The server sent no bytes.
    #[error("attachments[{index}].url ({url}) returned an empty body")]
    Empty {
        /// Attachment index.
        index: usize,
        /// The URL, redacted.
        url: String,
    },
    /// The download outlasted `outbound.media.download_timeout`.
    #[error("attachments[{index}].url ({url}) did not download within {timeout:?}")]
    Timeout {
        /// Attachment index.
        index: usize,
        /// The URL, redacted.
        url: String,
        /// The configured bound.
        timeout: Duration,
    },
    /// Connecting or reading failed (refused connection, TLS, reset).
    #[error("attachments[{index}].url ({url}) could not be downloaded: {detail}")]
    Download {
        /// Attachment index.
        index: usize,
        /// The URL, redacted.
        url: String,
        /// What failed, without the URL.
        detail: String,
    },
    /// The bridge could not write the download to its spool directory: the
    /// bridge's problem (disk full, permissions), not the reply's.
    #[error("attachments[{index}]: cannot spool the download: {source}")]
    Spool {
        /// Attachment index.
        index: usize,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl MediaError {
    /// The dead letter's `detail` (and the `message.failed` detail).
    pub fn detail(&self) -> String {
        self.to_string()
    }

    /// Whether the reply itself is at fault, so it is dead-lettered as
    /// `invalid_message`. `false` only for [`MediaError::Spool`], a local
    /// failure worth retrying like any transient one.
    pub fn is_invalid_message(&self) -> bool {
        !matches!(self, MediaError::Spool { .. })
    }

    /// The index of the attachment in the reply.
    pub fn index(&self) -> usize {
        match self {
            MediaError::SchemeNotAllowed { index, .. }
            | MediaError::HostNotAllowed { index, .. }
            | MediaError::AddressNotAllowed { index, .. }
            | MediaError::Resolve { index, .. }
            | MediaError::Redirect { index, .. }
            | MediaError::Status { index, .. }
            | MediaError::TooLarge { index, .. }
            | MediaError::Empty { index, .. }
            | MediaError::Timeout { index, .. }
            | MediaError::Download { index, .. }
            | MediaError::Spool { index, .. } => *index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inline_media_reads_in_chunks_and_rewinds() {
        let mut media = PreparedMedia::from_bytes(
            0,
            "image/png".into(),
            MediaCategory::DmImage,
            None,
            b"abcdefg".to_vec(),
        );
        assert_eq!(media.total_bytes, 7);
        assert!(!media.is_spooled());
        assert_eq!(media.read_chunk(3).await.unwrap().unwrap(), b"abc");
        assert_eq!(media.read_chunk(3).await.unwrap().unwrap(), b"def");
        assert_eq!(media.read_chunk(3).await.unwrap().unwrap(), b"g");
        assert_eq!(media.read_chunk(3).await.unwrap(), None);
        media.rewind().await.unwrap();
        assert_eq!(media.read_all().await.unwrap(), b"abcdefg");
    }

    #[tokio::test]
    async fn prepared_media_reads_as_a_stream_from_where_it_stands() {
        use tokio::io::AsyncReadExt as _;
        let mut media = PreparedMedia::from_bytes(
            0,
            "image/png".into(),
            MediaCategory::DmImage,
            None,
            b"abcdefg".to_vec(),
        );
        let mut all = Vec::new();
        media.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcdefg");
        media.rewind().await.unwrap();
        let mut head = [0; 2];
        media.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"ab");
    }

    #[test]
    fn details_name_the_attachment_and_the_limit() {
        let too_large = MediaError::TooLarge {
            index: 2,
            url: "https://cdn.example.com/a.png?…".into(),
            size: Some(6_500_000),
            limit: 5 * 1024 * 1024,
            limit_by: SizeLimit::Category(MediaCategory::DmImage),
        };
        assert_eq!(
            too_large.detail(),
            "attachments[2].url (https://cdn.example.com/a.png?…) is 6.2 MiB (6500000 bytes); dm_image media are at most 5 MiB"
        );
        let streamed = MediaError::TooLarge {
            index: 0,
            url: "https://a.example/v.mp4".into(),
            size: None,
            limit: 1024 * 1024,
            limit_by: SizeLimit::Configured,
        };
        assert_eq!(
            streamed.detail(),
            "attachments[0].url (https://a.example/v.mp4) is more than 1 MiB; outbound.media.max_download_bytes allows at most 1 MiB"
        );
        let literal = MediaError::AddressNotAllowed {
            index: 1,
            host: "[::1]".into(),
            address: "::1".parse().unwrap(),
            class: AddressClass::Loopback,
        };
        assert_eq!(literal.detail(), "attachments[1].url: host [::1] is ::1, a loopback address; the bridge does not download from internal networks");
        let spool = MediaError::Spool {
            index: 0,
            source: std::io::Error::other("disk full"),
        };
        assert!(!spool.is_invalid_message());
        assert!(literal.is_invalid_message());
        assert_eq!(literal.index(), 1);
    }
}
