//! The behaviour every [`StateStore`] must show, as reusable checks: the
//! embedded store runs them today, a shared store will run the same.

use chrono::{DateTime, Utc};

use secrecy::{ExposeSecret, SecretString};

use crate::oauth2_grant::{GrantBase, GrantWrite, SealedGrant};
use crate::registry::{
    Applied, ChannelEntry, ChannelOrigin, ChannelRecord, ChannelTombstone, MAX_REVISION,
};
use crate::sealed::CredentialsKey;
use crate::{check_credentials_key, KeyCheckError, SentRecord, StateStore, StoreError};

/// The operator's secret the contract's channels are sealed with: key
/// material in base64, as `openssl rand -base64 48` makes it.
pub const SAMPLE_KEY: &str = "Y29udHJhY3QtY3JlZGVudGlhbHMta2V5LW9mLTQ4LWJ5dGVzLWZvci10aGUtdGVzdHM=";

/// Credentials no store may show in the clear: the contract's channels carry
/// them, and tests look for each in the stored bytes.
pub const SAMPLE_CREDENTIALS: [&str; 5] = [
    "ck-CONSUMERKEY-4f1d9a",
    "cs-CONSUMERSECRET-8b2e7c",
    "at-ACCESSTOKEN-1234567890",
    "as-ACCESSSECRET-c0ffee77",
    "bt-BEARERTOKEN-AAAAdeadbeef",
];

/// The key the contract's channels are sealed with.
pub fn sample_key() -> CredentialsKey {
    CredentialsKey::derive(&SecretString::from(SAMPLE_KEY)).expect("valid key material")
}

/// A channel of the registry at `revision`, its [`SAMPLE_CREDENTIALS`]
/// sealed with [`sample_key`].
pub fn sample_channel(name: &str, revision: u64) -> ChannelRecord {
    let credentials = format!(
        r#"{{"consumer_key":"{}","consumer_secret":"{}","access_token":"{}","access_token_secret":"{}","bearer_token":"{}"}}"#,
        SAMPLE_CREDENTIALS[0],
        SAMPLE_CREDENTIALS[1],
        SAMPLE_CREDENTIALS[2],
        SAMPLE_CREDENTIALS[3],
        SAMPLE_CREDENTIALS[4]
    );
    ChannelRecord {
        name: name.to_owned(),
        origin: ChannelOrigin::Crm,
        settings: r#"{"weight":1,"url":"https://x.com/acme","inbound":"webhook"}"#.into(),
        credentials: sample_key()
            .seal(name, &SecretString::from(credentials))
            .expect("sealed"),
        revision,
        paused: false,
        updated_at: DateTime::parse_from_rfc3339("2026-12-05T02:00:00.250Z")
            .expect("static time")
            .with_timezone(&Utc),
    }
}

/// A record for tests.
pub fn sample_record() -> SentRecord {
    SentRecord {
        dm_event_id: "1585800613253812228".into(),
        conversation_id: "750362064426721281-1072250532645998596".into(),
        sent_at: DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .expect("static time")
            .with_timezone(&Utc),
        reported: false,
        parts: Vec::new(),
    }
}

/// Runs every check against `store`; panics on the first broken promise.
pub async fn run_all(store: &dyn StateStore) {
    unknown_replies_were_not_sent(store).await;
    a_recorded_reply_reads_back(store).await;
    a_reply_sent_in_parts_reads_back_with_every_part(store).await;
    each_part_is_recorded_on_its_own_and_is_an_own_send(store).await;
    send_intents_are_kept_per_part_and_the_last_wins(store).await;
    a_claim_fences_the_send_intents_of_earlier_claims(store).await;
    racing_claims_each_get_their_own_epoch(store).await;
    the_first_record_wins(store).await;
    reporting_is_remembered(store).await;
    a_mark_made_soon_is_durable_with_the_next_write(store).await;
    channels_do_not_share_message_ids(store).await;
    own_sends_are_known_by_their_dm_event_id(store).await;
    delivered_events_are_remembered_per_channel(store).await;
    poll_cursors_move_per_channel(store).await;
    run_registry(store).await;
    pruning_removes_exactly_the_older_records_while_writes_go_on(store).await;
    run_oauth2(store).await;
}

/// The OAuth 2.0 grant's checks alone (docs/design-oauth2.md).
pub async fn run_oauth2(store: &dyn StateStore) {
    a_stored_grant_reads_back_opens_and_shows_no_token(store).await;
    a_grant_write_from_an_old_generation_is_refused_and_writes_nothing(store).await;
    one_replica_at_a_time_holds_the_refresh_lease(store).await;
    only_the_grant_a_refresh_used_is_marked_refused(store).await;
    a_deleted_grant_is_gone_and_no_refresh_of_it_stores_over_a_later_one(store).await;
    a_grant_stored_over_a_refused_mark_is_not_refused(store).await;
}

