//! Webhook management and Account Activity (AAA) subscriptions (README §4): what an operator
//! runs once per X App and account so that X pushes DMs to `xbridge run` instead of being
//! polled for them.
//!
//! The webhook routes (`/2/webhooks`) belong to the App and take its Bearer token; a
//! subscription (`/2/account_activity/webhooks/:id/subscriptions/all`, and XAA's in
//! `activity.rs`) belongs to one account and takes that account's user context: its OAuth
//! 1.0a signature, or its OAuth 2.0 access token (AAA v2 takes OAuth 2.0 since 2026-01-15,
//! docs/x-api-facts.md "OAuth 2.0 channels in the bridge"). X refuses these calls with a 400 whose
//! `errors[].message` names the reason (`CrcValidationFailed`, `WebhookLimitExceeded`, …);
//! [`WebhookError`] turns each reason into what it means and what to do about it.
//!
//! These are rare, operator-driven calls, so they are not paced.

use std::fmt;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::auth::{Authorization, XAuth};
use crate::dm::local_invalid;
use crate::error::body_snippet;
use crate::read::{classify_read_error, endpoint};
use crate::{oauth, XClientConfig, XError, XHttp};

/// A webhook as X lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Webhook {
    /// X's id for it, needed to subscribe accounts and to revalidate it.
    #[serde(deserialize_with = "crate::id::deserialize")]
    pub id: String,
    /// Where X sends the CRC and the events.
    pub url: String,
    /// Whether X's last CRC passed; X delivers nothing to an invalid webhook until it is
    /// revalidated.
    pub valid: bool,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// What is wrong with an App's webhooks as X lists them, with the fix, or `None` when one
/// of them is valid (X delivers events only to a valid webhook). One verdict for
/// `xbridge check` and the running bridge's periodic check, so both say the same thing.
pub fn webhook_problem(webhooks: &[Webhook]) -> Option<String> {
    if webhooks.iter().any(|w| w.valid) {
        return None;
    }
    Some(match webhooks.first() {
        None => "no webhook is registered for this App: run `xbridge webhook register`, then `xbridge webhook subscribe` (or set inbound = \"poll\")".to_owned(),
        Some(webhook) => format!(
            "X considers the webhook {} invalid (its CRC check failed): make sure the bridge is reachable there, then run `xbridge webhook revalidate`",
            crate::excerpt::cut(&webhook.url, 300)
        ),
    })
}

/// X's answer to `GET /2/webhooks`.
#[derive(Deserialize)]
pub(crate) struct WebhookList {
    #[serde(default)]
    pub(crate) data: Vec<Webhook>,
}

/// Why X refused a webhook or subscription call: one variant per reason X names, so an
/// operator is told what the reason means and what to do, and [`WebhookError::Other`] for
/// every other failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WebhookError {
    /// X's CRC against the URL failed: nothing answered, or the answer was not keyed with
    /// the App's consumer secret.
    #[error("X could not verify the webhook URL (CrcValidationFailed): make sure `xbridge run` is reachable at that URL over HTTPS and answers the CRC with this channel's consumer secret")]
    CrcValidationFailed,
    /// X does not accept the URL itself.
    #[error("X does not accept this webhook URL (UrlValidationFailed): it must be a public https:// URL without a port and at most 200 characters long")]
    UrlValidationFailed,
    /// The App already has a webhook with this URL.
    #[error("this URL is already registered as a webhook of this X App (DuplicateUrlFailed): see it with `xbridge webhook status`, and use `xbridge webhook revalidate` if it is marked invalid")]
    DuplicateUrlFailed,
    /// The App has as many webhooks as its plan allows (Pay Per Use: 1).
    #[error("this X App already has as many webhooks as its plan allows (WebhookLimitExceeded; Pay Per Use allows 1): reuse the registered one (`xbridge webhook status`) or delete it in the X developer console first")]
    WebhookLimitExceeded,
    /// No webhook of this App has that id.
    #[error("X knows no webhook with this id for this X App (WebhookIdInvalid): list the registered ones with `xbridge webhook status`")]
    WebhookIdInvalid,
    /// The account is already subscribed to the webhook.
    #[error("this account is already subscribed to the webhook (DuplicateSubscriptionFailed): nothing to do, its DMs already go to the webhook")]
    DuplicateSubscriptionFailed,
    /// The App has as many subscribed accounts as its plan allows (Pay Per Use: 3).
    #[error("this X App already has as many subscribed accounts as its plan allows (SubscriptionLimitExceeded; Pay Per Use allows 3): unsubscribe another account first, or poll this channel instead")]
    SubscriptionLimitExceeded,
    /// The App has as many X Activity API subscriptions as its plan allows (self-serve:
    /// 1,500); X names it like AAA's limit (assumed, not documented).
    #[error("this X App already has as many X Activity API subscriptions as its plan allows (SubscriptionLimitExceeded; self-serve allows 1,500, each account uses one per DM event type): delete unused ones (`xbridge webhook subscriptions`), or use webhook_api = \"aaa\" for this channel")]
    ActivitySubscriptionLimitExceeded,
    /// X refused to subscribe the account to its private DM events (403).
    #[error("X refused to subscribe this account to its DM events through the X Activity API (403): the account must have authorized this X App (its access token in this channel's credentials); X documents OAuth 2.0 with the dm.read scope for these events — if X refuses the account's OAuth 1.0a token here, set webhook_api = \"aaa\" for this channel ({problem})")]
    ActivityNotAuthorized {
        /// X's detail, bounded.
        problem: String,
    },
    /// Any other failure (credentials, credits, rate limits, transport, ...).
    #[error(transparent)]
    Other(#[from] XError),
}

