//! The attachment fetcher against a real HTTP server on 127.0.0.1: what it
//! downloads, and every way it refuses, without a request to X.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header::LOCATION, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use url::Url;
use xbridge_core::config::{HostPattern, MediaSettings};
use xbridge_core::contract::{AttachmentSource, MediaCategory, OutgoingAttachment};
use xbridge_outbound::media::{AddressClass, MediaError, MediaFetcher, SizeLimit};

/// The configured download cap in these tests.
const LIMIT: u64 = 64 * 1024;

fn payload() -> Vec<u8> {
    (0..40_000u32).map(|i| (i % 251) as u8).collect()
}

struct Server {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn count(State(requests): State<Arc<AtomicUsize>>, request: Request, next: Next) -> Response {
    requests.fetch_add(1, Ordering::SeqCst);
    next.run(request).await
}

async fn serve() -> Server {
    let requests = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/ok.png", get(|| async { payload() }))
        .route(
            "/redirect",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(LOCATION, "http://127.0.0.1:1/ok.png?token=s3cret")],
                )
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/empty", get(|| async { Vec::<u8>::new() }))
        // Content-Length announces more than the cap.
        .route("/big", get(|| async { vec![0u8; 2 * LIMIT as usize] }))
        .route("/six-mib", get(|| async { vec![0u8; 6 * 1024 * 1024] }))
        // No Content-Length (chunked) and no end: only the streaming count stops it.
        .route(
            "/endless",
            get(|| async {
                Body::from_stream(futures::stream::repeat_with(|| {
                    Ok::<_, Infallible>(vec![7u8; 8192])
                }))
            }),
        )
        // Chunked and finite, just over the cap.
        .route(
            "/chunked-big",
            get(|| async {
                let chunks = (0..(LIMIT / 4096 + 1)).map(|_| Ok::<_, Infallible>(vec![1u8; 4096]));
                Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route("/hang", get(std::future::pending::<&'static str>))
        .layer(middleware::from_fn_with_state(requests.clone(), count));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { addr, requests }
}

fn hosts(patterns: &[&str]) -> Vec<HostPattern> {
    patterns
        .iter()
        .map(|p| HostPattern::parse(p).unwrap())
        .collect()
}

/// Everything allowed, as for a test server on loopback.
fn local(allowed: &[&str]) -> MediaSettings {
    MediaSettings {
        allowed_hosts: hosts(allowed),
        allow_http: true,
        allow_private_networks: true,
        download_timeout: Duration::from_secs(10),
        max_download_bytes: LIMIT,
        spool_dir: None,
    }
}

fn image(url: &str) -> OutgoingAttachment {
    OutgoingAttachment {
        source: AttachmentSource::Url(Url::parse(url).unwrap()),
        mime_type: "image/png".into(),
        category: MediaCategory::DmImage,
        filename: Some("photo.png".into()),
    }
}

async fn refusal(settings: MediaSettings, url: &str) -> MediaError {
    let fetcher = MediaFetcher::new(settings).unwrap();
    match fetcher.prepare(3, &image(url)).await {
        Ok(media) => panic!("{url} was fetched: {media:?}"),
        Err(e) => {
            assert_eq!(e.index(), 3);
            assert!(e.detail().starts_with("attachments[3]"), "{}", e.detail());
            e
        }
    }
}

#[tokio::test]
async fn an_allowed_url_yields_exactly_the_served_bytes() {
    let server = serve().await;
    let spool = tempfile::tempdir().unwrap();
    let mut settings = local(&["127.0.0.1", "localhost"]);
    settings.spool_dir = Some(spool.path().to_owned());
    let fetcher = MediaFetcher::new(settings).unwrap();

    let mut media = fetcher
        .prepare(0, &image(&server.url("/ok.png?token=abc")))
        .await
        .unwrap();
    assert_eq!(media.index, 0);
    assert_eq!(media.mime_type, "image/png");
    assert_eq!(media.category, MediaCategory::DmImage);
    assert_eq!(media.filename.as_deref(), Some("photo.png"));
    assert_eq!(media.total_bytes, payload().len() as u64);
    assert!(media.is_spooled());
    assert_eq!(media.read_all().await.unwrap(), payload());
    // Chunks for X's appends, then again from the start for a retried upload.
    let mut chunks = Vec::new();
    while let Some(chunk) = media.read_chunk(16_384).await.unwrap() {
        chunks.push(chunk.len());
    }
    assert_eq!(chunks, vec![16_384, 16_384, 7_232]);
    media.rewind().await.unwrap();
    assert_eq!(media.read_chunk(4).await.unwrap().unwrap(), payload()[..4]);
    // The spool file has no name: nothing to clean up, nothing left after a crash.
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);

    // By name, through the vetting resolver.
    let by_name = format!("http://localhost:{}/ok.png", server.addr.port());
    let mut media = fetcher.prepare(1, &image(&by_name)).await.unwrap();
    assert_eq!(media.read_all().await.unwrap(), payload());

    // Inline data needs no request.
    let before = server.requests();
    let inline = OutgoingAttachment {
        source: AttachmentSource::Data(b"GIF89a".to_vec()),
        mime_type: "image/gif".into(),
        category: MediaCategory::DmGif,
        filename: None,
    };
    let prepared = fetcher
        .prepare_all(&[inline.clone(), image(&server.url("/ok.png"))])
        .await
        .unwrap();
    assert_eq!(prepared.len(), 2);
    assert!(!prepared[0].is_spooled());
    assert_eq!(prepared[0].total_bytes, 6);
    assert_eq!(prepared[1].index, 1);
    assert_eq!(server.requests(), before + 1);
}

#[tokio::test]
async fn the_default_configuration_downloads_nothing() {
    let server = serve().await;
    let settings = MediaSettings::default();
    let e = refusal(settings.clone(), &server.url("/ok.png")).await;
    assert!(matches!(e, MediaError::SchemeNotAllowed { .. }), "{e:?}");
    assert!(e.detail().contains("must be https"), "{}", e.detail());

    let https = format!("https://{}/ok.png", server.addr);
    for url in [
        https.as_str(),
        "https://10.0.0.1/a.png",
        "https://[::1]/a.png",
        "https://cdn.example.com/a.png?X-Amz-Signature=s3cret",
    ] {
        let e = refusal(settings.clone(), url).await;
        assert!(
            matches!(
                e,
                MediaError::HostNotAllowed {
                    list_empty: true,
                    ..
                }
            ),
            "{url}: {e:?}"
        );
        assert!(e.detail().contains("the list is empty"), "{}", e.detail());
        assert!(!e.detail().contains("s3cret"));
    }
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn internal_addresses_are_refused_even_when_their_host_is_allowed() {
    let server = serve().await;
    let mut settings = local(&[
        "127.0.0.1",
        "10.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "169.254.169.254",
        "localhost",
    ]);
    settings.allow_private_networks = false;
    let port = server.addr.port();
    for (url, class) in [
        (
            format!("http://127.0.0.1:{port}/ok.png"),
            AddressClass::Loopback,
        ),
        (
            format!("https://127.0.0.1:{port}/ok.png"),
            AddressClass::Loopback,
        ),
        ("https://10.0.0.1/a.png".to_owned(), AddressClass::Private),
        ("https://[::1]/a.png".to_owned(), AddressClass::Loopback),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            AddressClass::LinkLocal,
        ),
        // 127.0.0.1 written as one number is still 127.0.0.1.
        (
            format!("http://2130706433:{port}/ok.png"),
            AddressClass::Loopback,
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/ok.png"),
            AddressClass::Loopback,
        ),
        // A name is resolved and each address judged, before any connection.
        (
            format!("http://localhost:{port}/ok.png"),
            AddressClass::Loopback,
        ),
    ] {
        let e = refusal(settings.clone(), &url).await;
        match &e {
            MediaError::AddressNotAllowed { class: got, .. } => assert_eq!(*got, class, "{url}"),
            other => panic!("{url}: {other:?}"),
        }
        assert!(e.detail().contains("internal networks"), "{}", e.detail());
    }
    assert_eq!(server.requests(), 0, "no request reached the server");
}

#[tokio::test]
async fn a_host_off_the_allow_list_is_refused() {
    let server = serve().await;
    let e = refusal(
        local(&["cdn.example.com", "*.media.example.com"]),
        &server.url("/ok.png"),
    )
    .await;
    assert!(
        matches!(&e, MediaError::HostNotAllowed { host, list_empty: false, .. } if host == "127.0.0.1"),
        "{e:?}"
    );
    assert_eq!(
        e.detail(),
        "attachments[3].url: host 127.0.0.1 is not on outbound.media.allowed_hosts"
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn a_redirect_is_refused_not_followed() {
    let server = serve().await;
    let e = refusal(local(&["127.0.0.1"]), &server.url("/redirect?sig=abc")).await;
    assert!(
        matches!(e, MediaError::Redirect { status: 302, .. }),
        "{e:?}"
    );
    let detail = e.detail();
    assert!(
        detail.contains("redirects (HTTP 302) to http://127.0.0.1:1/ok.png?…"),
        "{detail}"
    );
    assert!(
        !detail.contains("s3cret") && !detail.contains("sig=abc"),
        "{detail}"
    );
    assert_eq!(server.requests(), 1, "the target was not requested");
}

#[tokio::test]
async fn an_error_status_or_an_empty_body_is_refused() {
    let server = serve().await;
    let e = refusal(local(&["127.0.0.1"]), &server.url("/missing")).await;
    assert!(matches!(e, MediaError::Status { status: 404, .. }), "{e:?}");
    assert!(e.detail().ends_with("answered HTTP 404"), "{}", e.detail());
    let e = refusal(local(&["127.0.0.1"]), &server.url("/empty")).await;
    assert!(matches!(e, MediaError::Empty { .. }), "{e:?}");
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused_by_length_or_while_streaming() {
    let server = serve().await;
    let e = refusal(local(&["127.0.0.1"]), &server.url("/big")).await;
    assert!(
        matches!(e, MediaError::TooLarge { size: Some(size), limit: LIMIT, limit_by: SizeLimit::Configured, .. } if size == 2 * LIMIT),
        "{e:?}"
    );
    for path in ["/chunked-big", "/endless"] {
        let e = refusal(local(&["127.0.0.1"]), &server.url(path)).await;
        assert!(
            matches!(
                e,
                MediaError::TooLarge {
                    size: None,
                    limit: LIMIT,
                    ..
                }
            ),
            "{path}: {e:?}"
        );
        assert!(
            e.detail().contains("is more than 64.0 KiB"),
            "{}",
            e.detail()
        );
    }

    // The category's limit applies when it is the lower one.
    let mut settings = local(&["127.0.0.1"]);
    settings.max_download_bytes = 512 * 1024 * 1024;
    let e = refusal(settings, &server.url("/six-mib")).await;
    assert!(
        matches!(e, MediaError::TooLarge { size: Some(size), limit_by: SizeLimit::Category(MediaCategory::DmImage), .. } if size == 6 * 1024 * 1024),
        "{e:?}"
    );
    assert!(
        e.detail()
            .ends_with("is 6 MiB (6291456 bytes); dm_image media are at most 5 MiB"),
        "{}",
        e.detail()
    );
}

#[tokio::test]
async fn a_server_that_never_answers_hits_the_timeout() {
    let server = serve().await;
    let mut settings = local(&["127.0.0.1"]);
    settings.download_timeout = Duration::from_millis(300);
    let e = refusal(settings, &server.url("/hang?token=s3cret")).await;
    assert!(matches!(e, MediaError::Timeout { .. }), "{e:?}");
    assert_eq!(
        e.detail(),
        format!(
            "attachments[3].url (http://{}/hang?…) did not download within 300ms",
            server.addr
        )
    );
}

#[tokio::test]
async fn a_connection_failure_is_a_refusal_without_the_query() {
    // Port 1 on loopback: nothing listens there.
    let e = refusal(
        local(&["127.0.0.1"]),
        "http://127.0.0.1:1/a.png?token=s3cret",
    )
    .await;
    assert!(matches!(e, MediaError::Download { .. }), "{e:?}");
    assert!(e.is_invalid_message());
    assert!(!e.detail().contains("s3cret"), "{}", e.detail());
}
