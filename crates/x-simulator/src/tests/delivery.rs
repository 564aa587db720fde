use reqwest::Method;
use serde_json::{json, Value};

use super::receiver::{hmac_sha256, Receiver};
use super::*;
use crate::{Customer, MediaSpec, WebhookConfig};

/// A harness whose retries are milliseconds apart.
async fn quick_harness() -> Harness {
    harness_with(SimulatorConfig {
        webhooks: WebhookConfig {
            delivery_retries: 3,
            retry_backoff: Duration::from_millis(5),
            ..WebhookConfig::default()
        },
        ..SimulatorConfig::default()
    })
    .await
}

/// Registers the receiver as the account's App's webhook and subscribes the account.
async fn subscribe(h: &Harness, receiver: &Receiver, account: &Account) -> String {
    let body = json!({ "url": receiver.url }).to_string();
    let answer = h
        .bearer(account, Method::POST, "/2/webhooks", Some(&body))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let id = answer.json()["data"]["id"].as_str().unwrap().to_string();
    let path = format!("/2/account_activity/webhooks/{id}/subscriptions/all");
    let answer = h.post_as(account, &path, "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    id
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../tests/fixtures/x-api/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_customer_dm_is_delivered_signed_in_the_aaa_shape() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    let webhook_id = subscribe(&h, &receiver, &h.account).await;
    let customer = Customer::generate("furious_camper");
    let event = h
        .sim
        .customer_dm(h.user_id(), &customer, "Hello World!", None);

    let post = receiver.next_post().await;
    assert_eq!(post.answered, 200, "the signature verified");
    let expected = format!(
        "sha256={}",
        hmac_sha256(&h.account.consumer_secret, post.body.as_bytes())
    );
    assert_eq!(post.signature.as_deref(), Some(expected.as_str()));
    assert!(post
        .content_type
        .as_deref()
        .unwrap()
        .starts_with("application/json"));

    let payload = post.json();
    assert_eq!(
        keys(&payload),
        ["direct_message_events", "for_user_id", "users"]
    );
    assert_eq!(payload["for_user_id"], h.user_id());
    let dm = &payload["direct_message_events"][0];
    let sample = &fixture("webhook_aaa_dm.json")["direct_message_events"][0];
    assert_eq!(keys(dm), keys(sample));
    assert_eq!(dm["type"], "message_create");
    assert_eq!(dm["id"], event.id.as_str());
    assert_eq!(
        dm["created_timestamp"],
        event.created_at.timestamp_millis().to_string()
    );
    let create = &dm["message_create"];
    assert_eq!(
        keys(create),
        ["message_data", "sender_id", "target"],
        "no source_app_id"
    );
    assert_eq!(create["target"]["recipient_id"], h.user_id());
    assert_eq!(create["sender_id"], customer.user_id.as_str());
    assert_eq!(create["message_data"]["text"], "Hello World!");
    assert_eq!(
        keys(&create["message_data"]["entities"]),
        keys(&sample["message_create"]["message_data"]["entities"])
    );
    assert_eq!(
        payload["users"][&customer.user_id],
        json!({
            "id": customer.user_id,
            "name": "Furious Camper",
            "screen_name": "furious_camper",
            "profile_image_url_https": customer.profile_image_url,
        })
    );
    assert_eq!(payload["users"][h.user_id()]["screen_name"], "acme_support");

    let deliveries = promptly(h.sim.wait_for_deliveries(1)).await;
    assert_eq!(deliveries.len(), 1);
    let delivery = &deliveries[0];
    assert_eq!(delivery.webhook_id, webhook_id);
    assert_eq!(delivery.url, receiver.url);
    assert_eq!(delivery.for_user_id.as_deref(), Some(h.user_id()));
    assert_eq!(delivery.event_id.as_deref(), Some(event.id.as_str()));
    assert_eq!((delivery.attempt, delivery.status), (1, Some(200)));
    assert!(delivery.succeeded());
    assert_eq!(delivery.body, post.body);
    assert_eq!(h.sim.counters().webhook_deliveries, 1);
}

#[tokio::test]
async fn the_accounts_own_sends_are_echoed_with_their_app() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    subscribe(&h, &receiver, &h.account).await;
    let customer = Customer::generate("jane");
    h.sim.add_customer(customer.clone());
    let sent = h
        .post(&with_participant(&customer.user_id), hello())
        .await
        .json();

    let payload = receiver.next_post().await.json();
    let dm = &payload["direct_message_events"][0];
    assert_eq!(dm["id"], sent["data"]["dm_event_id"]);
    let create = &dm["message_create"];
    assert_eq!(create["sender_id"], h.user_id());
    assert_eq!(
        payload["for_user_id"],
        h.user_id(),
        "sender == for_user_id: an echo"
    );
    assert_eq!(create["target"]["recipient_id"], customer.user_id.as_str());
    let app = create["source_app_id"].as_str().unwrap();
    assert_eq!(payload["apps"][app]["id"], app);
    assert_eq!(create["message_data"]["text"], "Hello from the CRM");
    assert_eq!(payload["users"][&customer.user_id]["screen_name"], "jane");
}