impl WebhookError {
    /// The reason X named, for the variants that have one; lets callers and tests match
    /// on X's own word.
    pub fn reason(&self) -> Option<&'static str> {
        Some(match self {
            WebhookError::CrcValidationFailed => "CrcValidationFailed",
            WebhookError::UrlValidationFailed => "UrlValidationFailed",
            WebhookError::DuplicateUrlFailed => "DuplicateUrlFailed",
            WebhookError::WebhookLimitExceeded => "WebhookLimitExceeded",
            WebhookError::WebhookIdInvalid => "WebhookIdInvalid",
            WebhookError::DuplicateSubscriptionFailed => "DuplicateSubscriptionFailed",
            WebhookError::SubscriptionLimitExceeded
            | WebhookError::ActivitySubscriptionLimitExceeded => "SubscriptionLimitExceeded",
            WebhookError::ActivityNotAuthorized { .. } | WebhookError::Other(_) => return None,
        })
    }
}

/// Every reason X names for refusing a webhook or subscription call, with its variant.
const REASONS: [(&str, WebhookError); 7] = [
    ("CrcValidationFailed", WebhookError::CrcValidationFailed),
    ("UrlValidationFailed", WebhookError::UrlValidationFailed),
    ("DuplicateUrlFailed", WebhookError::DuplicateUrlFailed),
    ("WebhookLimitExceeded", WebhookError::WebhookLimitExceeded),
    ("WebhookIdInvalid", WebhookError::WebhookIdInvalid),
    (
        "DuplicateSubscriptionFailed",
        WebhookError::DuplicateSubscriptionFailed,
    ),
    (
        "SubscriptionLimitExceeded",
        WebhookError::SubscriptionLimitExceeded,
    ),
];

/// Sorts a non-2xx answer to a webhook or subscription call: a reason X names in
/// `errors[].message` (or, failing that, in `title` or `detail`) becomes its variant;
/// anything else is classified as for a read.
pub fn classify_webhook_error(status: u16, headers: &HeaderMap, body: &[u8]) -> WebhookError {
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
        let messages = fields
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|error| error.get("message").and_then(Value::as_str));
        let texts = ["title", "detail"]
            .into_iter()
            .filter_map(|key| fields.get(key).and_then(Value::as_str));
        for text in messages.chain(texts) {
            if let Some((_, error)) = REASONS.iter().find(|(name, _)| text.contains(name)) {
                return error.clone();
            }
        }
    }
    WebhookError::Other(classify_read_error(status, headers, body))
}

/// The webhook and subscription calls of one channel: the App's Bearer token for the
/// webhook routes, the account's own authentication ([`XAuth`]: OAuth 1.0a, or an OAuth 2.0
/// token source refreshing like its DMs') for its subscriptions.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    base_url: Url,
    request_timeout: std::time::Duration,
    bearer_token: SecretString,
    auth: XAuth,
}

impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// How a request proves who sends it.
#[derive(Clone, Copy)]
pub(crate) enum Auth {
    /// The App's Bearer token (webhook routes).
    App,
    /// The account's user context, OAuth 1.0a or 2.0 (its subscriptions).
    User,
}

