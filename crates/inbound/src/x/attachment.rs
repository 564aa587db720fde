//! Media attached to a DM, read from either of X's two media shapes into the contract's
//! [`Attachment`].
//!
//! DM media URLs are not public: a photo's `https://ton.twitter.com/1.1/ton/data/dm/…`
//! URL must be fetched with a request signed by the channel's user token, which the CRM
//! does not have. So X's URLs are kept but never published ([`Attachment::x_url`]);
//! before a DM is published, [`crate::media::links::MediaLinks`] fills [`Attachment::url`] and
//! [`Attachment::preview_url`] with signed URLs of the bridge's own media proxy.

use serde_json::Value;
use xbridge_core::contract::{Attachment, AttachmentKind};

use crate::x::json::{self, Object};

/// X's name for a media kind (`photo`, `video`, `animated_gif`), the same in both shapes.
fn kind_from_x(kind: &str) -> Option<AttachmentKind> {
    match kind {
        "photo" => Some(AttachmentKind::Photo),
        "video" => Some(AttachmentKind::Video),
        "animated_gif" => Some(AttachmentKind::AnimatedGif),
        _ => None,
    }
}

/// From a webhook's `message_data.attachment.media` (v1.1 shape: `id_str`,
/// `media_url_https`, `type`, `original_info` or `sizes`, `video_info.variants[].bitrate`,
/// `video_info.duration_millis`).
pub(crate) fn from_v1_media(media: &Object, path: &str) -> Result<Attachment, String> {
    let kind = kind(media, path)?;
    let media_id = match media.get("id_str") {
        Some(Value::String(_)) => json::required_id(media, "id_str", path)?,
        _ => json::required_id(media, "id", path)?,
    };
    let media_key = json::optional_str(media, "media_key").filter(|key| {
        key.split_once('_')
            .is_some_and(|(_, id)| id == media_id && is_media_key(key))
    });
    let (x_url, x_preview_url) = v1_urls(media, kind);
    let x_url = x_url.ok_or_else(|| format!("{path}media_url_https is missing"))?;
    let (width, height) = v1_dimensions(media);
    let video_info = media.get("video_info");
    Ok(Attachment {
        kind,
        media_id: Some(media_id),
        media_key,
        url: None,
        preview_url: None,
        width,
        height,
        duration_ms: video_info
            .and_then(|info| info.get("duration_millis"))
            .and_then(Value::as_u64),
        x_url,
        x_preview_url,
    })
}

/// From an `includes.media[]` entry of a v2 lookup (`media_key`, `type`, `url`,
/// `preview_image_url`, `variants[].bit_rate`, `width`, `height`, `duration_ms`).
pub(crate) fn from_v2_media(media: &Object, path: &str) -> Result<Attachment, String> {
    let kind = kind(media, path)?;
    let media_key = match media.get("media_key") {
        Some(Value::String(key)) if is_media_key(key) => key.clone(),
        Some(other) => {
            return Err(format!(
                "{path}media_key {} is not an X media key",
                json::shown(other)
            ))
        }
        None => return Err(format!("{path}media_key is missing")),
    };
    // The key is `<category>_<media id>`; X's upload answers give both, equal so.
    let media_id = media_key.split_once('_').map(|(_, id)| id.to_owned());
    let x_preview_url = json::optional_str(media, "preview_image_url");
    let x_url = match kind {
        AttachmentKind::Photo => json::optional_str(media, "url"),
        AttachmentKind::Video | AttachmentKind::AnimatedGif => {
            best_mp4(media.get("variants")).or_else(|| json::optional_str(media, "url"))
        }
    };
    let x_url = x_url.ok_or_else(|| {
        format!("{path}url is missing (request media.fields=url,variants,preview_image_url)")
    })?;
    Ok(Attachment {
        kind,
        media_id,
        media_key: Some(media_key),
        url: None,
        preview_url: None,
        width: dimension(Some(media), "width"),
        height: dimension(Some(media), "height"),
        duration_ms: media.get("duration_ms").and_then(Value::as_u64),
        x_url,
        // A photo is its own preview.
        x_preview_url: x_preview_url.filter(|_| kind != AttachmentKind::Photo),
    })
}