#[tokio::test]
async fn a_dm_between_two_subscribed_accounts_arrives_for_each() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    subscribe(&h, &receiver, &h.account).await;
    let sibling = h.app_sibling();
    let id = h.sim.webhooks()[0].id.clone();
    let path = format!("/2/account_activity/webhooks/{id}/subscriptions/all");
    assert_eq!(h.post_as(&sibling, &path, "{}").await.status, 200);

    h.post(&with_participant(&sibling.user_id), hello()).await;
    let mut for_users = vec![
        receiver.next_post().await.json()["for_user_id"].clone(),
        receiver.next_post().await.json()["for_user_id"].clone(),
    ];
    for_users.sort_by_key(|v| v.as_str().unwrap().to_string());
    let mut expected = vec![json!(h.user_id()), json!(sibling.user_id)];
    expected.sort_by_key(|v| v.as_str().unwrap().to_string());
    assert_eq!(for_users, expected);
}

#[tokio::test]
async fn a_503_is_retried_until_the_receiver_answers_2xx() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    subscribe(&h, &receiver, &h.account).await;
    receiver.answer_posts_with(&[503, 503]);
    let event = h
        .sim
        .customer_dm(h.user_id(), &Customer::generate("jane"), "hi", None);

    let posts = [
        receiver.next_post().await,
        receiver.next_post().await,
        receiver.next_post().await,
    ];
    assert_eq!(posts.each_ref().map(|p| p.answered), [503, 503, 200]);
    assert!(posts
        .iter()
        .all(|p| p.body == posts[0].body && p.signature == posts[0].signature));
    let deliveries = promptly(h.sim.wait_for_deliveries(3)).await;
    let attempts: Vec<(u32, Option<u16>)> =
        deliveries.iter().map(|d| (d.attempt, d.status)).collect();
    assert_eq!(attempts, [(1, Some(503)), (2, Some(503)), (3, Some(200))]);
    assert!(deliveries
        .iter()
        .all(|d| d.event_id.as_deref() == Some(event.id.as_str())));
    assert!(deliveries[1].at >= deliveries[0].at);
}

#[tokio::test]
async fn delivery_gives_up_after_the_configured_retries() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    subscribe(&h, &receiver, &h.account).await;
    receiver.answer_posts_with(&[500, 500, 500, 500]);
    h.sim
        .customer_dm(h.user_id(), &Customer::generate("jane"), "hi", None);
    for _ in 0..4 {
        assert_eq!(receiver.next_post().await.answered, 500);
    }
    let deliveries = promptly(h.sim.wait_for_deliveries(4)).await;
    assert_eq!(
        deliveries.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(deliveries.iter().all(|d| !d.succeeded()));
}