impl WebhookClient {
    /// A client for one channel, with an HTTP stack of its own. Fails like
    /// [`crate::XClient::new`]: on a base URL that is not http(s), or when the HTTP stack
    /// cannot start.
    pub fn new(
        config: XClientConfig,
        bearer_token: SecretString,
        auth: XAuth,
    ) -> Result<WebhookClient, XError> {
        WebhookClient::with_http(config, bearer_token, auth, XHttp::new()?)
    }

    /// A client for one channel on a shared HTTP stack (see [`XHttp`] for why), with its own
    /// `request_timeout`. Fails on a base URL that is not http(s).
    pub fn with_http(
        config: XClientConfig,
        bearer_token: SecretString,
        auth: XAuth,
        http: XHttp,
    ) -> Result<WebhookClient, XError> {
        if !matches!(config.base_url.scheme(), "http" | "https")
            || config.base_url.cannot_be_a_base()
        {
            return Err(local_invalid(format!(
                "X base URL {} is not an http(s) URL",
                config.base_url
            )));
        }
        Ok(WebhookClient {
            http: http.client().clone(),
            base_url: config.base_url,
            request_timeout: config.request_timeout,
            bearer_token,
            auth,
        })
    }

    /// Registers `url` as the App's webhook: `POST /2/webhooks` `{"url"}` with the Bearer
    /// token. X runs a CRC against the URL before answering, so the bridge must already be
    /// serving it.
    #[tracing::instrument(skip_all, fields(url = %url))]
    pub async fn register_webhook(&self, url: &str) -> Result<Webhook, WebhookError> {
        #[derive(Deserialize)]
        struct Answer {
            data: Webhook,
        }
        let endpoint = endpoint(&self.base_url, &["2", "webhooks"])?;
        let body = serde_json::json!({ "url": url });
        let answer: Answer = self
            .call(
                Method::POST,
                endpoint,
                Auth::App,
                Some(&body),
                "webhook registration",
            )
            .await?;
        tracing::info!(id = %answer.data.id, valid = answer.data.valid, "webhook registered");
        Ok(answer.data)
    }

