//! OAuth 2.0 user context: the PKCE flow, Bearer user tokens on the DM routes with X's scope
//! checks, expiry, refresh-token rotation and revocation.

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use sha2::{Digest as _, Sha256};

use super::*;
use crate::{problems, Customer, MediaSpec, OAuth2Client, OAuth2Tokens};

const DM_SCOPES: &[&str] = &[
    "dm.read",
    "dm.write",
    "tweet.read",
    "users.read",
    "offline.access",
];

impl Harness {
    /// A public OAuth 2.0 client acting for the harness account.
    fn public_client(&self) -> OAuth2Client {
        let client = OAuth2Client::generate(self.user_id(), false);
        self.sim.add_oauth2_client(client.clone());
        client
    }

    async fn with_bearer(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> Answer {
        let mut request = self
            .client
            .request(method, self.url(path))
            .header(AUTHORIZATION, format!("Bearer {token}"));
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_owned());
        }
        self.send(request).await
    }

    async fn send_with_bearer(&self, token: &str) -> Answer {
        self.with_bearer(
            reqwest::Method::POST,
            &with_participant(RECIPIENT),
            token,
            Some(hello()),
        )
        .await
    }

    /// `POST /2/oauth2/token` with `form`, as a public client (or with `basic`).
    async fn token(&self, form: &[(&str, &str)], basic: Option<&OAuth2Client>) -> Answer {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = self
            .client
            .post(self.url("/2/oauth2/token"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        if let Some(client) = basic {
            let pair = format!(
                "{}:{}",
                client.client_id,
                client.client_secret.as_deref().unwrap_or_default()
            );
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            request = request.header(AUTHORIZATION, format!("Basic {encoded}"));
        }
        self.send(request).await
    }

    async fn refresh(&self, client: &OAuth2Client, refresh_token: &str) -> Answer {
        self.token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", &client.client_id),
            ],
            None,
        )
        .await
    }
}

fn tokens(answer: &Answer) -> OAuth2Tokens {
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

/// X's refusal of a spent, revoked or unknown refresh token.
fn assert_refused_token(answer: &Answer) {
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(
        answer.json(),
        serde_json::json!({
            "error": "invalid_request",
            "error_description": "Value passed for the token was invalid."
        })
    );
}

#[tokio::test]
async fn pkce_flow_gives_tokens_that_send_a_dm() {
    let h = harness().await;
    let client = h.public_client();
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier));
    let mut authorize = h.url("/i/oauth2/authorize");
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client.client_id)
        .append_pair("redirect_uri", "http://127.0.0.1:9/callback")
        .append_pair("scope", &DM_SCOPES.join(" "))
        .append_pair("state", "csrf-42")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = no_redirects.get(authorize).send().await.unwrap();
    assert_eq!(answer.status(), 302);
    let location = Url::parse(answer.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert_eq!(location.path(), "/callback");
    let query: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(query["state"], "csrf-42");
    let code = &query["code"];

    let exchange = |verifier: &'static str| {
        [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "http://127.0.0.1:9/callback"),
            ("code_verifier", verifier),
            ("client_id", client.client_id.as_str()),
        ]
    };
    let granted = tokens(&h.token(&exchange(verifier), None).await);
    assert_eq!(granted.token_type, "bearer");
    assert_eq!(granted.expires_in, 7200);
    assert_eq!(granted.scope, DM_SCOPES.join(" "));
    assert!(
        granted.refresh_token.is_some(),
        "offline.access was granted"
    );
    // A code is single use.
    let again = h.token(&exchange(verifier), None).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert_eq!(again.json()["error"], "invalid_request");

    let sent = h.send_with_bearer(&granted.access_token).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    assert_eq!(h.sim.sent_dms_for(h.user_id()).len(), 1);
}

