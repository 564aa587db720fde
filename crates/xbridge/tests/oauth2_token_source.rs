//! The store-backed OAuth 2.0 token source when the state store misbehaves (issue 17,
//! red-team gaps): a rotated grant the store did not take survives the source that got
//! it; a refresh whose store write is slow keeps its lease, so another replica does not
//! spend the same refresh token and mark the new grant refused; a refusal whose mark the
//! store did not take does not send every use back to X's token endpoint. The store is
//! the real embedded one behind a double that fails or holds writes on demand; X is the
//! simulator.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret as _, SecretString};
use x_simulator::{Account, OAuth2Client as SimClient, Simulator, SimulatorConfig};
use xbridge_core::oauth2_tokens::{seal, ProcessGrants, StoreTokenSource};
use xbridge_store::{CredentialsKey, EmbeddedStore, GrantBase, StateStore};
use xbridge_test_support::{FailingStore, Refuse, PATIENCE};
use xbridge_x_api::oauth2::{
    OAuth2Client, TokenEndpoint, TokenEndpointConfig, TokenError, TokenGrant, DM_SCOPES,
};
use xbridge_x_api::{AccessTokenSource as _, XHttp};

const CHANNEL: &str = "acme";
const KEY: &str = "Y29udHJhY3QtY3JlZGVudGlhbHMta2V5LW9mLTQ4LWJ5dGVzLWZvci10aGUtdGVzdHM=";

struct Setup {
    sim: Simulator,
    account: Account,
    client: SimClient,
    store: Arc<FailingStore>,
    key: Arc<CredentialsKey>,
    _dir: tempfile::TempDir,
}

/// A simulator with a confidential client of `acme`'s account, and a store holding a
/// grant of it (generation 1) whose access token has ended: the next use refreshes.
async fn setup() -> Setup {
    let account = Account::generate("acme_support");
    let sim = Simulator::start(SimulatorConfig {
        accounts: vec![account.clone()],
        ..SimulatorConfig::default()
    })
    .await
    .expect("the simulator starts");
    let client = SimClient::generate(&account.user_id, true);
    sim.add_oauth2_client(client.clone());
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
    let store = FailingStore::new(Arc::new(embedded));
    let key = Arc::new(CredentialsKey::derive(&SecretString::from(KEY)).unwrap());
    let tokens = sim.oauth2_grant(&client.client_id, DM_SCOPES).unwrap();
    let grant = TokenGrant {
        access_token: tokens.access_token.into(),
        refresh_token: tokens.refresh_token.map(SecretString::from),
        expires_in: None,
        scopes: DM_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
    };
    let (sealed, _) = seal(&key, CHANNEL, &client.client_id, &grant, None, Vec::new()).unwrap();
    let ended = Utc::now() - chrono::Duration::minutes(1);
    store
        .store_oauth2_grant(CHANNEL, GrantBase::Any, &sealed, Some(ended))
        .await
        .unwrap();
    Setup {
        sim,
        account,
        client,
        store,
        key,
        _dir: dir,
    }
}

impl Setup {
    /// A token source of the channel, as the bridge builds one per use, in the process
    /// (replica) whose grants are `grants`.
    fn source(&self, grants: &ProcessGrants, lease_ttl: Duration) -> StoreTokenSource {
        StoreTokenSource::new(
            CHANNEL,
            self.endpoint(),
            self.store.clone(),
            self.key.clone(),
            None,
            lease_ttl,
            grants,
        )
    }

    /// X's token endpoint for the client.
    fn endpoint(&self) -> TokenEndpoint {
        TokenEndpoint::new(
            TokenEndpointConfig::at(&self.sim.base_url()),
            OAuth2Client {
                client_id: self.client.client_id.clone(),
                client_secret: self.client.client_secret.clone().map(SecretString::from),
            },
            &XHttp::new().unwrap(),
        )
    }