    /// The App's webhooks: `GET /2/webhooks` with the Bearer token, each with whether X
    /// considers it valid.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, WebhookError> {
        let endpoint = endpoint(&self.base_url, &["2", "webhooks"])?;
        let answer: WebhookList = self
            .call(Method::GET, endpoint, Auth::App, None, "webhook list")
            .await?;
        Ok(answer.data)
    }

    /// Makes X run the CRC again and re-enable the webhook if it passes:
    /// `PUT /2/webhooks/:id` with the Bearer token. A failing CRC is
    /// [`WebhookError::CrcValidationFailed`] (X then marks the webhook invalid),
    /// whether X refuses the call or answers 200 with `"valid": false`.
    /// X may also answer only `"attempted": true`: `Ok` then means X ran the
    /// CRC, not that it passed (`GET /2/webhooks` tells).
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook_id))]
    pub async fn revalidate_webhook(&self, webhook_id: &str) -> Result<(), WebhookError> {
        let endpoint = endpoint(&self.base_url, &["2", "webhooks", checked_id(webhook_id)?])?;
        let answer: Value = self
            .call(
                Method::PUT,
                endpoint,
                Auth::App,
                None,
                "webhook revalidation",
            )
            .await?;
        revalidation_answer(&answer)
    }

    /// Subscribes the channel's account to the webhook, so X delivers its DM events there:
    /// `POST /2/account_activity/webhooks/:id/subscriptions/all` with body `{}`, signed with
    /// the account's user context, OAuth 1.0a or 2.0 (X refuses the Bearer token here).
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook_id))]
    pub async fn subscribe(&self, webhook_id: &str) -> Result<(), WebhookError> {
        let endpoint = self.subscription_url(webhook_id)?;
        let _: Value = self
            .call(
                Method::POST,
                endpoint,
                Auth::User,
                Some(&serde_json::json!({})),
                "subscription",
            )
            .await?;
        tracing::info!("account subscribed to the webhook");
        Ok(())
    }

    /// Whether the channel's account is subscribed to the webhook:
    /// `GET /2/account_activity/webhooks/:id/subscriptions/all` with its user context.
    pub async fn subscription_status(&self, webhook_id: &str) -> Result<bool, WebhookError> {
        #[derive(Deserialize)]
        struct Subscribed {
            subscribed: bool,
        }
        #[derive(Deserialize)]
        struct Answer {
            data: Subscribed,
        }
        let endpoint = self.subscription_url(webhook_id)?;
        let answer: Answer = self
            .call(
                Method::GET,
                endpoint,
                Auth::User,
                None,
                "subscription check",
            )
            .await?;
        Ok(answer.data.subscribed)
    }

    /// Ends the account's AAA subscription to the webhook:
    /// `DELETE /2/account_activity/webhooks/:id/subscriptions/:user_id/all` with the App's
    /// Bearer token (the only auth X documents for it).
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook_id))]
    pub async fn unsubscribe(&self, webhook_id: &str, user_id: &str) -> Result<(), WebhookError> {
        let endpoint = endpoint(
            &self.base_url,
            &[
                "2",
                "account_activity",
                "webhooks",
                checked_id(webhook_id)?,
                "subscriptions",
                checked_id(user_id)?,
                "all",
            ],
        )?;
        let _: Value = self
            .call(Method::DELETE, endpoint, Auth::App, None, "unsubscription")
            .await?;
        tracing::info!("account unsubscribed from the webhook");
        Ok(())
    }

    /// X's base URL, for the X Activity API calls beside these (`activity.rs`).
    pub(crate) fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// Whether the account authenticates with OAuth 2.0.
    pub fn uses_oauth2(&self) -> bool {
        matches!(self.auth, XAuth::OAuth2(_))
    }

    /// How the account authenticates, for a client of its other calls (`/users/me`) that
    /// must share an OAuth 2.0 token source with this one.
    pub fn auth(&self) -> XAuth {
        self.auth.clone()
    }

    fn subscription_url(&self, webhook_id: &str) -> Result<Url, XError> {
        endpoint(
            &self.base_url,
            &[
                "2",
                "account_activity",
                "webhooks",
                checked_id(webhook_id)?,
                "subscriptions",
                "all",
            ],
        )
    }

    /// One authenticated call: the 2xx body read as `T`, or the classified refusal. An
    /// OAuth 2.0 token X answers 401 to is dropped and the call made once more with a
    /// fresh one, as X created nothing (a token revoked or ended early; the source refreshes
    /// through the store like the channel's DMs).
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        auth: Auth,
        body: Option<&Value>,
        what: &'static str,
    ) -> Result<T, WebhookError> {
        let mut retried = false;
        loop {
            let authorization = self.authorization(auth, method.as_str(), &url).await?;
            let result = self
                .send(method.clone(), url.clone(), &authorization, body, what)
                .await;
            let refused =
                matches!(&result, Err(WebhookError::Other(e)) if e.http_status() == Some(401));
            if refused && authorization.is_bearer_user() && !retried {
                retried = true;
                continue;
            }
            return result;
        }
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        authorization: &Authorization,
        body: Option<&Value>,
        what: &'static str,
    ) -> Result<T, WebhookError> {
        // The shared HTTP stack has no timeout of its own.
        let mut request = self
            .http
            .request(method, url)
            .timeout(self.request_timeout)
            .header(AUTHORIZATION, authorization.header.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&error, what))?;
        let status = response.status().as_u16();
        authorization.answered(status);
        let headers = response.headers().clone();
        let body = crate::body::read(response)
            .await
            .map_err(|error| self.transport_error(&error, what))?;
        if let Some(error) = body.too_large(status, what) {
            return Err(error.into());
        }
        webhook_answer(status, &headers, &body.bytes, what)
    }

    /// The `Authorization` header of a call, marked sensitive: the App's bearer token, or the
    /// account's OAuth 1.0a signature (JSON bodies are not part of it) or OAuth 2.0 access
    /// token.
    async fn authorization(
        &self,
        auth: Auth,
        method: &str,
        url: &Url,
    ) -> Result<Authorization, WebhookError> {
        let header = match (auth, &self.auth) {
            (Auth::App, _) => {
                oauth::sensitive_header(&format!("Bearer {}", self.bearer_token.expose_secret()))
            }
            (Auth::User, XAuth::OAuth1(credentials)) => {
                oauth::signed_header(method, url, credentials)
            }
            (Auth::User, XAuth::OAuth2(source)) => {
                return Ok(Authorization::bearer(source.clone()).await?)
            }
        };
        // Only `None` with control characters in a credential; the header is not shown.
        let header = header.ok_or(XError::Unauthorized { problem: None })?;
        Ok(Authorization::fixed(header))
    }

    fn transport_error(&self, error: &reqwest::Error, what: &'static str) -> XError {
        crate::client::transport_error(error, self.request_timeout, what)
    }
}

