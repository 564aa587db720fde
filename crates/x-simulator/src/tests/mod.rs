//! The simulator over real HTTP, as the bridge's client will meet it.

mod activity;
mod activity_stream;
mod admin;
mod auth;
mod delivery;
mod dm_events;
mod faults;
mod oauth2;
mod rate_limit;
mod receiver;
mod sends;
mod uploads;
mod users;
mod waiting;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString as _};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use url::Url;

use crate::clock::{Clock as _, ManualClock};
use crate::{oauth, Account, Simulator, SimulatorConfig};

/// A running simulator on a hand-moved clock, with one account and a client.
struct Harness {
    sim: Simulator,
    clock: Arc<ManualClock>,
    account: Account,
    client: reqwest::Client,
}

/// What a test needs of an answer, read once.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

const RECIPIENT: &str = "1072250532645998596";

fn with_participant(participant: &str) -> String {
    format!("/2/dm_conversations/with/{participant}/messages")
}

fn hello() -> &'static str {
    r#"{"text":"Hello from the CRM"}"#
}

async fn harness() -> Harness {
    harness_with(SimulatorConfig::default()).await
}

/// A harness whose simulator has `config` plus the harness account.
async fn harness_with(mut config: SimulatorConfig) -> Harness {
    let account = Account::generate("acme_support");
    let clock = Arc::new(ManualClock::starting_now());
    config.accounts.push(account.clone());
    let sim = Simulator::start_with_clock(config, clock.clone())
        .await
        .unwrap();
    Harness {
        sim,
        clock,
        account,
        client: reqwest::Client::new(),
    }
}

impl Harness {
    fn url(&self, path: &str) -> Url {
        self.sim.base_url().join(path).unwrap()
    }

    /// A fresh, correctly signed Authorization header for `account`.
    fn authorization(&self, account: &Account, method: &str, url: &Url) -> String {
        let nonce = Alphanumeric.sample_string(&mut rand::rng(), 32);
        oauth::authorization_header(
            method,
            url,
            &[],
            account,
            &nonce,
            self.clock.now().timestamp(),
        )
    }

    /// POSTs `body` as JSON to `path`, signed as the harness account.
    async fn post(&self, path: &str, body: &str) -> Answer {
        self.post_as(&self.account.clone(), path, body).await
    }

    async fn post_as(&self, account: &Account, path: &str, body: &str) -> Answer {
        let url = self.url(path);
        let authorization = self.authorization(account, "POST", &url);
        self.send(
            self.client
                .post(url)
                .header(AUTHORIZATION, authorization)
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// GETs `path_and_query`, signed (query included) as the harness account.
    async fn get(&self, path_and_query: &str) -> Answer {
        self.get_as(&self.account.clone(), path_and_query).await
    }

    async fn get_as(&self, account: &Account, path_and_query: &str) -> Answer {
        let url = self.url(path_and_query);
        let authorization = self.authorization(account, "GET", &url);
        self.send(self.client.get(url).header(AUTHORIZATION, authorization))
            .await
    }

    /// GETs `path`, signed as the harness account, for a test that reads the raw response (its
    /// size, its bytes).
    async fn get_response(&self, path: &str) -> reqwest::Response {
        let url = self.url(path);
        let authorization = self.authorization(&self.account, "GET", &url);
        self.client
            .get(url)
            .header(AUTHORIZATION, authorization)
            .send()
            .await
            .unwrap()
    }

    /// POSTs [`hello`] to `url` as JSON with this `Authorization` header, however it was made.
    async fn post_with_authorization(&self, url: &Url, authorization: &str) -> Answer {
        self.send(
            self.client
                .post(url.clone())
                .header(AUTHORIZATION, authorization)
                .header(CONTENT_TYPE, "application/json")
                .body(hello()),
        )
        .await
    }

    /// A new account of the harness account's App (same consumer key, secret and Bearer
    /// token), added to the simulator.
    fn app_sibling(&self) -> Account {
        let sibling = Account {
            consumer_key: self.account.consumer_key.clone(),
            consumer_secret: self.account.consumer_secret.clone(),
            bearer_token: self.account.bearer_token.clone(),
            ..Account::generate("sibling")
        };
        self.sim.add_account(sibling.clone());
        sibling
    }

    /// A request with `account`'s App-only Bearer token and an optional JSON body.
    async fn bearer(
        &self,
        account: &Account,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> Answer {
        let mut request = self
            .client
            .request(method, self.url(path))
            .header(AUTHORIZATION, format!("Bearer {}", account.bearer_token));
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the simulator answers");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    /// A request built by the test, sent with a client timeout, to check that no answer comes.
    async fn post_expecting_timeout(&self, path: &str, body: &str) {
        let url = self.url(path);
        let authorization = self.authorization(&self.account, "POST", &url);
        let error = self
            .client
            .post(url)
            .header(AUTHORIZATION, authorization)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .expect_err("no answer expected");
        assert!(error.is_timeout(), "{error}");
    }

    fn user_id(&self) -> &str {
        &self.account.user_id
    }
}

/// Bounds a wait that should end promptly, so a bug fails the test instead of hanging it.
async fn promptly<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("did not happen within 30 s")
}
