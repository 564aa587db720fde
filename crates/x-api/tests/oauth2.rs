//! OAuth 2.0 user context against the project's X simulator: the token endpoint (PKCE,
//! refresh, rotation, refusals) and an [`XClient`] authenticating with Bearer user tokens
//! from a minimal [`AccessTokenSource`] of the tests' own. The bridge's token source, which
//! keeps the grant in the state store, is xbridge-core's `StoreTokenSource`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use x_simulator::{
    Account, Customer, MediaSpec, OAuth2Client as SimClient, Simulator, SimulatorConfig,
};
use xbridge_x_api::oauth2::{
    code_from_redirect, new_state, OAuth2Client, PkceVerifier, TokenEndpoint, TokenEndpointConfig,
    TokenError, TokenGrant, DM_SCOPES,
};
use xbridge_x_api::{
    AccessTokenSource, DmTarget, TokenFuture, WebhookClient, XAuth, XClient, XClientConfig, XError,
    XHttp,
};

struct Setup {
    sim: Simulator,
    account: Account,
    client: SimClient,
    endpoint: TokenEndpoint,
}

async fn setup(confidential: bool) -> Setup {
    let account = Account::generate("acme_support");
    let sim = Simulator::start(SimulatorConfig {
        accounts: vec![account.clone()],
        ..SimulatorConfig::default()
    })
    .await
    .expect("the simulator starts");
    let client = SimClient::generate(&account.user_id, confidential);
    sim.add_oauth2_client(client.clone());
    let endpoint = TokenEndpoint::new(
        TokenEndpointConfig::at(&sim.base_url()),
        OAuth2Client {
            client_id: client.client_id.clone(),
            client_secret: client.client_secret.clone().map(SecretString::from),
        },
        &XHttp::new().unwrap(),
    );
    Setup {
        sim,
        account,
        client,
        endpoint,
    }
}

impl Setup {
    /// The first grant, as an operator's authorize run gives it.
    fn grant(&self, scopes: &[&str]) -> TokenGrant {
        let tokens = self
            .sim
            .oauth2_grant(&self.client.client_id, scopes)
            .unwrap();
        TokenGrant {
            access_token: tokens.access_token.into(),
            refresh_token: tokens.refresh_token.map(SecretString::from),
            expires_in: Some(Duration::from_secs(tokens.expires_in as u64)),
            scopes: tokens.scope.split(' ').map(str::to_owned).collect(),
        }
    }

    fn x_client(&self, source: Arc<TestSource>) -> XClient {
        XClient::with_auth(
            XClientConfig {
                base_url: self.sim.base_url(),
                request_timeout: Duration::from_secs(10),
                ..XClientConfig::default()
            },
            XAuth::OAuth2(source),
            XHttp::new().unwrap(),
        )
        .unwrap()
    }
}

fn customer() -> DmTarget {
    DmTarget::Participant("1072250532645998596".into())
}

/// The least a client needs from a token source: the grant's access token until X refuses
/// it (401), then a refresh at the token endpoint. It keeps every refresh token X rotated
/// to, as the bridge's store does.
struct TestSource {
    endpoint: TokenEndpoint,
    access: Mutex<Option<SecretString>>,
    refresh: Mutex<Option<SecretString>>,
    rotated: Mutex<Vec<String>>,
}

impl TestSource {
    fn new(endpoint: TokenEndpoint, grant: TokenGrant) -> Arc<TestSource> {
        Arc::new(TestSource {
            endpoint,
            access: Mutex::new(Some(grant.access_token)),
            refresh: Mutex::new(grant.refresh_token),
            rotated: Mutex::new(Vec::new()),
        })
    }
}

impl AccessTokenSource for TestSource {
    fn access_token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            if let Some(access) = self.access.lock().unwrap().clone() {
                return Ok(access);
            }
            let refresh = self.refresh.lock().unwrap().clone().unwrap();
            let grant = self.endpoint.refresh(&refresh).await?;
            let rotated = grant.refresh_token.clone().unwrap();
            self.rotated
                .lock()
                .unwrap()
                .push(rotated.expose_secret().to_owned());
            *self.refresh.lock().unwrap() = Some(rotated);
            *self.access.lock().unwrap() = Some(grant.access_token.clone());
            Ok(grant.access_token)
        })
    }

    fn rejected(&self, token: &SecretString) {
        let mut access = self.access.lock().unwrap();
        if access
            .as_ref()
            .is_some_and(|a| a.expose_secret() == token.expose_secret())
        {
            *access = None;
        }
    }
}

