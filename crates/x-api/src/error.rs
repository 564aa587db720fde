//! X's error bodies and what they mean for a DM send.
//!
//! The status alone is ambiguous on X: 429 is both "slow down" and "out of quota for the
//! month", 403 is both "this recipient does not take DMs" and "this App may not send DMs at
//! all". [`classify_send_error`] therefore reads the RFC 7807 problem body as well, so the
//! caller can decide between retrying later, retrying never, and alerting an operator.

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

use crate::excerpt::cut;

use crate::pacing;

/// The part of a type URL that stays the same across `api.twitter.com` and `api.x.com`.
const PROBLEMS_PATH: &str = "/2/problems/";
/// RFC 7807's type for "nothing more specific than the status".
const ABOUT_BLANK: &str = "about:blank";
/// How much of a body that is not a problem document is kept for humans.
const BODY_SNIPPET_CHARS: usize = 300;
/// How much of each text of a problem document is kept: its detail (with the messages of
/// `errors[]`) becomes a dead letter's header and a `message.failed` detail, and every
/// text is logged, so none may grow with X's body.
const PROBLEM_TEXT_BYTES: usize = 500;
/// How many messages of `errors[]` are kept in a problem's detail.
const PROBLEM_ERRORS: usize = 5;

/// An RFC 7807 problem document as X sends it with an error.
///
/// Ids in these bodies are strings or bare 19-digit numbers; bodies are read so that such a
/// number stays an exact `u64` and an unexpected field type never fails the whole body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The full `type` URL, e.g. `https://api.twitter.com/2/problems/credits`; the host
    /// changed over the years, so compare [`Problem::name`] instead.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// X's short title, e.g. `CreditsDepleted`; some billing errors are only recognisable by it.
    pub title: String,
    /// X's human-readable explanation, followed by the messages of `errors[]` when the body
    /// has them (the detail of a 400 alone does not say which parameter was wrong).
    pub detail: Option<String>,
    /// The status in the body, or the HTTP status when X left it out.
    pub status: Option<u16>,
    /// X's machine-readable sub-reason, e.g. `client-not-enrolled`.
    pub reason: Option<String>,
}

impl Problem {
    /// Reads a problem document from a response body; `None` when the body is not a JSON
    /// object saying anything about the error (no type, title, detail or `errors[]`).
    pub fn from_body(body: &[u8]) -> Option<Problem> {
        parse(body).map(|parsed| parsed.problem)
    }

    /// The problem's name, stable across X's hosts: the part after `/2/problems/`
    /// (`credits`, `usage-capped`, `oauth1-permissions`, ...), or the whole type when it has
    /// no such part (`about:blank`).
    pub fn name(&self) -> &str {
        match self.problem_type.find(PROBLEMS_PATH) {
            Some(start) => self.problem_type[start + PROBLEMS_PATH.len()..].trim_end_matches('/'),
            None => &self.problem_type,
        }
    }

    /// The text shown to people: X's detail, else its title.
    fn text(&self) -> &str {
        match &self.detail {
            Some(detail) if !detail.is_empty() => detail,
            _ => &self.title,
        }
    }
}

/// A problem together with the account id X put beside it (only logged: it tells an
/// operator which X billing account ran dry).
struct ParsedProblem {
    problem: Problem,
    account_id: Option<String>,
}

fn parse(body: &[u8]) -> Option<ParsedProblem> {
    // serde_json keeps integers up to u64::MAX exact in a `Value`, so a 19-digit
    // `account_id` survives; a typed struct would fail on any unexpected field type.
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let text = |key: &str| {
        fields
            .get(key)
            .and_then(Value::as_str)
            .map(|text| cut(text, PROBLEM_TEXT_BYTES))
    };

    let problem_type = text("type");
    let title = text("title");
    let detail = text("detail");
    let error_messages = error_messages(&fields);
    if problem_type.is_none() && title.is_none() && detail.is_none() && error_messages.is_empty() {
        return None;
    }
    let detail = with_error_messages(detail, &error_messages);
    let account_id = match fields.get("account_id") {
        Some(Value::String(id)) => Some(cut(id, 20)),
        Some(Value::Number(id)) if id.is_u64() => Some(id.to_string()),
        _ => None,
    };
    Some(ParsedProblem {
        problem: Problem {
            problem_type: problem_type.unwrap_or_else(|| ABOUT_BLANK.to_owned()),
            title: title.unwrap_or_default(),
            detail,
            status: fields
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|status| u16::try_from(status).ok()),
            reason: text("reason"),
        },
        account_id,
    })
}

