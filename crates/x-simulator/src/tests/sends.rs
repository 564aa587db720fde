use super::*;
use crate::problems::INVALID_REQUEST_TYPE;

#[tokio::test]
async fn send_answers_201_in_x_shape_with_x_headers() {
    let h = harness().await;
    let answer = h.post(&with_participant(RECIPIENT), hello()).await;
    assert_eq!(answer.status, 201, "{}", answer.body);

    let body = answer.json();
    let conversation_id = body["data"]["dm_conversation_id"].as_str().unwrap();
    let event_id = body["data"]["dm_event_id"].as_str().unwrap();
    let own: u64 = h.user_id().parse().unwrap();
    let other: u64 = RECIPIENT.parse().unwrap();
    assert_eq!(
        conversation_id,
        format!("{}-{}", own.min(other), own.max(other))
    );
    assert_eq!(event_id.len(), 19);
    assert_eq!(body.as_object().unwrap().len(), 1);
    assert_eq!(body["data"].as_object().unwrap().len(), 2);

    assert_eq!(answer.header("x-rate-limit-limit"), "1000");
    assert_eq!(answer.header("x-rate-limit-remaining"), "999");
    let reset: i64 = answer.header("x-rate-limit-reset").parse().unwrap();
    assert!(reset > h.clock.now().timestamp());
    assert_eq!(answer.header("x-access-level"), "read-write-directmessages");
    assert!(answer
        .header("content-type")
        .starts_with("application/json"));
    assert!(answer
        .header("location")
        .ends_with(&format!("/2/dm_events/\"{event_id}\"")));

    let dms = h.sim.sent_dms();
    assert_eq!(dms.len(), 1);
    assert_eq!(dms[0].dm_event_id, event_id);
    assert_eq!(dms[0].dm_conversation_id, conversation_id);
    assert_eq!(dms[0].sender_id, h.account.user_id);
    assert_eq!(dms[0].participant_id.as_deref(), Some(RECIPIENT));
    assert_eq!(dms[0].text, "Hello from the CRM");
    assert!(dms[0].media_ids.is_empty());
    assert_eq!(h.sim.counters().dms_sent, 1);
}

#[tokio::test]
async fn event_ids_increase() {
    let h = harness().await;
    for n in 0..5 {
        let text = format!(r#"{{"text":"message {n}"}}"#);
        assert_eq!(
            h.post(&with_participant(RECIPIENT), &text).await.status,
            201
        );
    }
    let ids: Vec<u64> = h
        .sim
        .sent_dms()
        .iter()
        .map(|dm| dm.dm_event_id.parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
}

#[tokio::test]
async fn conversation_endpoint_accepts_the_senders_conversations() {
    let h = harness().await;
    let own = h.user_id().to_string();
    let one_to_one = format!("{RECIPIENT}-{own}");
    let answer = h
        .post(
            &format!("/2/dm_conversations/{one_to_one}/messages"),
            hello(),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(
        answer.json()["data"]["dm_conversation_id"],
        one_to_one.as_str()
    );

    let group = "1578900353814519810";
    let answer = h
        .post(&format!("/2/dm_conversations/{group}/messages"), hello())
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);

    let dms = h.sim.sent_dms_for(&own);
    assert_eq!(dms[0].participant_id.as_deref(), Some(RECIPIENT));
    assert_eq!(dms[1].participant_id, None);
    assert_eq!(dms[1].dm_conversation_id, group);
}

#[tokio::test]
async fn sending_into_someone_elses_conversation_is_forbidden() {
    let h = harness().await;
    let answer = h
        .post("/2/dm_conversations/111-222/messages", hello())
        .await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.body, crate::problems::FORBIDDEN);
    assert!(h.sim.sent_dms().is_empty());
}

#[tokio::test]
async fn sends_x_would_reject_get_400_invalid_request_and_record_nothing() {
    let h = harness().await;
    let long_text =
        serde_json::json!({ "text": "a".repeat(crate::MAX_TEXT_CHARS + 1) }).to_string();
    let cases: Vec<(String, String)> = vec![
        (with_participant(RECIPIENT), "{not json".into()),
        (with_participant(RECIPIENT), "{}".into()),
        (
            with_participant(RECIPIENT),
            r#"{"text":"hi","quick_reply":{}}"#.into(),
        ),
        (with_participant(RECIPIENT), long_text),
        (
            with_participant(RECIPIENT),
            r#"{"attachments":[{"media_id":"x"}]}"#.into(),
        ),
        (with_participant("not-a-number"), hello().into()),
        (with_participant("12345678901234567890"), hello().into()),
        ("/2/dm_conversations/123/messages".into(), hello().into()),
        ("/2/dm_conversations/1-2-3/messages".into(), hello().into()),
        ("/2/dm_conversations/%FF%FE/messages".into(), hello().into()),
    ];
    for (path, body) in cases {
        let answer = h.post(&path, &body).await;
        assert_eq!(answer.status, 400, "{path} {body}: {}", answer.body);
        let problem = answer.json();
        assert_eq!(problem["type"], INVALID_REQUEST_TYPE);
        assert_eq!(problem["title"], "Invalid Request");
        assert!(problem["errors"][0]["message"].is_string());
        // Authenticated, so counted: the headers still tell the client where it stands.
        assert!(answer.headers.contains_key("x-rate-limit-remaining"));
    }
    assert!(h.sim.sent_dms().is_empty());
    assert_eq!(h.sim.counters().invalid_requests, 10);
}

#[tokio::test]
async fn text_of_exactly_10000_characters_is_accepted() {
    let h = harness().await;
    let body = serde_json::json!({ "text": "☃".repeat(crate::MAX_TEXT_CHARS) }).to_string();
    let answer = h.post(&with_participant(RECIPIENT), &body).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
}

#[tokio::test]
async fn wrong_content_type_is_invalid() {
    let h = harness().await;
    let url = h.url(&with_participant(RECIPIENT));
    let authorization = h.authorization(&h.account, "POST", &url);
    let answer = h
        .send(
            h.client
                .post(url)
                .header(AUTHORIZATION, authorization)
                .header(CONTENT_TYPE, "text/plain")
                .body(hello()),
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
}

#[tokio::test]
async fn unknown_routes_get_404_and_are_logged() {
    let h = harness().await;
    let answer = h.send(h.client.get(h.url("/2/tweets"))).await;
    assert_eq!(answer.status, 404);
    assert_eq!(h.sim.requests()[0].path, "/2/tweets");
}
