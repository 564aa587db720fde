//! Two bridges on one broker, as two replicas of one deployment, in this test's process.
//! Each has its own state file (the embedded store cannot be shared), so nothing but the
//! broker keeps them apart: a second poller or a second consumer of a reply queue would
//! show as a DM published twice or a reply sent twice.

mod common;

use common::{start_bridge, start_replica};
use x_simulator::Customer;
use xbridge_test_support::{reply, spawn_app, Crm, Event, TestApp, TestOptions};

fn polled() -> TestOptions {
    TestOptions {
        inbound: "poll_interval = \"50ms\"\n".into(),
        inbound_mode: Some("poll".into()),
        ..TestOptions::default()
    }
}

/// The next `message.received`, skipping other events (channel states).
async fn next_received(crm: &mut Crm) -> Event {
    loop {
        let event = crm.next_event().await;
        if event.body["type"] == "message.received" {
            return event;
        }
    }
}

/// Waits until the simulator answered `more` requests of `channel`'s account beyond
/// those so far: polls, when nothing else calls X.
async fn wait_for_more_requests(app: &TestApp, channel: &str, more: usize) {
    let so_far = app.simulator.requests_for(&app.user_id(channel)).len();
    app.wait_for_requests(channel, so_far + more).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_polls_and_the_other_replica_takes_over() {
    let app = spawn_app(polled()).await;
    let user = app.user_id("acme");
    let jane = Customer::generate("jane_doe");

    // Alone, the first replica gets the lease and polls.
    let first = start_bridge(&app).await;
    wait_for_more_requests(&app, "acme", 2).await;
    // The second one waits; were it polling too, its own (empty) state file would make
    // it set a cursor now and publish every later DM a second time.
    let second = start_replica(&app, &app.dir.path().join("second.redb")).await;
    wait_for_more_requests(&app, "acme", 4).await;
    let mut crm = app.crm().await;

    let mut dms = Vec::new();
    for text in ["one", "two", "three"] {
        let dm = app.simulator.customer_dm(&user, &jane, text, None);
        let event = next_received(&mut crm).await;
        assert_eq!(event.body["event_id"], dm.id.as_str(), "{text}");
        dms.push(dm);
    }
    // More polls after the last DM: time for a second poller to show itself.
    wait_for_more_requests(&app, "acme", 4).await;

    // The holder stops: the waiting replica takes over. Its first poll starts from now
    // (its state file has no cursor; a shared store would continue from the holder's).
    first.stop().await;
    wait_for_more_requests(&app, "acme", 2).await;
    let dm = app.simulator.customer_dm(&user, &jane, "four", None);
    // Next in the queue: the new DM, so no duplicate of the first three was published
    // while both replicas ran.
    let event = next_received(&mut crm).await;
    assert_eq!(event.body["event_id"], dm.id.as_str());
    assert_eq!(event.body["received_via"], "poll");

    second.stop().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_sends_a_channels_replies_in_order_and_the_other_takes_over() {
    let app = spawn_app(TestOptions::default()).await;
    let first = start_bridge(&app).await;
    let second = start_replica(&app, &app.dir.path().join("second.redb")).await;
    let crm = app.crm().await;

    for i in 1..=6 {
        crm.publish_reply(
            "acme",
            &reply(&format!("o{i}"), "944480690", &format!("part {i}")),
        )
        .await;
    }
    let texts: Vec<String> = app
        .wait_for_dms("acme", 6)
        .await
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(
        texts,
        ["part 1", "part 2", "part 3", "part 4", "part 5", "part 6"]
    );

    // The first replica registered first, so it was the active consumer; it stops and
    // the broker activates the other one. Separate state files: a reply consumed by both
    // would be sent twice.
    first.stop().await;
    for i in 7..=9 {
        crm.publish_reply(
            "acme",
            &reply(&format!("o{i}"), "944480690", &format!("part {i}")),
        )
        .await;
    }
    let texts: Vec<String> = app
        .wait_for_dms("acme", 9)
        .await
        .into_iter()
        .map(|d| d.text)
        .collect();
    let expected: Vec<String> = (1..=9).map(|i| format!("part {i}")).collect();
    assert_eq!(texts, expected);

    second.stop().await;
    app.cleanup().await;
}