/// The messages of the body's `errors[]`, at most [`PROBLEM_ERRORS`].
fn error_messages(fields: &serde_json::Map<String, Value>) -> Vec<&str> {
    fields
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|error| error.get("message").and_then(Value::as_str))
        .take(PROBLEM_ERRORS)
        .collect()
}

/// X's detail followed by the messages of `errors[]`, since the detail of a 400 alone does
/// not say which parameter was wrong; cut short.
fn with_error_messages(detail: Option<String>, error_messages: &[&str]) -> Option<String> {
    let errors = error_messages.join("; ");
    match detail {
        Some(detail) if !errors.is_empty() => Some(format!("{detail} ({errors})")),
        Some(detail) => Some(detail),
        None if !errors.is_empty() => Some(errors),
        None => None,
    }
    .map(|detail| cut(&detail, PROBLEM_TEXT_BYTES))
}

/// Why a request to X failed, sorted by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum XError {
    /// The X account cannot pay for requests: credits used up (402), a usage cap (429
    /// `usage-capped`) or the billing cycle's spend cap (403 `SpendCapReached`). Retrying
    /// before someone tops up or the cycle ends only burns time.
    #[error("X account is out of credits or over its spending cap (HTTP {status}, {}): {} (fix: top up or raise the spending limit at console.x.com)", .problem.name(), .problem.text())]
    CreditsExhausted {
        /// The HTTP status, which differs by cause (402, 403 or 429).
        status: u16,
        /// X's body; synthesised from the status when a 402 came without one.
        problem: Problem,
    },
    /// Too many requests in the current rate-limit window; retry at `reset_at`.
    #[error("X rate limit reached, next window at {}", .reset_at.map_or_else(|| "an unknown time".to_owned(), |at| at.to_rfc3339()))]
    RateLimited {
        /// When the window resets, from `x-rate-limit-reset`; `None` if X did not say.
        reset_at: Option<DateTime<Utc>>,
        /// X's body, if it sent a readable one.
        problem: Option<Problem>,
    },
    /// X does not accept the channel's credentials (401): wrong or revoked keys or tokens.
    #[error("X rejected this channel's credentials: {} (fix: {})", describe(.problem.as_ref(), "Unauthorized"), unauthorized_fix(.problem.as_ref()))]
    Unauthorized {
        /// X's body, if it sent a readable one.
        problem: Option<Problem>,
    },
    /// The access token was issued without DM permission, so no DM can be sent until an
    /// operator fixes the App's settings and issues a new token.
    #[error("the access token may not send Direct Messages: {} (fix: in the X developer console set the App's permissions to \"Read and write and Direct message\", then regenerate the access token and secret and update this channel's credentials)", .problem.text())]
    MissingDmPermission {
        /// X's `oauth1-permissions` body.
        problem: Problem,
    },
    /// The App is not attached to a Project or has no API plan, so X refuses all v2 calls.
    #[error("the X App is not enrolled for this API: {} (fix: attach the App to a Project with an active plan in the X developer console)", .problem.text())]
    NotEnrolled {
        /// X's `client-forbidden` body, whose `reason` says which enrollment is missing.
        problem: Problem,
    },
    /// X will not deliver to this recipient (their DM settings, a block, ...): permanent for
    /// this conversation, so the agent should be told rather than the send retried.
    #[error("X refused the Direct Message to this recipient: {}", describe(.problem.as_ref(), "Forbidden"))]
    RecipientRefuses {
        /// X's body, if it sent a readable one.
        problem: Option<Problem>,
    },
    /// X says the request itself is wrong (400, 404, 409, ...); sending it again cannot help.
    #[error("X rejected the request (HTTP {status}): {}", describe(.problem.as_ref(), "Invalid Request"))]
    InvalidRequest {
        /// The HTTP status.
        status: u16,
        /// X's body, if it sent a readable one.
        problem: Option<Problem>,
    },
    /// X took the uploaded media but could not process it (a video or GIF whose STATUS ended
    /// `failed`, e.g. an unsupported format): permanent for this media, since uploading the
    /// same bytes again fails the same way. Tell the agent rather than retry.
    #[error("X could not process the media {media_id}: {detail}")]
    MediaProcessingFailed {
        /// The media id X gave at INITIALIZE.
        media_id: String,
        /// X's message (`processing_info.error.message`), e.g. `Unsupported video format`.
        detail: String,
    },
    /// The connection to X never opened (refused, no route, a failed name lookup or TLS
    /// handshake): the request was not sent, so it cannot have done anything on X. Worth
    /// retrying like [`XError::Transient`]; unlike it, a DM send that failed this way is known
    /// not to have gone out.
    #[error("X could not be reached, nothing was sent: {detail}")]
    NotConnected {
        /// The transport's chain of causes.
        detail: String,
    },
    /// A failure that may pass: 5xx, a timeout, a broken connection, or an answer we could
    /// not read. Worth retrying with backoff.
    #[error("temporary failure talking to X ({}): {detail}", .status.map_or_else(|| "no HTTP status".to_owned(), |status| format!("HTTP {status}")))]
    Transient {
        /// The HTTP status, if a response arrived.
        status: Option<u16>,
        /// What went wrong, for logs and the dead-letter queue.
        detail: String,
    },
}

