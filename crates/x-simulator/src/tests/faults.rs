use super::*;
use crate::{problems, Fault};

#[tokio::test]
async fn each_billing_and_permission_fault_answers_xs_status_and_body() {
    let h = harness().await;
    let path = with_participant(RECIPIENT);
    let cases = [
        (Fault::CreditsDepleted, 402, problems::CREDITS_DEPLETED),
        (Fault::PaymentRequired, 402, problems::PAYMENT_REQUIRED),
        (Fault::UsageCapped, 429, problems::USAGE_CAPPED),
        (Fault::MissingPermission, 403, problems::OAUTH1_PERMISSIONS),
        (Fault::NotEnrolled, 403, problems::CLIENT_NOT_ENROLLED),
        (Fault::Unauthorized, 401, problems::UNAUTHORIZED),
    ];
    let count = cases.len();
    for (fault, status, body) in cases {
        h.sim.set_fault(h.user_id(), fault.clone());
        let answer = h.post(&path, hello()).await;
        assert_eq!(answer.status, status, "{fault:?}");
        assert_eq!(answer.body, body, "{fault:?}");
        h.sim.clear_faults(h.user_id());
        assert_eq!(h.post(&path, hello()).await.status, 201, "after {fault:?}");
    }
    assert_eq!(h.sim.sent_dms().len(), count);
    assert_eq!(h.sim.counters().faults_injected, count as u64);
}

#[tokio::test]
async fn usage_cap_comes_with_plenty_of_rate_limit_left() {
    let h = harness().await;
    h.sim.set_fault(h.user_id(), Fault::UsageCapped);
    let answer = h.post(&with_participant(RECIPIENT), hello()).await;
    assert_eq!(answer.status, 429);
    let remaining: u32 = answer.header("x-rate-limit-remaining").parse().unwrap();
    assert!(remaining > 900);
    assert_eq!(answer.json()["title"], "UsageCapExceeded");
}

#[tokio::test]
async fn missing_permission_shows_in_the_access_level_header() {
    let h = harness().await;
    h.sim.set_fault(h.user_id(), Fault::MissingPermission);
    let answer = h.post(&with_participant(RECIPIENT), hello()).await;
    assert_eq!(answer.header("x-access-level"), "read-write");

    let url = h.url("/2/users/me");
    let authorization = h.authorization(&h.account, "GET", &url);
    let me = h
        .send(h.client.get(url).header(AUTHORIZATION, authorization))
        .await;
    assert_eq!(me.status, 200, "users/me still works, as on X");
    assert_eq!(me.header("x-access-level"), "read-write");
}

#[tokio::test]
async fn a_regenerated_token_replaces_the_old_one_and_carries_the_dm_permission() {
    let h = harness().await;
    h.sim.set_fault(h.user_id(), Fault::MissingPermission);
    let fresh = h
        .sim
        .regenerate_access_token(h.user_id())
        .expect("a known account");
    assert_ne!(fresh.access_token, h.account.access_token);
    let url = h.url("/2/users/me");
    let old = h.authorization(&h.account, "GET", &url);
    let old = h
        .send(h.client.get(url.clone()).header(AUTHORIZATION, old))
        .await;
    assert_eq!(old.status, 401, "the old token is refused");
    let new = h.authorization(&fresh, "GET", &url);
    let new = h.send(h.client.get(url).header(AUTHORIZATION, new)).await;
    assert_eq!(new.status, 200);
    assert_eq!(new.header("x-access-level"), "read-write-directmessages");
}

#[tokio::test]
async fn spend_cap_answers_403_with_a_reset_date() {
    let h = harness().await;
    h.sim.set_fault(h.user_id(), Fault::SpendCapReached);
    let answer = h.post(&with_participant(RECIPIENT), hello()).await;
    assert_eq!(answer.status, 403);
    let body = answer.json();
    assert_eq!(body["title"], "SpendCapReached");
    assert_eq!(body["detail"], "Your monthly spend cap has been reached.");
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["status"], 403);
    let reset_date =
        chrono::NaiveDate::parse_from_str(body["reset_date"].as_str().unwrap(), "%Y-%m-%d")
            .unwrap();
    assert_eq!(chrono::Datelike::day(&reset_date), 1);
    assert!(reset_date > h.clock.now().date_naive());
}

