use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};

use super::*;
use crate::problems;

#[tokio::test]
async fn correctly_signed_send_is_accepted() {
    let h = harness().await;
    let answer = h.post(&with_participant(RECIPIENT), hello()).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(h.sim.sent_dms_for(h.user_id()).len(), 1);
    assert_eq!(
        h.sim.requests_for(h.user_id())[0].user_id.as_deref(),
        Some(h.user_id())
    );
}

#[tokio::test]
async fn tampered_requests_get_401_with_x_body() {
    let h = harness().await;
    let path = with_participant(RECIPIENT);
    let url = h.url(&path);

    // Signed for another recipient, sent to this one.
    let signed_elsewhere = h.authorization(&h.account, "POST", &h.url(&with_participant("42")));
    // Signed with the right keys but the wrong token secret.
    let wrong_secret = h.authorization(
        &Account {
            access_token_secret: "not-the-secret".into(),
            ..h.account.clone()
        },
        "POST",
        &url,
    );
    // Signed for a query string that is not sent.
    let signed_with_query = h.authorization(&h.account, "POST", &h.url(&format!("{path}?extra=1")));
    // Signed as GET, sent as POST.
    let signed_as_get = h.authorization(&h.account, "GET", &url);
    // Signed for 127.0.0.1, but the client would send another Host.
    let signed_for_other_host = {
        let mut other = url.clone();
        other.set_host(Some("localhost")).unwrap();
        h.authorization(&h.account, "POST", &other)
    };
    let stale = oauth::authorization_header(
        "POST",
        &url,
        &[],
        &h.account,
        "stale-nonce",
        h.clock.now().timestamp() - 301,
    );
    let unknown_account = h.authorization(&Account::generate("stranger"), "POST", &url);
    let garbage = [
        "OAuth".to_string(),
        "OAuth oauth_consumer_key=\"x\"".to_string(),
        "Basic dXNlcjpwYXNz".to_string(),
        "Bearer nope".to_string(),
        "OAuth \"unterminated".to_string(),
        format!("{signed_elsewhere}, oauth_nonce=\"twice\""),
        signed_elsewhere.replace("HMAC-SHA1", "PLAINTEXT"),
    ];

    for authorization in [
        signed_elsewhere.clone(),
        wrong_secret,
        signed_with_query,
        signed_as_get,
        signed_for_other_host,
        stale,
        unknown_account,
    ]
    .into_iter()
    .chain(garbage)
    {
        let answer = h.post_with_authorization(&url, &authorization).await;
        assert_eq!(answer.status, 401, "{authorization}: {}", answer.body);
        assert_eq!(answer.body, problems::UNAUTHORIZED);
        assert!(answer.headers.get("x-rate-limit-remaining").is_none());
    }

    let no_header = h
        .send(
            h.client
                .post(url.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(hello()),
        )
        .await;
    assert_eq!(
        (no_header.status, no_header.body.as_str()),
        (401, problems::UNAUTHORIZED)
    );

    assert!(h.sim.sent_dms().is_empty());
    let requests = h.sim.requests();
    assert!(requests
        .iter()
        .all(|r| r.status == 401 && r.user_id.is_none()));
    assert_eq!(h.sim.counters().unauthorized, requests.len() as u64);
}

#[tokio::test]
async fn replayed_nonce_gets_401() {
    let h = harness().await;
    let url = h.url(&with_participant(RECIPIENT));
    let authorization = h.authorization(&h.account, "POST", &url);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let answer = h.post_with_authorization(&url, &authorization).await;
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [201, 401]);
    assert_eq!(h.sim.sent_dms().len(), 1);
}

#[tokio::test]
async fn text_is_not_signed_so_a_changed_body_still_passes() {
    // JSON bodies are outside the signature on X; a client that signs them would be caught
    // here by a 401 only if it also put body fields in the base string.
    let h = harness().await;
    let answer = h
        .post(
            &with_participant(RECIPIENT),
            r#"{"text":"any text at all ☃ + &"}"#,
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
}

#[tokio::test]
async fn app_only_bearer_token_is_refused_with_403() {
    let h = harness().await;
    let answer = h
        .send(
            h.client
                .post(h.url(&with_participant(RECIPIENT)))
                .bearer_auth(&h.account.bearer_token)
                .header(CONTENT_TYPE, "application/json")
                .body(hello()),
        )
        .await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.json()["type"],
        "https://api.twitter.com/2/problems/unsupported-authentication"
    );
    assert!(h.sim.sent_dms().is_empty());
}

#[tokio::test]
async fn users_me_names_the_account_and_its_access_level() {
    let h = harness().await;
    let url = h.url("/2/users/me");
    let authorization = h.authorization(&h.account, "GET", &url);
    let answer = h
        .send(h.client.get(url).header(AUTHORIZATION, authorization))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["data"]["id"], h.account.user_id);
    assert_eq!(answer.json()["data"]["username"], "acme_support");
    assert_eq!(answer.header("x-access-level"), "read-write-directmessages");
}

#[tokio::test]
async fn query_parameters_are_part_of_the_signature() {
    let h = harness().await;
    let url = h.url("/2/users/me?user.fields=receives_your_dm,name&x=a%20b+c");
    let authorization = h.authorization(&h.account, "GET", &url);
    let answer = h
        .send(h.client.get(url).header(AUTHORIZATION, authorization))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}