#[tokio::test]
async fn a_media_dm_carries_the_tco_link_and_the_attachment() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    subscribe(&h, &receiver, &h.account).await;
    let photo = MediaSpec {
        file_name: Some("OwIPMAFC.png".into()),
        ..MediaSpec::photo()
    };
    let event = h.sim.customer_dm(
        h.user_id(),
        &Customer::generate("jane"),
        "Here is the photo",
        Some(photo),
    );
    let attachment = event.attachment.clone().unwrap();

    let payload = receiver.next_post().await.json();
    let sample = fixture("webhook_aaa_dm_media.json");
    let data = &payload["direct_message_events"][0]["message_create"]["message_data"];
    let sample_data = &sample["direct_message_events"][0]["message_create"]["message_data"];
    assert_eq!(keys(data), keys(sample_data));

    let text = data["text"].as_str().unwrap();
    assert_eq!(text, format!("Here is the photo {}", attachment.tco_url));
    assert!(attachment.tco_url.starts_with("https://t.co/"));
    let link = &data["entities"]["urls"][0];
    assert_eq!(keys(link), keys(&sample_data["entities"]["urls"][0]));
    assert_eq!(link["indices"], json!([18, 41]), "as in X's sample");
    let (start, end) = (18, 41);
    let linked: String = text.chars().skip(start).take(end - start).collect();
    assert_eq!(linked, attachment.tco_url);
    assert_eq!(
        link["expanded_url"],
        format!("https://twitter.com/messages/media/{}", event.id)
    );

    assert_eq!(data["attachment"]["type"], "media");
    let media = &data["attachment"]["media"];
    assert_eq!(keys(media), keys(&sample_data["attachment"]["media"]));
    assert_eq!(media["id_str"], attachment.media_id.as_str());
    assert_eq!(
        media["id"].as_u64().unwrap().to_string(),
        attachment.media_id,
        "a bare number, exactly"
    );
    assert_eq!(media["media_url_https"], attachment.url.as_str());
    assert!(attachment.url.ends_with(&format!(
        "/{}/{}/OwIPMAFC.png",
        event.id, attachment.media_id
    )));
    assert_eq!(media["url"], attachment.tco_url.as_str());
    assert_eq!(media["indices"], json!([18, 41]));
    assert_eq!(media["type"], "photo");
    assert_eq!(
        keys(&media["sizes"]),
        keys(&sample_data["attachment"]["media"]["sizes"])
    );
    assert_eq!(
        media["sizes"]["large"],
        json!({ "w": 1280, "h": 720, "resize": "fit" })
    );
    assert!(
        attachment.media_id.parse::<u64>().unwrap() < event.id.parse::<u64>().unwrap(),
        "media ids are minted before the event's, as on X"
    );
}

#[tokio::test]
async fn a_media_only_video_dm_is_just_the_link_with_video_info() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    subscribe(&h, &receiver, &h.account).await;
    let event = h.sim.customer_dm(
        h.user_id(),
        &Customer::generate("jane"),
        "",
        Some(MediaSpec::video()),
    );
    let payload = receiver.next_post().await.json();
    let data = &payload["direct_message_events"][0]["message_create"]["message_data"];
    let tco = event.attachment.as_ref().unwrap().tco_url.clone();
    assert_eq!(data["text"], tco.as_str());
    assert_eq!(data["entities"]["urls"][0]["indices"], json!([0, 23]));
    let media = &data["attachment"]["media"];
    assert_eq!(media["type"], "video");
    assert_eq!(media["video_info"]["aspect_ratio"], json!([16, 9]));
    assert_eq!(media["video_info"]["duration_millis"], 5000);
    let variants = media["video_info"]["variants"].as_array().unwrap();
    assert!(variants.iter().all(|v| v["content_type"] == "video/mp4"));
}

#[tokio::test]
async fn deliver_again_repeats_the_same_bytes() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    subscribe(&h, &receiver, &h.account).await;
    let event = h.sim.customer_dm(
        h.user_id(),
        &Customer::generate("jane"),
        "twice",
        Some(MediaSpec::photo()),
    );
    let first = receiver.next_post().await;
    assert_eq!(h.sim.deliver_again(&event.id), 1);
    let second = receiver.next_post().await;
    assert_eq!(second.body, first.body);
    assert_eq!(second.signature, first.signature);
    assert_eq!(h.sim.deliver_again("1"), 0, "unknown event");
    let deliveries = promptly(h.sim.wait_for_deliveries(2)).await;
    assert!(deliveries.iter().all(|d| d.attempt == 1));
}