#[tokio::test]
async fn the_pkce_flow_gives_a_grant_whose_token_sends_a_dm() {
    let s = setup(false).await;
    let verifier = PkceVerifier::generate();
    let state = new_state();
    let redirect_uri = "http://127.0.0.1:9/callback";
    let url = s
        .endpoint
        .authorize_url(redirect_uri, DM_SCOPES, &state, &verifier);
    // The operator's browser: the simulator approves at once and redirects.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = browser.get(url).send().await.unwrap();
    let redirect = answer.headers()["location"].to_str().unwrap().to_owned();
    let code = code_from_redirect(&redirect, &state).expect("the redirect carries the code");

    let grant = s
        .endpoint
        .exchange_code(&code, redirect_uri, &verifier)
        .await
        .unwrap();
    assert!(grant.has_scopes(DM_SCOPES));
    assert_eq!(grant.expires_in, Some(Duration::from_secs(7200)));
    let client = s.x_client(TestSource::new(s.endpoint.clone(), grant));
    assert!(client.uses_oauth2());
    client
        .send_dm(&customer(), "Hello over OAuth 2.0")
        .await
        .unwrap();
    let sent = s.sim.sent_dms_for(&s.account.user_id);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].text, "Hello over OAuth 2.0");

    // The code was spent: X's refusal means authorise again.
    let again = s
        .endpoint
        .exchange_code(&code, redirect_uri, &verifier)
        .await;
    assert!(again.unwrap_err().needs_authorization());
}

#[tokio::test]
async fn an_expired_token_gets_401_and_the_next_send_refreshes() {
    let s = setup(true).await;
    let first = s.grant(DM_SCOPES);
    let first_refresh = first.refresh_token.clone().unwrap();
    let source = TestSource::new(s.endpoint.clone(), first);
    let client = s.x_client(source.clone());
    client.send_dm(&customer(), "one").await.unwrap();

    s.sim.oauth2_expire_access_tokens(&s.account.user_id);
    let refused = client.send_dm(&customer(), "two").await.unwrap_err();
    assert!(
        matches!(refused, XError::Unauthorized { .. }),
        "{refused:?}"
    );
    // The 401 told the source; the retry refreshes and goes out.
    client.send_dm(&customer(), "two").await.unwrap();
    let texts: Vec<String> = s
        .sim
        .sent_dms_for(&s.account.user_id)
        .into_iter()
        .map(|dm| dm.text)
        .collect();
    assert_eq!(texts, ["one", "two"]);
    let rotated = source.rotated.lock().unwrap().clone();
    assert_eq!(rotated.len(), 1, "one refresh");
    assert_ne!(rotated[0], first_refresh.expose_secret());
}

/// A read (here the credential check's `GET /2/users/me`) that X answers 401 for an
/// access token it ended early is made once more with a refreshed token: a check must not
/// call a channel with a live grant unauthorized.
#[tokio::test]
async fn a_read_with_a_token_x_ended_is_read_again_with_a_refreshed_one() {
    let s = setup(true).await;
    let source = TestSource::new(s.endpoint.clone(), s.grant(DM_SCOPES));
    let client = s.x_client(source.clone());
    client.me().await.unwrap();

    s.sim.oauth2_expire_access_tokens(&s.account.user_id);
    let (me, _) = client.me().await.expect("read again after a refresh");
    assert_eq!(me.id, s.account.user_id);
    assert_eq!(source.rotated.lock().unwrap().len(), 1, "one refresh");
}

#[tokio::test]
async fn the_old_refresh_token_is_refused_after_rotation() {
    let s = setup(false).await;
    let old = s.grant(DM_SCOPES).refresh_token.unwrap();
    let rotated = s.endpoint.refresh(&old).await.unwrap();
    let new = rotated.refresh_token.clone().unwrap();
    assert_ne!(new.expose_secret(), old.expose_secret());

    let refused = s.endpoint.refresh(&old).await.unwrap_err();
    assert!(refused.needs_authorization(), "{refused:?}");
    let TokenError::GrantRefused { error, description } = &refused else {
        unreachable!()
    };
    assert_eq!(error, "invalid_request");
    assert_eq!(description, "Value passed for the token was invalid.");
    assert!(!refused.to_string().contains(old.expose_secret()));
    s.endpoint.refresh(&new).await.unwrap();
}