/// Tokens no store may show in the clear: the contract's grants carry them.
pub const SAMPLE_GRANT_TOKENS: [&str; 2] = ["o2at-ACCESS-7d1c0ffee", "o2rt-REFRESH-9a8b7c6d"];

/// A grant as the bridge seals it, for `channel`, with `n` in its tokens.
pub fn sample_grant(channel: &str, n: u32) -> SealedGrant {
    let json = format!(
        r#"{{"access_token":"{}-{n}","refresh_token":"{}-{n}","scopes":["dm.read"]}}"#,
        SAMPLE_GRANT_TOKENS[0], SAMPLE_GRANT_TOKENS[1]
    );
    sample_key()
        .seal_grant(channel, &SecretString::from(json))
        .expect("sealed")
}

async fn a_stored_grant_reads_back_opens_and_shows_no_token(store: &dyn StateStore) {
    assert_eq!(store.oauth2_grant("o2-a").await.unwrap(), None);
    let expires = DateTime::parse_from_rfc3339("2026-12-05T04:00:00Z")
        .expect("static time")
        .with_timezone(&Utc);
    let grant = sample_grant("o2-a", 1);
    let written = store
        .store_oauth2_grant("o2-a", GrantBase::Generation(0), &grant, Some(expires))
        .await
        .unwrap();
    assert_eq!(written, GrantWrite::Stored(1));
    let row = store.oauth2_grant("o2-a").await.unwrap().expect("stored");
    assert_eq!(
        (row.generation, row.expires_at, row.refused),
        (1, Some(expires), false)
    );
    for token in SAMPLE_GRANT_TOKENS {
        let blob = row.sealed.as_bytes();
        assert!(!blob.windows(token.len()).any(|w| w == token.as_bytes()));
    }
    let opened = sample_key().open_grant("o2-a", &row.sealed).unwrap();
    assert!(opened.expose_secret().contains("o2rt-REFRESH-9a8b7c6d-1"));
    // Bound to its channel and its use: not another channel's grant, not credentials.
    assert!(sample_key().open_grant("o2-b", &row.sealed).is_err());
    let as_credentials = crate::SealedCredentials::from_stored(row.sealed.as_bytes().to_vec());
    assert!(sample_key().open("o2-a", &as_credentials).is_err());
    // A channel's grant is its own.
    assert_eq!(store.oauth2_grant("o2-b").await.unwrap(), None);
}

async fn a_grant_write_from_an_old_generation_is_refused_and_writes_nothing(
    store: &dyn StateStore,
) {
    let first = sample_grant("o2-cas", 1);
    assert_eq!(
        store
            .store_oauth2_grant("o2-cas", GrantBase::Generation(0), &first, None)
            .await
            .unwrap(),
        GrantWrite::Stored(1)
    );
    let second = sample_grant("o2-cas", 2);
    assert_eq!(
        store
            .store_oauth2_grant("o2-cas", GrantBase::Generation(1), &second, None)
            .await
            .unwrap(),
        GrantWrite::Stored(2)
    );
    // A replica that read generation 1 (or none) and refreshed late loses.
    for late in [GrantBase::Generation(1), GrantBase::Generation(0)] {
        assert_eq!(
            store
                .store_oauth2_grant("o2-cas", late, &sample_grant("o2-cas", 9), None)
                .await
                .unwrap(),
            GrantWrite::Stale(2)
        );
    }
    let row = store.oauth2_grant("o2-cas").await.unwrap().unwrap();
    assert_eq!(row.generation, 2);
    assert_eq!(row.sealed, second, "the stale writes changed nothing");
    // A new authorisation replaces whatever is there.
    assert_eq!(
        store
            .store_oauth2_grant("o2-cas", GrantBase::Any, &sample_grant("o2-cas", 3), None)
            .await
            .unwrap(),
        GrantWrite::Stored(3)
    );
    // Racing writers from the same generation: exactly one is stored.
    let (a, b) = (sample_grant("o2-cas", 4), sample_grant("o2-cas", 5));
    let (wa, wb) = futures_join(
        store.store_oauth2_grant("o2-cas", GrantBase::Generation(3), &a, None),
        store.store_oauth2_grant("o2-cas", GrantBase::Generation(3), &b, None),
    )
    .await;
    let outcomes = [wa.unwrap(), wb.unwrap()];
    assert!(
        outcomes.contains(&GrantWrite::Stored(4)) && outcomes.contains(&GrantWrite::Stale(4)),
        "{outcomes:?}"
    );
    let row = store.oauth2_grant("o2-cas").await.unwrap().unwrap();
    let winner = if outcomes[0] == GrantWrite::Stored(4) {
        a
    } else {
        b
    };
    assert_eq!(row.sealed, winner);
}

/// Both futures, run together.
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