    /// Requests X's token endpoint got.
    fn token_requests(&self) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.path == "/2/oauth2/token")
            .count()
    }

    /// The stored grant's generation, refused mark and refresh token.
    async fn stored(&self) -> (u64, bool, String) {
        let row = self.store.oauth2_grant(CHANNEL).await.unwrap().unwrap();
        let text = self.key.open_grant(CHANNEL, &row.sealed).unwrap();
        let json: serde_json::Value = serde_json::from_str(text.expose_secret()).unwrap();
        let refresh = json["refresh_token"].as_str().unwrap().to_owned();
        (row.generation, row.refused, refresh)
    }

    /// Whether X takes `refresh` (and rotates it).
    async fn x_takes(&self, refresh: &str) -> bool {
        self.endpoint()
            .refresh(&SecretString::from(refresh.to_owned()))
            .await
            .is_ok()
    }
}

async fn patiently<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
}

#[tokio::test]
async fn a_rotated_grant_the_store_refused_outlives_its_token_source() {
    let s = setup().await;
    let grants = ProcessGrants::isolated();
    let ttl = Duration::from_secs(10);
    s.store.refuse(Refuse::Grants);

    let first = s.source(&grants, ttl);
    let token = patiently("the first refresh", first.access_token())
        .await
        .expect("X rotated the grant; its access token is usable meanwhile");
    assert_eq!(s.token_requests(), 1);
    drop(first);

    // A channel update (or the CRM's check) builds a new source while the store still
    // refuses: it uses the rotated grant instead of spending the dead stored token.
    let second = s.source(&grants, ttl);
    let again = patiently("the second source", second.access_token())
        .await
        .expect("the rotated grant is still held");
    assert_eq!(again.expose_secret(), token.expose_secret());
    assert_eq!(s.token_requests(), 1, "X was not asked again");
    drop(second);

    // Once the store takes writes, the next source stores the grant.
    s.store.heal();
    let third = s.source(&grants, ttl);
    let used = patiently("the third source", third.access_token())
        .await
        .unwrap();
    assert_eq!(used.expose_secret(), token.expose_secret());
    let (generation, refused, refresh) = s.stored().await;
    assert_eq!((generation, refused), (2, false));
    assert_eq!(s.token_requests(), 1);
    assert!(
        s.x_takes(&refresh).await,
        "the stored refresh token is live"
    );
}

#[tokio::test]
async fn a_refresh_with_a_slow_store_write_keeps_its_lease_from_the_other_replica() {
    let s = setup().await;
    // Short, so that the write below outlasts it several times over.
    let ttl = Duration::from_millis(1500);
    s.store.hold_grant_writes();
    let a = Arc::new(s.source(&ProcessGrants::isolated(), ttl));
    let refreshing = tokio::spawn({
        let a = a.clone();
        async move { a.access_token().await }
    });
    patiently("A's grant write", s.store.wait_for_held_grant_writes(1)).await;
    assert_eq!(s.token_requests(), 1, "A spent the stored refresh token");
    // A took the lease once; four renewals later its first lease would have lapsed.
    let taken = s.store.leases_granted();
    patiently(
        "A renewing its lease while its write waits",
        s.store.wait_for_leases_granted(taken + 4),
    )
    .await;

    // Replica B needs a token now: it must wait for A's grant, not refresh itself.
    let b = Arc::new(s.source(&ProcessGrants::isolated(), ttl));
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.access_token().await }
    });
    patiently(
        "B turned away from the lease",
        s.store.wait_for_leases_turned_away(1),
    )
    .await;
    s.store.release_grant_writes();

    let from_a = patiently("A's refresh", refreshing).await.unwrap().unwrap();
    let from_b = patiently("B's token", waiting).await.unwrap();
    let from_b = from_b.expect("B uses A's grant, not a refusal of the spent token");
    assert_eq!(from_b.expose_secret(), from_a.expose_secret());
    assert_eq!(s.token_requests(), 1, "B never asked X");
    let (generation, refused, _) = s.stored().await;
    assert_eq!((generation, refused), (2, false));
}

