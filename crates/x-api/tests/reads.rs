//! The inbound reads against the project's X simulator, which checks the OAuth 1.0a
//! signature (query parameters included) with code of its own and pages like X.

use std::collections::HashSet;
use std::time::Duration;

use x_simulator::{Account, Customer, Fault, Simulator, SimulatorConfig};
use xbridge_x_api::{DmEventsRequest, DmTarget, UserCredentials, XClient, XClientConfig, XError};

async fn simulator(account: &Account) -> Simulator {
    Simulator::start(SimulatorConfig {
        accounts: vec![account.clone()],
        ..SimulatorConfig::default()
    })
    .await
    .expect("the simulator starts")
}

fn client(sim: &Simulator, account: &Account) -> XClient {
    XClient::new(
        XClientConfig {
            base_url: sim.base_url(),
            request_timeout: Duration::from_secs(10),
            ..XClientConfig::default()
        },
        UserCredentials {
            consumer_key: account.consumer_key.clone().into(),
            consumer_secret: account.consumer_secret.clone().into(),
            access_token: account.access_token.clone().into(),
            access_token_secret: account.access_token_secret.clone().into(),
        },
    )
    .unwrap()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("a JSON body")
}

#[tokio::test]
async fn a_page_walk_returns_every_event_once() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let jane = Customer::generate("jane_doe");
    let injected: Vec<String> = (0..7)
        .map(|n| {
            sim.customer_dm(&account.user_id, &jane, &format!("message {n}"), None)
                .id
        })
        .collect();
    let client = client(&sim, &account);

    let mut seen = Vec::new();
    let mut page = DmEventsRequest::first(3);
    let mut pages = 0;
    loop {
        let answer = client.list_dm_events(&page).await.expect("a page");
        assert!(answer.rate_limit.is_some(), "X announces the read window");
        let body = json(&answer.body);
        pages += 1;
        for event in body["data"].as_array().into_iter().flatten() {
            assert_eq!(event["event_type"], "MessageCreate");
            assert_eq!(event["sender_id"], jane.user_id.as_str());
            seen.push(event["id"].as_str().unwrap().to_owned());
        }
        if pages == 1 {
            // The expansion brought the sender's profile along.
            let user = &body["includes"]["users"][0];
            assert_eq!(user["username"], "jane_doe");
            assert_eq!(user["profile_image_url"], jane.profile_image_url.as_str());
        }
        match body["meta"]["next_token"].as_str() {
            Some(token) => page.pagination_token = Some(token.to_owned()),
            None => break,
        }
        assert!(pages < 10, "the walk ends");
    }

    assert_eq!(pages, 3);
    assert_eq!(seen.len(), injected.len(), "{seen:?}");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>(),
        injected.iter().collect::<HashSet<_>>()
    );
    // Newest first.
    let newest_first: Vec<String> = injected.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    assert_eq!(sim.billed_dm_events(&account.user_id), 7);
    sim.shutdown().await;
}

#[tokio::test]
async fn an_empty_account_gives_an_empty_page() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let answer = client(&sim, &account)
        .list_dm_events(&DmEventsRequest::first(100))
        .await
        .expect("signed with its query parameters, so no 401");
    assert_eq!(json(&answer.body)["meta"]["result_count"], 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_user_lookup_returns_the_contact_profile() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let jane = Customer::generate("jane_doe");
    sim.add_customer(jane.clone());
    let client = client(&sim, &account);

    let user = client.get_user(&jane.user_id).await.unwrap();
    assert_eq!(user.id, jane.user_id);
    assert_eq!(user.username, "jane_doe");
    assert_eq!(user.name, jane.name);
    assert_eq!(
        user.profile_image_url.as_deref(),
        Some(jane.profile_image_url.as_str())
    );
    assert!(client.read_pacer().blocked_until().is_none());

    let stranger = Customer::generate("nobody");
    let error = client.get_user(&stranger.user_id).await.unwrap_err();
    assert!(
        matches!(
            error,
            XError::InvalidRequest {
                status: 404,
                problem: Some(_)
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.problem_type(), Some("resource-not-found"));
    sim.shutdown().await;
}

#[tokio::test]
async fn out_of_credits_on_reads_is_credits_exhausted() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let jane = Customer::generate("jane_doe");
    sim.customer_dm(&account.user_id, &jane, "hello", None);
    sim.set_fault(&account.user_id, Fault::CreditsDepleted);
    let client = client(&sim, &account);

    let error = client
        .list_dm_events(&DmEventsRequest::first(10))
        .await
        .unwrap_err();
    assert!(
        matches!(error, XError::CreditsExhausted { status: 402, .. }),
        "{error:?}"
    );
    let error = client.get_user(&jane.user_id).await.unwrap_err();
    assert!(
        matches!(error, XError::CreditsExhausted { status: 402, .. }),
        "{error:?}"
    );
    assert_eq!(sim.billed_dm_events(&account.user_id), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_used_up_read_window_holds_reads_but_not_sends() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let jane = Customer::generate("jane_doe");
    sim.customer_dm(&account.user_id, &jane, "hello", None);
    sim.set_fault(
        &account.user_id,
        Fault::ReadRateLimitWindow {
            limit: 1,
            window_secs: 900,
        },
    );

    // The only read of the window goes through; its headers say none is left.
    let poller = client(&sim, &account);
    poller
        .list_dm_events(&DmEventsRequest::first(10))
        .await
        .unwrap();
    let blocked_until = poller.read_pacer().blocked_until().expect("reads wait");
    assert!(blocked_until > chrono::Utc::now() + chrono::Duration::seconds(800));
    assert!(
        tokio::time::timeout(Duration::ZERO, poller.read_pacer().ready())
            .await
            .is_err(),
        "no read before the reset"
    );

    // A client that did not know gets X's 429, and its read pacer learns the reset.
    let other = client(&sim, &account);
    let error = other
        .list_dm_events(&DmEventsRequest::first(10))
        .await
        .unwrap_err();
    let XError::RateLimited { reset_at, .. } = error else {
        panic!("{error:?}")
    };
    assert!(reset_at.expect("X said when") > chrono::Utc::now());
    assert!(other.read_pacer().blocked_until().is_some());

    // Sends draw from their own window.
    for client in [&poller, &other] {
        assert_eq!(client.pacer().blocked_until(), None);
        client
            .send_dm(
                &DmTarget::Participant(jane.user_id.clone().into()),
                "We are on it",
            )
            .await
            .expect("sends are unaffected by the read window");
    }
    assert_eq!(sim.sent_dms_for(&account.user_id).len(), 2);
    sim.shutdown().await;
}
