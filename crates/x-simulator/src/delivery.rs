//! Delivering DM activity to subscribed webhooks the way X does: an Account Activity API (AAA)
//! payload or an X Activity API (XAA) envelope ([`crate::activity_delivery`]), signed with
//! `x-twitter-webhooks-signature`, POSTed in the background and retried while the receiver
//! does not answer 2xx. Every attempt is logged as a [`Delivery`].

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::activity_delivery::{self, Target};
use crate::customers::Customer;
use crate::dm_json;
use crate::signal::{Signal, SignalKind};
use crate::state::{Delivery, DmEvent, Inner, SimState, Webhook};

/// The header X signs webhook POSTs with.
pub const SIGNATURE_HEADER: &str = "x-twitter-webhooks-signature";

fn hmac_sha256(secret: &str, message: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(message);
    BASE64.encode(mac.finalize().into_bytes())
}

/// `sha256=<base64 HMAC-SHA256(consumer_secret, body)>`: the signature header of a delivery.
pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256(secret, body))
}

/// `sha256=<base64 HMAC-SHA256(consumer_secret, crc_token)>`: what a CRC answer must carry.
pub(crate) fn crc_response_token(secret: &str, crc_token: &str) -> String {
    format!("sha256={}", hmac_sha256(secret, crc_token.as_bytes()))
}

/// One delivery to run in the background.
struct Job {
    webhook_id: String,
    url: String,
    secret: String,
    for_user_id: String,
    event_id: String,
    body: String,
    epoch: u64,
}

/// Starts delivering the event to every valid webhook a participant of it is subscribed to
/// (both, if both are subscribed accounts): through AAA (one body per subscribed account) and
/// through XAA (one body per matching `dm.received` / `dm.sent` subscription). Returns how
/// many deliveries it started.
///
/// Group sends (no recipient) are not delivered: AAA only carries 1:1 DMs.
pub(crate) fn schedule(state: &Arc<SimState>, event: &DmEvent) -> usize {
    let jobs = {
        let inner = state.lock();
        let mut jobs = jobs_for(&inner, event);
        let xaa = activity_delivery::message_targets(&inner, event);
        jobs.extend(xaa.into_iter().map(|target| job(&inner, target, &event.id)));
        for (app_key, line) in activity_delivery::message_stream_lines(&inner, event) {
            state.streams.publish(&app_key, state.now(), &line);
        }
        jobs
    };
    spawn(state, jobs)
}

/// Starts delivering a typing indicator or read receipt to the AAA subscription of the
/// account it is for and its XAA `dm.indicate_typing` / `dm.read` subscriptions. Returns how
/// many deliveries it started.
pub(crate) fn schedule_signal(state: &Arc<SimState>, signal: &Signal) -> usize {
    let jobs = {
        let inner = state.lock();
        let mut targets = aaa_signal_targets(&inner, signal);
        targets.extend(activity_delivery::signal_targets(&inner, signal));
        for (app_key, line) in activity_delivery::signal_stream_lines(&inner, signal) {
            state.streams.publish(&app_key, state.now(), &line);
        }
        targets
            .into_iter()
            .map(|target| job(&inner, target, &signal.id))
            .collect()
    };
    spawn(state, jobs)
}

/// A customer types to, or reads the DMs of, an account: remembers the customer and starts
/// the deliveries ([`schedule_signal`]).
pub(crate) fn customer_signal(
    state: &Arc<SimState>,
    account_user_id: &str,
    customer: &Customer,
    kind: SignalKind,
) -> usize {
    let signal = {
        let mut inner = state.lock();
        inner.customers.upsert(customer.clone());
        let now = state.now();
        Signal {
            id: inner.next_event_id(now),
            sender_id: customer.user_id.clone(),
            recipient_id: account_user_id.to_string(),
            created_at: now,
            kind,
        }
    };
    tracing::info!(signal_id = %signal.id, sender_id = %signal.sender_id, account_user_id, kind = ?signal.kind, "customer DM activity");
    schedule_signal(state, &signal)
}

fn spawn(state: &Arc<SimState>, jobs: Vec<Job>) -> usize {
    let started = jobs.len();
    for job in jobs {
        tracing::debug!(webhook_id = %job.webhook_id, event_id = %job.event_id, for_user_id = %job.for_user_id, "delivering DM activity");
        state.runtime.spawn(run(state.clone(), job));
    }
    started
}

fn job(inner: &Inner, target: Target, event_id: &str) -> Job {
    Job {
        webhook_id: target.webhook.id,
        url: target.webhook.url,
        secret: target.webhook.secret,
        for_user_id: target.for_user_id,
        event_id: event_id.to_string(),
        body: target.body,
        epoch: inner.epoch,
    }
}

/// The valid webhooks `user_id` is subscribed to through AAA.
fn aaa_webhooks<'a>(inner: &'a Inner, user_id: &'a str) -> impl Iterator<Item = &'a Webhook> + 'a {
    inner
        .subscriptions
        .iter()
        .filter(move |s| s.user_id == user_id)
        .filter_map(move |subscription| {
            inner
                .webhooks
                .iter()
                .find(|w| w.id == subscription.webhook_id && w.valid)
        })
}

fn jobs_for(inner: &Inner, event: &DmEvent) -> Vec<Job> {
    let Some(recipient) = event.recipient_id.as_deref() else {
        return Vec::new();
    };
    let mut participants = vec![event.sender_id.as_str(), recipient];
    participants.dedup();
    let mut jobs = Vec::new();
    for for_user_id in participants {
        for webhook in aaa_webhooks(inner, for_user_id) {
            let target = Target {
                webhook: webhook.clone(),
                for_user_id: for_user_id.to_string(),
                body: aaa_payload(inner, event, for_user_id),
            };
            jobs.push(job(inner, target, &event.id));
        }
    }
    jobs
}