#[tokio::test]
async fn a_refusal_whose_mark_the_store_refused_does_not_hammer_x() {
    let s = setup().await;
    let grants = ProcessGrants::isolated();
    let ttl = Duration::from_secs(10);
    s.sim.oauth2_revoke_grants(&s.account.user_id);
    s.store.refuse(Refuse::RefusedMarks);

    let source = s.source(&grants, ttl);
    let refused = patiently("the refresh", source.access_token())
        .await
        .unwrap_err();
    assert!(refused.needs_authorization(), "{refused:?}");
    assert_eq!(s.token_requests(), 1);
    for _ in 0..3 {
        let again = patiently("a later use", source.access_token())
            .await
            .unwrap_err();
        assert!(
            matches!(again, TokenError::GrantRefused { .. }),
            "{again:?}"
        );
    }
    // Nor does a new source of the channel (a channel update, the CRM's check).
    let rebuilt = s.source(&grants, ttl);
    assert!(patiently("a new source", rebuilt.access_token())
        .await
        .unwrap_err()
        .needs_authorization());
    assert_eq!(s.token_requests(), 1, "X was asked once");
    assert!(!s.stored().await.1, "the store took no mark yet");

    // Once the store takes writes, the mark is written, still without asking X.
    s.store.heal();
    assert!(patiently("after healing", rebuilt.access_token())
        .await
        .unwrap_err()
        .needs_authorization());
    assert!(s.stored().await.1, "marked refused");
    assert_eq!(s.token_requests(), 1);
}

#[tokio::test]
async fn a_new_source_uses_the_grant_stored_over_the_one_in_use() {
    let s = setup().await;
    let grants = ProcessGrants::isolated();
    let ttl = Duration::from_secs(10);
    let first = s.source(&grants, ttl);
    let old = patiently("the first refresh", first.access_token())
        .await
        .unwrap();
    assert_eq!(s.token_requests(), 1);

    // An operator authorises the channel again (`xbridge oauth2 authorize`), maybe as
    // another account or with other scopes: a new grant, stored over the one in use.
    let tokens = s.sim.oauth2_grant(&s.client.client_id, DM_SCOPES).unwrap();
    let grant = TokenGrant {
        access_token: tokens.access_token.clone().into(),
        refresh_token: tokens.refresh_token.map(SecretString::from),
        expires_in: Some(Duration::from_secs(7200)),
        scopes: DM_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
    };
    let (sealed, expires_at) = seal(
        &s.key,
        CHANNEL,
        &s.client.client_id,
        &grant,
        None,
        Vec::new(),
    )
    .unwrap();
    s.store
        .store_oauth2_grant(CHANNEL, GrantBase::Any, &sealed, expires_at)
        .await
        .unwrap();
    assert_ne!(tokens.access_token, old.expose_secret());

    // The next use of the channel (a new source: a channel update, the CRM's check)
    // goes out with the new grant, not the old one still fresh in the process.
    let second = s.source(&grants, ttl);
    let used = patiently("the new source", second.access_token())
        .await
        .unwrap();
    assert!(
        used.expose_secret() == tokens.access_token,
        "the new source uses the new grant"
    );
    // And so does the source built before, which shares the process's grant.
    let earlier = patiently("the first source", first.access_token())
        .await
        .unwrap();
    assert!(
        earlier.expose_secret() == tokens.access_token,
        "the earlier source uses the new grant too"
    );
    assert_eq!(
        s.token_requests(),
        1,
        "the stored grant was fresh: no refresh"
    );
}