#[tokio::test]
async fn a_wrong_code_verifier_gets_no_tokens() {
    let h = harness().await;
    let client = h.public_client();
    let mut authorize = h.url("/i/oauth2/authorize");
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client.client_id)
        .append_pair("redirect_uri", "http://127.0.0.1:9/cb")
        .append_pair("scope", "dm.write tweet.read users.read")
        .append_pair("state", "s")
        .append_pair("code_challenge", "plain-challenge")
        .append_pair("code_challenge_method", "plain");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = no_redirects.get(authorize).send().await.unwrap();
    let location = Url::parse(answer.headers()[LOCATION].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let answer = h
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:9/cb"),
                ("code_verifier", "not-the-challenge"),
                ("client_id", &client.client_id),
            ],
            None,
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.json()["error_description"],
        "Value passed for the authorization code was invalid."
    );
}

#[tokio::test]
async fn refresh_rotates_and_the_old_refresh_token_is_refused() {
    let h = harness().await;
    let client = h.public_client();
    let first = h.sim.oauth2_grant(&client.client_id, DM_SCOPES).unwrap();
    let old_refresh = first.refresh_token.unwrap();

    let second = tokens(&h.refresh(&client, &old_refresh).await);
    let new_refresh = second.refresh_token.clone().unwrap();
    assert_ne!(new_refresh, old_refresh);
    assert_ne!(second.access_token, first.access_token);

    assert_refused_token(&h.refresh(&client, &old_refresh).await);
    let third = tokens(&h.refresh(&client, &new_refresh).await);
    let sent = h.send_with_bearer(&third.access_token).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
}

#[tokio::test]
async fn an_expired_access_token_gets_401_and_a_refresh_gives_a_working_one() {
    let h = harness().await;
    let client = OAuth2Client {
        access_token_secs: 60,
        ..h.public_client()
    };
    h.sim.add_oauth2_client(client.clone());
    let granted = h.sim.oauth2_grant(&client.client_id, DM_SCOPES).unwrap();
    assert_eq!(granted.expires_in, 60);
    assert_eq!(h.send_with_bearer(&granted.access_token).await.status, 201);

    h.clock.advance(std::time::Duration::from_secs(61));
    let expired = h.send_with_bearer(&granted.access_token).await;
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert_eq!(expired.body, problems::UNAUTHORIZED);

    let fresh = tokens(&h.refresh(&client, &granted.refresh_token.unwrap()).await);
    assert_eq!(h.send_with_bearer(&fresh.access_token).await.status, 201);

    // The admin control ends a token before its time.
    assert_eq!(h.sim.oauth2_expire_access_tokens(h.user_id()), 1);
    assert_eq!(h.send_with_bearer(&fresh.access_token).await.status, 401);
}

#[tokio::test]
async fn a_revoked_grant_refuses_its_tokens() {
    let h = harness().await;
    let client = h.public_client();
    let granted = h.sim.oauth2_grant(&client.client_id, DM_SCOPES).unwrap();
    assert_eq!(h.sim.oauth2_revoke_grants(h.user_id()), 1);
    assert_eq!(h.send_with_bearer(&granted.access_token).await.status, 401);
    assert_refused_token(&h.refresh(&client, &granted.refresh_token.unwrap()).await);
}

#[tokio::test]
async fn a_confidential_client_authenticates_with_basic() {
    let h = harness().await;
    let client = OAuth2Client::generate(h.user_id(), true);
    h.sim.add_oauth2_client(client.clone());
    let granted = h.sim.oauth2_grant(&client.client_id, DM_SCOPES).unwrap();
    let refresh = granted.refresh_token.unwrap();

    let without = h.refresh(&client, &refresh).await;
    assert_eq!(without.status, 401, "{}", without.body);
    assert_eq!(without.json()["error"], "unauthorized_client");
    let form = [("grant_type", "refresh_token"), ("refresh_token", &refresh)];
    let with_basic = tokens(&h.token(&form, Some(&client)).await);
    assert!(with_basic.refresh_token.is_some());
}

