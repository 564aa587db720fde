//! Downloading an attachment's URL, safely.
//!
//! The bridge fetches URLs the CRM names from inside the deployment's
//! network, so each download is held to `[outbound.media]`:
//!
//! - the scheme is https (http only with `allow_http`);
//! - the host is on `allowed_hosts` (an empty list refuses every URL);
//! - no connection goes to a loopback, private, link-local or other internal
//!   address ([`super::address`]), unless `allow_private_networks`: an IP
//!   literal is checked before the request, and a name is resolved by
//!   [`VettingResolver`], which hands the HTTP client only the addresses that
//!   passed. The client connects to exactly those, so a DNS answer that
//!   changes between the check and the connection (rebinding) cannot get in;
//! - no redirect is followed (its target could be anywhere) and no proxy is
//!   used (it would do the resolving);
//! - the size is held to the category's and the configured limit, from
//!   `Content-Length` before reading and again on every chunk while streaming;
//! - the whole download is bounded by `download_timeout`.
//!
//! No decompression is negotiated, so the bytes counted are the bytes kept.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::LOCATION;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use url::{Host, Url};
use xbridge_core::config::MediaSettings;
use xbridge_core::contract::{redact_url, AttachmentSource, MediaCategory, OutgoingAttachment};

use super::address::{classify, AddressClass};
use super::{Body, MediaError, PreparedMedia, SizeLimit};