#[tokio::test]
async fn refusing_recipient_blocks_only_sends_to_them() {
    let h = harness().await;
    h.sim.set_fault(
        h.user_id(),
        Fault::RecipientRefuses {
            participant_id: RECIPIENT.into(),
        },
    );
    let refused = h.post(&with_participant(RECIPIENT), hello()).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body, problems::FORBIDDEN);

    let conversation = format!("/2/dm_conversations/{}-{RECIPIENT}/messages", h.user_id());
    assert_eq!(h.post(&conversation, hello()).await.status, 403);

    let other = h.post(&with_participant("42"), hello()).await;
    assert_eq!(other.status, 201);
    assert_eq!(h.sim.sent_dms().len(), 1);
}

#[tokio::test]
async fn server_error_with_times_fails_that_often_then_recovers() {
    let h = harness().await;
    h.sim.set_fault(
        h.user_id(),
        Fault::ServerError {
            status: 503,
            times: Some(2),
        },
    );
    let path = with_participant(RECIPIENT);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let answer = h.post(&path, hello()).await;
        if answer.status == 503 {
            assert_eq!(answer.json()["status"], 503);
            assert_eq!(answer.json()["type"], "about:blank");
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [503, 503, 201]);
    assert_eq!(h.sim.sent_dms().len(), 1);
}

#[tokio::test]
async fn server_error_without_times_lasts_until_cleared() {
    let h = harness().await;
    h.sim.set_fault(
        h.user_id(),
        Fault::ServerError {
            status: 500,
            times: None,
        },
    );
    let path = with_participant(RECIPIENT);
    for _ in 0..3 {
        assert_eq!(h.post(&path, hello()).await.status, 500);
    }
    h.sim.clear_faults(h.user_id());
    assert_eq!(h.post(&path, hello()).await.status, 201);
}

#[tokio::test]
async fn faults_of_one_account_leave_others_alone() {
    let h = harness().await;
    let other = Account::generate("other_brand");
    h.sim.add_account(other.clone());
    h.sim.set_fault(h.user_id(), Fault::CreditsDepleted);
    let path = with_participant(RECIPIENT);
    assert_eq!(h.post(&path, hello()).await.status, 402);
    assert_eq!(h.post_as(&other, &path, hello()).await.status, 201);
}

#[tokio::test]
async fn timeout_holds_the_answer_until_the_client_gives_up_then_recovers() {
    let h = harness().await;
    h.sim
        .set_fault(h.user_id(), Fault::Timeout { times: Some(1) });
    let path = with_participant(RECIPIENT);
    h.post_expecting_timeout(&path, hello()).await;

    // The abandoned request is logged once the server notices the client left.
    let logged = promptly(h.sim.wait_for_requests(h.user_id(), 1)).await;
    assert_eq!(logged[0].status, crate::CLIENT_CLOSED_REQUEST);
    assert_eq!(h.sim.counters().abandoned, 1);

    assert_eq!(h.post(&path, hello()).await.status, 201);
    assert_eq!(h.sim.sent_dms().len(), 1, "the held request sent nothing");
}

#[tokio::test]
async fn latency_delays_the_answer_but_not_the_send() {
    let h = harness().await;
    h.sim
        .set_fault(h.user_id(), Fault::Latency { millis: 600_000 });
    let path = with_participant(RECIPIENT);
    h.post_expecting_timeout(&path, hello()).await;
    assert_eq!(
        h.sim.sent_dms().len(),
        1,
        "X acted; only the answer was slow"
    );

    h.sim.clear_faults(h.user_id());
    assert_eq!(h.post(&path, hello()).await.status, 201);
}

#[tokio::test]
async fn shutdown_releases_held_requests() {
    let h = harness().await;
    h.sim.set_fault(h.user_id(), Fault::Timeout { times: None });
    let url = h.url(&with_participant(RECIPIENT));
    let held = h
        .client
        .post(url.clone())
        .header(AUTHORIZATION, h.authorization(&h.account, "POST", &url))
        .header(CONTENT_TYPE, "application/json")
        .body(hello())
        .send();
    let held = tokio::spawn(held);
    // The hold is decided before anything is logged; the fault counter shows it began.
    promptly(async {
        while h.sim.counters().faults_injected == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    promptly(h.sim.clone().shutdown()).await;
    let answer = promptly(held)
        .await
        .unwrap()
        .expect("an answer, not a cut connection");
    assert_eq!(answer.status(), 503);
    assert!(
        h.client.post(url).send().await.is_err(),
        "no longer listening"
    );
}
