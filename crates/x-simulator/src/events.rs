//! The DM event store: every DM the simulator knows — the accounts' own sends and customers'
//! DMs to them — as X keeps them for `GET /2/dm_events` and delivers them to webhooks.

use chrono::{DateTime, SubsecRound as _, Utc};
use rand::distr::{Alphanumeric, SampleString as _};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::accounts::Account;
use crate::customers::Customer;
use crate::state::{DmAttachment, DmEvent, Inner, MediaType, MediaVariant, MESSAGE_CREATE};

/// The media a customer's DM should carry ([`crate::Simulator::customer_dm`]); everything but
/// the type is optional and gets X-like defaults.
///
/// As JSON (the admin API): `{"type":"photo"}`, or e.g.
/// `{"type":"video","width":640,"height":360,"duration_ms":4000,"file_name":"clip.mp4"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaSpec {
    /// Photo, video or animated GIF.
    #[serde(rename = "type")]
    pub media_type: MediaType,
    /// Pixel width; 1280 (photo, video) or 498 (GIF) if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Pixel height; 720 (photo, video) or 280 (GIF) if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A video's length; 5 s if unset. Ignored for photos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The last segment of the TON URL, e.g. `OwIPMAFC.png`; 8 random characters plus `.jpg`
    /// (photo) or `.mp4` if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// The bytes the TON URL and every rendition serve, so a test can check a download byte
    /// for byte (as a JSON array of numbers); a short placeholder naming the media if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<u8>>,
}

impl MediaSpec {
    fn of(media_type: MediaType) -> MediaSpec {
        MediaSpec {
            media_type,
            width: None,
            height: None,
            duration_ms: None,
            file_name: None,
            content: None,
        }
    }

    /// A 1280×720 JPEG.
    pub fn photo() -> MediaSpec {
        MediaSpec::of(MediaType::Photo)
    }

    /// A 5-second 1280×720 video.
    pub fn video() -> MediaSpec {
        MediaSpec::of(MediaType::Video)
    }

    /// A 498×280 GIF.
    pub fn animated_gif() -> MediaSpec {
        MediaSpec::of(MediaType::AnimatedGif)
    }
}

/// The App id X shows as `source_app_id` for an account's sends: a stable 8-digit number derived
/// from its consumer key (accounts sharing an App share it).
pub(crate) fn app_id(account: &Account) -> String {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in account.consumer_key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (10_000_000 + hash % 90_000_000).to_string()
}

/// `smaller-larger`, compared as numbers (ids of different lengths sort by length first).
pub(crate) fn one_to_one_conversation_id(a: &str, b: &str) -> String {
    let numeric = |id: &str| {
        (
            id.trim_start_matches('0').len(),
            id.trim_start_matches('0').to_string(),
        )
    };
    if numeric(a) <= numeric(b) {
        format!("{a}-{b}")
    } else {
        format!("{b}-{a}")
    }
}

fn random_text(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

fn build_attachment(
    base_url: &Url,
    event_id: &str,
    media_id: String,
    spec: &MediaSpec,
) -> DmAttachment {
    let media_type = spec.media_type;
    let (default_width, default_height) = media_type.default_size();
    let width = spec.width.unwrap_or(default_width).max(1);
    let height = spec.height.unwrap_or(default_height).max(1);
    let file_name = spec
        .file_name
        .clone()
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .unwrap_or_else(|| format!("{}.{}", random_text(8), media_type.default_extension()));
    let base = base_url.as_str().trim_end_matches('/');
    let url = format!("{base}/1.1/ton/data/dm/{event_id}/{media_id}/{file_name}");
    let stem = file_name
        .rsplit_once('.')
        .map_or(file_name.as_str(), |(stem, _)| stem);
    let renditions = Renditions::of(spec, base, &media_id, stem, (width, height));
    DmAttachment {
        media_key: format!("{}_{media_id}", media_type.key_prefix()),
        media_id,
        media_type,
        url,
        preview_image_url: renditions.preview_image_url,
        variants: renditions.variants,
        width,
        height,
        duration_ms: renditions.duration_ms,
        tco_url: format!("https://t.co/{}", random_text(10)),
        content: spec.content.clone(),
    }
}

/// A video's or GIF's preview image, mp4 variants and duration, as X serves them; a photo has
/// none.
struct Renditions {
    preview_image_url: Option<String>,
    variants: Vec<MediaVariant>,
    duration_ms: Option<u64>,
}

impl Renditions {
    fn of(spec: &MediaSpec, base: &str, media_id: &str, stem: &str, size: (u32, u32)) -> Self {
        let (width, height) = size;
        let mp4 = |bit_rate: u64, url: String| MediaVariant {
            bit_rate,
            content_type: "video/mp4".to_string(),
            url,
        };
        match spec.media_type {
            MediaType::Photo => Renditions {
                preview_image_url: None,
                variants: Vec::new(),
                duration_ms: None,
            },
            MediaType::Video => Renditions {
                preview_image_url: Some(format!("{base}/dm_video_thumb/{media_id}/img/{stem}.jpg")),
                variants: [(256_000u64, 4u32), (832_000, 2), (2_176_000, 1)]
                    .into_iter()
                    .map(|(bit_rate, divisor)| {
                        let (w, h) = ((width / divisor).max(1), (height / divisor).max(1));
                        mp4(
                            bit_rate,
                            format!("{base}/dm_video/{media_id}/vid/avc1/{w}x{h}/{stem}.mp4"),
                        )
                    })
                    .collect(),
                duration_ms: Some(spec.duration_ms.unwrap_or(5_000)),
            },
            MediaType::AnimatedGif => Renditions {
                preview_image_url: Some(format!("{base}/dm_gif_thumb/{media_id}/{stem}.jpg")),
                variants: vec![mp4(0, format!("{base}/dm_gif/{media_id}/{stem}.mp4"))],
                duration_ms: None,
            },
        }
    }
}

/// When a customer's DM was written.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Written {
    /// Just now, by the simulator's clock.
    Now(DateTime<Utc>),
    /// At a time the test chose.
    At(DateTime<Utc>),
}

