//! OAuth 2.0 user context against the project's X simulator: the token endpoint (PKCE,
//! refresh, rotation, refusals) and an [`XClient`] authenticating with Bearer user tokens
//! from a [`RefreshingTokenSource`].

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
    DmTarget, GrantSink, RefreshingTokenSource, StoreFuture, WebhookClient, XAuth, XClient,
    XClientConfig, XError, XHttp,
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

    fn x_client(&self, source: Arc<RefreshingTokenSource>) -> XClient {
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

/// Keeps every grant it is given, as the state store will.
#[derive(Default)]
struct Kept(Mutex<Vec<String>>);

impl GrantSink for Kept {
    fn store<'a>(&'a self, grant: &'a TokenGrant) -> StoreFuture<'a> {
        Box::pin(async move {
            let refresh = grant
                .refresh_token
                .as_ref()
                .unwrap()
                .expose_secret()
                .to_owned();
            self.0.lock().unwrap().push(refresh);
            Ok(())
        })
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
    let client = s.x_client(Arc::new(RefreshingTokenSource::new(
        s.endpoint.clone(),
        grant,
    )));
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
async fn an_expired_token_gets_401_and_the_next_send_refreshes_and_stores_the_new_grant() {
    let s = setup(true).await;
    let first = s.grant(DM_SCOPES);
    let first_refresh = first.refresh_token.clone().unwrap();
    let kept = Arc::new(Kept::default());
    let source =
        Arc::new(RefreshingTokenSource::new(s.endpoint.clone(), first).with_sink(kept.clone()));
    let client = s.x_client(source.clone());
    client.send_dm(&customer(), "one").await.unwrap();

    s.sim.oauth2_expire_access_tokens(&s.account.user_id);
    let refused = client.send_dm(&customer(), "two").await.unwrap_err();
    assert!(
        matches!(refused, XError::Unauthorized { .. }),
        "{refused:?}"
    );
    // The 401 told the source; the retry refreshes, stores the rotated grant and goes out.
    client.send_dm(&customer(), "two").await.unwrap();
    let texts: Vec<String> = s
        .sim
        .sent_dms_for(&s.account.user_id)
        .into_iter()
        .map(|dm| dm.text)
        .collect();
    assert_eq!(texts, ["one", "two"]);
    let stored = kept.0.lock().unwrap().clone();
    assert_eq!(stored.len(), 1, "one refresh, stored once");
    assert_ne!(stored[0], first_refresh.expose_secret());
    assert_eq!(source.refresh_token().unwrap().expose_secret(), stored[0]);
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
    let source = Arc::new(RefreshingTokenSource::new(
        s.endpoint.clone(),
        s.grant(DM_SCOPES),
    ));
    let client = s.x_client(source.clone());
    s.sim.oauth2_revoke_grants(&s.account.user_id);

    let first = client.send_dm(&customer(), "hello").await.unwrap_err();
    assert!(matches!(first, XError::Unauthorized { .. }), "{first:?}");
    use xbridge_x_api::AccessTokenSource as _;
    let refresh = source.access_token().await.unwrap_err();
    assert!(refresh.needs_authorization(), "{refresh:?}");
    let second = client.send_dm(&customer(), "hello").await.unwrap_err();
    assert!(
        second.to_string().contains("authorise the channel again"),
        "{second}"
    );
    let requests_after = s.sim.requests().len();
    // The refusal is remembered: X is not asked again with the dead refresh token.
    assert!(source
        .access_token()
        .await
        .unwrap_err()
        .needs_authorization());
    assert_eq!(s.sim.requests().len(), requests_after);
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
    let source = Arc::new(RefreshingTokenSource::new(
        s.endpoint.clone(),
        s.grant(DM_SCOPES),
    ));
    let client = s.x_client(source);
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
    let kept = Arc::new(Kept::default());
    let source = Arc::new(
        RefreshingTokenSource::new(s.endpoint.clone(), s.grant(DM_SCOPES)).with_sink(kept.clone()),
    );
    let client = WebhookClient::with_http(
        XClientConfig {
            base_url: s.sim.base_url(),
            request_timeout: Duration::from_secs(10),
            ..XClientConfig::default()
        },
        s.account.bearer_token.clone().into(),
        XAuth::OAuth2(source),
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
    assert_eq!(kept.0.lock().unwrap().len(), 1, "one refresh, stored");

    let listed = client.list_activity_subscriptions().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let made = s.sim.activity_subscriptions();
    assert!(
        made.iter()
            .all(|m| m.created_with == x_simulator::CreatedWith::OAuth2 && &m.user_id == user),
        "{made:?}"
    );
}