/// A call's 2xx body read as `T`, or its classified refusal.
fn webhook_answer<T: serde::de::DeserializeOwned>(
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
    what: &'static str,
) -> Result<T, WebhookError> {
    if !(200..300).contains(&status) {
        let error = classify_webhook_error(status, headers, bytes);
        tracing::warn!(
            status,
            what,
            reason = error.reason().unwrap_or("none"),
            "X refused a webhook call"
        );
        return Err(error);
    }
    serde_json::from_slice(bytes).map_err(|error| {
        WebhookError::Other(XError::Transient {
            status: Some(status),
            detail: format!(
                "X answered the {what} with an unexpected body ({}): {}",
                crate::error::why_unreadable(&error),
                body_snippet(status, bytes)
            ),
        })
    })
}

/// A webhook id as X writes them (digits), so nothing else lands in a path.
pub(crate) fn checked_id(webhook_id: &str) -> Result<&str, XError> {
    if !webhook_id.is_empty()
        && webhook_id.len() <= 19
        && webhook_id.bytes().all(|b| b.is_ascii_digit())
    {
        Ok(webhook_id)
    } else {
        Err(local_invalid(format!(
            "{webhook_id:?} is not an X webhook id (digits only)"
        )))
    }
}

/// What X's 2xx answer to `PUT /2/webhooks/:id` says: X documents `valid` as
/// the webhook's status after the CRC it ran, so `"valid": false` is a failed CRC.
fn revalidation_answer(answer: &Value) -> Result<(), WebhookError> {
    match answer.pointer("/data/valid").and_then(Value::as_bool) {
        Some(false) => Err(WebhookError::CrcValidationFailed),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revalidation_answered_valid_false_is_a_failed_crc() {
        let answer = |body: &str| revalidation_answer(&serde_json::from_str(body).unwrap());
        assert!(matches!(
            answer(r#"{"data":{"valid":false}}"#),
            Err(WebhookError::CrcValidationFailed)
        ));
        assert!(answer(r#"{"data":{"valid":true}}"#).is_ok());
        assert!(answer(r#"{"data":{"attempted":true}}"#).is_ok());
    }

    fn refusal(reason: &str) -> Vec<u8> {
        serde_json::json!({
            "errors": [{ "message": reason, "parameters": { "url": ["https://example.com/x"] } }],
            "title": "Invalid Request",
            "detail": "One or more parameters to your request was invalid.",
            "type": "https://api.twitter.com/2/problems/invalid-request"
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn every_named_reason_gets_its_variant() {
        for (name, _) in &REASONS {
            let error = classify_webhook_error(400, &HeaderMap::new(), &refusal(name));
            assert_eq!(error.reason(), Some(*name), "{error:?}");
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn the_crc_message_says_what_to_do() {
        let error = classify_webhook_error(400, &HeaderMap::new(), &refusal("CrcValidationFailed"));
        assert!(error.to_string().contains("consumer secret"), "{error}");
    }

    #[test]
    fn other_refusals_are_classified_as_reads() {
        let error = classify_webhook_error(401, &HeaderMap::new(), b"");
        assert!(matches!(
            error,
            WebhookError::Other(XError::Unauthorized { .. })
        ));
        let error = classify_webhook_error(400, &HeaderMap::new(), &refusal("something else"));
        assert!(matches!(
            error,
            WebhookError::Other(XError::InvalidRequest { status: 400, .. })
        ));
        assert_eq!(error.reason(), None);
    }

    #[test]
    fn webhook_ids_are_digits() {
        assert!(checked_id("1234567890123456789").is_ok());
        assert!(checked_id("").is_err());
        assert!(checked_id("12/../x").is_err());
    }

    #[test]
    fn the_bearer_token_is_not_in_debug_output() {
        let credentials = crate::UserCredentials {
            consumer_key: "ck".into(),
            consumer_secret: "cs".into(),
            access_token: "at".into(),
            access_token_secret: "ats".into(),
        };
        let client = WebhookClient::new(
            XClientConfig::default(),
            "very-secret-bearer".into(),
            credentials.into(),
        )
        .unwrap();
        assert!(!format!("{client:?}").contains("very-secret-bearer"));
    }
}