#[tokio::test]
async fn deliver_raw_sends_chosen_signatures() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    let webhook_id = subscribe(&h, &receiver, &h.account).await;
    let body = r#"{"for_user_id":"1","direct_message_events":[]}"#;

    let forged = format!("sha256={}", hmac_sha256("someone-else", body.as_bytes()));
    assert_eq!(
        h.sim
            .deliver_raw(&webhook_id, body, Some(forged.clone()))
            .await,
        401
    );
    let post = receiver.next_post().await;
    assert_eq!(post.signature.as_deref(), Some(forged.as_str()));
    assert_eq!(post.body, body);

    assert_eq!(h.sim.deliver_raw(&webhook_id, body, None).await, 200);
    receiver.next_post().await;
    assert_eq!(
        h.sim
            .deliver_raw(&webhook_id, body, Some(String::new()))
            .await,
        401
    );
    assert_eq!(receiver.next_post().await.signature, None);
    assert_eq!(h.sim.deliver_raw("123", body, None).await, 0);

    let deliveries = h.sim.deliveries();
    assert_eq!(
        deliveries.iter().map(|d| d.status).collect::<Vec<_>>(),
        [Some(401), Some(200), Some(401)]
    );
    assert!(deliveries
        .iter()
        .all(|d| d.event_id.is_none() && d.for_user_id.is_none()));
}

#[tokio::test]
async fn only_valid_webhooks_of_subscribed_accounts_get_events() {
    let h = quick_harness().await;
    let receiver = Receiver::start(&h.account.consumer_secret).await;
    let webhook_id = subscribe(&h, &receiver, &h.account).await;
    let customer = Customer::generate("jane");

    let unsubscribed = Account::generate("unsubscribed");
    h.sim.add_account(unsubscribed.clone());
    let theirs = h
        .sim
        .customer_dm(&unsubscribed.user_id, &customer, "hi", None);
    assert_eq!(h.sim.deliver_again(&theirs.id), 0);

    receiver.answer_crc_with("wrong");
    assert!(!h.sim.check_webhook(&webhook_id).await);
    let mine = h.sim.customer_dm(h.user_id(), &customer, "hi", None);
    assert_eq!(
        h.sim.deliver_again(&mine.id),
        0,
        "an invalid webhook gets nothing"
    );

    // Group sends are not Account Activity events.
    receiver.answer_crc_with(&h.account.consumer_secret);
    assert!(h.sim.check_webhook(&webhook_id).await);
    h.post("/2/dm_conversations/1578900353814519810/messages", hello())
        .await;
    let group = h.sim.dm_events_for(h.user_id()).pop().unwrap();
    assert_eq!(group.recipient_id, None);
    assert_eq!(h.sim.deliver_again(&group.id), 0);
    assert_eq!(h.sim.deliver_again(&mine.id), 1);
}

#[tokio::test]
async fn customer_dms_can_be_injected_over_http() {
    let h = quick_harness().await;
    let mut receiver = Receiver::start(&h.account.consumer_secret).await;
    subscribe(&h, &receiver, &h.account).await;
    let answer = h
        .send(h.client.post(h.url("/_sim/customer_dm")).json(&json!({
            "user_id": h.user_id(),
            "customer": { "username": "jane_doe", "user_id": "1234567890123456789" },
            "text": "from curl",
            "media": { "type": "animated_gif" },
        })))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let event: crate::DmEvent = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(event.sender_id, "1234567890123456789");
    assert_eq!(
        event.attachment.as_ref().unwrap().media_type,
        crate::MediaType::AnimatedGif
    );
    let payload = receiver.next_post().await.json();
    assert_eq!(payload["users"]["1234567890123456789"]["name"], "Jane Doe");

    let listed = h
        .send(
            h.client
                .get(h.url(&format!("/_sim/dm_events?user_id={}", h.user_id()))),
        )
        .await;
    let listed: Vec<crate::DmEvent> = serde_json::from_str(&listed.body).unwrap();
    assert_eq!(listed, [event]);
    let unknown = h
        .send(h.client.post(h.url("/_sim/customer_dm")).json(&json!({
            "user_id": "42",
            "customer": { "username": "x" },
            "text": "hi",
        })))
        .await;
    assert_eq!(unknown.status, 404);
    let deliveries = h.send(h.client.get(h.url("/_sim/deliveries"))).await;
    assert_eq!(deliveries.status, 200);
    let hooks = h.send(h.client.get(h.url("/_sim/webhooks"))).await;
    assert_eq!(hooks.json()["subscriptions"][0]["user_id"], h.user_id());
}
