//! Every response body from X is read through [`read`], which stops at a size cap.
//!
//! reqwest's `bytes()` reads whatever the server sends: a 200 MB answer (a broken proxy, a
//! misrouted request, a hostile host on the way) grew the process from 52 MB to 475 MB. The
//! caps are far above anything X sends and far below what would hurt:
//!
//! - [`MAX_ANSWER_BYTES`] (16 MiB) for the body of a 2xx: the largest real answer is a page
//!   of 100 DM events with their expansions, under 2 MB even with 10,000-character texts
//!   written as `\u` escapes. A larger one is not read past the cap and is a
//!   [`XError::Transient`] naming the cap (for a DM send, a 2xx the bridge could not read:
//!   the DM may have gone out).
//! - [`MAX_ERROR_BODY_BYTES`] (64 KiB) for the body of any other status: X's problem
//!   documents are a few hundred bytes, and only the first 300 characters of a body that is
//!   not one are kept. A longer body is cut and classified from what was read (its status
//!   then decides), so an error stays the error it is.
//!
//! Media downloads are streamed by their callers under limits of their own and do not come
//! through here.

use reqwest::Response;

use crate::XError;

/// Largest 2xx body read from X.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Largest error body read from X.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A response body as far as it was read.
pub(crate) struct Body {
    /// The bytes read, at most the cap.
    pub(crate) bytes: Vec<u8>,
    /// The cap, when the body was longer (and not read to its end).
    pub(crate) cut_at: Option<usize>,
}

impl Body {
    /// The error for a 2xx answer that was longer than its cap, if it was (an error body
    /// that was cut is still classified from what was read).
    pub(crate) fn too_large(&self, status: u16, what: &str) -> Option<XError> {
        if !(200..300).contains(&status) {
            return None;
        }
        self.cut_at.map(|cap| {
            tracing::warn!(status, cap, what, "X's answer is larger than the bridge reads; not read further");
            XError::Transient {
                status: Some(status),
                detail: format!(
                    "X answered the {what} with HTTP {status} and a body larger than {cap} bytes; the bridge reads no further"
                ),
            }
        })
    }
}

/// Reads `response`'s body, at most [`MAX_ANSWER_BYTES`] of a 2xx and
/// [`MAX_ERROR_BODY_BYTES`] of anything else, chunk by chunk, so no more than the cap (and
/// one chunk) is ever held. A 2xx that announces a longer body is not read at all.
pub(crate) async fn read(response: Response) -> Result<Body, reqwest::Error> {
    let cap = if response.status().is_success() {
        MAX_ANSWER_BYTES
    } else {
        MAX_ERROR_BODY_BYTES
    };
    read_at_most(response, cap).await
}

/// [`read`] with a cap of the caller's, for answers known to be small whatever their status
/// (OAuth 2.0 token answers).
pub(crate) async fn read_at_most(
    mut response: Response,
    cap: usize,
) -> Result<Body, reqwest::Error> {
    if response.status().is_success()
        && response
            .content_length()
            .is_some_and(|length| length > cap as u64)
    {
        return Ok(Body {
            bytes: Vec::new(),
            cut_at: Some(cap),
        });
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Body {
                bytes,
                cut_at: Some(cap),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Body {
        bytes,
        cut_at: None,
    })
}