async fn one_replica_at_a_time_holds_the_refresh_lease(store: &dyn StateStore) {
    let ttl = std::time::Duration::from_secs(60);
    // Before any grant is stored, too.
    let (a, b) = futures_join(
        store.lease_oauth2_refresh("o2-lease", "replica-a", ttl),
        store.lease_oauth2_refresh("o2-lease", "replica-b", ttl),
    )
    .await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a != b, "exactly one holder: a {a}, b {b}");
    let (holder, other) = if a {
        ("replica-a", "replica-b")
    } else {
        ("replica-b", "replica-a")
    };
    assert!(
        store
            .lease_oauth2_refresh("o2-lease", holder, ttl)
            .await
            .unwrap(),
        "renewed"
    );
    assert!(!store
        .lease_oauth2_refresh("o2-lease", other, ttl)
        .await
        .unwrap());
    // Releasing someone else's lease does nothing.
    store
        .release_oauth2_refresh("o2-lease", other)
        .await
        .unwrap();
    assert!(!store
        .lease_oauth2_refresh("o2-lease", other, ttl)
        .await
        .unwrap());
    store
        .release_oauth2_refresh("o2-lease", holder)
        .await
        .unwrap();
    assert!(store
        .lease_oauth2_refresh("o2-lease", other, ttl)
        .await
        .unwrap());
    // A lease that expired is taken over.
    let short = std::time::Duration::from_millis(1);
    assert!(store
        .lease_oauth2_refresh("o2-lease-x", "replica-a", short)
        .await
        .unwrap());
    let mut taken = false;
    // Waits for the store's clock to pass the 1 ms lease, not for another task.
    for _ in 0..1000 {
        if store
            .lease_oauth2_refresh("o2-lease-x", "replica-b", ttl)
            .await
            .unwrap()
        {
            taken = true;
            break;
        }
        tokio::time::sleep(short).await;
    }
    assert!(taken, "an expired lease is taken over");
    assert!(!store
        .lease_oauth2_refresh("o2-lease-x", "replica-a", ttl)
        .await
        .unwrap());
    // A lease row is not a grant, and a lease does not move the generation.
    assert_eq!(store.oauth2_grant("o2-lease").await.unwrap(), None);
    assert_eq!(
        store
            .store_oauth2_grant(
                "o2-lease",
                GrantBase::Generation(0),
                &sample_grant("o2-lease", 1),
                None
            )
            .await
            .unwrap(),
        GrantWrite::Stored(1)
    );
    assert!(
        !store
            .lease_oauth2_refresh("o2-lease", holder, ttl)
            .await
            .unwrap(),
        "the lease stays"
    );
}

async fn only_the_grant_a_refresh_used_is_marked_refused(store: &dyn StateStore) {
    assert!(
        !store.mark_oauth2_refused("o2-refused", 0).await.unwrap(),
        "no grant"
    );
    store
        .store_oauth2_grant(
            "o2-refused",
            GrantBase::Any,
            &sample_grant("o2-refused", 1),
            None,
        )
        .await
        .unwrap();
    store
        .store_oauth2_grant(
            "o2-refused",
            GrantBase::Generation(1),
            &sample_grant("o2-refused", 2),
            None,
        )
        .await
        .unwrap();
    // The loser of a refresh race used generation 1's token: the newer grant stays good.
    assert!(!store.mark_oauth2_refused("o2-refused", 1).await.unwrap());
    assert!(
        !store
            .oauth2_grant("o2-refused")
            .await
            .unwrap()
            .unwrap()
            .refused
    );
    assert!(store.mark_oauth2_refused("o2-refused", 2).await.unwrap());
    let row = store.oauth2_grant("o2-refused").await.unwrap().unwrap();
    assert!(row.refused);
    // Authorising again clears it.
    store
        .store_oauth2_grant(
            "o2-refused",
            GrantBase::Any,
            &sample_grant("o2-refused", 3),
            None,
        )
        .await
        .unwrap();
    let row = store.oauth2_grant("o2-refused").await.unwrap().unwrap();
    assert_eq!((row.generation, row.refused), (3, false));
}

