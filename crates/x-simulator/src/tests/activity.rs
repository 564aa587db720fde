//! X Activity API subscriptions and their `dm.*` deliveries.

use reqwest::Method;
use serde_json::{json, Value};

use super::receiver::{hmac_sha256, Receiver};
use super::*;
use crate::{Customer, WebhookConfig};

const SUBSCRIPTIONS: &str = "/2/activity/subscriptions";

async fn quick_harness() -> Harness {
    harness_with(SimulatorConfig {
        webhooks: WebhookConfig {
            retry_backoff: Duration::from_millis(5),
            ..WebhookConfig::default()
        },
        ..SimulatorConfig::default()
    })
    .await
}

/// Registers the receiver as the App's webhook (no AAA subscription).
async fn webhook(h: &Harness, receiver: &Receiver) -> String {
    let body = json!({ "url": receiver.url }).to_string();
    let answer = h
        .bearer(&h.account, Method::POST, "/2/webhooks", Some(&body))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["data"]["id"].as_str().unwrap().to_string()
}

/// `POST /2/activity/subscriptions` with the account's OAuth 1.0a user token.
async fn create(
    h: &Harness,
    account: &Account,
    event_type: &str,
    user_id: &str,
    webhook_id: &str,
) -> Answer {
    let body = json!({
        "event_type": event_type,
        "filter": { "user_id": user_id },
        "tag": "xbridge",
        "webhook_id": webhook_id,
    });
    h.post_as(account, SUBSCRIPTIONS, &body.to_string()).await
}

