//! Property tests of the X client's parsers of X's answers: error bodies (for sends,
//! reads and webhook calls), the send-DM answer, user lookups, media upload answers, the
//! webhook list, the rate-limit headers, and OAuth 2.0 token answers and refusals.
//!
//! X is a remote service and its answers are outside input like any other: a wrong or
//! truncated body, a 25-digit id, a 1 MB detail or an absurd reset time must give a
//! classified [`XError`] (or a readable answer whose ids are ids), never a panic, and no
//! text that grows with the body, since X's texts end up in dead letters' headers, status
//! events and logs.

use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};
use xbridge_arbitrary as arbitrary;

use crate::dm::SendDmResponse;
use crate::read::classify_read_error;
use crate::upload::Envelope;
use crate::webhooks::WebhookList;
use crate::{
    classify_send_error, classify_webhook_error, webhook_problem, Pacer, RateLimit, XError, XUser,
};

/// The longest `detail()` of an error: it becomes the `x-xbridge-detail` header of a
/// dead letter and the `detail` of `message.failed`.
const MAX_DETAIL_BYTES: usize = 2048;
/// The longest error message (the detail plus what to do about it), as logged.
const MAX_MESSAGE_BYTES: usize = 4096;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../tests/fixtures/x-api/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// X's recorded error bodies, and the shapes of the ones it did not record for us.
fn problems() -> Vec<Value> {
    let mut bodies: Vec<Value> = [
        "error_400_invalid_request.json",
        "error_401_unauthorized.json",
        "error_402_credits_depleted.json",
        "error_402_payment_required.json",
        "error_403_client_not_enrolled.json",
        "error_403_forbidden.json",
        "error_403_oauth1_permissions.json",
        "error_429_rate_limited.json",
        "error_429_usage_capped.json",
    ]
    .into_iter()
    .map(fixture)
    .collect();
    bodies.push(json!({"title":"SpendCapReached","detail":"Your monthly spend cap has been reached.","type":"about:blank","status":403}));
    bodies.push(json!({"errors":[{"code":88,"message":"Rate limit exceeded"}]}));
    bodies.push(json!({"errors":[{"message":"CrcValidationFailed","parameters":{"url":["https://example.com/x"]}}],"title":"Invalid Request","type":"https://api.twitter.com/2/problems/invalid-request"}));
    bodies
}

fn users() -> Vec<Value> {
    vec![
        json!({"data":{"id":"2244994945","name":"X Dev","username":"XDevelopers","profile_image_url":"https://pbs.twimg.com/a_normal.jpg"}}),
        json!({"data":{"id":2244994945u64,"name":"X Dev","username":"XDevelopers"}}),
        json!({"errors":[{"value":"1","detail":"Could not find user with id: [1].","title":"Not Found Error","type":"https://api.twitter.com/2/problems/resource-not-found"}]}),
    ]
}

fn upload_answers() -> Vec<Value> {
    vec![
        json!({"data":{"id":"1880028106020515840","media_key":"3_1880028106020515840","expires_after_secs":86400}}),
        json!({"data":{"id":"1880028106020515840","media_key":"7_1880028106020515840","processing_info":{"state":"pending","check_after_secs":1}}}),
        json!({"data":{"id":"1880028106020515840","processing_info":{"state":"failed","progress_percent":40,"error":{"code":1,"name":"InvalidMedia","message":"Unsupported video format"}}}}),
    ]
}

fn webhook_lists() -> Vec<Value> {
    vec![
        json!({"data":[{"id":"1146654567674912769","url":"https://example.com/webhooks/acme","valid":true,"created_at":"2019-06-22T05:04:35.000Z"}],"meta":{"result_count":1}}),
        json!({"data":[{"id":"1146654567674912769","url":"https://example.com/webhooks/acme","valid":false,"created_at":"2019-06-22T05:04:35.000Z"}]}),
        json!({"meta":{"result_count":0}}),
    ]
}

