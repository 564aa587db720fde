//! Issue 15's race at the outbound side, without a broker: owner A and owner
//! B both took the same reply and found no intent for it (A's lane held it
//! when the broker handed it to B). B claimed the channel after A, so A's
//! send intent is refused and A sends nothing, not even a request to X;
//! B's send goes through, once.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use x_simulator::{Account, Simulator, SimulatorConfig};
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::Settings;
use xbridge_core::contract::{OutgoingReply, ReplyTarget};
use xbridge_outbound::context::ChannelContext;
use xbridge_outbound::credits::CreditsGate;
use xbridge_outbound::fate::Policy;
use xbridge_outbound::fence::Claim;
use xbridge_outbound::media::MediaFetcher;
use xbridge_outbound::parts::{ReplyParts, Sent};
use xbridge_outbound::unsettled::Unsettled;
use xbridge_store::{EmbeddedStore, StateStore};
use xbridge_x_api::{DmTarget, XClient, XHttp};

/// The channel's context as the outbound side builds it, on `store`, its X
/// client aimed at the simulator.
fn context(simulator: &Simulator, account: &Account, store: Arc<dyn StateStore>) -> ChannelContext {
    let toml = format!(
        r#"
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"

[x]
api_base_url = "{x}"

[[channels]]
name = "acme"
consumer_key = "{}"
consumer_secret = "{}"
access_token = "{}"
access_token_secret = "{}"
bearer_token = "{}"
"#,
        account.consumer_key,
        account.consumer_secret,
        account.access_token,
        account.access_token_secret,
        account.bearer_token,
        x = simulator.base_url(),
    );
    let settings = Settings::from_toml(&toml).expect("the test's configuration");
    let channel = &settings.channels[0];
    let http = XHttp::new().expect("an HTTP client");
    let client = XClient::with_http((&settings.x).into(), channel.into(), http).expect("client");
    let outbound = &settings.outbound;
    ChannelContext {
        name: "acme".into(),
        client,
        gate: CreditsGate::new(outbound.credits.clone()),
        parked: Default::default(),
        store,
        policy: Policy {
            retry: outbound.retry.clone(),
            credits: outbound.credits.clone(),
        },
        states: Arc::new(ChannelStates::new(["acme"])),
        media: Arc::new(MediaFetcher::new(outbound.media.clone()).expect("media fetcher")),
        identities: Arc::new(ChannelIdentities::new(std::iter::empty())),
        recent_events: Default::default(),
        unrecorded: Default::default(),
        max_reply_bytes: outbound.max_reply_bytes,
    }
}

#[tokio::test]
async fn the_old_owners_intent_is_refused_so_only_the_new_owner_sends() {
    let account = Account::generate("acme_support");
    let simulator = Simulator::start(SimulatorConfig {
        accounts: vec![account.clone()],
        ..SimulatorConfig::default()
    })
    .await
    .expect("the X simulator starts");
    let dir = tempfile::tempdir().expect("a temp dir");
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).expect("store"));
    let ctx = context(&simulator, &account, store.clone());
    let reply = OutgoingReply::parse_bounded(
        br#"{"message_id": "m-1", "recipient_id": "944480690", "text": "once"}"#,
        "acme",
        ctx.max_reply_bytes,
    )
    .expect("a valid reply");
    let target = match &reply.target {
        ReplyTarget::Recipient(id) => DmTarget::Participant(id.clone()),
        ReplyTarget::Conversation(id) => DmTarget::Conversation(id.clone()),
    };
    let stop = CancellationToken::new();

    // A claims and takes the reply; the broker hands it to B, which claims
    // and takes it too. Neither found an intent: nobody has sent yet.
    let a = Claim(store.claim_channel("acme").await.unwrap());
    let mut a_parts = ReplyParts::prepare(&ctx, &reply, a).await.unwrap();
    let b = Claim(store.claim_channel("acme").await.unwrap());
    let mut b_parts = ReplyParts::prepare(&ctx, &reply, b).await.unwrap();

    // A, living on, gets to the send first: refused before any request.
    let a_sent = a_parts.send(&ctx, &target, "m-1", &stop).await;
    assert!(
        matches!(a_sent, Err(Unsettled::Fenced)),
        "the old owner must stand down: {a_sent:?}"
    );
    assert!(
        simulator.requests_for(&account.user_id).is_empty(),
        "the old owner asked nothing of X"
    );
    assert_eq!(store.send_intent("acme", "m-1", 0).await.unwrap(), None);

    // B's send goes through, once.
    let Sent::Now(record) = b_parts
        .send(&ctx, &target, "m-1", &stop)
        .await
        .expect("the new owner is not fenced")
        .expect("X takes the DM")
    else {
        panic!("the new owner sends it itself");
    };
    let dms = simulator.sent_dms_for(&account.user_id);
    assert_eq!(dms.len(), 1);
    assert_eq!(dms[0].dm_event_id, record.dm_event_id);
    assert!(store.send_intent("acme", "m-1", 0).await.unwrap().is_some());
}
