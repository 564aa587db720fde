//! The two reads the inbound side needs: DM events for the poller and user lookups for the
//! contact of a new conversation.
//!
//! Both are `GET`s signed with the account's OAuth 1.0a user context (X refuses app-only
//! Bearer tokens on DM reads), with their query parameters in the signature. They draw from
//! a rate-limit window of their own (README §2: 15 per 15 minutes per user), so a busy
//! poller never holds up DM sends and a send backlog never starves the poller.

use reqwest::header::HeaderMap;
use serde::Deserialize;
use url::Url;

use crate::dm::{self, is_user_id};
use crate::error::Problem;
use crate::{classify_send_error, RateLimit, UserId, XError};

/// X's bounds for `max_results` on `GET /2/dm_events` (README §1).
const MAX_RESULTS: std::ops::RangeInclusive<u8> = 1..=100;

/// Only messages: joins and leaves of group conversations carry nothing for the CRM.
const EVENT_TYPES: &str = "MessageCreate";
/// Everything the inbound side turns into a CRM message. `sender_id` is also asked for by
/// the expansion, since spec v2.167 dropped it from this enum (README §1).
const DM_EVENT_FIELDS: &str =
    "id,text,event_type,created_at,dm_conversation_id,sender_id,attachments";
/// The sender's profile and the attachments' media come in `includes`, saving lookups.
const EXPANSIONS: &str = "sender_id,attachments.media_keys";
/// What the CRM shows of a contact.
const USER_FIELDS: &str = "username,name,profile_image_url";
/// Enough to fetch or link every kind of DM media (photo, video, GIF).
const MEDIA_FIELDS: &str = "media_key,type,url,preview_image_url,variants,width,height,duration_ms";

/// The longest pagination token the bridge sends back: X's are a few dozen characters.
const MAX_PAGINATION_TOKEN_BYTES: usize = 256;

/// Whether `token` can be a `meta.next_token` of X to send back as `pagination_token`:
/// letters and digits, 1 to 256 of them. A page whose token is anything else is
/// unreadable, rather than the next request being one X would refuse.
pub fn is_pagination_token(token: &str) -> bool {
    (1..=MAX_PAGINATION_TOKEN_BYTES).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// One page to fetch from `GET /2/dm_events`, which lists the account's DM events newest
/// first and has no `since_id`: a poller pages from the newest event until it reaches one it
/// already stored (README §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmEventsRequest {
    /// Events per page, 1–100; X bills every event returned (README §6), so a poller that
    /// usually finds few new events keeps pages small.
    pub max_results: u8,
    /// `meta.next_token` of the previous page, or `None` for the newest page.
    pub pagination_token: Option<String>,
}

impl DmEventsRequest {
    /// The newest page with `max_results` events, where every poll starts.
    pub fn first(max_results: u8) -> DmEventsRequest {
        DmEventsRequest {
            max_results,
            pagination_token: None,
        }
    }

    /// `GET /2/dm_events` with this page's query under `base_url`, or why X would refuse it.
    pub(crate) fn url(&self, base_url: &Url) -> Result<Url, XError> {
        if !MAX_RESULTS.contains(&self.max_results) {
            return Err(dm::local_invalid(format!(
                "max_results is {}; X allows 1 to 100",
                self.max_results
            )));
        }
        let mut url = endpoint(base_url, &["2", "dm_events"])?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("max_results", &self.max_results.to_string());
            if let Some(token) = &self.pagination_token {
                if !is_pagination_token(token) {
                    return Err(dm::local_invalid(format!(
                        "{} is not an X pagination token",
                        crate::excerpt::quoted(token)
                    )));
                }
                query.append_pair("pagination_token", token);
            }
            query
                .append_pair("event_types", EVENT_TYPES)
                .append_pair("dm_event.fields", DM_EVENT_FIELDS)
                .append_pair("expansions", EXPANSIONS)
                .append_pair("user.fields", USER_FIELDS)
                .append_pair("media.fields", MEDIA_FIELDS);
        }
        Ok(url)
    }
}

/// One page of DM events as X sent it.
///
/// The body stays raw JSON: the inbound crate owns its model of events, includes and
/// pagination (and of X's renamed fields), and this crate only vouches that the answer was a
/// 200 with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmEventsResponse {
    /// The 200 body: `data[]` (absent on an empty page), `includes`, `meta.next_token`, and
    /// possibly partial `errors[]`.
    pub body: Vec<u8>,
    /// The read window X announced with this page, for the poller's status reports; the
    /// client's read pacer has already learnt it.
    pub rate_limit: Option<RateLimit>,
}

