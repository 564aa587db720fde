//! The X Activity API stream, `GET /2/activity/stream` (docs/x-api-facts.md, "Activity
//! stream"): one long-lived response per App, opened with the App's Bearer token, carrying
//! every event of every XAA subscription of the App as one JSON line (`{"data":{…}}`, the same
//! envelope a webhook POST carries), with blank keep-alive lines between.
//!
//! Everything from X is bounded: a line longer than [`MAX_LINE_BYTES`] is skipped (not read
//! into memory past the cap) and the stream goes on — reconnecting would replay it through the
//! backfill and loop; a stream with no byte for the stall timeout (a multiple of X's 20 s
//! keep-alive) is reported [`StreamError::Stalled`] so the caller reconnects. Errors are typed
//! so the caller knows whether to retry ([`StreamError::is_permanent`]) and when
//! ([`StreamError::retry_at`], [`reconnect_backoff`]).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::AUTHORIZATION;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use url::Url;

use crate::excerpt::cut;
use crate::http::error_chain;
use crate::id::is_id;
use crate::read::{classify_read_error, endpoint};
use crate::{XError, XHttp};

/// The longest stream line read (an event with a large DM and its users is a few KiB).
pub const MAX_LINE_BYTES: usize = 256 * 1024;
/// X's keep-alive interval on its streams.
pub const KEEP_ALIVE: Duration = Duration::from_secs(20);
/// X's cap on `backfill_minutes`.
pub const MAX_BACKFILL_MINUTES: u8 = 5;
/// The longest event type kept.
const MAX_EVENT_TYPE_BYTES: usize = 100;
/// The longest text kept from an `errors` line.
const MAX_PROBLEM_BYTES: usize = 300;

/// One line of the stream, once framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A blank keep-alive line.
    KeepAlive,
    /// A line's bytes, without its terminator (`\n` or `\r\n`).
    Text(Vec<u8>),
    /// A line longer than the cap, skipped (reported when the cap is hit, so its length is
    /// not known).
    Oversized,
}

/// Splits the stream's bytes into lines, holding at most `max` bytes of a line: a longer line
/// is dropped as it arrives and reported once as [`Line::Oversized`].
#[derive(Debug)]
pub struct LineSplitter {
    buffer: Vec<u8>,
    max: usize,
    skipping: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes.
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            buffer: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feeds a chunk; returns the lines it completed, in order.
    pub fn push(&mut self, mut chunk: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        while !chunk.is_empty() {
            let end = chunk.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(at) => (&chunk[..at], Some(&chunk[at + 1..])),
                None => (chunk, None),
            };
            if !self.skipping {
                if self.buffer.len() + part.len() > self.max {
                    lines.push(Line::Oversized);
                    self.buffer.clear();
                    self.skipping = true;
                } else {
                    self.buffer.extend_from_slice(part);
                }
            }
            match rest {
                Some(rest) => {
                    if self.skipping {
                        self.skipping = false;
                    } else {
                        let mut line = std::mem::take(&mut self.buffer);
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                        if line.iter().all(u8::is_ascii_whitespace) {
                            lines.push(Line::KeepAlive);
                        } else {
                            lines.push(Line::Text(line));
                        }
                    }
                    chunk = rest;
                }
                None => break,
            }
        }
        lines
    }
}

/// An event of the stream.
#[derive(Clone, PartialEq, Eq)]
pub struct ActivityEvent {
    /// `data.event_type` (`dm.received`, …), bounded.
    pub event_type: String,
    /// `data.filter.user_id`: the subscribed account the event is for.
    pub for_user_id: String,
    /// The whole line: the same `{"data":{…}}` envelope a webhook POST body carries, so the
    /// webhook's parser reads it.
    pub body: Vec<u8>,
}

impl fmt::Debug for ActivityEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivityEvent")
            .field("event_type", &self.event_type)
            .field("for_user_id", &self.for_user_id)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// What a text line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An event for one subscribed account.
    Event(ActivityEvent),
    /// X's `operational-disconnect` (or another `errors` line naming a disconnect): the
    /// stream ends after it.
    Disconnect(String),
    /// Another `errors` line, bounded.
    Problem(String),
    /// Not a line xbridge can use (not JSON, no `data.filter.user_id`, …); why, bounded.
    Unusable(String),
}

