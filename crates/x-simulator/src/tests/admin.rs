use super::*;

fn admin(h: &Harness, path: &str) -> Url {
    h.url(&format!("/_sim/{path}"))
}

#[tokio::test]
async fn faults_can_be_set_and_cleared_over_http() {
    let h = harness().await;
    let set = h
        .send(h.client.post(admin(&h, "faults")).json(&serde_json::json!({
            "user_id": h.user_id(),
            "fault": { "kind": "credits_depleted" },
        })))
        .await;
    assert_eq!(set.status, 204, "{}", set.body);
    let path = with_participant(RECIPIENT);
    assert_eq!(h.post(&path, hello()).await.status, 402);

    let mut clear = admin(&h, "faults");
    clear.query_pairs_mut().append_pair("user_id", h.user_id());
    assert_eq!(h.send(h.client.delete(clear)).await.status, 204);
    assert_eq!(h.post(&path, hello()).await.status, 201);
}

#[tokio::test]
async fn limited_faults_take_their_optional_fields() {
    let h = harness().await;
    let set = h
        .send(h.client.post(admin(&h, "faults")).json(&serde_json::json!({
            "user_id": h.user_id(),
            "fault": { "kind": "server_error", "status": 503, "times": 1 },
        })))
        .await;
    assert_eq!(set.status, 204, "{}", set.body);
    let path = with_participant(RECIPIENT);
    assert_eq!(h.post(&path, hello()).await.status, 503);
    assert_eq!(h.post(&path, hello()).await.status, 201);
}

#[tokio::test]
async fn bad_fault_requests_are_refused_without_effect() {
    let h = harness().await;
    for (body, status) in [
        ("not json".to_string(), 400),
        (
            r#"{"user_id":"1","fault":{"kind":"gremlins"}}"#.to_string(),
            400,
        ),
        (r#"{"fault":{"kind":"credits_depleted"}}"#.to_string(), 400),
        (
            r#"{"user_id":"1","fault":{"kind":"credits_depleted"}}"#.to_string(),
            404,
        ),
    ] {
        let answer = h
            .send(
                h.client
                    .post(admin(&h, "faults"))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone()),
            )
            .await;
        assert_eq!(answer.status, status, "{body}");
        assert!(answer.json()["error"].is_string());
    }
    assert_eq!(
        h.post(&with_participant(RECIPIENT), hello()).await.status,
        201
    );
}

#[tokio::test]
async fn dms_requests_and_counters_are_listed() {
    let h = harness().await;
    h.post(&with_participant(RECIPIENT), hello()).await;

    let dms = h.send(h.client.get(admin(&h, "dms"))).await;
    assert_eq!(dms.status, 200);
    let listed: Vec<crate::SentDm> = serde_json::from_str(&dms.body).unwrap();
    assert_eq!(listed, h.sim.sent_dms());

    let mut filtered = admin(&h, "dms");
    filtered.query_pairs_mut().append_pair("user_id", "42");
    let none: Vec<crate::SentDm> =
        serde_json::from_str(&h.send(h.client.get(filtered)).await.body).unwrap();
    assert!(none.is_empty());

    let requests = h.send(h.client.get(admin(&h, "requests"))).await;
    let listed: Vec<crate::RequestRecord> = serde_json::from_str(&requests.body).unwrap();
    assert_eq!(listed.len(), 1, "admin calls are not logged");
    assert_eq!(listed[0].status, 201);
    assert_eq!(listed[0].user_id.as_deref(), Some(h.user_id()));

    let counters = h.send(h.client.get(admin(&h, "counters"))).await;
    let counters: crate::Counters = serde_json::from_str(&counters.body).unwrap();
    assert_eq!((counters.requests, counters.dms_sent), (1, 1));
}

#[tokio::test]
async fn reset_forgets_history_but_keeps_accounts() {
    let h = harness().await;
    let path = with_participant(RECIPIENT);
    h.post(&path, hello()).await;
    h.sim.set_fault(h.user_id(), crate::Fault::NotEnrolled);
    assert_eq!(h.send(h.client.post(admin(&h, "reset"))).await.status, 204);
    assert!(h.sim.sent_dms().is_empty());
    assert!(h.sim.requests().is_empty());
    assert_eq!(h.sim.counters(), crate::Counters::default());
    assert_eq!(h.post(&path, hello()).await.status, 201);
}

#[tokio::test]
async fn accounts_can_be_added_over_http() {
    let h = harness().await;
    let newcomer = Account::generate("newcomer");
    let added = h
        .send(h.client.post(admin(&h, "accounts")).json(&newcomer))
        .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let listed: Vec<Account> =
        serde_json::from_str(&h.send(h.client.get(admin(&h, "accounts"))).await.body).unwrap();
    assert!(listed.contains(&newcomer));
    let answer = h
        .post_as(&newcomer, &with_participant(RECIPIENT), hello())
        .await;
    assert_eq!(answer.status, 201);
}