/// X's text from an optional problem, or a fallback.
/// What an operator does about a 401: a refused OAuth 2.0 grant needs the account's
/// consent again, not new keys.
fn unauthorized_fix(problem: Option<&Problem>) -> &'static str {
    if problem.is_some_and(|p| p.title == OAUTH2_GRANT_REFUSED) {
        "authorise the channel again with `xbridge oauth2 authorize --channel <name>`, or give it a new OAuth 2.0 refresh token"
    } else {
        "check the API key and secret and the access token and secret"
    }
}

/// The title of the problem an [`XError::Unauthorized`] carries when X refused a
/// channel's OAuth 2.0 grant (its refresh token) rather than a request.
pub const OAUTH2_GRANT_REFUSED: &str = "OAuth2GrantRefused";

fn describe(problem: Option<&Problem>, fallback: &str) -> String {
    problem.map_or(fallback, Problem::text).to_owned()
}

impl XError {
    /// The HTTP status X answered with, if the failure came from an answer; for reports and
    /// metrics.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            XError::CreditsExhausted { status, .. } | XError::InvalidRequest { status, .. } => {
                Some(*status)
            }
            XError::RateLimited { .. } => Some(429),
            XError::Unauthorized { problem } => {
                Some(problem.as_ref().and_then(|p| p.status).unwrap_or(401))
            }
            XError::MissingDmPermission { .. }
            | XError::NotEnrolled { .. }
            | XError::RecipientRefuses { .. } => Some(403),
            XError::Transient { status, .. } => *status,
            // X answered the STATUS poll with 200; the failure is in its body.
            XError::MediaProcessingFailed { .. } | XError::NotConnected { .. } => None,
        }
    }

    /// The problem name X gave (see [`Problem::name`]), e.g. `credits`, `usage-capped`,
    /// `oauth1-permissions` or `about:blank`; `None` without a problem body.
    pub fn problem_type(&self) -> Option<&str> {
        self.problem().map(Problem::name)
    }

    /// A human-readable reason for the CRM and the dead-letter queue: X's detail text when
    /// there is one.
    pub fn detail(&self) -> String {
        match self {
            XError::Transient { detail, .. }
            | XError::NotConnected { detail }
            | XError::MediaProcessingFailed { detail, .. } => detail.clone(),
            XError::RateLimited { problem, .. } => describe(problem.as_ref(), "Too Many Requests"),
            XError::Unauthorized { problem } => describe(problem.as_ref(), "Unauthorized"),
            XError::RecipientRefuses { problem } => describe(problem.as_ref(), "Forbidden"),
            XError::InvalidRequest { status, problem } => describe(
                problem.as_ref(),
                status_reason(*status).unwrap_or("Invalid Request"),
            ),
            XError::CreditsExhausted { problem, .. }
            | XError::MissingDmPermission { problem }
            | XError::NotEnrolled { problem } => problem.text().to_owned(),
        }
    }

    fn problem(&self) -> Option<&Problem> {
        match self {
            XError::CreditsExhausted { problem, .. }
            | XError::MissingDmPermission { problem }
            | XError::NotEnrolled { problem } => Some(problem),
            XError::RateLimited { problem, .. }
            | XError::Unauthorized { problem }
            | XError::RecipientRefuses { problem }
            | XError::InvalidRequest { problem, .. } => problem.as_ref(),
            XError::Transient { .. }
            | XError::NotConnected { .. }
            | XError::MediaProcessingFailed { .. } => None,
        }
    }
}