/// Reads one text line of the stream. Never panics, whatever the bytes.
pub fn parse_line(line: &[u8]) -> Parsed {
    let value: Value = match serde_json::from_slice(line) {
        Ok(value) => value,
        Err(error) => {
            return Parsed::Unusable(format!(
                "not JSON: {}",
                cut(&error.to_string(), MAX_PROBLEM_BYTES)
            ))
        }
    };
    if let Some(errors) = value.get("errors").and_then(Value::as_array) {
        let text = |e: &Value, field: &str| e.get(field).and_then(Value::as_str).map(str::to_owned);
        let first = errors.first();
        let title = first.and_then(|e| text(e, "title")).unwrap_or_default();
        let detail = first
            .and_then(|e| text(e, "detail").or_else(|| text(e, "message")))
            .unwrap_or_default();
        let said = cut(&format!("{title}: {detail}"), MAX_PROBLEM_BYTES);
        let disconnect = first.is_some_and(|e| {
            e.get("disconnect_type").is_some()
                || title.contains("disconnect")
                || text(e, "type").is_some_and(|t| t.ends_with("/operational-disconnect"))
        });
        return if disconnect {
            Parsed::Disconnect(said)
        } else {
            Parsed::Problem(said)
        };
    }
    let Some(data) = value.get("data").and_then(Value::as_object) else {
        return Parsed::Unusable("no `data` object".to_owned());
    };
    let Some(event_type) = data.get("event_type").and_then(Value::as_str) else {
        return Parsed::Unusable("no `data.event_type`".to_owned());
    };
    if event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Parsed::Unusable("`data.event_type` is too long".to_owned());
    }
    let user_id = data
        .get("filter")
        .and_then(|filter| filter.get("user_id"))
        .and_then(Value::as_str);
    let Some(user_id) = user_id.filter(|id| is_id(id)) else {
        return Parsed::Unusable("no X id in `data.filter.user_id`".to_owned());
    };
    Parsed::Event(ActivityEvent {
        event_type: event_type.to_owned(),
        for_user_id: user_id.to_owned(),
        body: line.to_vec(),
    })
}

/// Why the stream could not be opened or read on.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// X refuses the App's stream for good (401, 403, 400): retrying cannot help.
    #[error("X refused the X Activity API stream: {0} (fix: the stream needs the X App's Bearer token in this channel's credentials, an App enrolled for the X Activity API, and XAA subscriptions; or use inbound = \"webhook\" or \"polling\")")]
    Refused(#[source] XError),
    /// The App's stream requests are over X's rate limit (450 per 15 minutes).
    #[error("X rate-limited the X Activity API stream until {}", .reset_at.map_or_else(|| "an unknown time".to_owned(), |at| at.to_rfc3339()))]
    RateLimited {
        /// When the window resets, if X said.
        reset_at: Option<DateTime<Utc>>,
    },
    /// The App already holds as many streams as X allows (2).
    #[error("X says this X App already has as many activity streams open as it allows (TooManyConnections): another process (a second xbridge deployment?) holds them")]
    TooManyConnections,
    /// No byte arrived for the stall timeout: the connection is dead.
    #[error("the X Activity API stream stalled: no byte (not even a keep-alive) for {0:?}")]
    Stalled(Duration),
    /// X ended the stream (a cut, an operational disconnect, the response's end).
    #[error("X ended the X Activity API stream: {0}")]
    Disconnected(String),
    /// Anything else worth a retry: transport, 5xx.
    #[error("the X Activity API stream failed: {0}")]
    Transient(String),
}

impl StreamError {
    /// Whether reconnecting cannot help until an operator acts.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StreamError::Refused(_))
    }

    /// When to try again at the earliest, if X said.
    pub fn retry_at(&self) -> Option<DateTime<Utc>> {
        match self {
            StreamError::RateLimited { reset_at } => *reset_at,
            _ => None,
        }
    }
}

/// The delays between reconnections after failures: exponential from 1 s to 5 min (X's
/// advice for HTTP errors: from 5 s doubling to 320 s; the first retry comes sooner since most
/// cuts are deploys), with jitter so replicas and Apps do not reconnect in step. Endless: the
/// stream is the channel's only inbound path.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Opens the App's activity stream.
pub struct ActivityStreamClient {
    http: reqwest::Client,
    base_url: Url,
    bearer_token: SecretString,
    stall_after: Duration,
    connect_timeout: Duration,
}

impl fmt::Debug for ActivityStreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivityStreamClient")
            .field("base_url", &self.base_url.as_str())
            .field("stall_after", &self.stall_after)
            .finish_non_exhaustive()
    }
}

