//! X's error bodies. Recorded ones are served byte for byte from the shared fixtures, so the
//! simulator and the client's own tests agree on exactly one version of each.

use axum::http::StatusCode;
use chrono::{Datelike as _, NaiveDate};
use serde_json::json;

pub(crate) const INVALID_REQUEST_TYPE: &str = "https://api.twitter.com/2/problems/invalid-request";

pub(crate) const UNAUTHORIZED: &str =
    include_str!("../../../tests/fixtures/x-api/error_401_unauthorized.json");
pub(crate) const CREDITS_DEPLETED: &str =
    include_str!("../../../tests/fixtures/x-api/error_402_credits_depleted.json");
pub(crate) const PAYMENT_REQUIRED: &str =
    include_str!("../../../tests/fixtures/x-api/error_402_payment_required.json");
pub(crate) const CLIENT_NOT_ENROLLED: &str =
    include_str!("../../../tests/fixtures/x-api/error_403_client_not_enrolled.json");
pub(crate) const FORBIDDEN: &str =
    include_str!("../../../tests/fixtures/x-api/error_403_forbidden.json");
pub(crate) const OAUTH1_PERMISSIONS: &str =
    include_str!("../../../tests/fixtures/x-api/error_403_oauth1_permissions.json");
pub(crate) const RATE_LIMITED: &str =
    include_str!("../../../tests/fixtures/x-api/error_429_rate_limited.json");
pub(crate) const USAGE_CAPPED: &str =
    include_str!("../../../tests/fixtures/x-api/error_429_usage_capped.json");

/// X's answer to an App-only Bearer token on a user-context endpoint.
pub(crate) fn unsupported_authentication() -> String {
    json!({
        "title": "Unsupported Authentication",
        "detail": "Authenticating with OAuth 2.0 Application-Only is forbidden for this endpoint.  Supported authentication types are [OAuth 1.0a User Context, OAuth 2.0 User Context].",
        "type": "https://api.twitter.com/2/problems/unsupported-authentication",
        "status": 403
    })
    .to_string()
}

/// An `invalid-request` problem in the shape of error_400_invalid_request.json, naming the
/// offending parameter when there is one.
pub(crate) fn invalid_request(message: &str, parameter: Option<(&str, &str)>) -> String {
    let mut error = json!({ "message": message });
    if let Some((name, value)) = parameter {
        error["parameters"] = json!({ name: [value] });
    }
    json!({
        "errors": [error],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": INVALID_REQUEST_TYPE
    })
    .to_string()
}

/// The observed 403 when a billing cycle's spend cap is reached; it resets on the 1st.
pub(crate) fn spend_cap_reached(today: NaiveDate) -> String {
    let reset_date = first_of_next_month(today);
    json!({
        "title": "SpendCapReached",
        "detail": "Your monthly spend cap has been reached.",
        "reset_date": reset_date.format("%Y-%m-%d").to_string(),
        "type": "about:blank",
        "status": 403
    })
    .to_string()
}

fn first_of_next_month(today: NaiveDate) -> NaiveDate {
    let (year, month) = if today.month() == 12 {
        (today.year() + 1, 1)
    } else {
        (today.year(), today.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(today)
}

/// A plain `about:blank` problem, as X answers for 5xx and other generic statuses.
pub(crate) fn generic(status: StatusCode) -> String {
    let reason = status.canonical_reason().unwrap_or("Error");
    json!({ "title": reason, "detail": reason, "type": "about:blank", "status": status.as_u16() })
        .to_string()
}

/// A user id nobody has: X's `resource-not-found` problem, both at the top level and inside
/// `errors[]` (the shape X uses when it reports it inside a 200), so either parse finds it.
pub(crate) fn user_not_found(id: &str) -> String {
    let detail = format!("Could not find user with id: [{id}].");
    let problem_type = "https://api.twitter.com/2/problems/resource-not-found";
    json!({
        "errors": [{
            "value": id,
            "detail": detail,
            "title": "Not Found Error",
            "resource_type": "user",
            "parameter": "id",
            "resource_id": id,
            "type": problem_type,
        }],
        "title": "Not Found Error",
        "detail": detail,
        "type": problem_type,
        "status": 404,
    })
    .to_string()
}

/// X's answer to a path it does not serve.
pub(crate) fn not_found() -> String {
    json!({ "errors": [{ "message": "Sorry, that page does not exist", "code": 34 }] }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_cap_resets_on_the_first_of_next_month() {
        let body: serde_json::Value = serde_json::from_str(&spend_cap_reached(
            NaiveDate::from_ymd_opt(2026, 12, 31).unwrap(),
        ))
        .unwrap();
        assert_eq!(body["reset_date"], "2027-01-01");
        assert_eq!(body["title"], "SpendCapReached");
        assert_eq!(body["status"], 403);
    }

    #[test]
    fn invalid_request_names_the_parameter() {
        let body: serde_json::Value =
            serde_json::from_str(&invalid_request("bad id", Some(("participant_id", "x"))))
                .unwrap();
        assert_eq!(body["errors"][0]["parameters"]["participant_id"][0], "x");
        assert_eq!(body["type"], INVALID_REQUEST_TYPE);
        assert_eq!(body["title"], "Invalid Request");
    }
}
