//! Media downloads against the project's X simulator, which serves a DM's TON URL only to a
//! GET signed by one of the conversation's accounts.

use std::time::Duration;

use url::Url;
use x_simulator::{Account, Customer, Fault, MediaSpec, Simulator, SimulatorConfig};
use xbridge_x_api::{MediaDownloadError, UserCredentials, XClient, XClientConfig};

fn client(sim: &Simulator, account: &Account) -> XClient {
    XClient::new(
        XClientConfig {
            base_url: sim.base_url(),
            request_timeout: Duration::from_secs(10),
            ..XClientConfig::default()
        },
        UserCredentials {
            consumer_key: account.consumer_key.clone().into(),
            consumer_secret: account.consumer_secret.clone().into(),
            access_token: account.access_token.clone().into(),
            access_token_secret: account.access_token_secret.clone().into(),
        },
    )
    .unwrap()
}

/// Lets every URL be fetched.
fn any(_: &Url) -> bool {
    true
}

#[tokio::test]
async fn a_signed_download_returns_the_media_unread_and_errors_are_typed() {
    let account = Account::generate("acme_support");
    let sim = Simulator::start(SimulatorConfig {
        accounts: vec![account.clone()],
        ..SimulatorConfig::default()
    })
    .await
    .unwrap();
    let photo = MediaSpec {
        content: Some(b"\x89PNG not really".to_vec()),
        file_name: Some("OwIPMAFC.png".into()),
        ..MediaSpec::photo()
    };
    let event = sim.customer_dm(
        &account.user_id,
        &Customer::generate("jane"),
        "",
        Some(photo),
    );
    let url = Url::parse(&event.attachment.unwrap().url).unwrap();
    let client = client(&sim, &account);

    let response = client
        .download_media(&url, Duration::from_secs(5), &any)
        .await
        .expect("the participant's signature is accepted");
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        b"\x89PNG not really"
    );

    let missing = url.join("other.png").unwrap();
    assert!(matches!(
        client
            .download_media(&missing, Duration::from_secs(5), &any)
            .await,
        Err(MediaDownloadError::Refused { status: 404 })
    ));

    // A stranger to the conversation is refused, as on X.
    let stranger = Account::generate("stranger");
    sim.add_account(stranger.clone());
    assert!(matches!(
        self::client(&sim, &stranger)
            .download_media(&url, Duration::from_secs(5), &any)
            .await,
        Err(MediaDownloadError::Refused { status: 403 })
    ));

    sim.set_fault(&account.user_id, Fault::MediaTimeout { times: Some(1) });
    let error = client
        .download_media(&url, Duration::from_millis(200), &any)
        .await
        .unwrap_err();
    assert!(
        matches!(error, MediaDownloadError::Timeout { .. }),
        "{error}"
    );

    let ftp = Url::parse("ftp://ton.twitter.com/x").unwrap();
    assert!(matches!(
        client
            .download_media(&ftp, Duration::from_secs(1), &any)
            .await,
        Err(MediaDownloadError::InvalidUrl)
    ));
}

/// X's media host redirecting a signed download to another endpoint of the same
/// origin: the redirect is followed only if the caller's check lets its target
/// through, so a channel's signature never fetches `/2/users/me` for the media proxy.
#[tokio::test]
async fn a_redirect_is_followed_only_to_what_the_check_allows() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let asked = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/1.1/ton/data/dm/1/2/a.png",
            axum::routing::get(|| async {
                (axum::http::StatusCode::FOUND, [("location", "/2/users/me")])
            }),
        )
        .route(
            "/1.1/ton/data/dm/1/2/b.png",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [("location", "/1.1/ton/data/dm/1/2/c.png")],
                )
            }),
        )
        .route(
            "/1.1/ton/data/dm/1/2/c.png",
            axum::routing::get(|| async { "media" }),
        )
        .route(
            "/2/users/me",
            axum::routing::get({
                let asked = asked.clone();
                move || async move {
                    asked.fetch_add(1, Ordering::SeqCst);
                    "the account's profile"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let account = Account::generate("acme_support");
    let client = XClient::new(
        XClientConfig {
            base_url: Url::parse(&base).unwrap(),
            request_timeout: Duration::from_secs(10),
            ..XClientConfig::default()
        },
        UserCredentials {
            consumer_key: account.consumer_key.clone().into(),
            consumer_secret: account.consumer_secret.clone().into(),
            access_token: account.access_token.clone().into(),
            access_token_secret: account.access_token_secret.clone().into(),
        },
    )
    .unwrap();
    let media_only = |url: &Url| url.path().starts_with("/1.1/ton/data/dm/");

    let to_api = Url::parse(&format!("{base}/1.1/ton/data/dm/1/2/a.png")).unwrap();
    let error = client
        .download_media(&to_api, Duration::from_secs(5), &media_only)
        .await
        .unwrap_err();
    assert!(
        matches!(error, MediaDownloadError::Redirected { .. }),
        "{error}"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "the API endpoint was called"
    );

    // A redirect to other media is followed.
    let to_media = Url::parse(&format!("{base}/1.1/ton/data/dm/1/2/b.png")).unwrap();
    let response = client
        .download_media(&to_media, Duration::from_secs(5), &media_only)
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "media");

    // Nor is a URL the check refuses fetched in the first place.
    let api = Url::parse(&format!("{base}/2/users/me")).unwrap();
    assert!(matches!(
        client
            .download_media(&api, Duration::from_secs(5), &media_only)
            .await,
        Err(MediaDownloadError::InvalidUrl)
    ));
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}