/// The HTTP client could not be built (TLS set-up): a startup failure.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the media download client: {0}")]
pub struct FetcherInitError(#[source] reqwest::Error);

/// Prepares attachments under one `[outbound.media]` configuration; cheap to
/// share (one connection pool for all channels).
#[derive(Debug, Clone)]
pub struct MediaFetcher {
    settings: Arc<MediaSettings>,
    client: reqwest::Client,
}

impl MediaFetcher {
    /// A fetcher with its own HTTP client: no redirects, no proxy, and the
    /// vetting resolver.
    pub fn new(settings: MediaSettings) -> Result<MediaFetcher, FetcherInitError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!settings.allow_http)
            .dns_resolver(VettingResolver {
                allow_private_networks: settings.allow_private_networks,
            })
            .connect_timeout(settings.download_timeout)
            .user_agent(concat!("xbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(FetcherInitError)?;
        Ok(MediaFetcher {
            settings: Arc::new(settings),
            client,
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &MediaSettings {
        &self.settings
    }

    /// Every attachment of a reply, in order; the first refusal stops the
    /// rest, so nothing is sent to X for a reply with a bad attachment.
    pub async fn prepare_all(
        &self,
        attachments: &[OutgoingAttachment],
    ) -> Result<Vec<PreparedMedia>, MediaError> {
        let mut prepared = Vec::with_capacity(attachments.len());
        for (index, attachment) in attachments.iter().enumerate() {
            prepared.push(self.prepare(index, attachment).await?);
        }
        Ok(prepared)
    }

    /// One attachment's bytes: inline data as is, a URL downloaded to a spool
    /// file. `index` is its place in the reply, named in any refusal.
    pub async fn prepare(
        &self,
        index: usize,
        attachment: &OutgoingAttachment,
    ) -> Result<PreparedMedia, MediaError> {
        match &attachment.source {
            AttachmentSource::Data(bytes) => Ok(PreparedMedia::from_bytes(
                index,
                attachment.mime_type.clone(),
                attachment.category,
                attachment.filename.clone(),
                bytes.clone(),
            )),
            AttachmentSource::Url(url) => {
                let (file, total_bytes) = self.download(index, url, attachment.category).await?;
                Ok(PreparedMedia {
                    index,
                    mime_type: attachment.mime_type.clone(),
                    category: attachment.category,
                    total_bytes,
                    filename: attachment.filename.clone(),
                    body: Body::Spooled(file),
                })
            }
        }
    }

    /// Checks `url` against the rules, then streams it into a spool file,
    /// returned rewound with its size.
    async fn download(
        &self,
        index: usize,
        url: &Url,
        category: MediaCategory,
    ) -> Result<(tokio::fs::File, u64), MediaError> {
        let shown = redact_url(url);
        self.vet(index, url, &shown)?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let (limit, limit_by) = if self.settings.max_download_bytes < category.max_bytes() {
            (self.settings.max_download_bytes, SizeLimit::Configured)
        } else {
            (category.max_bytes(), SizeLimit::Category(category))
        };
        let started = Instant::now();
        tracing::debug!(index, host = %host, category = %category, limit, "downloading attachment");
        let timeout = self.settings.download_timeout;
        let result = tokio::time::timeout(
            timeout,
            self.stream_to_spool(index, url, &shown, limit, limit_by),
        )
        .await
        .unwrap_or(Err(MediaError::Timeout {
            index,
            url: shown.clone(),
            timeout,
        }));
        match &result {
            Ok((_, bytes)) => tracing::info!(
                index,
                host = %host,
                category = %category,
                bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "attachment downloaded"
            ),
            Err(e) => tracing::info!(index, host = %host, error = %e, "attachment refused"),
        }
        result
    }

    /// The checks that need no network: scheme, allow-list, IP literals.
    fn vet(&self, index: usize, url: &Url, shown: &str) -> Result<(), MediaError> {
        match url.scheme() {
            "https" => {}
            "http" if self.settings.allow_http => {}
            _ => {
                return Err(MediaError::SchemeNotAllowed {
                    index,
                    url: shown.to_owned(),
                })
            }
        }
        let host = url.host_str().unwrap_or_default();
        let allowed = &self.settings.allowed_hosts;
        if !allowed.iter().any(|pattern| pattern.matches(host)) {
            return Err(MediaError::HostNotAllowed {
                index,
                host: host.to_owned(),
                list_empty: allowed.is_empty(),
            });
        }
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(address) = literal.filter(|_| !self.settings.allow_private_networks) {
            if let Some(class) = classify(address) {
                return Err(MediaError::AddressNotAllowed {
                    index,
                    host: host.to_owned(),
                    address,
                    class,
                });
            }
        }
        Ok(())
    }

    /// Downloads `url` into a spool file, refusing a redirect, a non-2xx, and a body over
    /// `limit` (announced or as it arrives) or empty; the file rewound, and its size.
    async fn stream_to_spool(
        &self,
        index: usize,
        url: &Url,
        shown: &str,
        limit: u64,
        limit_by: SizeLimit,
    ) -> Result<(tokio::fs::File, u64), MediaError> {
        let host = url.host_str().unwrap_or_default();
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| request_error(index, host, shown, e))?;
        let download = Download {
            index,
            host,
            shown,
            limit,
            limit_by,
        };
        download.check_answer(url, &response)?;
        download
            .spool(response, self.settings.spool_dir.clone())
            .await
    }
}

/// One attachment's download as its refusals name it: which attachment, from which
/// host, its URL as shown, and the size limit and where that limit comes from.
struct Download<'a> {
    index: usize,
    host: &'a str,
    shown: &'a str,
    limit: u64,
    limit_by: SizeLimit,
}

impl Download<'_> {
    /// Refuses a redirect (with where it pointed, redacted), a non-2xx, and a body announced
    /// larger than the limit, before anything is read.
    fn check_answer(&self, url: &Url, response: &reqwest::Response) -> Result<(), MediaError> {
        let (index, shown) = (self.index, self.shown);
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| match url.join(l) {
                    Ok(target) => redact_url(&target),
                    Err(_) => "(an unreadable location)".to_owned(),
                })
                .unwrap_or_else(|| "(no location)".to_owned());
            return Err(MediaError::Redirect {
                index,
                url: shown.to_owned(),
                status: status.as_u16(),
                location,
            });
        }
        if !status.is_success() {
            return Err(MediaError::Status {
                index,
                url: shown.to_owned(),
                status: status.as_u16(),
            });
        }
        match response.content_length() {
            Some(length) if length > self.limit => Err(self.too_large(Some(length))),
            _ => Ok(()),
        }
    }

    /// Streams the body into an unnamed spool file chunk by chunk, stopping as soon as it
    /// passes the limit, so no more than the limit is ever written.
    async fn spool(
        &self,
        mut response: reqwest::Response,
        spool_dir: Option<PathBuf>,
    ) -> Result<(tokio::fs::File, u64), MediaError> {
        let index = self.index;
        let spool = |source| MediaError::Spool { index, source };
        let mut file = spool_file(spool_dir).await.map_err(spool)?;
        let mut total: u64 = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| request_error(index, self.host, self.shown, e))?
        {
            total += chunk.len() as u64;
            if total > self.limit {
                return Err(self.too_large(None));
            }
            file.write_all(&chunk).await.map_err(spool)?;
        }
        if total == 0 {
            return Err(MediaError::Empty {
                index,
                url: self.shown.to_owned(),
            });
        }
        file.flush().await.map_err(spool)?;
        file.rewind().await.map_err(spool)?;
        Ok((file, total))
    }

    /// The refusal of a body over the limit, with its announced size if it had one.
    fn too_large(&self, size: Option<u64>) -> MediaError {
        MediaError::TooLarge {
            index: self.index,
            url: self.shown.to_owned(),
            size,
            limit: self.limit,
            limit_by: self.limit_by,
        }
    }
}