async fn a_deleted_grant_is_gone_and_no_refresh_of_it_stores_over_a_later_one(
    store: &dyn StateStore,
) {
    let name = "o2-deleted";
    assert!(!store.delete_oauth2_grant(name).await.unwrap(), "no grant");
    let write = |base, n| async move {
        store
            .store_oauth2_grant(name, base, &sample_grant(name, n), None)
            .await
            .unwrap()
    };
    assert_eq!(write(GrantBase::Any, 1).await, GrantWrite::Stored(1));
    assert_eq!(
        write(GrantBase::Generation(1), 2).await,
        GrantWrite::Stored(2)
    );
    assert!(store.mark_oauth2_refused(name, 2).await.unwrap());
    assert!(store.delete_oauth2_grant(name).await.unwrap());
    assert_eq!(
        store.oauth2_grant(name).await.unwrap(),
        None,
        "no token left"
    );
    assert!(
        !store.delete_oauth2_grant(name).await.unwrap(),
        "deleted once"
    );
    assert!(!store.mark_oauth2_refused(name, 2).await.unwrap());
    // A refresh that read generation 2 before the delete stores nothing, now or later.
    assert!(matches!(
        write(GrantBase::Generation(2), 9).await,
        GrantWrite::Stale(_)
    ));
    // The channel comes back: its first grant is stored as on a channel without one,
    // not refused, and above the deleted generation.
    let GrantWrite::Stored(next) = write(GrantBase::Generation(0), 3).await else {
        panic!("a grant over a deleted one is stored")
    };
    assert!(next > 2, "generation {next}");
    assert!(matches!(
        write(GrantBase::Generation(2), 9).await,
        GrantWrite::Stale(_)
    ));
    let row = store.oauth2_grant(name).await.unwrap().expect("stored");
    assert_eq!((row.generation, row.refused), (next, false));
    assert_eq!(
        store
            .store_oauth2_grant(name, GrantBase::Generation(0), &sample_grant(name, 4), None)
            .await
            .unwrap(),
        GrantWrite::Stale(next),
        "a grant is there now"
    );
}

/// A refresh may store its rotated grant after another replica, refused the token it
/// had spent, marked the grant refused: the write, based on the generation both read,
/// stores the grant, which is not refused.
async fn a_grant_stored_over_a_refused_mark_is_not_refused(store: &dyn StateStore) {
    let channel = "o2-late";
    store
        .store_oauth2_grant(channel, GrantBase::Any, &sample_grant(channel, 1), None)
        .await
        .unwrap();
    assert!(store.mark_oauth2_refused(channel, 1).await.unwrap());
    let written = store
        .store_oauth2_grant(
            channel,
            GrantBase::Generation(1),
            &sample_grant(channel, 2),
            None,
        )
        .await
        .unwrap();
    assert_eq!(written, GrantWrite::Stored(2));
    let row = store.oauth2_grant(channel).await.unwrap().unwrap();
    assert_eq!((row.generation, row.refused), (2, false));
}

/// The channel registry's checks alone.
pub async fn run_registry(store: &dyn StateStore) {
    a_stored_channel_reads_back_and_opens(store).await;
    only_a_higher_revision_replaces_a_channel(store).await;
    a_removed_channel_stays_removed_until_a_higher_revision(store).await;
    the_list_holds_every_channel_and_tombstone(store).await;
    revisions_stop_at_what_postgresql_holds(store).await;
    a_store_takes_only_the_key_it_was_first_sealed_with(store).await;
}

async fn a_stored_channel_reads_back_and_opens(store: &dyn StateStore) {
    assert_eq!(store.channel("reg-none").await.unwrap(), None);
    let record = sample_channel("reg-a", 1);
    assert_eq!(store.put_channel(&record).await.unwrap(), Applied::Yes);
    let read = store.channel("reg-a").await.unwrap().expect("stored");
    assert_eq!(read, ChannelEntry::Live(record));
    let opened = sample_key()
        .open("reg-a", &read.live().unwrap().credentials)
        .unwrap();
    assert!(opened.expose_secret().contains(SAMPLE_CREDENTIALS[4]));
}

async fn only_a_higher_revision_replaces_a_channel(store: &dyn StateStore) {
    store
        .put_channel(&sample_channel("reg-b", 5))
        .await
        .unwrap();
    let paused = ChannelRecord {
        paused: true,
        settings: r#"{"weight":3}"#.into(),
        ..sample_channel("reg-b", 6)
    };
    assert_eq!(store.put_channel(&paused).await.unwrap(), Applied::Yes);
    // The same revision again (a second replica applying the same command)
    // and an older one (a late command) change nothing.
    for revision in [6, 4] {
        assert_eq!(
            store
                .put_channel(&sample_channel("reg-b", revision))
                .await
                .unwrap(),
            Applied::Stale { current: 6 }
        );
    }
    let read = store.channel("reg-b").await.unwrap().unwrap();
    assert_eq!(read, ChannelEntry::Live(paused));
}