fn reason(answer: &Answer) -> String {
    assert_eq!(answer.status, 400, "{}", answer.body);
    answer.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn subscriptions_are_created_listed_and_deleted_with_xs_checks() {
    let h = harness().await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    let webhook_id = webhook(&h, &receiver).await;

    let created = create(&h, &h.account, "dm.received", h.user_id(), &webhook_id).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let subscription = created.json()["data"]["subscription"].clone();
    let id = subscription["subscription_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 19);
    assert_eq!(subscription["event_type"], "dm.received");
    assert_eq!(subscription["filter"], json!({ "user_id": h.user_id() }));
    assert_eq!(subscription["webhook_id"], webhook_id.as_str());
    assert_eq!(subscription["tag"], "xbridge");
    assert_eq!(created.json()["meta"]["total_subscriptions"], 1);

    let again = create(&h, &h.account, "dm.received", h.user_id(), &webhook_id).await;
    assert_eq!(reason(&again), "DuplicateSubscriptionFailed");
    let unknown_webhook = create(&h, &h.account, "dm.sent", h.user_id(), "1234").await;
    assert_eq!(reason(&unknown_webhook), "WebhookIdInvalid");
    let bad_type = create(&h, &h.account, "dm.everything", h.user_id(), &webhook_id).await;
    assert_eq!(bad_type.status, 400, "{}", bad_type.body);
    let extra = h
        .post(
            SUBSCRIPTIONS,
            r#"{"event_type":"dm.sent","filter":{"user_id":"1"},"x":1}"#,
        )
        .await;
    assert_eq!(extra.status, 400, "{}", extra.body);

    // A user token subscribes only its own account to private events; the App's token any
    // account of the App.
    let sibling = h.app_sibling();
    let others = create(&h, &h.account, "dm.received", &sibling.user_id, &webhook_id).await;
    assert_eq!(others.status, 403, "{}", others.body);
    let body = json!({ "event_type": "dm.received", "filter": { "user_id": sibling.user_id }, "webhook_id": webhook_id });
    let by_app = h
        .bearer(
            &h.account,
            Method::POST,
            SUBSCRIPTIONS,
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(by_app.status, 200, "{}", by_app.body);
    assert!(by_app.json()["data"]["subscription"].get("tag").is_none());

    let listed = h.get(SUBSCRIPTIONS).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let listed = listed.json();
    assert_eq!(
        listed["meta"]["total_subscriptions"], 2,
        "the App's, not only the caller's"
    );
    assert_eq!(listed["data"][0], subscription);
    let made = h.sim.activity_subscriptions();
    assert_eq!(made.len(), 2);
    let how: Vec<_> = made.iter().map(|s| s.created_with).collect();
    assert_eq!(how, [crate::CreatedWith::OAuth1, crate::CreatedWith::App]);

    let path = format!("{SUBSCRIPTIONS}/{id}");
    let deleted = h.bearer(&h.account, Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(
        deleted.json(),
        json!({ "data": { "deleted": true }, "meta": { "total_subscriptions": 1 } })
    );
    let gone = h.bearer(&h.account, Method::DELETE, &path, None).await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert_eq!(
        gone.json()["type"],
        "https://api.twitter.com/2/problems/resource-not-found"
    );
}

#[tokio::test]
async fn the_subscription_limit_is_enforced() {
    let h = harness_with(SimulatorConfig {
        webhooks: WebhookConfig {
            max_activity_subscriptions_per_app: 1,
            ..WebhookConfig::default()
        },
        ..SimulatorConfig::default()
    })
    .await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    let webhook_id = webhook(&h, &receiver).await;
    let first = create(&h, &h.account, "dm.received", h.user_id(), &webhook_id).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = create(&h, &h.account, "dm.sent", h.user_id(), &webhook_id).await;
    assert_eq!(reason(&second), "SubscriptionLimitExceeded");
}

fn signed_by(h: &Harness, body: &str) -> String {
    format!(
        "sha256={}",
        hmac_sha256(&h.account.consumer_secret, body.as_bytes())
    )
}

#[tokio::test]
async fn dm_events_are_delivered_in_the_xaa_envelope_only_for_subscribed_types() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    let webhook_id = webhook(&h, &receiver).await;
    for event_type in ["dm.received", "dm.sent"] {
        let created = create(&h, &h.account, event_type, h.user_id(), &webhook_id).await;
        assert_eq!(created.status, 200, "{}", created.body);
    }
    let customer = Customer::generate("jane");

    // Not subscribed to typing yet: nothing is delivered.
    assert_eq!(h.sim.customer_typing(h.user_id(), &customer), 0);

    let event = h.sim.customer_dm(h.user_id(), &customer, "hello!", None);
    let post = receiver.next_post().await;
    assert_eq!(post.answered, 200);
    assert_eq!(post.signature, Some(signed_by(&h, &post.body)));
    let body = post.json();
    let data = &body["data"];
    assert_eq!(data["event_type"], "dm.received");
    assert_eq!(data["filter"], json!({ "user_id": h.user_id() }));
    assert_eq!(data["tag"], "xbridge");
    assert!(data["event_uuid"].as_str().unwrap().parse::<i64>().is_ok());
    let dm = &data["payload"]["direct_message_events"][0];
    assert_eq!(dm["id"], event.id.as_str());
    assert_eq!(dm["type"], "message_create");
    assert_eq!(dm["message_create"]["sender_id"], customer.user_id.as_str());
    assert_eq!(dm["message_create"]["message_data"]["text"], "hello!");
    let user = &data["payload"]["users"][&customer.user_id]["data"];
    assert_eq!(user["username"], "jane", "v2 users wrapped in data: {body}");
    assert!(body.get("for_user_id").is_none(), "not the AAA shape");

    // The account's own send through the API is dm.sent.
    h.sim.add_customer(customer.clone());
    let sent = h.post(&with_participant(&customer.user_id), hello()).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    let post = receiver.next_post().await;
    let data = &post.json()["data"];
    assert_eq!(data["event_type"], "dm.sent");
    assert_eq!(
        data["payload"]["direct_message_events"][0]["message_create"]["sender_id"],
        h.user_id()
    );

    // Typing and read receipts, once subscribed.
    for event_type in ["dm.indicate_typing", "dm.read"] {
        let created = create(&h, &h.account, event_type, h.user_id(), &webhook_id).await;
        assert_eq!(created.status, 200, "{}", created.body);
    }
    assert_eq!(h.sim.customer_typing(h.user_id(), &customer), 1);
    let data = receiver.next_post().await.json()["data"].clone();
    assert_eq!(data["event_type"], "dm.indicate_typing");
    let typing = &data["payload"]["direct_message_indicate_typing_events"][0];
    assert_eq!(typing["sender_id"], customer.user_id.as_str());
    assert_eq!(typing["target"]["recipient_id"], h.user_id());
    assert_eq!(h.sim.customer_read(h.user_id(), &customer, &event.id), 1);
    let data = receiver.next_post().await.json()["data"].clone();
    assert_eq!(data["event_type"], "dm.read");
    let read = &data["payload"]["direct_message_mark_read_events"][0];
    assert_eq!(read["last_read_event_id"], event.id.as_str());
    assert_eq!(read["sender_id"], customer.user_id.as_str());

    let deliveries = promptly(h.sim.wait_for_deliveries(4)).await;
    assert_eq!(deliveries.len(), 4, "one delivery each: {deliveries:?}");
    assert!(deliveries
        .iter()
        .all(|d| d.webhook_id == webhook_id && d.for_user_id.as_deref() == Some(h.user_id())));
}

#[tokio::test]
async fn an_account_subscribed_through_aaa_and_xaa_gets_both_bodies() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    let webhook_id = webhook(&h, &receiver).await;
    let path = format!("/2/account_activity/webhooks/{webhook_id}/subscriptions/all");
    assert_eq!(h.post(&path, "{}").await.status, 200);
    let created = create(&h, &h.account, "dm.received", h.user_id(), &webhook_id).await;
    assert_eq!(created.status, 200, "{}", created.body);

    let customer = Customer::generate("jane");
    h.sim.customer_dm(h.user_id(), &customer, "hi", None);
    let mut shapes: Vec<bool> = Vec::new();
    for _ in 0..2 {
        let body: Value = receiver.next_post().await.json();
        shapes.push(body.get("data").is_some());
    }
    shapes.sort();
    assert_eq!(shapes, [false, true], "one AAA body and one XAA body");

    // Typing reaches the AAA subscription too, in AAA's shape.
    assert_eq!(h.sim.customer_typing(h.user_id(), &customer), 1);
    let body = receiver.next_post().await.json();
    assert_eq!(body["for_user_id"], h.user_id());
    assert!(body["direct_message_indicate_typing_events"].is_array());
}

#[tokio::test]
async fn an_invalid_webhook_gets_no_xaa_deliveries_and_reset_keeps_subscriptions() {
    let h = quick_harness().await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    let webhook_id = webhook(&h, &receiver).await;
    let created = create(&h, &h.account, "dm.received", h.user_id(), &webhook_id).await;
    assert_eq!(created.status, 200, "{}", created.body);
    h.sim.reset();
    assert_eq!(h.sim.activity_subscriptions().len(), 1);
    assert!(h.sim.invalidate_webhook(&webhook_id));
    let customer = Customer::generate("jane");
    h.sim.customer_dm(h.user_id(), &customer, "hi", None);
    assert!(
        h.sim.deliveries().is_empty(),
        "an invalid webhook gets nothing"
    );
}

#[tokio::test]
async fn typing_and_read_receipts_can_be_made_over_the_admin_api() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    let webhook_id = webhook(&h, &receiver).await;
    let created = create(&h, &h.account, "dm.read", h.user_id(), &webhook_id).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let post = |path: &str, body: Value| {
        h.send(h.client.post(h.url(&format!("/_sim/{path}"))).json(&body))
    };
    let customer = json!({ "username": "jane", "user_id": "2244994945" });

    let typing = post(
        "customer_typing",
        json!({ "user_id": h.user_id(), "customer": customer }),
    )
    .await;
    assert_eq!(typing.status, 200, "{}", typing.body);
    assert_eq!(
        typing.json()["deliveries"],
        0,
        "not subscribed to dm.indicate_typing"
    );
    let unread = post(
        "customer_read",
        json!({ "user_id": h.user_id(), "customer": customer }),
    )
    .await;
    assert_eq!(
        unread.status, 400,
        "last_read_event_id is required: {}",
        unread.body
    );
    let unknown = post(
        "customer_typing",
        json!({ "user_id": "1", "customer": customer }),
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    let body = json!({ "user_id": h.user_id(), "customer": customer, "last_read_event_id": "42" });
    let read = post("customer_read", body).await;
    assert_eq!(read.json()["deliveries"], 1, "{}", read.body);
    let data = receiver.next_post().await.json()["data"].clone();
    assert_eq!(data["event_type"], "dm.read");
    assert_eq!(
        data["payload"]["direct_message_mark_read_events"][0]["sender_id"],
        "2244994945"
    );
    let listed = h.get("/_sim/webhooks").await.json();
    assert_eq!(listed["activity_subscriptions"][0]["event_type"], "dm.read");
}