fn status_reason(status: u16) -> Option<&'static str> {
    StatusCode::from_u16(status).ok()?.canonical_reason()
}

/// True for every known way X says the account cannot pay (README §3 A–C).
fn is_billing_problem(problem: &Problem) -> bool {
    matches!(
        problem.name(),
        "credits" | "credits-depleted" | "usage-capped"
    ) || matches!(
        problem.title.as_str(),
        "CreditsDepleted" | "UsageCapExceeded" | "SpendCapReached"
    )
}

/// Sorts a non-2xx answer to a DM send into an [`XError`], from the problem type and title
/// first and the status second, because X reuses statuses for unrelated causes.
///
/// Pure apart from a log line for billing errors: the caller decides what to do.
pub fn classify_send_error(status: u16, headers: &HeaderMap, body: &[u8]) -> XError {
    let parsed = parse(body);
    let account_id = parsed.as_ref().and_then(|p| p.account_id.clone());
    let problem = parsed.map(|parsed| {
        let mut problem = parsed.problem;
        problem.status.get_or_insert(status);
        if problem.title.is_empty() {
            problem.title = status_reason(status).unwrap_or_default().to_owned();
        }
        problem
    });

    if status == 402 || problem.as_ref().is_some_and(is_billing_problem) {
        let problem = problem.unwrap_or_else(|| synthesised_problem(status, body));
        tracing::warn!(
            status,
            problem = problem.name(),
            title = %problem.title,
            account_id = account_id.as_deref().unwrap_or("unknown"),
            "X account cannot pay for requests"
        );
        return XError::CreditsExhausted { status, problem };
    }
    classify_by_status(status, headers, body, problem)
}

/// A refusal that is not about billing, sorted by its status, and a 403 by its problem:
/// X uses 403 both for "this recipient does not take DMs" and for channel problems.
fn classify_by_status(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    problem: Option<Problem>,
) -> XError {
    let name = problem.as_ref().map(|problem| problem.name().to_owned());
    match status {
        429 => XError::RateLimited {
            reset_at: pacing::reset_after_rate_limit(headers),
            problem,
        },
        401 => XError::Unauthorized { problem },
        403 => match (name.as_deref(), problem) {
            (Some("oauth1-permissions"), Some(problem)) => XError::MissingDmPermission { problem },
            (Some("client-forbidden"), Some(problem)) => XError::NotEnrolled { problem },
            // Wrong kind of credentials (e.g. an app-only token): a channel problem, not a
            // recipient one.
            (Some("unsupported-authentication"), problem) => XError::Unauthorized { problem },
            (_, problem) => XError::RecipientRefuses { problem },
        },
        400..=499 => XError::InvalidRequest { status, problem },
        _ => XError::Transient {
            status: Some(status),
            detail: match problem {
                Some(problem) => problem.text().to_owned(),
                None => body_snippet(status, body),
            },
        },
    }
}