#[tokio::test]
async fn a_token_without_dm_write_cannot_send_but_can_read() {
    let h = harness().await;
    let client = h.public_client();
    let read_only = h
        .sim
        .oauth2_grant(&client.client_id, &["dm.read", "tweet.read", "users.read"])
        .unwrap();
    assert!(read_only.refresh_token.is_none(), "no offline.access");
    let sent = h.send_with_bearer(&read_only.access_token).await;
    assert_eq!(sent.status, 403);
    assert_eq!(sent.body, problems::FORBIDDEN);
    assert!(h.sim.sent_dms_for(h.user_id()).is_empty());
    let read = h
        .with_bearer(
            reqwest::Method::GET,
            "/2/dm_events",
            &read_only.access_token,
            None,
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
}

#[tokio::test]
async fn dm_media_downloads_by_the_oauth2_path_only() {
    let h = harness().await;
    let client = h.public_client();
    let granted = h.sim.oauth2_grant(&client.client_id, DM_SCOPES).unwrap();
    let photo = MediaSpec {
        file_name: Some("OwIPMAFC.png".into()),
        content: Some(b"the photo".to_vec()),
        ..MediaSpec::photo()
    };
    let event = h
        .sim
        .customer_dm(h.user_id(), &Customer::generate("jane"), "pic", Some(photo));
    let attachment = event.attachment.unwrap();
    let path = format!(
        "/2/dm_conversations/media/{}/{}/OwIPMAFC.png",
        event.id, attachment.media_id
    );

    let media = h
        .client
        .get(h.url(&path))
        .header(AUTHORIZATION, format!("Bearer {}", granted.access_token))
        .send()
        .await
        .unwrap();
    assert_eq!(media.status(), 200);
    assert_eq!(media.bytes().await.unwrap().as_ref(), b"the photo");

    let oauth1 = h.get(&path).await;
    assert_eq!(oauth1.status, 403, "{}", oauth1.body);
    assert_eq!(
        oauth1.json()["type"],
        "https://api.twitter.com/2/problems/unsupported-authentication"
    );
    let app_only = h
        .bearer(&h.account, reqwest::Method::GET, &path, None)
        .await;
    assert_eq!(app_only.status, 403);
    // The TON URL stays OAuth 1.0a only.
    let ton = Url::parse(&attachment.url).unwrap();
    let ton_with_bearer = h
        .with_bearer(
            reqwest::Method::GET,
            ton.path(),
            &granted.access_token,
            None,
        )
        .await;
    assert_eq!(ton_with_bearer.status, 403);
}

#[tokio::test]
async fn the_admin_api_registers_grants_expires_and_revokes() {
    let h = harness().await;
    let admin = |path: &str, body: serde_json::Value| {
        h.client
            .post(h.url(&format!("/_sim/oauth2/{path}")))
            .json(&body)
            .send()
    };
    let unknown = admin("clients", serde_json::json!({"user_id": "1"}))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let client: OAuth2Client = admin(
        "clients",
        serde_json::json!({"user_id": h.user_id(), "confidential": true, "access_token_secs": 600}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(client.client_secret.is_some());
    assert_eq!(client.access_token_secs, 600);
    let granted: OAuth2Tokens = admin(
        "grants",
        serde_json::json!({"client_id": client.client_id, "scopes": DM_SCOPES}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(granted.expires_in, 600);
    assert_eq!(h.send_with_bearer(&granted.access_token).await.status, 201);

    let expired = admin("expire", serde_json::json!({"user_id": h.user_id()}))
        .await
        .unwrap();
    assert_eq!(expired.status(), 200);
    assert_eq!(h.send_with_bearer(&granted.access_token).await.status, 401);
    let refresh = granted.refresh_token.unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    let fresh = tokens(&h.token(&form, Some(&client)).await);
    assert_eq!(h.send_with_bearer(&fresh.access_token).await.status, 201);

    admin("revoke", serde_json::json!({"user_id": h.user_id()}))
        .await
        .unwrap();
    assert_eq!(h.send_with_bearer(&fresh.access_token).await.status, 401);
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", fresh.refresh_token.as_deref().unwrap()),
    ];
    assert_refused_token(&h.token(&form, Some(&client)).await);
}

/// XAA subscriptions take the account's OAuth 2.0 user token, as X's spec lists: created for
/// its own account when the token holds the event type's scope (`dm.read` for `dm.*`), and
/// recorded as made with OAuth 2.0; refused for another account of the App (403
/// `not-authorized-for-resource`, like a 1.0a token) and without `dm.read` (X's plain 403).
/// Listing takes the spec's `like.read tweet.read`, which a DM grant lacks.
#[tokio::test]
async fn activity_subscriptions_take_an_oauth2_user_token_for_its_own_account_only() {
    const SUBSCRIPTIONS: &str = "/2/activity/subscriptions";
    let h = harness().await;
    let client = h.public_client();
    let dm = h.sim.oauth2_grant(&client.client_id, DM_SCOPES).unwrap();
    let h = &h;
    let body = |user_id: &str, event_type: &str| {
        serde_json::json!({ "event_type": event_type, "filter": { "user_id": user_id }, "tag": "t" })
            .to_string()
    };
    let post = |token: String, body: String| async move {
        h.with_bearer(reqwest::Method::POST, SUBSCRIPTIONS, &token, Some(&body))
            .await
    };

    let created = post(dm.access_token.clone(), body(h.user_id(), "dm.received")).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let made = h.sim.activity_subscriptions();
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].user_id, h.user_id());
    assert_eq!(made[0].created_with, crate::CreatedWith::OAuth2);

    let sibling = h.app_sibling();
    let others = post(dm.access_token.clone(), body(&sibling.user_id, "dm.sent")).await;
    assert_eq!(others.status, 403, "{}", others.body);
    assert_eq!(
        others.json()["type"],
        "https://api.twitter.com/2/problems/not-authorized-for-resource"
    );
    let no_dm_read = h
        .sim
        .oauth2_grant(&client.client_id, &["tweet.read", "users.read"])
        .unwrap();
    let refused = post(no_dm_read.access_token, body(h.user_id(), "dm.sent")).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body, problems::FORBIDDEN);
    assert_eq!(h.sim.activity_subscriptions().len(), 1);

    let list = |token: String| async move {
        h.with_bearer(reqwest::Method::GET, SUBSCRIPTIONS, &token, None)
            .await
    };
    let unlisted = list(dm.access_token.clone()).await;
    assert_eq!(
        unlisted.status, 403,
        "a DM grant lacks like.read: {}",
        unlisted.body
    );
    let likes = h
        .sim
        .oauth2_grant(&client.client_id, &["like.read", "tweet.read"])
        .unwrap();
    let listed = list(likes.access_token).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.json()["meta"]["total_subscriptions"], 1);
}

