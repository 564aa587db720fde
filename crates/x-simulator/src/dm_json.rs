//! The JSON of DM activity as webhooks carry it: a DM event's v1.1-style `message_create`
//! object (shared by the Account Activity API and the X Activity API's `dm.*` payloads) and
//! the participants' `users` map in either API's shape.

use serde_json::{json, Map, Value};

use crate::customers::find_user;
use crate::state::{DmAttachment, DmEvent, Inner, MediaType};

/// How a `users` map shows a user: AAA's v1.1 fields, or XAA's v2 user wrapped in `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UserShape {
    Aaa,
    Xaa,
}

/// One element of `direct_message_events`.
pub(crate) fn message_event(event: &DmEvent) -> Value {
    json!({
        "type": "message_create",
        "id": event.id,
        "created_timestamp": event.created_at.timestamp_millis().to_string(),
        "message_create": message_create(event),
    })
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

/// `users`: both participants of a DM, where the simulator knows them, by id.
pub(crate) fn users(inner: &Inner, event: &DmEvent, shape: UserShape) -> Map<String, Value> {
    let ids = [
        Some(event.sender_id.as_str()),
        event.recipient_id.as_deref(),
    ];
    users_of(inner, ids.into_iter().flatten(), shape)
}

/// `users`: these users, where the simulator knows them, by id.
pub(crate) fn users_of<'a>(
    inner: &Inner,
    ids: impl IntoIterator<Item = &'a str>,
    shape: UserShape,
) -> Map<String, Value> {
    let mut users = Map::new();
    for id in ids {
        let Some(user) = find_user(&inner.accounts, &inner.customers, id) else {
            continue;
        };
        let shown = match shape {
            UserShape::Aaa => json!({
                "id": user.id,
                "name": user.name,
                "screen_name": user.username,
                "profile_image_url_https": user.profile_image_url,
            }),
            UserShape::Xaa => json!({ "data": {
                "id": user.id,
                "name": user.name,
                "username": user.username,
                "profile_image_url": user.profile_image_url,
            }}),
        };
        users.insert(user.id.clone(), shown);
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