#[tokio::test]
async fn a_revoked_grant_is_the_typed_authorise_again_error() {
    let s = setup(false).await;
    let source = TestSource::new(s.endpoint.clone(), s.grant(DM_SCOPES));
    let client = s.x_client(source.clone());
    s.sim.oauth2_revoke_grants(&s.account.user_id);

    let first = client.send_dm(&customer(), "hello").await.unwrap_err();
    assert!(matches!(first, XError::Unauthorized { .. }), "{first:?}");
    let refresh = source.access_token().await.unwrap_err();
    assert!(refresh.needs_authorization(), "{refresh:?}");
    let second = client.send_dm(&customer(), "hello").await.unwrap_err();
    assert!(
        second.to_string().contains("authorise the channel again"),
        "{second}"
    );
    assert!(s.sim.sent_dms_for(&s.account.user_id).is_empty());
}

#[tokio::test]
async fn a_confidential_client_needs_its_secret() {
    let s = setup(true).await;
    let old = s.grant(DM_SCOPES).refresh_token.unwrap();
    let wrong = TokenEndpoint::new(
        TokenEndpointConfig::at(&s.sim.base_url()),
        OAuth2Client {
            client_id: s.client.client_id.clone(),
            client_secret: Some("not-the-secret".into()),
        },
        &XHttp::new().unwrap(),
    );
    let refused = wrong.refresh(&old).await.unwrap_err();
    assert!(
        matches!(refused, TokenError::ClientRejected { .. }),
        "{refused:?}"
    );
    assert!(!refused.needs_authorization());
    s.endpoint.refresh(&old).await.unwrap();
}

#[tokio::test]
async fn a_malformed_token_request_is_no_reason_to_authorise_again() {
    let s = setup(false).await;
    let refresh = s.grant(DM_SCOPES).refresh_token.unwrap();
    // A public client X does not know: `invalid_request`, but about the request.
    let unknown = TokenEndpoint::new(
        TokenEndpointConfig::at(&s.sim.base_url()),
        OAuth2Client {
            client_id: "not-a-client-of-this-app".to_owned(),
            client_secret: None,
        },
        &XHttp::new().unwrap(),
    );
    let refused = unknown.refresh(&refresh).await.unwrap_err();
    assert!(!refused.needs_authorization(), "{refused:?}");
    assert!(
        matches!(&refused, TokenError::Rejected { status: 400, detail } if detail.starts_with("invalid_request")),
        "{refused:?}"
    );
    // The grant is alive: its refresh token still works.
    s.endpoint.refresh(&refresh).await.unwrap();
}

#[tokio::test]
async fn media_downloads_take_the_oauth2_path() {
    let s = setup(false).await;
    let photo = MediaSpec {
        file_name: Some("OwIPMAFC.png".into()),
        content: Some(b"photo bytes".to_vec()),
        ..MediaSpec::photo()
    };
    let event = s.sim.customer_dm(
        &s.account.user_id,
        &Customer::generate("jane"),
        "look",
        Some(photo),
    );
    let ton = url::Url::parse(&event.attachment.unwrap().url).unwrap();
    let client = s.x_client(TestSource::new(s.endpoint.clone(), s.grant(DM_SCOPES)));
    let response = client
        .download_media(&ton, Duration::from_secs(10), &|_| true)
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"photo bytes");
    let paths: Vec<String> = s.sim.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("/2/dm_conversations/media/")),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.starts_with("/1.1/ton/")),
        "{paths:?}"
    );
}

/// The account's XAA subscriptions are made with its OAuth 2.0 token (the simulator records
/// which token made each), listed with the App's Bearer token, and a token X ended early is
/// refreshed and the call made once more.
#[tokio::test]
async fn a_webhook_client_subscribes_the_account_with_its_oauth2_token_refreshing_on_401() {
    let s = setup(true).await;
    let source = TestSource::new(s.endpoint.clone(), s.grant(DM_SCOPES));
    let client = WebhookClient::with_http(
        XClientConfig {
            base_url: s.sim.base_url(),
            request_timeout: Duration::from_secs(10),
            ..XClientConfig::default()
        },
        s.account.bearer_token.clone().into(),
        XAuth::OAuth2(source.clone()),
        XHttp::new().unwrap(),
    )
    .unwrap();
    let user = &s.account.user_id;
    client
        .create_stream_subscription("dm.received", user, "t")
        .await
        .unwrap();

    s.sim.oauth2_expire_access_tokens(user);
    client
        .create_stream_subscription("dm.sent", user, "t")
        .await
        .expect("refreshed and sent again");
    assert_eq!(source.rotated.lock().unwrap().len(), 1, "one refresh");

    let listed = client.list_activity_subscriptions().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let made = s.sim.activity_subscriptions();
    assert!(
        made.iter()
            .all(|m| m.created_with == x_simulator::CreatedWith::OAuth2 && &m.user_id == user),
        "{made:?}"
    );
}
