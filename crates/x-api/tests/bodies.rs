//! Answers from X are read with a size cap: a server that sends a body without end (or
//! announces 200 MB) gets a typed error once the cap is reached, for every kind of request,
//! instead of a process that grows until the request timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use xbridge_x_api::{
    DmEventsRequest, DmTarget, UserCredentials, WebhookClient, WebhookError, XClient,
    XClientConfig, XError, MAX_ANSWER_BYTES,
};

/// A server that answers every request with `status` and then a chunked body that never
/// ends (until the client hangs up). `content_length`, when given, is announced instead of
/// chunking, and the body still does not end.
async fn endless(status: &'static str, content_length: Option<u64>) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let framing = match content_length {
                    Some(length) => format!("content-length: {length}"),
                    None => "transfer-encoding: chunked".to_owned(),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let data = vec![b'x'; 64 * 1024];
                let chunk = match content_length {
                    Some(_) => data,
                    None => [
                        format!("{:x}\r\n", data.len()).into_bytes(),
                        data,
                        b"\r\n".to_vec(),
                    ]
                    .concat(),
                };
                while socket.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    url
}

fn config(base_url: Url) -> XClientConfig {
    XClientConfig {
        base_url,
        // Long enough that only the cap can end these requests.
        request_timeout: Duration::from_secs(120),
        ..XClientConfig::default()
    }
}

fn credentials() -> UserCredentials {
    UserCredentials {
        consumer_key: "ck".into(),
        consumer_secret: "cs".into(),
        access_token: "1-at".into(),
        access_token_secret: "ats".into(),
    }
}

fn over_the_cap(error: &XError, status: u16) -> bool {
    matches!(error, XError::Transient { status: Some(s), detail }
        if *s == status && detail.contains(&format!("larger than {MAX_ANSWER_BYTES} bytes")))
}

#[tokio::test]
async fn an_endless_answer_to_a_dm_send_is_cut_at_the_cap() {
    let client = XClient::new(config(endless("201 Created", None).await), credentials()).unwrap();
    let error = client
        .send_dm(&DmTarget::Participant("42".into()), "hi")
        .await
        .unwrap_err();
    assert!(over_the_cap(&error, 201), "{error:?}");
}

#[tokio::test]
async fn an_announced_200_mb_answer_is_not_read() {
    let url = endless("200 OK", Some(200 * 1024 * 1024)).await;
    let client = XClient::new(config(url), credentials()).unwrap();
    let error = client
        .list_dm_events(&DmEventsRequest::first(100))
        .await
        .unwrap_err();
    assert!(over_the_cap(&error, 200), "{error:?}");
}

#[tokio::test]
async fn an_endless_read_answer_is_cut_at_the_cap() {
    let client = XClient::new(config(endless("200 OK", None).await), credentials()).unwrap();
    let error = client.get_user("42").await.unwrap_err();
    assert!(over_the_cap(&error, 200), "{error:?}");
}

#[tokio::test]
async fn an_endless_error_body_is_cut_and_the_error_keeps_its_status() {
    let url = endless("503 Service Unavailable", None).await;
    let client = XClient::new(config(url), credentials()).unwrap();
    let error = client
        .send_dm(&DmTarget::Participant("42".into()), "hi")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, XError::Transient { status: Some(503), detail } if detail.chars().count() <= 301),
        "{error:?}"
    );
    let url = endless("402 Payment Required", None).await;
    let client = XClient::new(config(url), credentials()).unwrap();
    let error = client
        .send_dm(&DmTarget::Participant("42".into()), "hi")
        .await
        .unwrap_err();
    assert!(
        matches!(error, XError::CreditsExhausted { status: 402, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_endless_answer_to_a_webhook_call_is_cut_at_the_cap() {
    let client = WebhookClient::new(
        config(endless("200 OK", None).await),
        "bearer".to_owned().into(),
        credentials().into(),
    )
    .unwrap();
    let error = client.list_webhooks().await.unwrap_err();
    assert!(
        matches!(&error, WebhookError::Other(error) if over_the_cap(error, 200)),
        "{error:?}"
    );
}
