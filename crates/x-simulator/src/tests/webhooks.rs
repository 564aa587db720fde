use reqwest::Method;
use serde_json::json;

use crate::Fault;

use super::receiver::{hmac_sha256, Receiver};
use super::*;

/// The reason of a webhook refusal, checking the one shape they all share.
fn reason(answer: &Answer) -> String {
    assert_eq!(answer.status, 400, "{}", answer.body);
    let problem = answer.json();
    assert_eq!(problem["type"], crate::problems::INVALID_REQUEST_TYPE);
    assert_eq!(problem["title"], "Invalid Request");
    problem["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn register(h: &Harness, url: &str) -> Answer {
    let body = json!({ "url": url }).to_string();
    h.bearer(&h.account, Method::POST, "/2/webhooks", Some(&body))
        .await
}

async fn registered(h: &Harness, receiver: &Receiver) -> String {
    let answer = register(h, &receiver.url).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["data"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn registering_runs_a_crc_keyed_with_the_consumer_secret() {
    let h = harness().await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    let answer = register(&h, &receiver.url).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let data = &answer.json()["data"];
    assert_eq!(data["url"], receiver.url.as_str());
    assert_eq!(data["valid"], true);
    assert_eq!(data["id"].as_str().unwrap().len(), 19);
    assert!(chrono::DateTime::parse_from_rfc3339(data["created_at"].as_str().unwrap()).is_ok());
    assert_eq!(receiver.crc_tokens().len(), 1, "the CRC ran once, at once");
    assert_eq!(h.sim.counters().crc_checks, 1);

    let listed = h.bearer(&h.account, Method::GET, "/2/webhooks", None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["data"][0], *data);
    assert_eq!(listed.json()["meta"]["result_count"], 1);
    assert_eq!(h.sim.webhooks()[0].registered_by, h.user_id());
    assert_eq!(
        h.sim.requests_for(h.user_id())[0].path,
        "/2/webhooks",
        "logged as the account whose token was used"
    );
}

#[tokio::test]
async fn a_wrong_crc_answer_is_crc_validation_failed() {
    let h = harness().await;
    let receiver = Receiver::start("not-the-consumer-secret").await;
    let answer = register(&h, &receiver.url).await;
    assert_eq!(reason(&answer), "CrcValidationFailed");
    assert_eq!(
        answer.json()["errors"][0]["parameters"]["url"][0],
        receiver.url.as_str()
    );
    assert!(h.sim.webhooks().is_empty());
    // Nobody listening at all fails the same way.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/x", listener.local_addr().unwrap())
    };
    assert_eq!(reason(&register(&h, &closed).await), "CrcValidationFailed");
    let empty = h.bearer(&h.account, Method::GET, "/2/webhooks", None).await;
    assert_eq!(empty.body, r#"{"meta":{"result_count":0}}"#);
}

#[tokio::test]
async fn bad_urls_fail_before_any_crc() {
    let h = harness().await;
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(200));
    for url in [
        "ftp://example.com/hook",
        "not a url",
        "/relative",
        long.as_str(),
    ] {
        assert_eq!(
            reason(&register(&h, url).await),
            "UrlValidationFailed",
            "{url}"
        );
    }
    for body in [
        "{}",
        r#"{"url":5}"#,
        r#"{"url":"http://a","extra":1}"#,
        "nope",
    ] {
        let answer = h
            .bearer(&h.account, Method::POST, "/2/webhooks", Some(body))
            .await;
        assert_eq!(answer.status, 400, "{body}");
    }
    assert_eq!(h.sim.counters().crc_checks, 0);
}

#[tokio::test]
async fn one_webhook_per_app_and_no_duplicate_urls() {
    let h = harness().await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    registered(&h, &receiver).await;
    assert_eq!(
        reason(&register(&h, &receiver.url).await),
        "DuplicateUrlFailed"
    );
    let other = Receiver::start(&h.account.consumer_secret).await;
    assert_eq!(
        reason(&register(&h, &other.url).await),
        "WebhookLimitExceeded"
    );
    assert_eq!(h.sim.counters().crc_checks, 1);

    // Another App has its own allowance.
    let brand = Account::generate("other_brand");
    h.sim.add_account(brand.clone());
    let theirs = Receiver::start(&brand.consumer_secret).await;
    let body = json!({ "url": theirs.url }).to_string();
    let answer = h
        .bearer(&brand, Method::POST, "/2/webhooks", Some(&body))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mine = h.bearer(&h.account, Method::GET, "/2/webhooks", None).await;
    assert_eq!(mine.json()["meta"]["result_count"], 1, "Apps see their own");
}

#[tokio::test]
async fn the_limit_is_configurable() {
    let h = harness_with(SimulatorConfig {
        webhooks: crate::WebhookConfig {
            max_webhooks_per_app: 2,
            ..crate::WebhookConfig::default()
        },
        ..SimulatorConfig::default()
    })
    .await;
    for _ in 0..2 {
        let receiver = Receiver::start(&h.account.consumer_secret).await;
        registered(&h, &receiver).await;
    }
    let third = Receiver::start(&h.account.consumer_secret).await;
    assert_eq!(
        reason(&register(&h, &third.url).await),
        "WebhookLimitExceeded"
    );
}

#[tokio::test]
async fn put_reruns_the_crc_and_delete_forgets() {
    let h = harness().await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    let id = registered(&h, &receiver).await;
    let path = format!("/2/webhooks/{id}");

    receiver.answer_crc_with("rotated-elsewhere");
    let failed = h.bearer(&h.account, Method::PUT, &path, None).await;
    assert_eq!(reason(&failed), "CrcValidationFailed");
    let listed = h.bearer(&h.account, Method::GET, "/2/webhooks", None).await;
    assert_eq!(listed.json()["data"][0]["valid"], false);

    receiver.answer_crc_with(&h.account.consumer_secret);
    let fixed = h.bearer(&h.account, Method::PUT, &path, None).await;
    assert_eq!(fixed.status, 200, "{}", fixed.body);
    assert_eq!(fixed.json(), json!({ "data": { "valid": true } }));
    assert!(h.sim.webhooks()[0].valid);
    assert_eq!(receiver.crc_tokens().len(), 3);
    let tokens = receiver.crc_tokens();
    assert!(
        tokens[0] != tokens[1] && tokens[1] != tokens[2],
        "fresh tokens"
    );

    // X's periodic re-check, on demand.
    receiver.answer_crc_with("wrong");
    assert!(!h.sim.check_webhook(&id).await);
    assert!(!h.sim.webhooks()[0].valid);

    let deleted = h.bearer(&h.account, Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json(), json!({ "data": { "deleted": true } }));
    assert!(h.sim.webhooks().is_empty());
    let again = h.bearer(&h.account, Method::DELETE, &path, None).await;
    assert_eq!(reason(&again), "WebhookIdInvalid");
    let unknown = h
        .bearer(&h.account, Method::PUT, "/2/webhooks/123", None)
        .await;
    assert_eq!(reason(&unknown), "WebhookIdInvalid");
}

#[tokio::test]
async fn an_invalidated_webhook_stays_invalid_until_a_put_whose_crc_passes() {
    let h = harness().await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    let id = registered(&h, &receiver).await;
    let path = format!("/2/webhooks/{id}");

    assert!(h.sim.invalidate_webhook(&id));
    assert!(!h.sim.invalidate_webhook("123"), "unknown id");
    let listed = h.bearer(&h.account, Method::GET, "/2/webhooks", None).await;
    assert_eq!(listed.json()["data"][0]["valid"], false);
    assert_eq!(receiver.crc_tokens().len(), 1, "marking ran no CRC");

    // The receiver answers, but X cannot reach it: the PUT fails and counts.
    h.sim
        .set_fault(h.user_id(), Fault::CrcFails { times: Some(1) });
    let failed = h.bearer(&h.account, Method::PUT, &path, None).await;
    assert_eq!(reason(&failed), "CrcValidationFailed");
    assert!(!h.sim.webhooks()[0].valid);
    assert_eq!(receiver.crc_tokens().len(), 1, "X never reached the URL");

    let fixed = h.bearer(&h.account, Method::PUT, &path, None).await;
    assert_eq!(fixed.status, 200, "{}", fixed.body);
    assert!(h.sim.webhooks()[0].valid);
    assert_eq!(
        receiver.crc_tokens().len(),
        2,
        "the PUT's CRC reached the URL"
    );

    // The same over the admin API.
    let url = h.url("/_sim/webhooks/invalidate");
    let marked = h
        .send(
            h.client
                .post(url.clone())
                .json(&json!({ "webhook_id": id })),
        )
        .await;
    assert_eq!(marked.status, 200, "{}", marked.body);
    assert_eq!(marked.json(), json!({ "webhook_id": id, "valid": false }));
    assert!(!h.sim.webhooks()[0].valid);
    let unknown = h
        .send(h.client.post(url).json(&json!({ "webhook_id": "123" })))
        .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn webhook_routes_need_a_known_token() {
    let h = harness().await;
    let unsigned = h
        .send(
            h.client
                .post(h.url("/2/webhooks"))
                .header(CONTENT_TYPE, "application/json")
                .body(r#"{"url":"http://127.0.0.1:9/"}"#),
        )
        .await;
    assert_eq!(unsigned.status, 401);
    let stranger = Account::generate("stranger");
    let answer = h.bearer(&stranger, Method::GET, "/2/webhooks", None).await;
    assert_eq!(answer.status, 401);
    // The spec also allows the App's user context.
    let listed = h.get("/2/webhooks").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
}

#[tokio::test]
async fn accounts_subscribe_with_their_own_user_token() {
    let h = harness().await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    let id = registered(&h, &receiver).await;
    let path = format!("/2/account_activity/webhooks/{id}/subscriptions/all");

    let before = h.get(&path).await;
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(before.json(), json!({ "data": { "subscribed": false } }));

    let answer = h.post(&path, "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({ "data": { "subscribed": true } }));
    assert_eq!(
        h.get(&path).await.json(),
        json!({ "data": { "subscribed": true } })
    );
    assert_eq!(
        reason(&h.post(&path, "{}").await),
        "DuplicateSubscriptionFailed"
    );
    let unknown = h
        .post("/2/account_activity/webhooks/123/subscriptions/all", "{}")
        .await;
    assert_eq!(reason(&unknown), "WebhookIdInvalid");
    assert_eq!(h.sim.subscriptions()[0].user_id, h.user_id());

    // An account of another App cannot see this App's webhook.
    let brand = Account::generate("other_brand");
    h.sim.add_account(brand.clone());
    assert_eq!(
        reason(&h.post_as(&brand, &path, "{}").await),
        "WebhookIdInvalid"
    );
    // The App token is not the account's.
    let app = h.bearer(&h.account, Method::POST, &path, Some("{}")).await;
    assert_eq!(app.status, 403);

    let listed = h
        .bearer(&h.account, Method::GET, &format!("{path}/list"), None)
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.json()["data"]["webhook_id"], id.as_str());
    assert_eq!(
        listed.json()["data"]["subscriptions"],
        json!([{ "user_id": h.user_id() }])
    );

    let removed = h
        .bearer(
            &h.account,
            Method::DELETE,
            &format!(
                "/2/account_activity/webhooks/{id}/subscriptions/{}/all",
                h.user_id()
            ),
            None,
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(h.sim.subscriptions().is_empty());
}

#[tokio::test]
async fn accounts_sharing_an_app_share_its_subscription_allowance() {
    let h = harness().await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    let id = registered(&h, &receiver).await;
    let path = format!("/2/account_activity/webhooks/{id}/subscriptions/all");
    assert_eq!(h.post(&path, "{}").await.status, 200);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        // Same App (consumer key and secret), another user.
        let sibling = h.app_sibling();
        let answer = h.post_as(&sibling, &path, "{}").await;
        statuses.push(if answer.status == 200 {
            "ok".to_string()
        } else {
            reason(&answer)
        });
    }
    assert_eq!(statuses, ["ok", "ok", "SubscriptionLimitExceeded"]);
}

#[tokio::test]
async fn receiver_helper_signs_like_the_documented_example() {
    // Guards the test receiver itself: a value computed with Python's hmac module.
    assert_eq!(
        hmac_sha256("secret", b"body"),
        "3EaYNVf+oSe0OvchRn65s/3iM4/j4U9RlSqoR4wT01U="
    );
}
