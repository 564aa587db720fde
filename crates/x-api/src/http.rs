//! The HTTP stack a process's X clients share.

use std::error::Error as _;
use std::fmt;

use crate::XError;

/// One connection pool and one TLS configuration for every X client of a process.
///
/// Each client built with [`crate::XClient::new`] or [`crate::WebhookClient::new`] gets an
/// HTTP client of its own, and building one is not cheap: reqwest reads and parses the
/// system's root certificates for every client it builds (even when X's URL is plain http),
/// and each keeps a connection pool of its own. The bridge builds two clients per channel
/// (outbound and inbound), so with a thousand channels that was two thousand copies of the
/// root store: 260 MiB resident instead of 52 (docs/benchmarks.md). All of them talk to
/// the same host, so [`crate::XClient::with_http`] and [`crate::WebhookClient::with_http`]
/// share one stack instead. Sharing changes nothing X sees: every request carries its own
/// account's signature, and rate limits are kept per account by each client's pacers, not per
/// connection.
///
/// Cheap to clone; clones share the pool. The stack has no timeout of its own: each client
/// sets its `request_timeout` on every request it makes.
#[derive(Clone)]
pub struct XHttp {
    client: reqwest::Client,
}

impl XHttp {
    /// Builds the stack: no redirects (a signed request must not be replayed elsewhere, and X
    /// does not redirect API calls) and xbridge's user agent.
    ///
    /// Fails with [`XError::Transient`] when the HTTP stack cannot start (TLS).
    pub fn new() -> Result<XHttp, XError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("xbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| XError::Transient {
                status: None,
                detail: format!("cannot set up the HTTP client: {}", error_chain(&error)),
            })?;
        Ok(XHttp { client })
    }

    /// The reqwest client; callers set the timeout on each request.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl fmt::Debug for XHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XHttp").finish_non_exhaustive()
    }
}

/// An error with its causes, since reqwest's own message rarely names the cause
/// ("error sending request"). Requests carry credentials only in a header, never in the URL,
/// so nothing here is secret.
pub fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