async fn a_removed_channel_stays_removed_until_a_higher_revision(store: &dyn StateStore) {
    store
        .put_channel(&sample_channel("reg-c", 2))
        .await
        .unwrap();
    let tombstone = ChannelTombstone {
        name: "reg-c".into(),
        revision: 3,
        removed_at: sample_channel("reg-c", 3).updated_at,
    };
    assert_eq!(
        store.remove_channel(&tombstone).await.unwrap(),
        Applied::Yes
    );
    // A replica still holding revision 2 cannot write it back.
    assert_eq!(
        store
            .put_channel(&sample_channel("reg-c", 2))
            .await
            .unwrap(),
        Applied::Stale { current: 3 }
    );
    assert_eq!(
        store.channel("reg-c").await.unwrap(),
        Some(ChannelEntry::Removed(tombstone.clone()))
    );
    // A stale removal does not remove a newer channel.
    let back = sample_channel("reg-c", 4);
    assert_eq!(store.put_channel(&back).await.unwrap(), Applied::Yes);
    assert_eq!(
        store.remove_channel(&tombstone).await.unwrap(),
        Applied::Stale { current: 4 }
    );
    assert_eq!(
        store.channel("reg-c").await.unwrap(),
        Some(ChannelEntry::Live(back))
    );
    // Removing what was never stored leaves a tombstone all the same.
    let never = ChannelTombstone {
        name: "reg-never".into(),
        ..tombstone
    };
    assert_eq!(store.remove_channel(&never).await.unwrap(), Applied::Yes);
}

async fn the_list_holds_every_channel_and_tombstone(store: &dyn StateStore) {
    let list = store.channels().await.unwrap();
    assert_eq!(list.broken, []);
    let reg: Vec<(&str, u64, bool)> = list
        .entries
        .iter()
        .filter(|entry| entry.name().starts_with("reg-"))
        .map(|entry| (entry.name(), entry.revision(), entry.live().is_some()))
        .collect();
    assert_eq!(
        reg,
        [
            ("reg-a", 1, true),
            ("reg-b", 6, true),
            ("reg-c", 4, true),
            ("reg-never", 3, false)
        ]
    );
}

async fn revisions_stop_at_what_postgresql_holds(store: &dyn StateStore) {
    let beyond = sample_channel("rev-max", MAX_REVISION + 1);
    assert!(store.put_channel(&beyond).await.is_err());
    let removal = ChannelTombstone {
        name: "rev-max".into(),
        revision: u64::MAX,
        removed_at: beyond.updated_at,
    };
    assert!(store.remove_channel(&removal).await.is_err());
    assert_eq!(store.channel("rev-max").await.unwrap(), None);
    let highest = sample_channel("rev-max", MAX_REVISION);
    assert_eq!(store.put_channel(&highest).await.unwrap(), Applied::Yes);
}

async fn a_store_takes_only_the_key_it_was_first_sealed_with(store: &dyn StateStore) {
    // The first key recorded, then accepted again, as by a second replica.
    check_credentials_key(store, &sample_key()).await.unwrap();
    check_credentials_key(store, &sample_key()).await.unwrap();
    let other = CredentialsKey::derive(&SecretString::from("ab".repeat(32))).unwrap();
    let refused = check_credentials_key(store, &other).await.unwrap_err();
    assert!(matches!(refused, KeyCheckError::Mismatch), "{refused:?}");
    assert!(refused
        .to_string()
        .contains("state.credentials_key does not match the key this store was sealed with"));
    check_credentials_key(store, &sample_key()).await.unwrap();
}

async fn unknown_replies_were_not_sent(store: &dyn StateStore) {
    assert_eq!(store.sent("contract", "never").await.unwrap(), None);
}

async fn a_recorded_reply_reads_back(store: &dyn StateStore) {
    let record = sample_record();
    store.record_sent("contract", "a", &record).await.unwrap();
    assert_eq!(store.sent("contract", "a").await.unwrap(), Some(record));
}

async fn a_reply_sent_in_parts_reads_back_with_every_part(store: &dyn StateStore) {
    let record = SentRecord {
        parts: vec!["1585800613253812228".into(), "1585800613253812229".into()],
        ..sample_record()
    };
    store
        .record_sent("contract", "parts", &record)
        .await
        .unwrap();
    let read = store.sent("contract", "parts").await.unwrap().unwrap();
    assert_eq!(
        read.dm_event_ids(),
        ["1585800613253812228", "1585800613253812229"]
    );
    assert_eq!(
        sample_record().dm_event_ids(),
        ["1585800613253812228"],
        "a one-DM reply lists its one DM"
    );
}

async fn each_part_is_recorded_on_its_own_and_is_an_own_send(store: &dyn StateStore) {
    let part = |id: &str| SentRecord {
        dm_event_id: id.into(),
        ..sample_record()
    };
    assert_eq!(
        store.sent_part("contract-parts", "p", 0).await.unwrap(),
        None
    );
    store
        .record_sent_part("contract-parts", "p", 0, &part("1800000000000000000"))
        .await
        .unwrap();
    store
        .record_sent_part("contract-parts", "p", 1, &part("1800000000000000001"))
        .await
        .unwrap();
    // The first record of a part wins, as for whole replies.
    store
        .record_sent_part("contract-parts", "p", 1, &part("1"))
        .await
        .unwrap();
    assert_eq!(
        store.sent_part("contract-parts", "p", 1).await.unwrap(),
        Some(part("1800000000000000001"))
    );
    assert_eq!(
        store.sent_part("contract-parts", "p", 2).await.unwrap(),
        None
    );
    // Parts are not the reply: it is recorded once every part went out.
    assert_eq!(store.sent("contract-parts", "p").await.unwrap(), None);
    assert_eq!(
        store.sent_part("contract-other", "p", 0).await.unwrap(),
        None
    );
    for id in ["1800000000000000000", "1800000000000000001"] {
        assert!(store.is_own_send("contract-parts", id).await.unwrap());
    }
}