#[tokio::test]
async fn a_rotated_grant_the_store_refused_keeps_its_lease_and_is_stored_once_it_heals() {
    let s = setup().await;
    // Short, so that the time the store refuses outlasts it several times over.
    let ttl = Duration::from_millis(1500);
    s.store.refuse(Refuse::Grants);
    let a = s.source(&ProcessGrants::isolated(), ttl);
    let from_a = patiently("A's refresh", a.access_token())
        .await
        .expect("X rotated the grant; its access token is usable meanwhile");
    assert_eq!(s.token_requests(), 1, "A spent the stored refresh token");

    // A is not used again, yet it keeps the lease: four renewals outlast the first lease.
    let taken = s.store.leases_granted();
    patiently(
        "A renewing its lease after its refresh returned",
        s.store.wait_for_leases_granted(taken + 4),
    )
    .await;

    // Replica B needs a token now: it must wait for A's grant, not spend the stored
    // (spent) refresh token, be refused and mark the channel refused for every replica.
    let b = Arc::new(s.source(&ProcessGrants::isolated(), ttl));
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.access_token().await }
    });
    patiently(
        "B turned away from the lease",
        s.store.wait_for_leases_turned_away(1),
    )
    .await;

    // The store heals: A stores its grant by itself, with no further use of A.
    s.store.heal();
    patiently("A's grant stored", s.store.wait_for_grant_writes(2)).await;
    let (generation, refused, refresh) = s.stored().await;
    assert_eq!((generation, refused), (2, false));
    let from_b = patiently("B's token", waiting).await.unwrap();
    let from_b = from_b.expect("B uses A's grant, not a refusal of the spent token");
    assert_eq!(from_b.expose_secret(), from_a.expose_secret());
    assert_eq!(s.token_requests(), 1, "B never asked X");
    assert!(
        s.x_takes(&refresh).await,
        "the stored refresh token is live"
    );
    drop(a);
}

#[tokio::test]
async fn a_refresh_x_turned_away_is_not_asked_again_at_every_use() {
    let s = setup().await;
    let grants = ProcessGrants::isolated();
    let ttl = Duration::from_secs(10);
    // A public client X does not know: X answers `invalid_request` "Missing required
    // parameter [client_id].", which says nothing of the grant (not a dead token).
    let client_id = "an-unknown-public-client";
    let refresh = "a-refresh-token-of-the-unknown-client";
    let grant = TokenGrant {
        access_token: SecretString::from("an-ended-access-token"),
        refresh_token: Some(SecretString::from(refresh)),
        expires_in: None,
        scopes: DM_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
    };
    let (sealed, _) = seal(&s.key, CHANNEL, client_id, &grant, None, Vec::new()).unwrap();
    let ended = Utc::now() - chrono::Duration::minutes(1);
    s.store
        .store_oauth2_grant(CHANNEL, GrantBase::Any, &sealed, Some(ended))
        .await
        .unwrap();
    let endpoint = TokenEndpoint::new(
        TokenEndpointConfig::at(&s.sim.base_url()),
        OAuth2Client {
            client_id: client_id.to_owned(),
            client_secret: None,
        },
        &XHttp::new().unwrap(),
    );
    let source = |endpoint: TokenEndpoint| {
        StoreTokenSource::new(
            CHANNEL,
            endpoint,
            s.store.clone(),
            s.key.clone(),
            None,
            ttl,
            &grants,
        )
    };

    let first = source(endpoint.clone());
    let error = patiently("the refresh", first.access_token())
        .await
        .unwrap_err();
    let said = error.to_string();
    assert!(
        matches!(error, TokenError::Rejected { status: 400, .. }),
        "{error:?}"
    );
    assert!(said.contains("invalid_request"), "names X's code: {said}");
    assert!(said.contains("client_id"), "and X's description: {said}");
    assert!(!said.contains(refresh), "never the token: {said}");
    assert_eq!(s.token_requests(), 1);

    // Every use meanwhile, of this source or a new one, gets X's answer without asking X.
    for _ in 0..3 {
        let again = patiently("a later use", first.access_token())
            .await
            .unwrap_err();
        assert_eq!(again, error);
    }
    let rebuilt = source(endpoint);
    let again = patiently("a new source", rebuilt.access_token())
        .await
        .unwrap_err();
    assert_eq!(again, error);
    assert_eq!(s.token_requests(), 1, "X was asked once");
    assert!(
        !s.stored().await.1,
        "nothing marked: the grant was not refused"
    );
}
