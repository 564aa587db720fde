//! X Activity API (XAA) subscriptions (docs/x-api-facts.md, "X Activity API (XAA)"): the successor
//! of AAA, where an App subscribes one event type of one account (`dm.received`, `dm.sent`,
//! `dm.read`, `dm.indicate_typing`) and X POSTs each event, in XAA's envelope, to the App's
//! webhook.
//!
//! Created with the account's own user context: its OAuth 1.0a token, or for an OAuth 2.0
//! channel its OAuth 2.0 token (X's spec lists both; its prose speaks of OAuth 2.0 with
//! `dm.read` for private events, which the bridge's grants hold). Listed with the OAuth 1.0a
//! user context, or for an OAuth 2.0 channel with the App's Bearer token: X's spec wants
//! `like.read` of an OAuth 2.0 token there, a scope a DM bridge does not ask its users for.
//! Deleted with the App's Bearer token (the only auth X's spec lists for DELETE). X documents
//! three shapes of the create answer; [`parse_created`] reads them all.

use reqwest::Method;
use serde_json::{json, Value};

use crate::excerpt::{cut, quoted};
use crate::id::is_id;
use crate::read::endpoint;
use crate::webhooks::{checked_id, Auth};
use crate::{WebhookClient, WebhookError, XError};

/// `dm.received`: a DM the account received — what a channel needs.
pub const DM_RECEIVED: &str = "dm.received";
/// `dm.sent`: a DM the account sent (its own sends through the API included).
pub const DM_SENT: &str = "dm.sent";
/// `dm.read`: someone read the account's DMs (a read receipt).
pub const DM_READ: &str = "dm.read";
/// `dm.indicate_typing`: someone is typing to the account.
pub const DM_INDICATE_TYPING: &str = "dm.indicate_typing";

/// The longest event type or tag kept from an answer (X's tags are at most 200 characters).
const MAX_TEXT_BYTES: usize = 800;
/// Pages of `GET /2/activity/subscriptions` read at most (1,000 each: more than X allows).
const MAX_PAGES: usize = 10;

/// One XAA subscription as X lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivitySubscription {
    /// X's id, needed to delete it.
    pub subscription_id: String,
    /// The event type (`dm.received`, …).
    pub event_type: String,
    /// `filter.user_id`: whose events, if the filter names a user.
    pub user_id: Option<String>,
    /// The webhook its events go to, if any (else only the activity stream carries them).
    pub webhook_id: Option<String>,
    /// The caller's tag, if any.
    pub tag: Option<String>,
}

/// Reads one subscription object of an answer.
pub fn parse_subscription(value: &Value) -> Result<ActivitySubscription, String> {
    let object = value
        .as_object()
        .ok_or_else(|| "a subscription is not an object".to_owned())?;
    let text = |field: &str| -> Option<String> {
        object
            .get(field)
            .and_then(Value::as_str)
            .map(|text| cut(text, MAX_TEXT_BYTES))
    };
    let id = |value: Option<&Value>, field: &str| -> Result<Option<String>, String> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(id)) if is_id(id) => Ok(Some(id.clone())),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| is_id(&n.to_string())) => {
                Ok(Some(n.to_string()))
            }
            Some(other) => Err(format!(
                "{field} {} is not an X id",
                quoted(&cut(&other.to_string(), 60))
            )),
        }
    };
    let subscription_id = id(object.get("subscription_id"), "subscription_id")?
        .ok_or_else(|| "subscription_id is missing".to_owned())?;
    let event_type = text("event_type").ok_or_else(|| "event_type is missing".to_owned())?;
    let user_id = id(
        object
            .get("filter")
            .and_then(|filter| filter.get("user_id")),
        "filter.user_id",
    )?;
    Ok(ActivitySubscription {
        subscription_id,
        event_type,
        user_id,
        webhook_id: id(object.get("webhook_id"), "webhook_id")?,
        tag: text("tag"),
    })
}

/// The subscription of a create answer, in any of the three shapes X documents:
/// `{"data":{"subscription":{…}}}` (the spec), `{"data":{…}}` and `{"data":[{…}]}` (the
/// quickstart).
pub fn parse_created(answer: &Value) -> Result<ActivitySubscription, String> {
    let data = answer
        .get("data")
        .ok_or_else(|| "data is missing".to_owned())?;
    let subscription = match data {
        Value::Array(items) => items.first().ok_or_else(|| "data is empty".to_owned())?,
        Value::Object(fields) => fields.get("subscription").unwrap_or(data),
        _ => return Err("data is neither an object nor an array".to_owned()),
    };
    parse_subscription(subscription)
}