async fn send_intents_are_kept_per_part_and_the_last_wins(store: &dyn StateStore) {
    let at = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .expect("static time")
            .with_timezone(&Utc)
    };
    assert_eq!(
        store.send_intent("contract-intent", "i", 0).await.unwrap(),
        None
    );
    let epoch = store.claim_channel("contract-intent").await.unwrap();
    store
        .record_send_intent(
            "contract-intent",
            "i",
            0,
            at("2026-11-25T10:00:00.123Z"),
            epoch,
        )
        .await
        .unwrap();
    store
        .record_send_intent(
            "contract-intent",
            "i",
            0,
            at("2026-11-25T10:05:00.456Z"),
            epoch,
        )
        .await
        .unwrap();
    assert_eq!(
        store.send_intent("contract-intent", "i", 0).await.unwrap(),
        Some(at("2026-11-25T10:05:00.456Z")),
        "the latest try counts, to the millisecond"
    );
    assert_eq!(
        store.send_intent("contract-intent", "i", 1).await.unwrap(),
        None
    );
    assert_eq!(
        store.send_intent("contract-other", "i", 0).await.unwrap(),
        None
    );
}

/// Issue 15's race at the store: owner A claims the channel, owner B claims
/// it after, and A, living on, starts a send: its intent is refused (so A
/// sends nothing) and leaves nothing behind, while B's goes through.
async fn a_claim_fences_the_send_intents_of_earlier_claims(store: &dyn StateStore) {
    let channel = "contract-fence";
    // To the millisecond, as every store keeps it.
    let now = truncate_millis(Utc::now());
    let never_claimed = store.record_send_intent(channel, "f", 0, now, 1).await;
    assert!(
        matches!(never_claimed, Err(StoreError::Fenced { .. })),
        "an intent under a claim nobody made is refused: {never_claimed:?}"
    );
    let a = store.claim_channel(channel).await.unwrap();
    assert!(a >= 1);
    store
        .record_send_intent(channel, "f", 0, now, a)
        .await
        .unwrap();
    let b = store.claim_channel(channel).await.unwrap();
    assert!(b > a, "a claim moves the epoch on: {a} then {b}");
    let later = now + chrono::Duration::seconds(5);
    let refused = store.record_send_intent(channel, "f", 1, later, a).await;
    match refused {
        Err(StoreError::Fenced { channel: c, held }) => {
            assert_eq!((c.as_str(), held), (channel, a));
        }
        other => panic!("the old owner's intent must be refused, not {other:?}"),
    }
    assert_eq!(
        store.send_intent(channel, "f", 1).await.unwrap(),
        None,
        "a refused intent writes nothing"
    );
    let replaced = store.record_send_intent(channel, "f", 0, later, a).await;
    assert!(matches!(replaced, Err(StoreError::Fenced { .. })));
    assert_eq!(
        store.send_intent(channel, "f", 0).await.unwrap(),
        Some(now),
        "a refused intent does not replace the one written under the claim it had"
    );
    store
        .record_send_intent(channel, "f", 1, later, b)
        .await
        .unwrap();
    assert_eq!(
        store.send_intent(channel, "f", 1).await.unwrap(),
        Some(later),
        "the new owner's intent goes through"
    );
    assert!(
        store.health().is_writable(),
        "a refusal is not a failed write"
    );
    let other = store.claim_channel("contract-fence-other").await.unwrap();
    store
        .record_send_intent("contract-fence-other", "f", 0, now, other)
        .await
        .expect("a claim fences its own channel only");
    store
        .record_send_intent(channel, "f", 2, later, b)
        .await
        .expect("a claim of another channel does not fence this one");
}

/// Claims racing for one channel (two replicas taking it over at once) each
/// get their own epoch: the store takes them one after the other.
async fn racing_claims_each_get_their_own_epoch(store: &dyn StateStore) {
    let race = "contract-fence-race";
    let claims = tokio::join!(
        store.claim_channel(race),
        store.claim_channel(race),
        store.claim_channel(race),
        store.claim_channel(race),
    );
    let mut epochs = vec![
        claims.0.unwrap(),
        claims.1.unwrap(),
        claims.2.unwrap(),
        claims.3.unwrap(),
    ];
    epochs.sort_unstable();
    epochs.dedup();
    assert_eq!(
        epochs.len(),
        4,
        "every claim has an epoch of its own: {epochs:?}"
    );
    let last = *epochs.last().expect("four claims");
    let now = Utc::now();
    for &epoch in &epochs[..3] {
        let refused = store.record_send_intent(race, "r", 0, now, epoch).await;
        assert!(matches!(refused, Err(StoreError::Fenced { .. })));
    }
    store
        .record_send_intent(race, "r", 0, now, last)
        .await
        .expect("the last claim owns the channel");
}