/// An unnamed file in `dir` (or the system's temporary directory): it has no
/// path to leak or clean up, and the OS frees it when it is closed.
async fn spool_file(dir: Option<PathBuf>) -> std::io::Result<tokio::fs::File> {
    let file = tokio::task::spawn_blocking(move || match dir {
        Some(dir) => tempfile::tempfile_in(dir),
        None => tempfile::tempfile(),
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(file))
}

/// A failed request as a refusal: the resolver's own verdict when it made
/// one, otherwise the error without its URL (which could carry a token).
fn request_error(index: usize, host: &str, shown: &str, error: reqwest::Error) -> MediaError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<RefusedAddress>() {
            return MediaError::AddressNotAllowed {
                index,
                host: host.to_owned(),
                address: refused.address,
                class: refused.class,
            };
        }
        if let Some(failed) = e.downcast_ref::<LookupFailed>() {
            return MediaError::Resolve {
                index,
                host: host.to_owned(),
                detail: failed.0.to_string(),
            };
        }
        source = e.source();
    }
    if error.is_timeout() {
        // Only the connect timeout can fire here; the overall bound is ours.
        return MediaError::Download {
            index,
            url: shown.to_owned(),
            detail: "connection timed out".into(),
        };
    }
    let error = error.without_url();
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        detail.push_str(": ");
        detail.push_str(&e.to_string());
        source = e.source();
    }
    MediaError::Download {
        index,
        url: shown.to_owned(),
        detail,
    }
}

/// Resolves host names for the download client and keeps only the addresses
/// downloads may reach: the client then connects to nothing else.
#[derive(Debug, Clone)]
pub struct VettingResolver {
    /// Pass every address (tests, trusted private media stores).
    pub allow_private_networks: bool,
}

/// Every address a name resolved to is out of reach.
#[derive(Debug, thiserror::Error)]
#[error("resolves to {address}, {class}")]
struct RefusedAddress {
    address: IpAddr,
    class: AddressClass,
}

/// The name did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LookupFailed(std::io::Error);

impl VettingResolver {
    /// The addresses of `host` the client may connect to; an error when there
    /// are none.
    pub async fn vetted_addresses(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(LookupFailed)?
            .collect();
        if self.allow_private_networks {
            return Ok(resolved);
        }
        let mut refused = None;
        let vetted: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| match classify(addr.ip()) {
                None => true,
                Some(class) => {
                    tracing::debug!(host, address = %addr.ip(), class = %class, "address refused for downloads");
                    refused.get_or_insert(RefusedAddress {
                        address: addr.ip(),
                        class,
                    });
                    false
                }
            })
            .collect();
        match (vetted.is_empty(), refused) {
            (false, _) => Ok(vetted),
            (true, Some(refused)) => Err(Box::new(refused)),
            (true, None) => Err(Box::new(LookupFailed(std::io::Error::other(
                "no addresses",
            )))),
        }
    }
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addrs = resolver.vetted_addresses(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}