/// One page of a list answer: its subscriptions and the next page's token, if any.
pub fn parse_list_page(
    answer: &Value,
) -> Result<(Vec<ActivitySubscription>, Option<String>), String> {
    let items = match answer.get("data") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(parse_subscription)
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("data is not an array".to_owned()),
    };
    let next = answer
        .pointer("/meta/next_token")
        .and_then(Value::as_str)
        .filter(|token| !token.is_empty() && token.len() <= 200)
        .map(str::to_owned);
    Ok((items, next))
}

fn unreadable(what: &str, why: String) -> WebhookError {
    WebhookError::Other(XError::Transient {
        status: Some(200),
        detail: format!("X answered the {what} with an unexpected body: {why}"),
    })
}

/// The XAA meaning of a refusal to create: its own limit, and a 403 for private events.
fn activity_error(error: WebhookError) -> WebhookError {
    match error {
        WebhookError::SubscriptionLimitExceeded => WebhookError::ActivitySubscriptionLimitExceeded,
        WebhookError::Other(error) if error.http_status() == Some(403) => {
            WebhookError::ActivityNotAuthorized {
                problem: cut(&error.detail(), 500),
            }
        }
        other => other,
    }
}

impl WebhookClient {
    /// Subscribes the channel's account (`user_id`) to one event type, delivered to the
    /// webhook: `POST /2/activity/subscriptions` with the account's user context (OAuth 1.0a
    /// or 2.0).
    #[tracing::instrument(skip_all, fields(event_type = %event_type, webhook_id = %webhook_id))]
    pub async fn create_activity_subscription(
        &self,
        event_type: &str,
        user_id: &str,
        webhook_id: &str,
        tag: &str,
    ) -> Result<ActivitySubscription, WebhookError> {
        self.create_subscription(event_type, user_id, Some(webhook_id), tag)
            .await
    }

    /// Subscribes the channel's account to one event type without a webhook, so only the
    /// App's activity stream carries its events (`inbound = "stream"`).
    #[tracing::instrument(skip_all, fields(event_type = %event_type))]
    pub async fn create_stream_subscription(
        &self,
        event_type: &str,
        user_id: &str,
        tag: &str,
    ) -> Result<ActivitySubscription, WebhookError> {
        self.create_subscription(event_type, user_id, None, tag)
            .await
    }

    async fn create_subscription(
        &self,
        event_type: &str,
        user_id: &str,
        webhook_id: Option<&str>,
        tag: &str,
    ) -> Result<ActivitySubscription, WebhookError> {
        let url = endpoint(self.base_url(), &["2", "activity", "subscriptions"])?;
        let mut body = json!({
            "event_type": event_type,
            "filter": { "user_id": checked_id(user_id)? },
            "tag": tag,
        });
        if let Some(webhook_id) = webhook_id {
            body["webhook_id"] = json!(checked_id(webhook_id)?);
        }
        let what = "X Activity subscription";
        let answer: Value = self
            .call(Method::POST, url, Auth::User, Some(&body), what)
            .await
            .map_err(activity_error)?;
        let created = parse_created(&answer).map_err(|why| unreadable(what, why))?;
        tracing::info!(subscription_id = %created.subscription_id, "X Activity subscription created");
        Ok(created)
    }

    /// Every XAA subscription of the App (not only this account's): `GET
    /// /2/activity/subscriptions`, page by page, with the account's OAuth 1.0a user context
    /// or, for an OAuth 2.0 channel, the App's Bearer token (see the module's doc for why).
    pub async fn list_activity_subscriptions(
        &self,
    ) -> Result<Vec<ActivitySubscription>, WebhookError> {
        let what = "X Activity subscription list";
        let auth = if self.uses_oauth2() {
            Auth::App
        } else {
            Auth::User
        };
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = endpoint(self.base_url(), &["2", "activity", "subscriptions"])?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("max_results", "1000");
                if let Some(token) = &token {
                    query.append_pair("pagination_token", token);
                }
            }
            let answer: Value = self.call(Method::GET, url, auth, None, what).await?;
            let (page, next) = parse_list_page(&answer).map_err(|why| unreadable(what, why))?;
            all.extend(page);
            match next {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
        Ok(all)
    }