/// `t` to the millisecond, as the stores keep it.
fn truncate_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).expect("in range")
}

async fn the_first_record_wins(store: &dyn StateStore) {
    let first = sample_record();
    let second = SentRecord {
        dm_event_id: "1".into(),
        ..sample_record()
    };
    store.record_sent("contract", "b", &first).await.unwrap();
    store.record_sent("contract", "b", &second).await.unwrap();
    assert_eq!(store.sent("contract", "b").await.unwrap(), Some(first));
}

async fn reporting_is_remembered(store: &dyn StateStore) {
    store
        .record_sent("contract", "c", &sample_record())
        .await
        .unwrap();
    store.mark_reported("contract", "c").await.unwrap();
    let record = store.sent("contract", "c").await.unwrap().unwrap();
    assert!(record.reported);
    // Marking a reply that was never sent changes nothing.
    store.mark_reported("contract", "ghost").await.unwrap();
    assert_eq!(store.sent("contract", "ghost").await.unwrap(), None);
}

/// A store may keep a mark made "soon" for a later commit, but never after
/// one a caller waited for: whoever saw a later write durable sees the mark.
/// Reads see it at once, so a copy of the reply that comes right after (a CRM
/// that published twice) is not reported twice.
async fn a_mark_made_soon_is_durable_with_the_next_write(store: &dyn StateStore) {
    store
        .record_sent("contract", "soon", &sample_record())
        .await
        .unwrap();
    store.mark_reported_soon("contract", "soon").await.unwrap();
    let record = store.sent("contract", "soon").await.unwrap().unwrap();
    assert!(record.reported, "a mark made soon is read at once");
    store
        .record_sent("contract", "after-soon", &sample_record())
        .await
        .unwrap();
    let record = store.sent("contract", "soon").await.unwrap().unwrap();
    assert!(record.reported);
}

async fn channels_do_not_share_message_ids(store: &dyn StateStore) {
    store
        .record_sent("contract-one", "same", &sample_record())
        .await
        .unwrap();
    assert_eq!(store.sent("contract-two", "same").await.unwrap(), None);
}

async fn own_sends_are_known_by_their_dm_event_id(store: &dyn StateStore) {
    let record = SentRecord {
        dm_event_id: "1700000000000000001".into(),
        ..sample_record()
    };
    store
        .record_sent("contract-own", "m", &record)
        .await
        .unwrap();
    assert!(store
        .is_own_send("contract-own", "1700000000000000001")
        .await
        .unwrap());
    assert!(!store
        .is_own_send("contract-own", "1700000000000000002")
        .await
        .unwrap());
    assert!(!store
        .is_own_send("contract-other", "1700000000000000001")
        .await
        .unwrap());
}

async fn delivered_events_are_remembered_per_channel(store: &dyn StateStore) {
    assert!(!store.is_delivered("contract-in", "1").await.unwrap());
    store
        .record_delivered("contract-in", &["1".into(), "2".into()])
        .await
        .unwrap();
    assert!(store.is_delivered("contract-in", "1").await.unwrap());
    assert!(store.is_delivered("contract-in", "2").await.unwrap());
    assert!(!store.is_delivered("contract-in", "3").await.unwrap());
    assert!(!store.is_delivered("contract-in-other", "1").await.unwrap());
    // Recording again is harmless.
    store
        .record_delivered("contract-in", &["1".into()])
        .await
        .unwrap();
    assert!(store.is_delivered("contract-in", "1").await.unwrap());
}

async fn poll_cursors_move_per_channel(store: &dyn StateStore) {
    assert_eq!(store.poll_cursor("contract-poll").await.unwrap(), None);
    store.set_poll_cursor("contract-poll", "10").await.unwrap();
    store.set_poll_cursor("contract-poll", "20").await.unwrap();
    assert_eq!(
        store.poll_cursor("contract-poll").await.unwrap().as_deref(),
        Some("20")
    );
    assert_eq!(
        store.poll_cursor("contract-poll-other").await.unwrap(),
        None
    );
}

/// The clock once it has passed `after` by at least a millisecond (the
/// embedded store keeps milliseconds): a time strictly between what was
/// recorded before and what is recorded after. Spins on the clock, no sleep.
fn time_after(after: DateTime<Utc>) -> DateTime<Utc> {
    loop {
        let now = Utc::now();
        if now.timestamp_millis() > after.timestamp_millis() {
            return now;
        }
        std::hint::spin_loop();
    }
}