/// An X user as the CRM shows a contact.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct XUser {
    /// X's numeric user id, kept as a string (ids exceed what JSON doubles hold).
    #[serde(deserialize_with = "crate::id::deserialize")]
    pub id: UserId,
    /// The @handle, without the `@`.
    pub username: String,
    /// The display name.
    pub name: String,
    /// The avatar URL, when X has one for the user.
    #[serde(default)]
    pub profile_image_url: Option<String>,
}

impl XUser {
    /// `GET /2/users/:id` with the contact fields, or why the id cannot be one.
    pub(crate) fn url(base_url: &Url, user_id: &str) -> Result<Url, XError> {
        if !is_user_id(user_id) {
            return Err(dm::local_invalid(format!(
                "{user_id:?} is not an X user id"
            )));
        }
        let mut url = endpoint(base_url, &["2", "users", user_id])?;
        url.query_pairs_mut()
            .append_pair("user.fields", USER_FIELDS);
        Ok(url)
    }

    /// Reads a 200 of `GET /2/users/:id`. X has been seen to answer an unknown user with a
    /// 200 carrying only `errors[]`; that is the same "no such user" as a 404.
    pub(crate) fn from_body(body: &[u8]) -> Result<XUser, XError> {
        #[derive(Deserialize)]
        struct Answer {
            data: Option<XUser>,
        }
        match serde_json::from_slice::<Answer>(body) {
            Ok(Answer { data: Some(user) }) => Ok(user),
            Ok(Answer { data: None }) => Err(XError::InvalidRequest {
                status: 404,
                problem: Some(
                    Problem::from_body(body).map_or_else(not_found, |mut problem| {
                        problem.status.get_or_insert(404);
                        problem
                    }),
                ),
            }),
            Err(error) => Err(XError::Transient {
                status: Some(200),
                detail: format!(
                    "X answered a user lookup with an unexpected body ({}): {}",
                    crate::error::why_unreadable(&error),
                    crate::error::body_snippet(200, body)
                ),
            }),
        }
    }
}

/// The problem of an unknown user whose answer said nothing readable.
fn not_found() -> Problem {
    Problem {
        problem_type: "about:blank".to_owned(),
        title: "Not Found".to_owned(),
        detail: Some("X knows no such user".to_owned()),
        status: Some(404),
        reason: None,
    }
}

