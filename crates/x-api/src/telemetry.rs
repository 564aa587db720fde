//! Metrics of the requests made to X: how many, by endpoint and answer, and
//! how long they took. Label values are a closed set (endpoint names and
//! HTTP statuses), never ids.

use std::time::Instant;

/// Records one request to `endpoint` that started at `started`.
pub(crate) fn record_request(
    endpoint: &'static str,
    started: Instant,
    response: &Result<reqwest::Response, reqwest::Error>,
) {
    let status = match response {
        Ok(response) => response.status().as_u16().to_string(),
        Err(error) if error.is_timeout() => "timeout".to_owned(),
        Err(_) => "connection_error".to_owned(),
    };
    metrics::counter!("xbridge_x_requests_total", "endpoint" => endpoint, "status" => status)
        .increment(1);
    metrics::histogram!("xbridge_x_request_duration_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
}
