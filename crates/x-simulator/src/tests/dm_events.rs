use serde_json::Value;

use super::*;
use crate::problems::{self, INVALID_REQUEST_TYPE};
use crate::{Customer, Fault, MediaSpec};

fn ids(answer: &Answer) -> Vec<String> {
    answer.json()["data"]
        .as_array()
        .map(|data| {
            data.iter()
                .map(|event| event["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn meta<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body["meta"][name].as_str()
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../tests/fixtures/x-api/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// 12 customer DMs, 5 sends to that customer and one DM written two days ago.
async fn history(h: &Harness, customer: &Customer) {
    for n in 0..12 {
        h.sim
            .customer_dm(h.user_id(), customer, &format!("from customer {n}"), None);
    }
    for n in 0..5 {
        let body = format!(r#"{{"text":"reply {n}"}}"#);
        let answer = h.post(&with_participant(&customer.user_id), &body).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }
    let two_days_ago = h.clock.now() - chrono::Duration::days(2);
    h.sim
        .customer_dm_at(h.user_id(), customer, "an old one", None, two_days_ago);
}

#[tokio::test]
async fn pages_walk_every_event_newest_first_without_duplicates_or_gaps() {
    let h = harness().await;
    let customer = Customer::generate("jane_doe");
    history(&h, &customer).await;
    // Another account's DMs must not show.
    let other = Account::generate("other_brand");
    h.sim.add_account(other.clone());
    h.sim
        .customer_dm(&other.user_id, &customer, "not yours", None);

    let mut expected: Vec<String> = h
        .sim
        .dm_events_for(h.user_id())
        .into_iter()
        .map(|e| e.id)
        .collect();
    expected.reverse();
    assert_eq!(expected.len(), 18);

    let mut walked = Vec::new();
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let query = match &token {
            None => "/2/dm_events?max_results=5&dm_event.fields=created_at".to_string(),
            Some(token) => format!(
                "/2/dm_events?max_results=5&dm_event.fields=created_at&pagination_token={token}"
            ),
        };
        let answer = h.get(&query).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body = answer.json();
        let page = ids(&answer);
        assert_eq!(body["meta"]["result_count"], page.len());
        assert_eq!(
            meta(&body, "previous_token").is_some(),
            token.is_some(),
            "{body}"
        );
        walked.extend(page.clone());
        pages.push((page, body.clone()));
        match meta(&body, "next_token") {
            Some(next) => {
                assert!(next.len() >= 16, "{next}");
                token = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(walked, expected, "every event once, newest first");
    assert_eq!(
        pages.iter().map(|(page, _)| page.len()).collect::<Vec<_>>(),
        [5, 5, 5, 3]
    );
    // created_at never increases down the list; the back-dated DM comes last.
    let times: Vec<String> = pages
        .iter()
        .flat_map(|(_, body)| body["data"].as_array().unwrap().clone())
        .map(|event| event["created_at"].as_str().unwrap().to_string())
        .collect();
    assert!(times.windows(2).all(|pair| pair[0] >= pair[1]), "{times:?}");
    assert_eq!(pages[3].1["data"][2]["text"], "an old one");

    // previous_token of the last page leads back to the third.
    let previous = meta(&pages[3].1, "previous_token").unwrap();
    let back = h
        .get(&format!(
            "/2/dm_events?max_results=5&pagination_token={previous}"
        ))
        .await;
    assert_eq!(ids(&back), pages[2].0);
}

#[tokio::test]
async fn new_events_arriving_between_pages_do_not_shift_the_walk() {
    let h = harness().await;
    let customer = Customer::generate("jane_doe");
    for n in 0..4 {
        h.sim
            .customer_dm(h.user_id(), &customer, &format!("m{n}"), None);
    }
    let first = h.get("/2/dm_events?max_results=2").await;
    h.sim.customer_dm(h.user_id(), &customer, "newer", None);
    let next = meta(&first.json(), "next_token").unwrap().to_string();
    let second = h
        .get(&format!(
            "/2/dm_events?max_results=2&pagination_token={next}"
        ))
        .await;
    let texts: Vec<Value> = second.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].clone())
        .collect();
    assert_eq!(texts, ["m1", "m0"]);
    assert!(meta(&second.json(), "next_token").is_none());
}

#[tokio::test]
async fn max_results_must_be_between_1_and_100() {
    let h = harness().await;
    let customer = Customer::generate("jane_doe");
    for n in 0..101 {
        h.sim
            .customer_dm(h.user_id(), &customer, &format!("m{n}"), None);
    }
    for bad in ["0", "101", "-1", "ten", ""] {
        let answer = h.get(&format!("/2/dm_events?max_results={bad}")).await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        let problem = answer.json();
        assert_eq!(problem["type"], INVALID_REQUEST_TYPE);
        assert_eq!(problem["title"], "Invalid Request");
        assert_eq!(problem["errors"][0]["parameters"]["max_results"][0], bad);
        assert!(problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("max_results"));
    }
    assert_eq!(ids(&h.get("/2/dm_events?max_results=1").await).len(), 1);
    assert_eq!(ids(&h.get("/2/dm_events?max_results=100").await).len(), 100);
    let default = h.get("/2/dm_events").await;
    assert_eq!(ids(&default).len(), 100, "default is 100");
    assert!(meta(&default.json(), "next_token").is_some());
    assert_eq!(h.sim.counters().invalid_requests, 5);
}

#[tokio::test]
async fn unknown_or_foreign_tokens_are_refused() {
    let h = harness().await;
    let customer = Customer::generate("jane_doe");
    let other = Account::generate("other_brand");
    h.sim.add_account(other.clone());
    for n in 0..3 {
        h.sim
            .customer_dm(h.user_id(), &customer, &format!("m{n}"), None);
        h.sim
            .customer_dm(&other.user_id, &customer, &format!("o{n}"), None);
    }
    let theirs = h.get_as(&other, "/2/dm_events?max_results=1").await;
    let foreign = meta(&theirs.json(), "next_token").unwrap().to_string();
    for token in [
        foreign.as_str(),
        "18LAA581J5II7LA00C00ZZZZ",
        "short",
        "not a token at all",
    ] {
        let mut url = h.url("/2/dm_events");
        url.query_pairs_mut().append_pair("pagination_token", token);
        let path = format!("{}?{}", url.path(), url.query().unwrap());
        let answer = h.get(&path).await;
        assert_eq!(answer.status, 400, "{token}: {}", answer.body);
        assert_eq!(
            answer.json()["errors"][0]["parameters"]["pagination_token"][0],
            token
        );
    }
    for unknown in ["since_id=1", "max_results=5&max_results=6"] {
        let answer = h.get(&format!("/2/dm_events?{unknown}")).await;
        assert_eq!(answer.status, 400, "{unknown}");
    }
}

#[tokio::test]
async fn empty_history_is_exactly_x_empty_page() {
    let h = harness().await;
    let answer = h.get("/2/dm_events").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, r#"{"meta":{"result_count":0}}"#);
    assert_eq!(answer.json(), fixture("dm_events_empty_200.json"));

    h.sim
        .customer_dm(h.user_id(), &Customer::generate("jane"), "hi", None);
    let filtered = h.get("/2/dm_events?event_types=ParticipantsJoin").await;
    assert_eq!(filtered.body, r#"{"meta":{"result_count":0}}"#);
    let all = h
        .get("/2/dm_events?event_types=MessageCreate,ParticipantsJoin")
        .await;
    assert_eq!(ids(&all).len(), 1);
}

#[tokio::test]
async fn default_fields_are_id_event_type_and_text() {
    let h = harness().await;
    h.sim.customer_dm(
        h.user_id(),
        &Customer::generate("jane"),
        "Hello, just you!",
        Some(MediaSpec::photo()),
    );
    let answer = h.get("/2/dm_events").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(keys(&body), ["data", "meta"]);
    assert_eq!(keys(&body["data"][0]), ["event_type", "id", "text"]);
    assert_eq!(body["data"][0]["event_type"], "MessageCreate");
    assert_eq!(body["data"][0]["text"], "Hello, just you!");
    // X's own recorded page has exactly these fields too.
    let recorded = fixture("conversation_dm_events_200.json");
    assert_eq!(keys(&recorded["data"][0]), ["event_type", "id", "text"]);
}

#[tokio::test]
async fn fields_and_expansions_follow_the_documented_sample() {
    let h = harness().await;
    let customer = Customer::generate("flood_social");
    let event = h.sim.customer_dm(
        h.user_id(),
        &customer,
        "Hello, just you!",
        Some(MediaSpec::photo()),
    );
    let answer = h
        .get(
            "/2/dm_events?dm_event.fields=id,text,event_type,created_at,dm_conversation_id,sender_id,attachments\
             &expansions=sender_id,attachments.media_keys&user.fields=profile_image_url\
             &media.fields=url,type,width,height,preview_image_url,variants",
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    let sample = fixture("dm_events_expanded_200.json");

    let mut sample_fields = keys(&sample["data"][0]);
    sample_fields.retain(|field| field != "referenced_tweets");
    assert_eq!(keys(&body["data"][0]), sample_fields);
    let data = &body["data"][0];
    assert_eq!(data["id"], event.id.as_str());
    assert_eq!(data["sender_id"], customer.user_id.as_str());
    let (own, theirs): (u64, u64) = (
        h.user_id().parse().unwrap(),
        customer.user_id.parse().unwrap(),
    );
    assert_eq!(
        data["dm_conversation_id"],
        format!("{}-{}", own.min(theirs), own.max(theirs))
    );
    let created_at = data["created_at"].as_str().unwrap();
    assert_eq!(created_at.len(), "2022-10-25T23:16:15.000Z".len());
    assert!(created_at.ends_with('Z'));
    assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok());
    let media_key = event.attachment.as_ref().unwrap().media_key.clone();
    assert!(media_key.starts_with("3_"));
    assert_eq!(data["attachments"]["media_keys"][0], media_key.as_str());

    let user = &body["includes"]["users"][0];
    assert_eq!(keys(user), ["id", "name", "profile_image_url", "username"]);
    assert_eq!(user["username"], "flood_social");
    assert_eq!(
        user["profile_image_url"],
        customer.profile_image_url.as_str()
    );
    let media = &body["includes"]["media"][0];
    assert_eq!(media["media_key"], media_key.as_str());
    assert_eq!(media["type"], "photo");
    let url = media["url"].as_str().unwrap();
    let ton = format!(
        "{}1.1/ton/data/dm/{}/{}/",
        h.sim.base_url(),
        event.id,
        event.attachment.as_ref().unwrap().media_id
    );
    assert!(url.starts_with(&ton), "{url} vs {ton}");
    assert_eq!(
        (media["width"].as_u64(), media["height"].as_u64()),
        (Some(1280), Some(720))
    );
    assert!(media.get("variants").is_none(), "photos have no variants");
    for key in keys(&sample["includes"]["media"][0]) {
        assert!(media.get(&key).is_some(), "{key} missing from {media}");
    }
    assert_eq!(body["meta"]["result_count"], 1);
}

#[tokio::test]
async fn videos_carry_a_preview_and_mp4_variants() {
    let h = harness().await;
    h.sim.customer_dm(
        h.user_id(),
        &Customer::generate("jane"),
        "",
        Some(MediaSpec::video()),
    );
    let answer = h
        .get("/2/dm_events?expansions=attachments.media_keys&media.fields=preview_image_url,variants,duration_ms")
        .await;
    let media = &answer.json()["includes"]["media"][0];
    assert_eq!(media["type"], "video");
    assert!(media["media_key"].as_str().unwrap().starts_with("7_"));
    assert!(media["preview_image_url"]
        .as_str()
        .unwrap()
        .ends_with(".jpg"));
    let variants = media["variants"].as_array().unwrap();
    assert!(!variants.is_empty());
    for variant in variants {
        assert_eq!(variant["content_type"], "video/mp4");
        assert!(variant["bit_rate"].is_u64());
        let url = variant["url"].as_str().unwrap();
        let rendition = h.send(h.client.get(url)).await;
        assert_eq!(rendition.status, 200, "{url}");
        assert_eq!(rendition.header("content-type"), "video/mp4");
    }
    assert_eq!(media["duration_ms"], 5000);
    assert!(media.get("url").is_none(), "not asked for");
}

#[tokio::test]
async fn the_ton_url_needs_a_participants_signature() {
    let h = harness().await;
    let event = h.sim.customer_dm(
        h.user_id(),
        &Customer::generate("jane"),
        "look",
        Some(MediaSpec::photo()),
    );
    let url = event.attachment.unwrap().url;
    let path = url.strip_prefix(h.sim.base_url().as_str()).unwrap();
    let own = h.get(&format!("/{path}")).await;
    assert_eq!(own.status, 200);
    assert_eq!(own.header("content-type"), "image/jpeg");
    let stranger = Account::generate("stranger");
    h.sim.add_account(stranger.clone());
    assert_eq!(h.get_as(&stranger, &format!("/{path}")).await.status, 403);
    assert_eq!(h.send(h.client.get(url.as_str())).await.status, 401);
}

#[tokio::test]
async fn media_serve_their_content_and_feel_the_media_faults() {
    let h = harness().await;
    let photo = MediaSpec {
        content: Some(vec![0xff, 0xd8, 0xff, 0x00, 0x01]),
        ..MediaSpec::photo()
    };
    let event = h
        .sim
        .customer_dm(h.user_id(), &Customer::generate("jane"), "", Some(photo));
    let url = event.attachment.unwrap().url;
    let path = format!("/{}", url.strip_prefix(h.sim.base_url().as_str()).unwrap());
    let (content_type, bytes) = h.sim.media_content(&url).unwrap();
    assert_eq!(content_type, "image/jpeg");
    assert_eq!(bytes, [0xff, 0xd8, 0xff, 0x00, 0x01]);
    let response = h.get_response(&path).await;
    assert_eq!(response.content_length(), Some(5));
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(h.sim.media_content("http://elsewhere/x.jpg"), None);

    h.sim.set_fault(
        h.user_id(),
        Fault::MediaServerError {
            status: 503,
            times: Some(1),
        },
    );
    assert_eq!(h.get(&path).await.status, 503);
    assert_eq!(h.get(&path).await.status, 200, "used up");
    // Reads' faults do not reach media, nor media faults reads.
    h.sim.set_fault(
        h.user_id(),
        Fault::ReadServerError {
            status: 500,
            times: None,
        },
    );
    assert_eq!(h.get(&path).await.status, 200);
    h.sim.clear_faults(h.user_id());

    h.sim.set_fault(
        h.user_id(),
        Fault::MediaLargeBody {
            bytes: 40_000,
            content_length: false,
        },
    );
    let response = h.get_response(&path).await;
    assert_eq!(response.content_length(), None, "streamed without a size");
    assert_eq!(response.bytes().await.unwrap().len(), 40_000);

    h.sim
        .set_fault(h.user_id(), Fault::MediaTimeout { times: Some(1) });
    let error = h
        .client
        .get(h.url(&path))
        .header(
            AUTHORIZATION,
            h.authorization(&h.account, "GET", &h.url(&path)),
        )
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("held");
    assert!(error.is_timeout(), "{error}");
}

#[tokio::test]
async fn only_the_last_30_days_are_listed() {
    let h = harness().await;
    let customer = Customer::generate("jane");
    let now = h.clock.now();
    h.sim.customer_dm_at(
        h.user_id(),
        &customer,
        "31 days ago",
        None,
        now - chrono::Duration::days(31),
    );
    h.sim.customer_dm_at(
        h.user_id(),
        &customer,
        "29 days ago",
        None,
        now - chrono::Duration::days(29),
    );
    let answer = h.get("/2/dm_events").await;
    assert_eq!(answer.json()["data"].as_array().unwrap().len(), 1);
    assert_eq!(answer.json()["data"][0]["text"], "29 days ago");
    assert_eq!(h.sim.dm_events_for(h.user_id()).len(), 2, "still stored");

    h.clock.advance(Duration::from_secs(2 * 24 * 3600));
    assert_eq!(
        h.get("/2/dm_events").await.body,
        r#"{"meta":{"result_count":0}}"#
    );
}

#[tokio::test]
async fn every_event_returned_is_billed_and_nothing_else() {
    let h = harness().await;
    let customer = Customer::generate("jane");
    for n in 0..7 {
        h.sim
            .customer_dm(h.user_id(), &customer, &format!("m{n}"), None);
    }
    let first = h.get("/2/dm_events?max_results=5").await;
    assert_eq!(h.sim.billed_dm_events(h.user_id()), 5);
    let next = meta(&first.json(), "next_token").unwrap().to_string();
    h.get(&format!(
        "/2/dm_events?max_results=5&pagination_token={next}"
    ))
    .await;
    assert_eq!(h.sim.billed_dm_events(h.user_id()), 7);
    // Refused and empty answers bill nothing.
    h.get("/2/dm_events?max_results=0").await;
    h.get("/2/dm_events?event_types=ParticipantsLeave").await;
    assert_eq!(h.sim.billed_dm_events(h.user_id()), 7);
    assert_eq!(h.sim.counters().dm_events_billed, 7);
    assert_eq!(h.sim.billed_dm_events("42"), 0);

    let billing = h.send(h.client.get(h.url("/_sim/billing"))).await;
    assert_eq!(billing.json()["dm_events_billed"][h.user_id()], 7);
}

#[tokio::test]
async fn reads_have_their_own_window_and_answer_429_over_it() {
    let h = harness().await;
    h.sim.set_fault(
        h.user_id(),
        Fault::ReadRateLimitWindow {
            limit: 2,
            window_secs: 60,
        },
    );
    let first = h.get("/2/dm_events").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-rate-limit-limit"), "2");
    assert_eq!(first.header("x-rate-limit-remaining"), "1");
    assert_eq!(h.get("/2/dm_events").await.status, 200);
    let limited = h.get("/2/dm_events").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body, problems::RATE_LIMITED);
    assert_eq!(limited.header("x-rate-limit-remaining"), "0");
    let reset: i64 = limited.header("x-rate-limit-reset").parse().unwrap();
    assert!(reset > h.clock.now().timestamp() && reset <= h.clock.now().timestamp() + 61);
    assert_eq!(h.sim.counters().rate_limited, 1);

    // Sends keep their own, untouched window.
    let send = h.post(&with_participant(RECIPIENT), hello()).await;
    assert_eq!(send.status, 201);
    assert_eq!(send.header("x-rate-limit-limit"), "1000");

    h.clock.advance(Duration::from_secs(60));
    assert_eq!(h.get("/2/dm_events").await.status, 200);
    h.sim.clear_faults(h.user_id());
    assert_eq!(
        h.get("/2/dm_events").await.header("x-rate-limit-limit"),
        "1000"
    );
}

#[tokio::test]
async fn read_window_is_configurable() {
    let h = harness_with(SimulatorConfig {
        read_rate_limit: crate::RateLimitWindow {
            limit: 15,
            window: Duration::from_secs(900),
        },
        ..SimulatorConfig::default()
    })
    .await;
    for _ in 0..15 {
        assert_eq!(h.get("/2/dm_events").await.status, 200);
    }
    assert_eq!(h.get("/2/dm_events").await.status, 429);
}

#[tokio::test]
async fn billing_and_account_faults_reach_reads_but_send_incidents_do_not() {
    let h = harness().await;
    for (fault, status, body) in [
        (Fault::CreditsDepleted, 402, problems::CREDITS_DEPLETED),
        (Fault::PaymentRequired, 402, problems::PAYMENT_REQUIRED),
        (Fault::UsageCapped, 429, problems::USAGE_CAPPED),
        (Fault::MissingPermission, 403, problems::OAUTH1_PERMISSIONS),
        (Fault::NotEnrolled, 403, problems::CLIENT_NOT_ENROLLED),
        (Fault::Unauthorized, 401, problems::UNAUTHORIZED),
    ] {
        h.sim.set_fault(h.user_id(), fault.clone());
        let answer = h.get("/2/dm_events").await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (status, body),
            "{fault:?}"
        );
        h.sim.clear_faults(h.user_id());
    }
    h.sim.set_fault(h.user_id(), Fault::SpendCapReached);
    assert_eq!(h.get("/2/dm_events").await.status, 403);
    h.sim.clear_faults(h.user_id());

    h.sim.set_fault(
        h.user_id(),
        Fault::ServerError {
            status: 503,
            times: Some(1),
        },
    );
    assert_eq!(h.get("/2/dm_events").await.status, 200, "a send incident");
    assert_eq!(
        h.post(&with_participant(RECIPIENT), hello()).await.status,
        503
    );

    h.sim.set_fault(
        h.user_id(),
        Fault::ReadServerError {
            status: 500,
            times: Some(1),
        },
    );
    assert_eq!(
        h.post(&with_participant(RECIPIENT), hello()).await.status,
        201
    );
    let failed = h.get("/2/dm_events").await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["type"], "about:blank");
    assert_eq!(h.get("/2/dm_events").await.status, 200, "used up");
    // One event (the 201 send) existed for the one non-empty 200; failed reads bill nothing.
    assert_eq!(h.sim.billed_dm_events(h.user_id()), 1);
}

#[tokio::test]
async fn read_timeout_holds_the_read() {
    let h = harness().await;
    h.sim
        .set_fault(h.user_id(), Fault::ReadTimeout { times: Some(1) });
    let url = h.url("/2/dm_events");
    let authorization = h.authorization(&h.account, "GET", &url);
    let error = h
        .client
        .get(url)
        .header(AUTHORIZATION, authorization)
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("held");
    assert!(error.is_timeout());
    assert_eq!(h.get("/2/dm_events").await.status, 200);
}

#[tokio::test]
async fn app_only_bearer_is_refused_for_dm_reads() {
    let h = harness().await;
    let answer = h
        .bearer(&h.account, reqwest::Method::GET, "/2/dm_events", None)
        .await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.json()["type"],
        "https://api.twitter.com/2/problems/unsupported-authentication"
    );
    let unsigned = h.send(h.client.get(h.url("/2/dm_events"))).await;
    assert_eq!(unsigned.status, 401);
}

#[tokio::test]
async fn sends_are_events_of_the_sender_with_the_send_ids() {
    let h = harness().await;
    let answer = h.post(&with_participant(RECIPIENT), hello()).await;
    let sent_id = answer.json()["data"]["dm_event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let customer = Customer::generate("jane");
    let inbound = h.sim.customer_dm(h.user_id(), &customer, "hi", None);
    assert!(inbound.id.parse::<u64>().unwrap() > sent_id.parse::<u64>().unwrap());

    let listed = h
        .get("/2/dm_events?dm_event.fields=sender_id,dm_conversation_id")
        .await
        .json();
    assert_eq!(listed["data"][0]["id"], inbound.id.as_str());
    assert_eq!(listed["data"][1]["id"], sent_id.as_str());
    assert_eq!(listed["data"][1]["sender_id"], h.user_id());
    assert_eq!(
        listed["data"][1]["dm_conversation_id"],
        h.sim.sent_dms()[0].dm_conversation_id.as_str()
    );
    let events = h.sim.dm_events_for(h.user_id());
    assert_eq!(events[0].source_app_id.as_deref().map(str::len), Some(8));
    assert_eq!(events[1].source_app_id, None);
}
