//! Replies while the state store cannot write, with a store double in front
//! of the real embedded store (the full-disk test with a real file is
//! `full_disk.rs`): nothing goes out that could not be recorded, the
//! RabbitMQ session is not torn down over it, and a send X accepted keeps its
//! record until the store takes it instead of being looked up on X.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use xbridge::app::Bridge;
use xbridge_core::config::Settings;
use xbridge_store::{EmbeddedStore, StateStore};
use xbridge_test_support::{reply, spawn_app, FailingStore, Refuse, TestOptions, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_wait_for_the_store_in_order_and_go_out_once_without_a_new_session() {
    let app = spawn_app(TestOptions::default()).await;
    let real: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(&app.state_path()).unwrap());
    let store = FailingStore::new(real.clone());
    let bridge = Bridge::build_with_store(
        Settings::from_toml(&app.config_toml()).unwrap(),
        store.clone(),
    )
    .await
    .unwrap();
    let mut ready = bridge.readiness();
    let mut inbound_ready = bridge.inbound_readiness();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bridge.run(shutdown.clone()));
    tokio::time::timeout(PATIENCE, ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, inbound_ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    // From here on, a lost session would show as a change of readiness.
    ready.mark_unchanged();
    let mut crm = app.crm().await;
    let user = app.user_id("acme");

    // The store stops taking writes (reads still work, as on a database gone
    // read-only): nothing can be recorded, so nothing is sent.
    store.refuse(Refuse::Writes);
    crm.publish_reply("acme", &reply("w-1", "944480690", "first"))
        .await;
    crm.publish_reply("acme", &reply("w-2", "944480690", "second"))
        .await;
    crm.publish_reply("acme", &reply("w-3", "5550001", "elsewhere"))
        .await;
    // A reply tried to record its send intent; every send needs one.
    tokio::time::timeout(PATIENCE, store.wait_for_refusals(1))
        .await
        .expect("the replies reached the store");
    assert!(
        app.simulator.sent_dms_for(&user).is_empty(),
        "nothing goes out that could not be recorded"
    );

    store.heal();
    let mut sent = Vec::new();
    for event in crm.events(3).await {
        assert_eq!(event.body["type"], "message.sent", "{}", event.body);
        sent.push(event.body["message_id"].as_str().unwrap().to_owned());
    }
    sent.sort();
    assert_eq!(sent, ["w-1", "w-2", "w-3"]);
    let texts: Vec<String> = app
        .simulator
        .sent_dms_for(&user)
        .into_iter()
        .map(|dm| dm.text)
        .collect();
    assert_eq!(texts.len(), 3, "each reply once: {texts:?}");
    let first = texts.iter().position(|t| t == "first").unwrap();
    let second = texts.iter().position(|t| t == "second").unwrap();
    assert!(first < second, "a conversation keeps its order: {texts:?}");

    // X accepts the next reply, then its record fails: it is neither sent
    // again nor looked up on X, and the CRM hears of it once the record is in.
    store.refuse(Refuse::SentRecords);
    let refused = store.refusals();
    crm.publish_reply("acme", &reply("w-4", "944480690", "fourth"))
        .await;
    tokio::time::timeout(PATIENCE, store.wait_for_refusals(refused + 1))
        .await
        .expect("the record of the sent reply was refused");
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 4);
    assert!(real.sent("acme", "w-4").await.unwrap().is_none());
    store.heal();
    // The conversation's next reply follows it: the CRM hears of both, in order.
    crm.publish_reply("acme", &reply("w-5", "944480690", "fifth"))
        .await;
    let events = crm.events(2).await;
    assert_eq!(events[0].body["type"], "message.sent");
    assert_eq!(events[0].body["message_id"], "w-4");
    assert_eq!(events[1].body["message_id"], "w-5");
    assert!(real.sent("acme", "w-4").await.unwrap().is_some());
    assert_eq!(app.simulator.sent_dms_for(&user).len(), 5);
    let lookups = app
        .simulator
        .requests_for(&user)
        .into_iter()
        .filter(|request| request.path.starts_with("/2/dm_events"))
        .count();
    assert_eq!(lookups, 0, "no send was looked up on X");

    assert!(
        !ready.has_changed().unwrap(),
        "the RabbitMQ session was never torn down over the store"
    );
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    app.cleanup().await;
}
