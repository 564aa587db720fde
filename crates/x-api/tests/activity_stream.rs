//! The activity stream reader against the project's X simulator: events, cuts, stalls and
//! refusals as X's wire format has them.

use std::time::Duration;

use secrecy::SecretString;
use x_simulator::{Account, Customer, Simulator, SimulatorConfig};
use xbridge_x_api::activity_stream::{ActivityStreamClient, StreamError, StreamItem};
use xbridge_x_api::XHttp;

async fn simulator(account: &Account) -> Simulator {
    let sim = Simulator::start(SimulatorConfig {
        accounts: vec![account.clone()],
        ..SimulatorConfig::default()
    })
    .await
    .expect("the simulator starts");
    let answer = reqwest::Client::new()
        .post(sim.base_url().join("/2/activity/subscriptions").unwrap())
        .bearer_auth(&account.bearer_token)
        .json(&serde_json::json!({"event_type":"dm.received","filter":{"user_id":account.user_id}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    sim
}

fn client(sim: &Simulator, token: &str, stall_after: Duration) -> ActivityStreamClient {
    ActivityStreamClient::new(
        &XHttp::new().unwrap(),
        sim.base_url(),
        SecretString::from(token.to_owned()),
        stall_after,
    )
}

async fn next_event(
    stream: &mut xbridge_x_api::activity_stream::ActivityStream,
) -> xbridge_x_api::activity_stream::ActivityEvent {
    loop {
        match stream.next().await.expect("the stream goes on") {
            StreamItem::Event(event) => return event,
            StreamItem::KeepAlive => {}
            StreamItem::Skipped(why) => panic!("skipped: {why}"),
        }
    }
}

#[tokio::test]
async fn events_arrive_a_cut_ends_the_stream_and_a_backfill_replays_the_gap() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let client = client(&sim, &account.bearer_token, Duration::from_secs(60));
    let jane = Customer::generate("jane_doe");

    let mut stream = client.connect(None).await.unwrap();
    let first = sim.customer_dm(&account.user_id, &jane, "one", None);
    let event = next_event(&mut stream).await;
    assert_eq!(event.for_user_id, account.user_id);
    assert_eq!(event.event_type, "dm.received");
    assert!(String::from_utf8_lossy(&event.body).contains(&first.id));

    sim.cut_activity_streams();
    let error = stream.next().await.expect_err("cut");
    assert!(matches!(error, StreamError::Disconnected(_)), "{error:?}");
    assert!(!error.is_permanent());

    let missed = sim.customer_dm(&account.user_id, &jane, "two", None);
    let mut again = client.connect(Some(5)).await.unwrap();
    let replayed = [next_event(&mut again).await, next_event(&mut again).await];
    assert!(String::from_utf8_lossy(&replayed[0].body).contains(&first.id));
    assert!(String::from_utf8_lossy(&replayed[1].body).contains(&missed.id));
}

#[tokio::test]
async fn a_silent_stream_is_reported_stalled() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    sim.set_activity_stream_keep_alive(Duration::from_secs(3600));
    let client = client(&sim, &account.bearer_token, Duration::from_millis(200));
    let mut stream = client.connect(None).await.unwrap();
    let error = stream.next().await.expect_err("stalled");
    assert!(matches!(error, StreamError::Stalled(_)), "{error:?}");
}

#[tokio::test]
async fn keep_alives_keep_a_quiet_stream_alive() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    sim.set_activity_stream_keep_alive(Duration::from_millis(20));
    let client = client(&sim, &account.bearer_token, Duration::from_secs(10));
    let mut stream = client.connect(None).await.unwrap();
    for _ in 0..3 {
        assert_eq!(stream.next().await.unwrap(), StreamItem::KeepAlive);
    }
}

#[tokio::test]
async fn refusals_are_typed_and_the_token_never_shows() {
    let account = Account::generate("acme_support");
    let sim = simulator(&account).await;
    let wrong = client(&sim, "not-the-apps-token", Duration::from_secs(10));
    let error = wrong.connect(None).await.expect_err("refused");
    assert!(error.is_permanent(), "{error:?}");
    assert!(!format!("{error} {error:?} {wrong:?}").contains("not-the-apps-token"));

    let right = client(&sim, &account.bearer_token, Duration::from_secs(10));
    let _one = right.connect(None).await.unwrap();
    let _two = right.connect(None).await.unwrap();
    let third = right.connect(None).await.expect_err("X allows two");
    assert!(
        matches!(third, StreamError::TooManyConnections),
        "{third:?}"
    );
    assert!(!third.is_permanent());
}