impl ActivityStreamClient {
    /// A client for the App whose Bearer token this is. `stall_after`: how long without a
    /// byte means the stream is dead (xbridge: 3 × [`KEEP_ALIVE`]); also bounds the wait for
    /// the answer's headers.
    pub fn new(
        http: &XHttp,
        base_url: Url,
        bearer_token: SecretString,
        stall_after: Duration,
    ) -> ActivityStreamClient {
        ActivityStreamClient {
            http: http.client().clone(),
            base_url,
            bearer_token,
            stall_after,
            connect_timeout: stall_after,
        }
    }

    /// Opens the stream, asking X to replay the last `backfill_minutes` (capped at 5).
    #[tracing::instrument(skip_all, fields(backfill_minutes))]
    pub async fn connect(
        &self,
        backfill_minutes: Option<u8>,
    ) -> Result<ActivityStream, StreamError> {
        let mut url =
            endpoint(&self.base_url, &["2", "activity", "stream"]).map_err(StreamError::Refused)?;
        if let Some(minutes) = backfill_minutes {
            url.query_pairs_mut().append_pair(
                "backfill_minutes",
                &minutes.min(MAX_BACKFILL_MINUTES).to_string(),
            );
        }
        let authorization = crate::oauth::sensitive_header(&format!(
            "Bearer {}",
            self.bearer_token.expose_secret()
        ))
        .ok_or(StreamError::Refused(XError::Unauthorized { problem: None }))?;
        let request = self
            .http
            .get(url)
            .header(AUTHORIZATION, authorization)
            .send();
        let response = match tokio::time::timeout(self.connect_timeout, request).await {
            Err(_) => return Err(StreamError::Stalled(self.connect_timeout)),
            Ok(Err(error)) => return Err(StreamError::Transient(error_chain(&error))),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        if status != 200 {
            let headers = response.headers().clone();
            let body = tokio::time::timeout(self.connect_timeout, crate::body::read(response))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|body| body.bytes)
                .unwrap_or_default();
            return Err(classify(status, &headers, &body));
        }
        Ok(ActivityStream {
            response,
            splitter: LineSplitter::new(MAX_LINE_BYTES),
            pending: std::collections::VecDeque::new(),
            stall_after: self.stall_after,
        })
    }
}

/// A refusal of `GET /2/activity/stream`, typed.
pub fn classify(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> StreamError {
    if String::from_utf8_lossy(&body[..body.len().min(4096)]).contains("TooManyConnections") {
        return StreamError::TooManyConnections;
    }
    match classify_read_error(status, headers, body) {
        XError::RateLimited { reset_at, .. } => StreamError::RateLimited { reset_at },
        error if matches!(status, 400..=499) && status != 408 => StreamError::Refused(error),
        error => StreamError::Transient(error.to_string()),
    }
}

/// An open stream.
pub struct ActivityStream {
    response: reqwest::Response,
    splitter: LineSplitter,
    pending: std::collections::VecDeque<Line>,
    stall_after: Duration,
}

impl fmt::Debug for ActivityStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivityStream").finish_non_exhaustive()
    }
}

/// What [`ActivityStream::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// An event.
    Event(ActivityEvent),
    /// A keep-alive: the connection lives.
    KeepAlive,
    /// A line that was skipped (oversized, unusable, a problem that is not a disconnect);
    /// why, bounded — the caller logs and counts it.
    Skipped(String),
}