/// Where X serves a v1.1 media: the picture of a photo; the best MP4 of a video or GIF,
/// with its picture as the preview (or the picture alone when there is no MP4).
fn v1_urls(media: &Object, kind: AttachmentKind) -> (Option<String>, Option<String>) {
    let image = json::optional_str(media, "media_url_https")
        .or_else(|| json::optional_str(media, "media_url"));
    let video_info = media.get("video_info");
    match kind {
        AttachmentKind::Photo => (image, None),
        AttachmentKind::Video | AttachmentKind::AnimatedGif => {
            match best_mp4(video_info.and_then(|info| info.get("variants"))) {
                Some(mp4) => (Some(mp4), image),
                None => (image, None),
            }
        }
    }
}

/// A v1.1 media's size: `original_info` when it has both, else `sizes.large`.
fn v1_dimensions(media: &Object) -> (Option<u32>, Option<u32>) {
    let original = media.get("original_info").and_then(Value::as_object);
    let large = media
        .get("sizes")
        .and_then(|sizes| sizes.get("large"))
        .and_then(Value::as_object);
    match (dimension(original, "width"), dimension(original, "height")) {
        (Some(w), Some(h)) => (Some(w), Some(h)),
        _ => (dimension(large, "w"), dimension(large, "h")),
    }
}

/// A positive pixel count at `object[field]`.
fn dimension(object: Option<&Object>, field: &str) -> Option<u32> {
    object?
        .get(field)?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
}

fn kind(media: &Object, path: &str) -> Result<AttachmentKind, String> {
    match media.get("type") {
        Some(Value::String(kind)) => kind_from_x(kind).ok_or_else(|| {
            format!(
                "{path}type {} is not a media kind the bridge knows",
                xbridge_core::excerpt::quoted(kind)
            )
        }),
        Some(other) => Err(format!(
            "{path}type must be a string, not {}",
            json::kind(other)
        )),
        None => Err(format!("{path}type is missing")),
    }
}

/// `<category>_<id>` as X forms media keys; the contract's `^[0-9]{1,3}_[0-9]{1,19}$`.
fn is_media_key(key: &str) -> bool {
    key.split_once('_').is_some_and(|(prefix, id)| {
        (1..=3).contains(&prefix.len())
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && json::is_id(id)
    })
}