    /// Deletes one XAA subscription: `DELETE /2/activity/subscriptions/:id` with the App's
    /// Bearer token. `Ok(false)` when X no longer has it (404), so a repeated unsubscribe
    /// is not an error.
    #[tracing::instrument(skip_all, fields(subscription_id = %subscription_id))]
    pub async fn delete_activity_subscription(
        &self,
        subscription_id: &str,
    ) -> Result<bool, WebhookError> {
        let url = endpoint(
            self.base_url(),
            &[
                "2",
                "activity",
                "subscriptions",
                checked_id(subscription_id)?,
            ],
        )?;
        let what = "X Activity subscription deletion";
        match self
            .call::<Value>(Method::DELETE, url, Auth::App, None, what)
            .await
        {
            Ok(_) => Ok(true),
            Err(WebhookError::Other(error)) if error.http_status() == Some(404) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_documented_create_answers_are_read() {
        let subscription = json!({
            "subscription_id": "1976325569252868096", "event_type": "dm.received",
            "filter": { "user_id": "123456789" }, "created_at": "2025-10-09T16:35:08.000Z",
            "tag": "xbridge", "webhook_id": "1976325569252868099"
        });
        let expected = ActivitySubscription {
            subscription_id: "1976325569252868096".into(),
            event_type: "dm.received".into(),
            user_id: Some("123456789".into()),
            webhook_id: Some("1976325569252868099".into()),
            tag: Some("xbridge".into()),
        };
        for answer in [
            json!({ "data": { "subscription": subscription } }),
            json!({ "data": subscription }),
            json!({ "data": [subscription], "meta": { "total_subscriptions": 1 } }),
        ] {
            assert_eq!(parse_created(&answer), Ok(expected.clone()), "{answer}");
        }
        assert!(parse_created(&json!({ "meta": {} })).is_err());
    }

    #[test]
    fn a_list_without_data_is_empty_and_filters_without_users_are_kept() {
        let (empty, next) =
            parse_list_page(&json!({ "meta": { "total_subscriptions": 0 } })).unwrap();
        assert!(empty.is_empty() && next.is_none());
        let (items, next) = parse_list_page(&json!({
            "data": [{ "subscription_id": "1", "event_type": "news.new", "filter": { "keyword": "x" } }],
            "meta": { "next_token": "7140dibdnow9c7btw3w29grvxfcgvpb9n9coehpk7xz5i" }
        }))
        .unwrap();
        assert_eq!(items[0].user_id, None);
        assert!(next.is_some());
        assert!(parse_list_page(
            &json!({ "data": [{ "subscription_id": "x1", "event_type": "dm.sent" }] })
        )
        .is_err());
    }

    #[test]
    fn the_limit_and_a_403_get_xaa_advice() {
        let limit = activity_error(WebhookError::SubscriptionLimitExceeded);
        assert!(limit.to_string().contains("1,500"), "{limit}");
        let forbidden = crate::classify_webhook_error(
            403,
            &reqwest::header::HeaderMap::new(),
            br#"{"title":"Forbidden","detail":"not yours","type":"https://api.x.com/2/problems/not-authorized-for-resource","status":403}"#,
        );
        let error = activity_error(forbidden);
        assert!(
            matches!(error, WebhookError::ActivityNotAuthorized { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("webhook_api"), "{error}");
    }

    fn answers() -> Vec<Value> {
        let subscription = json!({
            "subscription_id": "1976325569252868096", "event_type": "dm.received",
            "filter": { "user_id": "123456789" }, "created_at": "2025-10-09T16:35:08.000Z",
            "updated_at": "2025-10-09T16:35:08.000Z", "tag": "xbridge",
            "webhook_id": "1976325569252868099"
        });
        vec![
            json!({ "data": { "subscription": subscription }, "meta": { "total_subscriptions": 1 } }),
            json!({ "data": subscription }),
            json!({ "data": [subscription, subscription], "meta": { "total_subscriptions": 2, "next_token": "abcdefghijklmnop" } }),
            json!({ "meta": { "total_subscriptions": 0 } }),
        ]
    }

    fn bounded(subscription: &ActivitySubscription) -> bool {
        is_id(&subscription.subscription_id)
            && subscription.event_type.len() <= MAX_TEXT_BYTES + 3
            && subscription
                .tag
                .as_ref()
                .is_none_or(|tag| tag.len() <= MAX_TEXT_BYTES + 3)
            && subscription.user_id.as_deref().is_none_or(is_id)
            && subscription.webhook_id.as_deref().is_none_or(is_id)
    }

    proptest::proptest! {
        #![proptest_config(xbridge_arbitrary::config(256))]

        /// Whatever X answers, the parsers give subscriptions whose ids are ids and whose
        /// texts are bounded, or a reason; never a panic.
        #[test]
        fn any_answer_is_read_into_bounded_subscriptions_or_refused(
            body in xbridge_arbitrary::body(answers())
        ) {
            if let Ok(answer) = serde_json::from_slice::<Value>(&body) {
                if let Ok(created) = parse_created(&answer) {
                    proptest::prop_assert!(bounded(&created), "{created:?}");
                }
                match parse_list_page(&answer) {
                    Ok((items, next)) => {
                        proptest::prop_assert!(items.iter().all(bounded));
                        proptest::prop_assert!(next.is_none_or(|t| t.len() <= 200));
                    }
                    Err(why) => proptest::prop_assert!(why.len() <= 600, "{why}"),
                }
            }
        }
    }
}