/// AAA's body of a typing indicator or read receipt, for the account it is for.
fn aaa_signal_targets(inner: &Inner, signal: &Signal) -> Vec<Target> {
    let for_user_id = signal.recipient_id.as_str();
    let ids = [signal.sender_id.as_str(), for_user_id];
    let body = json!({
        "for_user_id": for_user_id,
        signal.array(): [signal.to_json()],
        "users": dm_json::users_of(inner, ids, dm_json::UserShape::Aaa),
    })
    .to_string();
    aaa_webhooks(inner, for_user_id)
        .map(|webhook| Target {
            webhook: webhook.clone(),
            for_user_id: for_user_id.to_string(),
            body: body.clone(),
        })
        .collect()
}

/// POSTs the job, retrying with doubling waits while the receiver does not answer 2xx.
async fn run(state: Arc<SimState>, job: Job) {
    let signature = signature(&job.secret, job.body.as_bytes());
    let attempts = state.webhook_config.delivery_retries.saturating_add(1);
    let mut backoff = state.webhook_config.retry_backoff;
    for attempt in 1..=attempts {
        let Some((status, error)) =
            post(&state, &job.url, job.body.as_bytes(), Some(&signature)).await
        else {
            return;
        };
        let delivery = Delivery {
            webhook_id: job.webhook_id.clone(),
            url: job.url.clone(),
            for_user_id: Some(job.for_user_id.clone()),
            event_id: Some(job.event_id.clone()),
            attempt,
            status,
            error,
            signature: Some(signature.clone()),
            body: job.body.clone(),
            at: state.now(),
        };
        let succeeded = delivery.succeeded();
        if !record(&state, delivery, Some(job.epoch)) || succeeded {
            return;
        }
        if attempt == attempts {
            tracing::warn!(webhook_id = %job.webhook_id, event_id = %job.event_id, attempts, "webhook delivery failed; giving up");
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = state.shutdown.cancelled() => return,
        }
        backoff = backoff.saturating_mul(2);
    }
}

/// One POST; `None` if the simulator shut down meanwhile.
async fn post(
    state: &SimState,
    url: &str,
    body: &[u8],
    signature: Option<&str>,
) -> Option<(Option<u16>, Option<String>)> {
    let mut request = state
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    let outcome = tokio::select! {
        outcome = request.send() => outcome,
        () = state.shutdown.cancelled() => return None,
    };
    Some(match outcome {
        Ok(response) => (Some(response.status().as_u16()), None),
        Err(error) => (None, Some(error.to_string())),
    })
}

/// Logs an attempt, unless a reset happened since the delivery started (then it says stop).
fn record(state: &SimState, delivery: Delivery, epoch: Option<u64>) -> bool {
    {
        let mut inner = state.lock();
        if epoch.is_some_and(|epoch| epoch != inner.epoch) {
            return false;
        }
        inner.counters.webhook_deliveries += 1;
        inner.deliveries.push(delivery);
    }
    state.delivery_recorded.notify_waiters();
    true
}

/// POSTs `body` once to the webhook, signed correctly (`signature: None`), with the given header
/// value, or with no header at all (`Some("")`). Returns the receiver's status; 0 if the webhook
/// is unknown or the receiver did not answer.
pub(crate) async fn deliver_raw(
    state: &SimState,
    webhook_id: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> u16 {
    let webhook = state
        .lock()
        .webhooks
        .iter()
        .find(|w| w.id == webhook_id)
        .cloned();
    let Some(webhook) = webhook else {
        tracing::warn!(webhook_id, "deliver_raw: no such webhook");
        return 0;
    };
    let signature = match signature {
        None => Some(self::signature(&webhook.secret, &body)),
        Some(value) if value.is_empty() => None,
        Some(value) => Some(value),
    };
    let Some((status, error)) = post(state, &webhook.url, &body, signature.as_deref()).await else {
        return 0;
    };
    record(
        state,
        Delivery {
            webhook_id: webhook.id.clone(),
            url: webhook.url.clone(),
            for_user_id: None,
            event_id: None,
            attempt: 1,
            status,
            error,
            signature,
            body: String::from_utf8_lossy(&body).into_owned(),
            at: state.now(),
        },
        None,
    );
    status.unwrap_or(0)
}

/// The Account Activity payload of one DM event for one subscribed account, as in X's docs and
/// `webhook_aaa_dm.json` / `webhook_aaa_dm_media.json`.
pub(crate) fn aaa_payload(inner: &Inner, event: &DmEvent, for_user_id: &str) -> String {
    let mut payload = json!({
        "for_user_id": for_user_id,
        "direct_message_events": [dm_json::message_event(event)],
        "users": dm_json::users(inner, event, dm_json::UserShape::Aaa),
    });
    if let Some(app) = &event.source_app_id {
        let name = inner.accounts.by_user_id(&event.sender_id).map_or_else(
            || "x-simulator app".to_string(),
            |account| format!("{} (x-simulator app)", account.username),
        );
        payload["apps"] = json!({ app: { "id": app, "name": name, "url": "https://example.com" } });
    }
    payload.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_an_independent_computation() {
        // base64(hmac.new(b"secret", b"body", hashlib.sha256).digest()), computed with Python.
        assert_eq!(
            signature("secret", b"body"),
            "sha256=3EaYNVf+oSe0OvchRn65s/3iM4/j4U9RlSqoR4wT01U="
        );
        assert_eq!(
            crc_response_token("secret", "body"),
            signature("secret", b"body")
        );
    }
}