/// `base_url` with `segments` appended to its path.
pub(crate) fn endpoint(base_url: &Url, segments: &[&str]) -> Result<Url, XError> {
    let mut url = base_url.clone();
    url.path_segments_mut()
        .map_err(|()| dm::local_invalid(format!("{base_url} cannot be a base URL")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Sorts a non-2xx answer to a read into an [`XError`]: as for a send, except that a 403
/// that is not a known permission, enrollment or billing problem cannot mean "the recipient
/// refuses" (a read has no recipient). It means this channel may not read, so it is reported
/// as [`XError::Unauthorized`] with X's body (or a stand-in saying 403), for an operator.
pub(crate) fn classify_read_error(status: u16, headers: &HeaderMap, body: &[u8]) -> XError {
    match classify_send_error(status, headers, body) {
        XError::RecipientRefuses { problem } => XError::Unauthorized {
            problem: Some(problem.unwrap_or_else(|| Problem {
                problem_type: "about:blank".to_owned(),
                title: "Forbidden".to_owned(),
                detail: Some(crate::error::body_snippet(status, body)),
                status: Some(status),
                reason: None,
            })),
        },
        error => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../tests/fixtures/x-api/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_generic_403_on_a_read_is_unauthorized_not_a_refusing_recipient() {
        let error =
            classify_read_error(403, &HeaderMap::new(), &fixture("error_403_forbidden.json"));
        assert!(
            matches!(error, XError::Unauthorized { problem: Some(_) }),
            "{error:?}"
        );
        assert_eq!(error.http_status(), Some(403));
        let bare = classify_read_error(403, &HeaderMap::new(), b"");
        assert!(
            matches!(bare, XError::Unauthorized { problem: Some(_) }),
            "{bare:?}"
        );
        assert_eq!(bare.http_status(), Some(403));
    }

    #[test]
    fn known_403s_and_credits_keep_their_meaning_on_reads() {
        let headers = HeaderMap::new();
        assert!(matches!(
            classify_read_error(403, &headers, &fixture("error_403_oauth1_permissions.json")),
            XError::MissingDmPermission { .. }
        ));
        assert!(matches!(
            classify_read_error(
                403,
                &headers,
                &fixture("error_403_client_not_enrolled.json")
            ),
            XError::NotEnrolled { .. }
        ));
        assert!(matches!(
            classify_read_error(402, &headers, &fixture("error_402_payment_required.json")),
            XError::CreditsExhausted { status: 402, .. }
        ));
        assert!(matches!(
            classify_read_error(429, &headers, &fixture("error_429_rate_limited.json")),
            XError::RateLimited { .. }
        ));
    }

    #[test]
    fn the_query_carries_every_field_the_inbound_side_needs() {
        let base = Url::parse("http://127.0.0.1:9/").unwrap();
        let url = DmEventsRequest {
            max_results: 5,
            pagination_token: Some("18LAA581J5II7LA00C00ZZZZ".into()),
        }
        .url(&base)
        .unwrap();
        assert_eq!(url.path(), "/2/dm_events");
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |key: &str| {
            query
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("max_results"), Some("5"));
        assert_eq!(get("pagination_token"), Some("18LAA581J5II7LA00C00ZZZZ"));
        assert_eq!(get("event_types"), Some("MessageCreate"));
        assert_eq!(get("dm_event.fields"), Some(DM_EVENT_FIELDS));
        assert_eq!(get("expansions"), Some("sender_id,attachments.media_keys"));
        assert_eq!(get("user.fields"), Some("username,name,profile_image_url"));
        assert_eq!(get("media.fields"), Some(MEDIA_FIELDS));
    }

    #[test]
    fn requests_x_would_refuse_fail_locally() {
        let base = Url::parse("https://api.x.com").unwrap();
        for max_results in [0, 101] {
            assert!(matches!(
                DmEventsRequest::first(max_results).url(&base),
                Err(XError::InvalidRequest { status: 400, .. })
            ));
        }
        let odd_token = DmEventsRequest {
            max_results: 10,
            pagination_token: Some("a&b=c".into()),
        };
        assert!(odd_token.url(&base).is_err());
        for bad in ["", "me", "1/2", "../1"] {
            assert!(XUser::url(&base, bad).is_err(), "{bad}");
        }
        assert_eq!(
            XUser::url(&base, "944480690").unwrap().as_str(),
            "https://api.x.com/2/users/944480690?user.fields=username%2Cname%2Cprofile_image_url"
        );
    }

    /// Found by the property tests: serde's message quoted the wrong value whole, and an
    /// id of letters was taken as a user.
    #[test]
    fn an_unreadable_user_answer_is_transient_with_a_bounded_detail() {
        let long = "x".repeat(100_000);
        for body in [
            serde_json::json!({"data": long}),
            serde_json::json!({"data": {"id": "12a", "name": "n", "username": "u"}}),
        ] {
            let error = XUser::from_body(body.to_string().as_bytes()).unwrap_err();
            assert!(
                matches!(
                    error,
                    XError::Transient {
                        status: Some(200),
                        ..
                    }
                ),
                "{error:?}"
            );
            assert!(error.detail().len() < 1024, "{}", error.detail().len());
        }
    }

    #[test]
    fn a_200_with_only_errors_is_an_unknown_user() {
        let body = br#"{"errors":[{"value":"1","detail":"Could not find user with id: [1].","title":"Not Found Error","resource_type":"user","parameter":"id","resource_id":"1","type":"https://api.twitter.com/2/problems/resource-not-found"}]}"#;
        let error = XUser::from_body(body).unwrap_err();
        assert!(
            matches!(
                error,
                XError::InvalidRequest {
                    status: 404,
                    problem: Some(_)
                }
            ),
            "{error:?}"
        );
        let user = XUser::from_body(
            br#"{"data":{"id":"944480690","name":"API Demos","username":"FloodSocial"}}"#,
        )
        .unwrap();
        assert_eq!(user.id, "944480690");
        assert_eq!(user.profile_image_url, None);
    }
}