/// A stand-in problem for a billing status whose body X left empty or unreadable.
fn synthesised_problem(status: u16, body: &[u8]) -> Problem {
    Problem {
        problem_type: ABOUT_BLANK.to_owned(),
        title: status_reason(status).unwrap_or_default().to_owned(),
        detail: Some(body_snippet(status, body)),
        status: Some(status),
        reason: None,
    }
}

/// Why serde could not read an answer, cut short: its messages quote the offending
/// value (`invalid type: string "…"`), which may be as long as the body.
pub(crate) fn why_unreadable(error: &serde_json::Error) -> String {
    cut(&error.to_string(), 200)
}

/// The start of a body that is not a problem document, or the status reason if it is empty.
pub(crate) fn body_snippet(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status_reason(status)
            .unwrap_or("no response body")
            .to_owned();
    }
    let mut snippet: String = text.chars().take(BODY_SNIPPET_CHARS).collect();
    if snippet.len() < text.len() {
        snippet.push('…');
    }
    snippet
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../tests/fixtures/x-api/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn classify(status: u16, body: &[u8]) -> XError {
        classify_send_error(status, &HeaderMap::new(), body)
    }

    const SPEND_CAP: &str = r#"{"title":"SpendCapReached","detail":"Your monthly spend cap has been reached.","reset_date":"2026-12-01","type":"about:blank","status":403}"#;

    #[test]
    fn error_400_is_an_invalid_request_with_the_parameter_message() {
        let error = classify(400, &fixture("error_400_invalid_request.json"));
        assert!(matches!(
            error,
            XError::InvalidRequest {
                status: 400,
                problem: Some(_)
            }
        ));
        assert_eq!(error.problem_type(), Some("invalid-request"));
        assert_eq!(error.http_status(), Some(400));
        assert!(error.detail().starts_with("One or more parameters"));
        assert!(error
            .detail()
            .contains("`max_results` query parameter value [0]"));
    }

    #[test]
    fn a_refused_oauth2_grant_says_to_authorise_again_not_to_check_keys() {
        let refused = XError::Unauthorized {
            problem: Some(Problem {
                problem_type: "about:blank".to_owned(),
                title: OAUTH2_GRANT_REFUSED.to_owned(),
                detail: Some("X refused the grant".to_owned()),
                status: None,
                reason: None,
            }),
        };
        let said = refused.to_string();
        assert!(said.contains("xbridge oauth2 authorize"), "{said}");
        assert!(!said.contains("access token and secret"), "{said}");
        let plain = XError::Unauthorized { problem: None }.to_string();
        assert!(plain.contains("access token and secret"), "{plain}");
    }

    #[test]
    fn error_401_is_unauthorized() {
        let error = classify(401, &fixture("error_401_unauthorized.json"));
        assert!(matches!(error, XError::Unauthorized { problem: Some(_) }));
        assert_eq!(error.problem_type(), Some("about:blank"));
        assert_eq!(error.http_status(), Some(401));
    }

    #[test]
    fn error_402_credits_depleted_is_credits_exhausted() {
        let error = classify(402, &fixture("error_402_credits_depleted.json"));
        let XError::CreditsExhausted { status, problem } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(*status, 402);
        assert_eq!(problem.title, "CreditsDepleted");
        assert_eq!(error.problem_type(), Some("credits"));
        assert!(error.detail().contains("[1553086854915936256]"));
    }

    #[test]
    fn the_19_digit_account_id_of_a_402_parses_exactly() {
        let parsed = parse(&fixture("error_402_credits_depleted.json")).expect("a problem");
        assert_eq!(parsed.account_id.as_deref(), Some("1553086854915936256"));
        let parsed = parse(&fixture("error_429_usage_capped.json")).expect("a problem");
        assert_eq!(parsed.account_id.as_deref(), Some("1553086854915936256"));
    }

    #[test]
    fn error_402_payment_required_is_credits_exhausted() {
        let error = classify(402, &fixture("error_402_payment_required.json"));
        assert!(matches!(
            error,
            XError::CreditsExhausted { status: 402, .. }
        ));
        assert_eq!(error.problem_type(), Some("credits-depleted"));
        assert_eq!(error.detail(), "credits depleted");
    }

    #[test]
    fn credits_are_recognised_by_type_or_title_whatever_the_status() {
        let by_type = br#"{"title":"x","type":"https://api.x.com/2/problems/credits"}"#;
        assert!(matches!(
            classify(403, by_type),
            XError::CreditsExhausted { status: 403, .. }
        ));
        let by_title = br#"{"title":"CreditsDepleted","type":"about:blank"}"#;
        assert!(matches!(
            classify(400, by_title),
            XError::CreditsExhausted { status: 400, .. }
        ));
    }

    #[test]
    fn a_402_without_a_body_is_still_credits_exhausted() {
        let error = classify(402, b"");
        let XError::CreditsExhausted { problem, .. } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(problem.title, "Payment Required");
        assert_eq!(error.problem_type(), Some("about:blank"));
    }

    #[test]
    fn error_403_oauth1_permissions_names_the_fix() {
        let error = classify(403, &fixture("error_403_oauth1_permissions.json"));
        assert!(matches!(error, XError::MissingDmPermission { .. }));
        assert_eq!(error.problem_type(), Some("oauth1-permissions"));
        let message = error.to_string();
        assert!(
            message.contains("\"Read and write and Direct message\""),
            "{message}"
        );
        assert!(message.contains("regenerate the access token"), "{message}");
        assert_eq!(
            error.detail(),
            "Your client app is not configured with the appropriate oauth1 app permissions for this endpoint."
        );
    }

    #[test]
    fn error_403_client_not_enrolled_is_not_enrolled() {
        let error = classify(403, &fixture("error_403_client_not_enrolled.json"));
        let XError::NotEnrolled { problem } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(problem.reason.as_deref(), Some("client-not-enrolled"));
        assert_eq!(problem.title, "Client Forbidden");
        assert_eq!(error.problem_type(), Some("client-forbidden"));
        assert_eq!(error.http_status(), Some(403));
    }

    #[test]
    fn error_403_forbidden_is_the_recipient_refusing() {
        let error = classify(403, &fixture("error_403_forbidden.json"));
        assert!(matches!(
            error,
            XError::RecipientRefuses { problem: Some(_) }
        ));
        assert_eq!(
            error.detail(),
            "You are not permitted to perform this action."
        );
        assert_eq!(error.problem_type(), Some("about:blank"));
    }

    #[test]
    fn error_403_spend_cap_reached_is_credits_exhausted() {
        let error = classify(403, SPEND_CAP.as_bytes());
        assert!(matches!(
            error,
            XError::CreditsExhausted { status: 403, .. }
        ));
        assert_eq!(error.detail(), "Your monthly spend cap has been reached.");
        assert_eq!(error.http_status(), Some(403));
    }

    #[test]
    fn error_429_rate_limited_reads_the_reset_header() {
        let mut headers = HeaderMap::new();
        headers.insert("x-rate-limit-limit", HeaderValue::from_static("15"));
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1790000000"));
        let error = classify_send_error(429, &headers, &fixture("error_429_rate_limited.json"));
        let XError::RateLimited { reset_at, problem } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(reset_at.map(|at| at.timestamp()), Some(1_790_000_000));
        assert_eq!(
            problem.as_ref().map(|p| p.title.as_str()),
            Some("Too Many Requests")
        );
        assert_eq!(error.http_status(), Some(429));
    }

    #[test]
    fn error_429_without_reset_header_has_no_reset() {
        let error = classify(429, &fixture("error_429_rate_limited.json"));
        assert!(matches!(error, XError::RateLimited { reset_at: None, .. }));
    }

    #[test]
    fn error_429_usage_capped_is_credits_exhausted_not_a_rate_limit() {
        let mut headers = HeaderMap::new();
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("39999"));
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1790000000"));
        let error = classify_send_error(429, &headers, &fixture("error_429_usage_capped.json"));
        assert!(matches!(
            error,
            XError::CreditsExhausted { status: 429, .. }
        ));
        assert_eq!(error.problem_type(), Some("usage-capped"));
        assert_eq!(error.detail(), "Usage cap exceeded: Monthly product cap");
    }

    #[test]
    fn a_legacy_429_body_keeps_its_message() {
        let error = classify(
            429,
            br#"{"errors":[{"code":88,"message":"Rate limit exceeded"}]}"#,
        );
        assert!(matches!(
            error,
            XError::RateLimited {
                problem: Some(_),
                ..
            }
        ));
        assert_eq!(error.detail(), "Rate limit exceeded");
    }

    #[test]
    fn error_500_with_a_problem_is_transient() {
        let body = br#"{"title":"Internal Server Error","detail":"Something broke.","type":"about:blank","status":500}"#;
        let error = classify(500, body);
        assert!(matches!(
            error,
            XError::Transient {
                status: Some(500),
                ..
            }
        ));
        assert_eq!(error.detail(), "Something broke.");
        assert_eq!(error.problem_type(), None);
    }

    #[test]
    fn error_503_with_a_non_json_body_is_transient() {
        let error = classify(503, b"<html><body>Over capacity</body></html>");
        assert!(matches!(
            error,
            XError::Transient {
                status: Some(503),
                ..
            }
        ));
        assert_eq!(error.detail(), "<html><body>Over capacity</body></html>");
        assert_eq!(error.http_status(), Some(503));
    }

    #[test]
    fn other_4xx_are_invalid_requests() {
        let error = classify(404, b"");
        assert!(matches!(
            error,
            XError::InvalidRequest {
                status: 404,
                problem: None
            }
        ));
        assert_eq!(error.detail(), "Not Found");
        assert!(matches!(
            classify(409, b"{}"),
            XError::InvalidRequest { status: 409, .. }
        ));
    }

    #[test]
    fn a_403_for_the_wrong_kind_of_credentials_is_unauthorized() {
        let body = br#"{"title":"Unsupported Authentication","detail":"Authenticating with OAuth 2.0 Application-Only is forbidden for this endpoint.","type":"https://api.twitter.com/2/problems/unsupported-authentication","status":403}"#;
        let error = classify(403, body);
        assert!(matches!(error, XError::Unauthorized { .. }));
        assert_eq!(error.http_status(), Some(403));
    }

    #[test]
    fn long_bodies_are_cut() {
        let error = classify(502, "x".repeat(10_000).as_bytes());
        assert!(error.detail().chars().count() <= BODY_SNIPPET_CHARS + 1);
    }

    /// Found by the property tests: X's texts were kept whole, so a 1 MB detail went into
    /// the dead letter's header and the status event.
    #[test]
    fn a_problem_keeps_only_the_start_of_long_texts() {
        let long = "x".repeat(100_000);
        let body = serde_json::json!({
            "title": long, "detail": long, "type": long, "reason": long, "account_id": long,
            "errors": vec![serde_json::json!({"message": long}); 1_000],
        });
        let error = classify(402, body.to_string().as_bytes());
        assert!(error.detail().chars().count() <= PROBLEM_TEXT_BYTES + 1);
        assert!(
            error.to_string().len() < 3 * 1024,
            "{}",
            error.to_string().len()
        );
        let XError::CreditsExhausted { problem, .. } = &error else {
            panic!("{error:?}")
        };
        assert!(problem.title.chars().count() <= PROBLEM_TEXT_BYTES + 1);
        assert!(problem.problem_type.chars().count() <= PROBLEM_TEXT_BYTES + 1);
        assert!(problem.reason.as_ref().unwrap().chars().count() <= PROBLEM_TEXT_BYTES + 1);
    }

    #[test]
    fn problem_name_ignores_the_host() {
        let problem = Problem::from_body(&fixture("error_402_payment_required.json")).unwrap();
        assert_eq!(problem.name(), "credits-depleted");
        let problem = Problem::from_body(&fixture("error_403_client_not_enrolled.json")).unwrap();
        assert_eq!(problem.name(), "client-forbidden");
        assert_eq!(Problem::from_body(b"not json"), None);
        assert_eq!(Problem::from_body(b"{}"), None);
    }
}
