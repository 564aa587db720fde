//! Delivering DM events to subscribed webhooks the way X's Account Activity API does: an AAA
//! payload, signed with `x-twitter-webhooks-signature`, POSTed in the background and retried
//! while the receiver does not answer 2xx. Every attempt is logged as a [`Delivery`].

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::customers::find_user;
use crate::state::{Delivery, DmAttachment, DmEvent, Inner, MediaType, SimState};

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
/// (both, if both are subscribed accounts), and returns how many deliveries it started.
///
/// Group sends (no recipient) are not delivered: AAA only carries 1:1 DMs.
pub(crate) fn schedule(state: &Arc<SimState>, event: &DmEvent) -> usize {
    let jobs = {
        let inner = state.lock();
        jobs_for(&inner, event)
    };
    let started = jobs.len();
    for job in jobs {
        tracing::debug!(webhook_id = %job.webhook_id, event_id = %job.event_id, for_user_id = %job.for_user_id, "delivering a DM event");
        state.runtime.spawn(run(state.clone(), job));
    }
    started
}

fn jobs_for(inner: &Inner, event: &DmEvent) -> Vec<Job> {
    let Some(recipient) = event.recipient_id.as_deref() else {
        return Vec::new();
    };
    let mut participants = vec![event.sender_id.as_str(), recipient];
    participants.dedup();
    let mut jobs = Vec::new();
    for for_user_id in participants {
        for subscription in inner
            .subscriptions
            .iter()
            .filter(|s| s.user_id == for_user_id)
        {
            let Some(webhook) = inner
                .webhooks
                .iter()
                .find(|w| w.id == subscription.webhook_id && w.valid)
            else {
                continue;
            };
            jobs.push(Job {
                webhook_id: webhook.id.clone(),
                url: webhook.url.clone(),
                secret: webhook.secret.clone(),
                for_user_id: for_user_id.to_string(),
                event_id: event.id.clone(),
                body: aaa_payload(inner, event, for_user_id),
                epoch: inner.epoch,
            });
        }
    }
    jobs
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
        "direct_message_events": [{
            "type": "message_create",
            "id": event.id,
            "created_timestamp": event.created_at.timestamp_millis().to_string(),
            "message_create": message_create(event),
        }],
        "users": users(inner, event),
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

/// `message_create`: who to whom, and the text with a media DM's t.co link appended (its
/// place in `entities.urls` and the attachment).
fn message_create(event: &DmEvent) -> Value {
    let mut text = event.text.clone();
    let mut urls = Vec::new();
    if let Some(attachment) = &event.attachment {
        if !text.is_empty() {
            text.push(' ');
        }
        let start = text.chars().count();
        text.push_str(&attachment.tco_url);
        let end = start + attachment.tco_url.chars().count();
        urls.push(json!({
            "url": attachment.tco_url,
            "expanded_url": expanded_url(event),
            "display_url": display_url(attachment),
            "indices": [start, end],
        }));
    }
    let mut message_data = json!({
        "text": text,
        "entities": { "hashtags": [], "symbols": [], "user_mentions": [], "urls": urls.clone() },
    });
    if let (Some(attachment), Some(link)) = (&event.attachment, urls.first()) {
        message_data["attachment"] = json!({
            "type": "media",
            "media": attachment_media(event, attachment, link["indices"].clone()),
        });
    }
    let mut message_create = json!({
        "target": { "recipient_id": event.recipient_id },
        "sender_id": event.sender_id,
        "message_data": message_data,
    });
    if let Some(app) = &event.source_app_id {
        message_create["source_app_id"] = json!(app);
    }
    message_create
}

/// `users`: both participants, where the simulator knows them, by id.
fn users(inner: &Inner, event: &DmEvent) -> Map<String, Value> {
    let mut users = Map::new();
    for id in [
        Some(event.sender_id.as_str()),
        event.recipient_id.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(user) = find_user(&inner.accounts, &inner.customers, id) {
            users.insert(
                user.id.clone(),
                json!({
                    "id": user.id,
                    "name": user.name,
                    "screen_name": user.username,
                    "profile_image_url_https": user.profile_image_url,
                }),
            );
        }
    }
    users
}

fn expanded_url(event: &DmEvent) -> String {
    format!("https://twitter.com/messages/media/{}", event.id)
}

fn display_url(attachment: &DmAttachment) -> String {
    let code = attachment
        .tco_url
        .rsplit('/')
        .next()
        .unwrap_or(&attachment.tco_url);
    format!("pic.twitter.com/{code}")
}

/// `message_data.attachment.media`: X's v1.1 media entity.
fn attachment_media(event: &DmEvent, attachment: &DmAttachment, indices: Value) -> Value {
    let numeric_id: u64 = attachment.media_id.parse().unwrap_or(0);
    // As in v1.1 entities, a video's or GIF's `media_url` is its still image; the video
    // itself is in `video_info.variants`.
    let image = match attachment.media_type {
        MediaType::Photo => &attachment.url,
        _ => attachment
            .preview_image_url
            .as_ref()
            .unwrap_or(&attachment.url),
    };
    let mut media = json!({
        "id": numeric_id,
        "id_str": attachment.media_id,
        "indices": indices,
        "media_url": image,
        "media_url_https": image,
        "url": attachment.tco_url,
        "display_url": display_url(attachment),
        "expanded_url": expanded_url(event),
        "type": attachment.media_type.as_str(),
        "sizes": sizes(attachment.width, attachment.height),
    });
    if attachment.media_type != MediaType::Photo {
        media["video_info"] = video_info(attachment);
    }
    media
}

/// v1.1's `sizes`: a square thumb and the image fitted into 680, 1200 and 2048 pixels.
fn sizes(w: u32, h: u32) -> Value {
    let fit = |limit: u32| {
        let scale = f64::from(limit) / f64::from(w.max(h));
        if scale >= 1.0 {
            (w, h)
        } else {
            (
                (f64::from(w) * scale).round() as u32,
                (f64::from(h) * scale).round() as u32,
            )
        }
    };
    let size = |(w, h): (u32, u32)| json!({ "w": w, "h": h, "resize": "fit" });
    json!({
        "thumb": { "w": 150, "h": 150, "resize": "crop" },
        "small": size(fit(680)),
        "medium": size(fit(1200)),
        "large": size(fit(2048)),
    })
}

/// A video's or GIF's `video_info`: aspect ratio, mp4 variants and duration.
fn video_info(attachment: &DmAttachment) -> Value {
    let (w, h) = (attachment.width, attachment.height);
    let divisor = gcd(w, h).max(1);
    let mut video_info = json!({
        "aspect_ratio": [w / divisor, h / divisor],
        "variants": attachment.variants.iter().map(|v| json!({
            "bitrate": v.bit_rate,
            "content_type": v.content_type,
            "url": v.url,
        })).collect::<Vec<_>>(),
    });
    if let Some(duration) = attachment.duration_ms {
        video_info["duration_millis"] = json!(duration);
    }
    video_info
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
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
