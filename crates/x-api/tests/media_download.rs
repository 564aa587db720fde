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
        .download_media(&url, Duration::from_secs(5))
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
            .download_media(&missing, Duration::from_secs(5))
            .await,
        Err(MediaDownloadError::Refused { status: 404 })
    ));

    // A stranger to the conversation is refused, as on X.
    let stranger = Account::generate("stranger");
    sim.add_account(stranger.clone());
    assert!(matches!(
        self::client(&sim, &stranger)
            .download_media(&url, Duration::from_secs(5))
            .await,
        Err(MediaDownloadError::Refused { status: 403 })
    ));

    sim.set_fault(&account.user_id, Fault::MediaTimeout { times: Some(1) });
    let error = client
        .download_media(&url, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(error, MediaDownloadError::Timeout { .. }),
        "{error}"
    );

    let ftp = Url::parse("ftp://ton.twitter.com/x").unwrap();
    assert!(matches!(
        client.download_media(&ftp, Duration::from_secs(1)).await,
        Err(MediaDownloadError::InvalidUrl)
    ));
}