/// Records older than the cutoff go, every kind of them (sent replies, their
/// parts, send intents, own sends, delivered events); records from after it
/// stay, and so do poll cursors; replies and DMs recorded while the prune
/// runs are kept and readable. Call it last: it prunes whatever the other
/// checks left from before the cutoff too.
pub async fn pruning_removes_exactly_the_older_records_while_writes_go_on(store: &dyn StateStore) {
    const OLD: usize = 40;
    let channel = "prune";
    let epoch = store.claim_channel(channel).await.unwrap();
    let sent = |id: &str, at: DateTime<Utc>| SentRecord {
        dm_event_id: format!("dm-{id}"),
        conversation_id: "1-2".into(),
        sent_at: at,
        reported: false,
        parts: Vec::new(),
    };
    let long_ago = Utc::now() - chrono::Duration::days(60);
    for i in 0..OLD {
        let id = format!("old-{i}");
        store
            .record_sent_part(channel, &id, 0, &sent(&format!("{id}-p0"), long_ago))
            .await
            .unwrap();
        store
            .record_sent(channel, &id, &sent(&id, long_ago))
            .await
            .unwrap();
        store
            .record_send_intent(channel, &id, 0, long_ago, epoch)
            .await
            .unwrap();
    }
    let old_events: Vec<String> = (0..OLD).map(|i| format!("old-event-{i}")).collect();
    store.record_delivered(channel, &old_events).await.unwrap();
    store.set_poll_cursor(channel, "old-event-9").await.unwrap();

    let cutoff = time_after(Utc::now());
    let recent = time_after(cutoff);
    store
        .record_sent(channel, "new", &sent("new", recent))
        .await
        .unwrap();
    store
        .record_sent_part(channel, "new", 0, &sent("new-p0", recent))
        .await
        .unwrap();
    store
        .record_send_intent(channel, "new", 1, recent, epoch)
        .await
        .unwrap();
    store
        .record_delivered(channel, &["new-event".to_owned()])
        .await
        .unwrap();

    // Replies and DMs keep coming while the prune runs.
    let flow = async {
        for i in 0..20 {
            let id = format!("flow-{i}");
            store
                .record_sent(channel, &id, &sent(&id, Utc::now()))
                .await
                .unwrap();
            store
                .record_delivered(channel, &[format!("flow-event-{i}")])
                .await
                .unwrap();
        }
    };
    let (pruned, ()) = tokio::join!(store.prune(cutoff), flow);
    let pruned = pruned.expect("the prune succeeds");
    assert!(pruned.sent_replies >= OLD as u64, "{pruned:?}");
    assert!(pruned.sent_reply_parts >= OLD as u64, "{pruned:?}");
    assert!(pruned.send_intents >= OLD as u64, "{pruned:?}");
    assert!(pruned.own_sends >= 2 * OLD as u64, "{pruned:?}");
    assert!(pruned.delivered_events >= OLD as u64, "{pruned:?}");

    for (i, event) in old_events.iter().enumerate() {
        let id = format!("old-{i}");
        assert_eq!(store.sent(channel, &id).await.unwrap(), None, "{id}");
        assert_eq!(store.sent_part(channel, &id, 0).await.unwrap(), None);
        assert_eq!(store.send_intent(channel, &id, 0).await.unwrap(), None);
        assert!(!store
            .is_own_send(channel, &format!("dm-{id}"))
            .await
            .unwrap());
        assert!(!store
            .is_own_send(channel, &format!("dm-{id}-p0"))
            .await
            .unwrap());
        assert!(!store.is_delivered(channel, event).await.unwrap());
    }
    let kept = store.sent(channel, "new").await.unwrap().expect("kept");
    assert_eq!(kept.dm_event_id, "dm-new");
    assert!(store.sent_part(channel, "new", 0).await.unwrap().is_some());
    assert!(store
        .send_intent(channel, "new", 1)
        .await
        .unwrap()
        .is_some());
    assert!(store.is_own_send(channel, "dm-new").await.unwrap());
    assert!(store.is_own_send(channel, "dm-new-p0").await.unwrap());
    assert!(store.is_delivered(channel, "new-event").await.unwrap());
    for i in 0..20 {
        let id = format!("flow-{i}");
        assert!(store.sent(channel, &id).await.unwrap().is_some(), "{id}");
        assert!(store
            .is_own_send(channel, &format!("dm-{id}"))
            .await
            .unwrap());
        assert!(store
            .is_delivered(channel, &format!("flow-event-{i}"))
            .await
            .unwrap());
    }
    assert_eq!(
        store.poll_cursor(channel).await.unwrap().as_deref(),
        Some("old-event-9")
    );

    // Nothing older is left: the same prune again removes nothing.
    assert_eq!(store.prune(cutoff).await.unwrap(), crate::Pruned::default());
}