/// AAA v2's subscribe and check take the account's OAuth 2.0 user token too (X added it on
/// 2026-01-15; the spec's scopes are the DM grant's), for its own account; without
/// `dm.write` X's plain 403.
#[tokio::test]
async fn an_aaa_subscription_takes_an_oauth2_user_token_with_the_dm_scopes() {
    let h = harness().await;
    let receiver = super::receiver::Receiver::start(&h.account.consumer_secret).await;
    let body = serde_json::json!({ "url": receiver.url }).to_string();
    let registered = h
        .bearer(
            &h.account,
            reqwest::Method::POST,
            "/2/webhooks",
            Some(&body),
        )
        .await;
    assert_eq!(registered.status, 200, "{}", registered.body);
    let id = registered.json()["data"]["id"].as_str().unwrap().to_owned();
    let path = format!("/2/account_activity/webhooks/{id}/subscriptions/all");
    let client = h.public_client();

    let read_only = h
        .sim
        .oauth2_grant(&client.client_id, &["dm.read", "tweet.read", "users.read"])
        .unwrap();
    let refused = h
        .with_bearer(
            reqwest::Method::POST,
            &path,
            &read_only.access_token,
            Some("{}"),
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(h.sim.subscriptions().is_empty());

    let dm = h.sim.oauth2_grant(&client.client_id, DM_SCOPES).unwrap();
    let subscribed = h
        .with_bearer(reqwest::Method::POST, &path, &dm.access_token, Some("{}"))
        .await;
    assert_eq!(subscribed.status, 200, "{}", subscribed.body);
    assert_eq!(h.sim.subscriptions()[0].user_id, h.user_id());
    let checked = h
        .with_bearer(reqwest::Method::GET, &path, &dm.access_token, None)
        .await;
    assert_eq!(
        checked.json()["data"]["subscribed"],
        true,
        "{}",
        checked.body
    );
}