impl Inner {
    /// Records a customer's DM to an account and remembers the customer. Written `now`, its ids
    /// come after every earlier one; written `at` a chosen time, they are minted from it (X's
    /// ids are time-ordered), so a back-dated DM sorts among older events.
    pub(crate) fn record_customer_dm(
        &mut self,
        base_url: &Url,
        account_user_id: &str,
        customer: &Customer,
        text: &str,
        media: Option<&MediaSpec>,
        written: Written,
    ) -> DmEvent {
        let (created_at, chosen) = match written {
            Written::Now(now) => (now.trunc_subsecs(3), false),
            Written::At(at) => (at.trunc_subsecs(3), true),
        };
        let mint = |inner: &mut Inner| {
            if chosen {
                inner.event_id_at(created_at)
            } else {
                inner.next_event_id(created_at)
            }
        };
        let media_id = media.map(|_| mint(self));
        let id = mint(self);
        let attachment = media
            .zip(media_id)
            .map(|(spec, media_id)| build_attachment(base_url, &id, media_id, spec));
        self.customers.upsert(customer.clone());
        let event = DmEvent {
            id,
            event_type: MESSAGE_CREATE.to_string(),
            text: text.to_string(),
            sender_id: customer.user_id.clone(),
            recipient_id: Some(account_user_id.to_string()),
            dm_conversation_id: one_to_one_conversation_id(account_user_id, &customer.user_id),
            created_at,
            attachment,
            source_app_id: None,
        };
        self.counters.dms_received += 1;
        self.events.push(event.clone());
        event
    }

    /// Records an account's accepted send as a DM event with the send's id. Its media (X allows
    /// one) is shown as the kind it was uploaded as.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_send_event(
        &mut self,
        base_url: &Url,
        account: &Account,
        event_id: &str,
        dm_conversation_id: &str,
        recipient_id: Option<&str>,
        text: &str,
        media: Option<(&str, MediaType)>,
        created_at: DateTime<Utc>,
    ) -> DmEvent {
        let attachment = media.map(|(media_id, kind)| {
            build_attachment(
                base_url,
                event_id,
                media_id.to_string(),
                &MediaSpec::of(kind),
            )
        });
        let event = DmEvent {
            id: event_id.to_string(),
            event_type: MESSAGE_CREATE.to_string(),
            text: text.to_string(),
            sender_id: account.user_id.clone(),
            recipient_id: recipient_id.map(str::to_string),
            dm_conversation_id: dm_conversation_id.to_string(),
            created_at: created_at.trunc_subsecs(3),
            attachment,
            source_app_id: Some(app_id(account)),
        };
        self.events.push(event.clone());
        event
    }

    /// The account's DM events, oldest first (by id).
    pub(crate) fn events_of(&self, user_id: &str) -> Vec<DmEvent> {
        let mut events: Vec<DmEvent> = self
            .events
            .iter()
            .filter(|event| event.involves(user_id))
            .cloned()
            .collect();
        events.sort_by_key(DmEvent::numeric_id);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_one_id_orders_numerically_not_lexically() {
        assert_eq!(one_to_one_conversation_id("9", "10"), "9-10");
        assert_eq!(one_to_one_conversation_id("10", "9"), "9-10");
        assert_eq!(
            one_to_one_conversation_id("1072250532645998596", "750362064426721281"),
            "750362064426721281-1072250532645998596"
        );
    }

    #[test]
    fn media_keys_and_urls_follow_x() {
        let base = Url::parse("http://127.0.0.1:9/").unwrap();
        let photo = build_attachment(&base, "2", "1".into(), &MediaSpec::photo());
        assert_eq!(photo.media_key, "3_1");
        assert!(photo
            .url
            .starts_with("http://127.0.0.1:9/1.1/ton/data/dm/2/1/"));
        assert!(photo.url.ends_with(".jpg"));
        assert!(photo.variants.is_empty() && photo.preview_image_url.is_none());
        assert_eq!(photo.tco_url.len(), 23);

        let video = build_attachment(&base, "2", "1".into(), &MediaSpec::video());
        assert_eq!(video.media_key, "7_1");
        assert_eq!(video.variants.len(), 3);
        assert!(video.variants.iter().all(|v| v.content_type == "video/mp4"));
        assert!(video.preview_image_url.is_some());
        assert_eq!(video.duration_ms, Some(5_000));

        let gif = build_attachment(&base, "2", "1".into(), &MediaSpec::animated_gif());
        assert_eq!(gif.media_key, "16_1");
        assert_eq!(gif.variants[0].bit_rate, 0);

        let named = MediaSpec {
            file_name: Some("OwIPMAFC.png".into()),
            ..MediaSpec::photo()
        };
        let named = build_attachment(&base, "2", "1".into(), &named);
        assert!(named.url.ends_with("/2/1/OwIPMAFC.png"));
    }

    #[test]
    fn app_ids_are_stable_eight_digit_numbers() {
        let account = Account::demo();
        assert_eq!(app_id(&account), app_id(&account.clone()));
        assert_eq!(app_id(&account).len(), 8);
    }
}
