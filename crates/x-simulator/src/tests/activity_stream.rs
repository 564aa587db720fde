//! `GET /2/activity/stream`: the App's XAA events as lines, keep-alives, cuts, backfill and
//! X's connection limit.

use reqwest::Method;
use serde_json::{json, Value};

use super::*;
use crate::Customer;

/// A stream-only subscription (no `webhook_id`) made with the App's Bearer token.
async fn subscribe(h: &Harness, event_type: &str) {
    let body = json!({ "event_type": event_type, "filter": { "user_id": h.user_id() } });
    let answer = h
        .bearer(
            &h.account,
            Method::POST,
            "/2/activity/subscriptions",
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// An open stream, read line by line.
struct Lines {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Lines {
    async fn open(h: &Harness, query: &str) -> Result<Lines, Answer> {
        let response = h
            .client
            .get(h.url(&format!("/2/activity/stream{query}")))
            .header(AUTHORIZATION, format!("Bearer {}", h.account.bearer_token))
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            return Err(Answer {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: response.text().await.unwrap(),
            });
        }
        Ok(Lines {
            response,
            buffer: Vec::new(),
        })
    }

    /// The next `\r\n`-terminated line (without the terminator); `None` at the end.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..at + 2).take(at).collect();
                return Some(String::from_utf8(line).unwrap());
            }
            let chunk = promptly(self.response.chunk()).await.unwrap()?;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next non-blank line, as JSON.
    async fn next_event(&mut self) -> Value {
        loop {
            let line = self.next().await.expect("the stream goes on");
            if !line.is_empty() {
                return serde_json::from_str(&line).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn the_stream_carries_stream_only_subscriptions_with_keep_alives() {
    let h = harness().await;
    subscribe(&h, "dm.received").await;
    h.sim
        .set_activity_stream_keep_alive(Duration::from_millis(20));
    let mut lines = Lines::open(&h, "").await.unwrap();
    assert_eq!(h.sim.activity_stream_counters().open, 1);

    // Nothing happens: keep-alive blank lines only.
    assert_eq!(lines.next().await.as_deref(), Some(""));

    let customer = Customer::generate("jane");
    let event = h.sim.customer_dm(h.user_id(), &customer, "hello!", None);
    let line = lines.next_event().await;
    let data = &line["data"];
    assert_eq!(data["event_type"], "dm.received");
    assert_eq!(data["filter"], json!({ "user_id": h.user_id() }));
    assert!(data["event_uuid"].as_str().unwrap().parse::<i64>().is_ok());
    let message = &data["payload"]["direct_message_events"][0];
    assert_eq!(message["id"], event.id.as_str());
    assert_eq!(message["message_create"]["message_data"]["text"], "hello!");
}

#[tokio::test]
async fn a_cut_ends_the_stream_and_backfill_replays_the_gap() {
    let h = harness().await;
    subscribe(&h, "dm.received").await;
    let customer = Customer::generate("jane");
    let mut lines = Lines::open(&h, "").await.unwrap();
    let first = h.sim.customer_dm(h.user_id(), &customer, "one", None);
    lines.next_event().await;

    assert_eq!(h.sim.cut_activity_streams(), 1);
    let disconnect = lines.next_event().await;
    assert_eq!(disconnect["errors"][0]["title"], "operational-disconnect");
    assert_eq!(lines.next().await, None, "the response ends after a cut");
    let counters = h.sim.wait_for_activity_streams(|c| c.open == 0).await;
    assert_eq!((counters.opened, counters.cut), (1, 1));

    // Sent while nobody listens: only a backfill brings it.
    let missed = h.sim.customer_dm(h.user_id(), &customer, "two", None);
    let mut again = Lines::open(&h, "?backfill_minutes=5").await.unwrap();
    let ids: Vec<Value> = [again.next_event().await, again.next_event().await]
        .iter()
        .map(|line| line["data"]["payload"]["direct_message_events"][0]["id"].clone())
        .collect();
    assert_eq!(ids, [json!(first.id), json!(missed.id)]);

    // Older than the backfill asked for: not replayed.
    h.clock.advance(Duration::from_secs(120));
    let mut short = Lines::open(&h, "?backfill_minutes=1").await.unwrap();
    let live = h.sim.customer_dm(h.user_id(), &customer, "three", None);
    let line = short.next_event().await;
    assert_eq!(
        line["data"]["payload"]["direct_message_events"][0]["id"],
        live.id.as_str()
    );
}

#[tokio::test]
async fn x_refuses_a_third_connection_a_user_token_and_backfill_beyond_five_minutes() {
    let h = harness().await;
    let _one = Lines::open(&h, "").await.unwrap();
    let _two = Lines::open(&h, "").await.unwrap();
    let third = Lines::open(&h, "").await.err().expect("refused");
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(third.body.contains("TooManyConnections"), "{}", third.body);
    assert_eq!(h.sim.activity_stream_counters().open, 2);

    let too_far = Lines::open_after_cut(&h, "?backfill_minutes=6").await;
    assert_eq!(too_far.status, 400, "{}", too_far.body);
    let signed = h.get("/2/activity/stream").await;
    assert_eq!(signed.status, 403, "{}", signed.body);
}

impl Lines {
    /// Cuts the open streams, then tries to open one, expecting a refusal.
    async fn open_after_cut(h: &Harness, query: &str) -> Answer {
        h.sim.cut_activity_streams();
        h.sim.wait_for_activity_streams(|c| c.open == 0).await;
        Lines::open(h, query).await.err().expect("refused")
    }
}