impl ActivityStream {
    /// The next item; `Err` when the stream is over (cut, stalled, failed): reconnect.
    pub async fn next(&mut self) -> Result<StreamItem, StreamError> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return match line {
                    Line::KeepAlive => Ok(StreamItem::KeepAlive),
                    Line::Oversized => Ok(StreamItem::Skipped(format!(
                        "a line longer than {MAX_LINE_BYTES} bytes"
                    ))),
                    Line::Text(text) => match parse_line(&text) {
                        Parsed::Event(event) => Ok(StreamItem::Event(event)),
                        Parsed::Disconnect(said) => Err(StreamError::Disconnected(said)),
                        Parsed::Problem(said) => Ok(StreamItem::Skipped(format!("X said {said}"))),
                        Parsed::Unusable(why) => Ok(StreamItem::Skipped(why)),
                    },
                };
            }
            let chunk = match tokio::time::timeout(self.stall_after, self.response.chunk()).await {
                Err(_) => return Err(StreamError::Stalled(self.stall_after)),
                Ok(Err(error)) => return Err(StreamError::Transient(error_chain(&error))),
                Ok(Ok(None)) => {
                    return Err(StreamError::Disconnected("the response ended".to_owned()))
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            self.pending.extend(self.splitter.push(&chunk));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_on_crlf_with_keep_alives_and_oversized_lines_skipped() {
        let mut splitter = LineSplitter::new(8);
        let mut lines = splitter.push(b"{\"a\":1}\r\n\r\n{\"b\"");
        lines.extend(splitter.push(b":2}\r\n0123456789abc"));
        lines.extend(splitter.push(b"def\r\nok\n"));
        assert_eq!(
            lines,
            [
                Line::Text(b"{\"a\":1}".to_vec()),
                Line::KeepAlive,
                Line::Text(b"{\"b\":2}".to_vec()),
                Line::Oversized,
                Line::Text(b"ok".to_vec()),
            ]
        );
    }

    #[test]
    fn an_event_line_names_its_account_and_a_disconnect_is_recognised() {
        let line = br#"{"data":{"event_uuid":"-1","filter":{"user_id":"1111"},"event_type":"dm.received","payload":{}}}"#;
        match parse_line(line) {
            Parsed::Event(event) => {
                assert_eq!(event.for_user_id, "1111");
                assert_eq!(event.event_type, "dm.received");
                assert_eq!(event.body, line.to_vec());
            }
            other => panic!("{other:?}"),
        }
        let cut = br#"{"errors":[{"title":"operational-disconnect","disconnect_type":"UpstreamOperationalDisconnect","detail":"This stream has been disconnected upstream for operational reasons.","type":"https://api.x.com/2/problems/operational-disconnect"}]}"#;
        assert!(matches!(parse_line(cut), Parsed::Disconnect(_)));
    }
}

/// Property tests of the stream's framing and line parser: X's stream is outside input, cut
/// into chunks anywhere by the network.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The lines a whole input frames into, fed in one piece.
    fn whole(input: &[u8], max: usize) -> Vec<Line> {
        LineSplitter::new(max).push(input)
    }

    proptest! {
        #[test]
        fn framing_does_not_depend_on_where_the_network_cuts(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b' '), any::<u8>()], 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
            max in 1usize..64,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut splitter = LineSplitter::new(max);
            let mut lines = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([input.len()]) {
                lines.extend(splitter.push(&input[from..cut]));
                from = cut;
            }
            prop_assert_eq!(lines, whole(&input, max));
        }

        #[test]
        fn no_line_exceeds_the_cap_and_every_terminated_line_is_accounted_for(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..600),
            max in 1usize..64,
        ) {
            let lines = whole(&input, max);
            for line in &lines {
                if let Line::Text(text) = line {
                    prop_assert!(text.len() <= max);
                    prop_assert!(!text.contains(&b'\n'));
                }
            }
            let terminated = input.iter().filter(|&&b| b == b'\n').count();
            // An oversized line may be reported before its terminator arrives.
            prop_assert!(lines.len() <= terminated + 1);
            let whole_lines = lines.iter().filter(|l| !matches!(l, Line::Oversized)).count();
            prop_assert!(whole_lines <= terminated);
        }

        #[test]
        fn any_line_parses_to_something_bounded_without_panicking(
            line in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            match parse_line(&line) {
                Parsed::Event(event) => {
                    prop_assert!(is_id(&event.for_user_id));
                    prop_assert_eq!(event.body, line);
                }
                Parsed::Disconnect(text) | Parsed::Problem(text) | Parsed::Unusable(text) => {
                    prop_assert!(text.len() <= MAX_PROBLEM_BYTES + 8);
                }
            }
        }

        #[test]
        fn json_envelopes_of_any_shape_are_read_or_refused(
            user_id in prop_oneof![Just(Value::from("1234567890")), Just(Value::from("-1")), Just(Value::from(12345)), Just(Value::Null), ".{0,30}".prop_map(Value::from)],
            event_type in prop_oneof![Just(Value::from("dm.received")), Just(Value::from(7)), ".{0,200}".prop_map(Value::from)],
            detail in ".{0,2000}",
        ) {
            let line = serde_json::json!({"data":{"filter":{"user_id":user_id},"event_type":event_type,"payload":{}}}).to_string();
            match parse_line(line.as_bytes()) {
                Parsed::Event(event) => {
                    prop_assert_eq!(Some(event.for_user_id.as_str()), user_id.as_str());
                    prop_assert!(event.event_type.len() <= MAX_EVENT_TYPE_BYTES);
                }
                Parsed::Unusable(_) => {}
                other => prop_assert!(false, "{:?}", other),
            }
            let problem = serde_json::json!({"errors":[{"title":"x","detail":detail}]}).to_string();
            match parse_line(problem.as_bytes()) {
                Parsed::Problem(text) => prop_assert!(text.len() <= MAX_PROBLEM_BYTES + 8),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