fn is_id(id: &str) -> bool {
    (1..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// Rate-limit headers as X sends them, and as nobody should: negative, huge (past the
/// end of chrono's calendar), fractional, padded, or not numbers at all.
fn headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop::sample::select(vec![
        "x-rate-limit-limit",
        "x-rate-limit-remaining",
        "x-rate-limit-reset",
        "x-user-limit-24hour-remaining",
        "x-user-limit-24hour-reset",
        "x-app-limit-24hour-remaining",
        "x-app-limit-24hour-reset",
        "x-access-level",
    ]);
    let value = prop_oneof![
        Just("0".to_owned()),
        Just("15".to_owned()),
        Just("1790000000".to_owned()),
        Just("8210298412799".to_owned()),
        Just("8210266876799".to_owned()),
        Just("-8334632851200".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just(" 42 ".to_owned()),
        Just("1.5".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
        "[ -~]{0,24}",
    ];
    prop::collection::vec((name, value), 0..8).prop_map(|pairs| {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        headers
    })
}

fn assert_bounded(error: &XError) -> Result<(), TestCaseError> {
    let detail = error.detail();
    prop_assert!(
        detail.len() <= MAX_DETAIL_BYTES,
        "detail of {} bytes",
        detail.len()
    );
    let message = error.to_string();
    prop_assert!(
        message.len() <= MAX_MESSAGE_BYTES,
        "message of {} bytes",
        message.len()
    );
    if let Some(name) = error.problem_type() {
        prop_assert!(name.len() <= MAX_DETAIL_BYTES);
    }
    Ok(())
}

proptest! {
    #![proptest_config(arbitrary::config(256))]

    /// Any answer that is not a 2xx is sorted by its status and problem into what the
    /// caller should do, with bounded texts: a 402 or a billing problem is always credits,
    /// a 429 otherwise a rate limit, a 401 unauthorized, a 403 one of the 403 kinds, other
    /// 4xx an invalid request, anything else transient.
    #[test]
    fn x_errors_are_classified_by_status_and_problem(
        status in prop_oneof![400u16..=431, 100u16..600],
        headers in headers(),
        body in arbitrary::body(problems()),
    ) {
        let error = classify_send_error(status, &headers, &body);
        assert_bounded(&error)?;
        if status == 402 {
            prop_assert!(matches!(error, XError::CreditsExhausted { .. }), "{error:?}");
        }
        match &error {
            XError::CreditsExhausted { status: s, .. } => prop_assert_eq!(*s, status),
            XError::RateLimited { .. } => prop_assert_eq!(status, 429),
            XError::Unauthorized { .. } => prop_assert!(status == 401 || status == 403),
            XError::MissingDmPermission { .. }
            | XError::NotEnrolled { .. }
            | XError::RecipientRefuses { .. } => prop_assert_eq!(status, 403),
            XError::InvalidRequest { status: s, .. } => {
                prop_assert_eq!(*s, status);
                prop_assert!((400..500).contains(s) && ![401, 402, 403, 429].contains(s));
            }
            XError::Transient { status: s, .. } => {
                prop_assert_eq!(*s, Some(status));
                prop_assert!(!(400..500).contains(&status));
            }
            // Neither comes from an answer.
            XError::MediaProcessingFailed { .. } | XError::NotConnected { .. } => {
                prop_assert!(false, "{error:?}")
            }
        }

        // A read has no recipient to refuse.
        let read = classify_read_error(status, &headers, &body);
        prop_assert!(!matches!(read, XError::RecipientRefuses { .. }), "{read:?}");
        assert_bounded(&read)?;

        // A webhook call names X's reason only when X's body does.
        let webhook = classify_webhook_error(status, &headers, &body);
        if let Some(reason) = webhook.reason() {
            let text = String::from_utf8_lossy(&body);
            prop_assert!(text.contains(reason), "{reason}");
        }
        prop_assert!(webhook.to_string().len() <= MAX_MESSAGE_BYTES);
    }

    /// A user lookup's 200: a user whose id is an id, an unknown user (404), or a
    /// transient failure for a body that cannot be read.
    #[test]
    fn a_user_lookup_answer_is_a_user_or_a_classified_error(body in arbitrary::body(users())) {
        match XUser::from_body(&body) {
            Ok(user) => prop_assert!(is_id(user.id.as_str()), "{:?}", user.id),
            Err(error @ XError::InvalidRequest { status: 404, problem: Some(_) })
            | Err(error @ XError::Transient { status: Some(200), .. }) => assert_bounded(&error)?,
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }

    /// The 201 of a DM send is read only when both ids are X's.
    #[test]
    fn a_send_answer_is_read_only_with_xs_ids(body in arbitrary::body(vec![fixture("send_dm_201.json")])) {
        if let Ok(answer) = serde_json::from_slice::<SendDmResponse>(&body) {
            let sent = answer.data;
            prop_assert!(is_id(sent.dm_event_id.as_str()), "{:?}", sent.dm_event_id);
            let conversation = sent.dm_conversation_id.as_str();
            prop_assert!(
                match conversation.split_once('-') {
                    Some((a, b)) => is_id(a) && is_id(b),
                    None => is_id(conversation),
                },
                "{conversation:?}"
            );
        }
    }

    /// An upload answer is read only with a media id of digits (it goes into the next
    /// requests' paths), and a failed processing's detail is bounded.
    #[test]
    fn an_upload_answer_is_read_only_with_a_media_id(body in arbitrary::body(upload_answers())) {
        if let Ok(envelope) = serde_json::from_slice::<Envelope>(&body) {
            let data = envelope.data;
            prop_assert!(is_id(&data.id), "{:?}", data.id);
            if let Some(info) = data.processing_info {
                let detail = info.failure_detail();
                prop_assert!(!detail.is_empty() && detail.len() <= MAX_DETAIL_BYTES);
            }
        }
    }

    /// The webhook list reads or fails to read, and the verdict on it is bounded.
    #[test]
    fn a_webhook_list_gives_a_bounded_verdict(body in arbitrary::body(webhook_lists())) {
        if let Ok(list) = serde_json::from_slice::<WebhookList>(&body) {
            if let Some(problem) = webhook_problem(&list.data) {
                prop_assert!(problem.len() <= MAX_MESSAGE_BYTES);
            }
        }
    }

    /// Whatever the rate-limit headers say, the pacer learns from them and answers when
    /// the next request may go.
    #[test]
    fn any_rate_limit_headers_pace_without_panic(headers in headers()) {
        let pacer = Pacer::new(std::time::Duration::from_secs(60));
        if let Some(limit) = RateLimit::from_headers(&headers) {
            pacer.observe(&limit);
        }
        let _ = pacer.blocked_until();
        pacer.block_until(crate::pacing::reset_after_rate_limit(&headers));
        let _ = pacer.blocked_until();
    }
}

/// The case the property above found: a failed processing whose error message is
/// empty still gets a detail an operator can read.
#[test]
fn a_failed_processing_with_an_empty_error_message_says_processing_failed() {
    let body = br#"{"data":{"id":"1880028106020515840","processing_info":{"error":[""],"progress_percent":40,"state":"failed"}}}"#;
    let envelope: Envelope = serde_json::from_slice(body).expect("the answer reads");
    let info = envelope.data.processing_info.expect("processing info");
    assert_eq!(info.failure_detail(), "processing failed");
}

/// X's token answers as the 3P captures show them (docs/x-api-facts.md, "OAuth 2.0").
fn token_answers() -> Vec<Value> {
    vec![
        json!({"token_type": "bearer", "expires_in": 7200,
               "access_token": "UTBtWXd1VDN0TkRxWEdxdF9hVlQzOjE3MDUwNTMxNTg2ODE6MTowOmF0OjE",
               "scope": "dm.read dm.write tweet.read users.read offline.access",
               "refresh_token": "TmttMDY2dkNy1EZklLNmxIT1xNTg2ODI6MTowOnJ0OjE"}),
        json!({"token_type": "bearer", "expires_in": 7200, "access_token": "XXXXX",
               "scope": "tweet.read"}),
    ]
}

/// X's refusals of a token request.
fn token_errors() -> Vec<Value> {
    vec![
        json!({"error": "invalid_request",
               "error_description": "Value passed for the token was invalid."}),
        json!({"error": "invalid_request",
               "error_description": "Value passed for the authorization code was invalid.",
               "errors": [{"message": "x"}]}),
        json!({"error": "unauthorized_client",
               "error_description": "Missing valid authorization header"}),
        json!({"error": "invalid_grant"}),
        json!({"error": "invalid_request",
               "error_description": "Missing required parameter [code_verifier]."}),
    ]
}

proptest! {
    #![proptest_config(arbitrary::config(256))]

    /// Whatever X's token endpoint answers with a 2xx gives a grant whose tokens fit an
    /// `Authorization` header and whose numbers are bounded, or a fixed reason that quotes
    /// nothing of the body (it could hold a token).
    #[test]
    fn token_answers_give_a_usable_grant_or_a_fixed_reason(body in arbitrary::body(token_answers())) {
        use secrecy::ExposeSecret as _;
        match crate::oauth2::parse_token_answer(&body) {
            Ok(grant) => {
                let bearer = format!("Bearer {}", grant.access_token.expose_secret());
                prop_assert!(reqwest::header::HeaderValue::from_str(&bearer).is_ok());
                prop_assert!(grant.access_token.expose_secret().len() <= 2048);
                if let Some(refresh) = &grant.refresh_token {
                    let text = refresh.expose_secret();
                    prop_assert!(!text.is_empty() && text.len() <= 2048);
                    prop_assert!(text.bytes().all(|b| b.is_ascii_graphic()));
                }
                prop_assert!(grant.expires_in.is_none_or(|d| d.as_secs() <= 365 * 24 * 3600));
                prop_assert!(grant.scopes.len() <= 64);
                prop_assert!(grant.scopes.iter().all(|s| s.len() <= 64 + "…".len() && !s.is_empty()));
            }
            Err(why) => prop_assert!(why.len() <= 100 && !why.contains('"'), "{why}"),
        }
    }

    /// A documented answer with any header-safe tokens and any lifetime reads back as sent.
    #[test]
    fn a_well_formed_token_answer_reads_back(
        access in "[!-~]{1,300}",
        refresh in proptest::option::of("[!-~]{1,300}"),
        expires_in in any::<u64>(),
    ) {
        use secrecy::ExposeSecret as _;
        let mut answer = json!({"token_type": "bearer", "expires_in": expires_in,
                                "access_token": access, "scope": "dm.read dm.write"});
        if let Some(refresh) = &refresh {
            answer["refresh_token"] = json!(refresh);
        }
        let grant = crate::oauth2::parse_token_answer(answer.to_string().as_bytes()).unwrap();
        prop_assert_eq!(grant.access_token.expose_secret(), access.as_str());
        prop_assert_eq!(
            grant.refresh_token.as_ref().map(|r| r.expose_secret().to_owned()),
            refresh
        );
        prop_assert_eq!(
            grant.expires_in.map(|d| d.as_secs()),
            Some(expires_in.min(365 * 24 * 3600))
        );
        prop_assert_eq!(grant.scopes, vec!["dm.read".to_owned(), "dm.write".to_owned()]);
    }

    /// A refusal is sorted by status first (429 and 5xx transient), then by X's `error`:
    /// only `invalid_grant`, and `invalid_request` with X's description of a dead token or
    /// code, ask for a new authorisation; texts stay bounded.
    #[test]
    fn token_refusals_are_sorted_by_status_and_code(
        status in prop_oneof![400u16..=431, 100u16..600],
        body in arbitrary::body(token_errors()),
    ) {
        use crate::oauth2::TokenError;
        let error = crate::oauth2::classify_token_error(status, &body);
        prop_assert!(error.to_string().len() <= 1024, "{}", error.to_string().len());
        if status == 429 || !(400..500).contains(&status) {
            prop_assert!(error.is_transient(), "{error:?}");
        }
        if let TokenError::GrantRefused { error: code, description } = &error {
            let dead = description.to_ascii_lowercase();
            prop_assert!(
                code == "invalid_grant"
                    || (code == "invalid_request" && dead.contains("value passed for the")),
                "{code}: {description}"
            );
            prop_assert!((400..500).contains(&status) && status != 429);
        }
        if let TokenError::ClientRejected { error: code, .. } = &error {
            prop_assert!(code == "invalid_client" || code == "unauthorized_client");
        }
    }

    /// An `invalid_request` whose description is anything but X's words for a dead token
    /// or code is a malformed request, never a reason to authorise the channel again.
    #[test]
    fn only_xs_words_make_an_invalid_request_a_refused_grant(
        description in proptest::option::of(prop_oneof![
            ".{0,300}",
            " ?[Vv][Aa][Ll]ue passed for the (token|authorization code) was invalid\\.? ?",
            "Value passed for the token was invalid[ a-z.]{1,20}",
        ]),
        status in 400u16..429,
    ) {
        let mut body = json!({"error": "invalid_request"});
        if let Some(text) = &description {
            body["error_description"] = json!(text);
        }
        let error = crate::oauth2::classify_token_error(status, body.to_string().as_bytes());
        let named = description.as_deref().is_some_and(|text| {
            let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
            text == "value passed for the token was invalid"
                || text == "value passed for the authorization code was invalid"
        });
        prop_assert_eq!(error.needs_authorization(), named, "{:?}", error);
        prop_assert!(!error.is_transient());
    }
}