/// The URL of the highest-bitrate `video/mp4` variant. The bitrate is `bit_rate` in v2
/// and `bitrate` in v1.1; GIFs have a single variant, often without one.
fn best_mp4(variants: Option<&Value>) -> Option<String> {
    variants?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .filter(|v| v.get("content_type").and_then(Value::as_str) == Some("video/mp4"))
        .filter_map(|v| {
            let url = json::optional_str(v, "url")?;
            let rate = v
                .get("bit_rate")
                .or_else(|| v.get("bitrate"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Some((rate, url))
        })
        .max_by_key(|(rate, _)| *rate)
        .map(|(_, url)| url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1(media: Value) -> Result<Attachment, String> {
        from_v1_media(media.as_object().unwrap(), "media.")
    }

    fn v2(media: Value) -> Result<Attachment, String> {
        from_v2_media(media.as_object().unwrap(), "media.")
    }

    #[test]
    fn a_v2_video_takes_the_highest_bitrate_mp4_its_sizes_and_both_ids() {
        let video = v2(json!({"media_key":"7_1583157113245011970","type":"video",
            "preview_image_url":"https://pbs.twimg.com/p.jpg",
            "width":1280,"height":720,"duration_ms":4000,
            "variants":[
                {"content_type":"application/x-mpegURL","url":"https://video.twimg.com/v.m3u8"},
                {"bit_rate":832000,"content_type":"video/mp4","url":"https://video.twimg.com/mid.mp4"},
                {"bit_rate":2176000,"content_type":"video/mp4","url":"https://video.twimg.com/high.mp4"},
                {"bit_rate":256000,"content_type":"video/mp4","url":"https://video.twimg.com/low.mp4"}]}))
        .unwrap();
        assert_eq!(video.kind, AttachmentKind::Video);
        assert_eq!(video.media_key.as_deref(), Some("7_1583157113245011970"));
        assert_eq!(video.media_id.as_deref(), Some("1583157113245011970"));
        assert_eq!(video.x_url, "https://video.twimg.com/high.mp4");
        assert_eq!(
            video.x_preview_url.as_deref(),
            Some("https://pbs.twimg.com/p.jpg")
        );
        assert_eq!(
            (video.width, video.height, video.duration_ms),
            (Some(1280), Some(720), Some(4000))
        );
        // Nothing the CRM could not fetch is published before the links are made.
        assert_eq!((video.url, video.preview_url), (None, None));
    }

    #[test]
    fn a_v2_photo_has_no_preview_and_may_lack_sizes() {
        let photo = v2(
            json!({"media_key":"3_1","type":"photo","url":"https://ton.twitter.com/x.jpg",
            "preview_image_url":"https://ton.twitter.com/x.jpg","width":0}),
        )
        .unwrap();
        assert_eq!(photo.x_preview_url, None);
        assert_eq!(
            (photo.width, photo.height, photo.duration_ms),
            (None, None, None)
        );
    }

    #[test]
    fn a_v1_gif_takes_its_mp4_and_keeps_the_image_as_preview() {
        let gif = v1(json!({"id_str":"1221092866912550912","type":"animated_gif",
            "media_url_https":"https://pbs.twimg.com/dm_gif_preview/x.jpg",
            "sizes":{"thumb":{"w":150,"h":150,"resize":"crop"},"large":{"w":498,"h":280,"resize":"fit"}},
            "video_info":{"aspect_ratio":[249,140],"variants":[{"bitrate":0,"content_type":"video/mp4","url":"https://video.twimg.com/dm_gif/x.mp4"}]}}))
        .unwrap();
        assert_eq!(gif.kind, AttachmentKind::AnimatedGif);
        assert_eq!(gif.x_url, "https://video.twimg.com/dm_gif/x.mp4");
        assert_eq!(
            gif.x_preview_url.as_deref(),
            Some("https://pbs.twimg.com/dm_gif_preview/x.jpg")
        );
        assert_eq!((gif.width, gif.height), (Some(498), Some(280)));
        assert_eq!(gif.media_id.as_deref(), Some("1221092866912550912"));
        assert_eq!(
            gif.media_key, None,
            "a webhook does not say the key's category"
        );
    }

    #[test]
    fn a_v1_video_gives_its_duration_and_prefers_the_original_size() {
        let video = v1(json!({"id_str":"12","media_key":"7_12","type":"video",
            "media_url_https":"https://pbs.twimg.com/dm_video_thumb/12/x.jpg",
            "original_info":{"width":3840,"height":2160},
            "sizes":{"large":{"w":2048,"h":1152,"resize":"fit"}},
            "video_info":{"duration_millis":6500,"variants":[{"bitrate":832000,"content_type":"video/mp4","url":"https://video.twimg.com/dm_video/12/x.mp4"}]}}))
        .unwrap();
        assert_eq!((video.width, video.height), (Some(3840), Some(2160)));
        assert_eq!(video.duration_ms, Some(6500));
        assert_eq!(video.media_key.as_deref(), Some("7_12"), "given by X, kept");
        // A key that does not name this media is not trusted.
        let odd = v1(json!({"id_str":"12","media_key":"7_13","type":"photo",
            "media_url_https":"https://ton.twitter.com/x.jpg"}))
        .unwrap();
        assert_eq!(odd.media_key, None);
    }

    #[test]
    fn a_v1_media_id_given_only_as_a_number_keeps_its_digits() {
        let media: Value = serde_json::from_str(
            r#"{"id":1221092866912550912,"type":"photo","media_url_https":"https://ton.twitter.com/x.png"}"#,
        )
        .unwrap();
        assert_eq!(
            v1(media).unwrap().media_id.as_deref(),
            Some("1221092866912550912")
        );
    }

    #[test]
    fn unusable_media_say_why() {
        assert!(
            v1(json!({"id_str":"1","type":"sticker","media_url_https":"https://x"}))
                .unwrap_err()
                .contains("sticker")
        );
        assert!(v1(json!({"type":"photo","media_url_https":"https://x"}))
            .unwrap_err()
            .contains("media.id is missing"));
        assert!(v1(json!({"id_str":"1","type":"photo"}))
            .unwrap_err()
            .contains("media_url_https is missing"));
        assert!(v2(json!({"media_key":"3_1","type":"photo"}))
            .unwrap_err()
            .contains("url is missing"));
        for key in ["x_1", "1", "1234_1", "3_"] {
            assert!(
                v2(json!({"media_key":key,"type":"photo","url":"https://x"}))
                    .unwrap_err()
                    .contains("not an X media key"),
                "{key}"
            );
        }
        assert!(v2(json!({"media_key":"3_1","url":"https://x"}))
            .unwrap_err()
            .contains("type is missing"));
    }
}
