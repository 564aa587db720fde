//! Signed URLs of the bridge's media proxy.
//!
//! X's URL of a DM's media only answers a GET signed with the channel's OAuth 1.0a user
//! token, which the CRM must not hold. So before a DM is published, each attachment gets a
//! URL of the bridge itself, `<public base>media/<channel>/<token>`, that the media proxy
//! ([`crate::media::proxy`]) serves by fetching X's URL with the channel's signature.
//!
//! The token carries everything the proxy needs, so any replica holding the key can serve
//! it and nothing is stored: `v1.<expires>.<dm event id>.<X's URL, base64url>.<signature>`,
//! where the signature is HMAC-SHA256 with the configured key over the channel and the
//! token's other segments exactly as written. Changing any bit of the path (channel,
//! expiry, event id, URL or signature) or adding a query makes the URL invalid; the check
//! runs in constant time. Even a valid token is only fetched if it names X's DM media
//! ([`is_dm_media`]): an allowed origin and one of the paths X serves DM media at. So a
//! leaked key cannot turn the bridge into an open proxy, nor into a client of the rest of
//! X's API with the channel's credentials (`/2/users/me`, `/2/dm_events`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use url::Url;
use xbridge_core::contract::DirectMessage;

/// The token format's version, the first segment: lets a later format live next to this
/// one while URLs of the old one are still out.
const VERSION: &str = "v1";

/// Domain separation: this key signs nothing else, but a MAC input that names its use
/// cannot be confused with another's.
const CONTEXT: &[u8] = b"xbridge media url v1";

/// Why a media URL is refused. Every variant is a 403 for the client; they are told apart
/// for logs and metrics only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The token is not one the bridge made: malformed, altered, signed with another key,
    /// for another channel, or with a query added.
    #[error("the media URL is not valid (altered, or signed with another key)")]
    Invalid,
    /// The token is genuine but its lifetime is over.
    #[error("the media URL has expired")]
    Expired,
    /// The token is genuine but names media outside X's media origins.
    #[error("the media URL points outside X's media origins")]
    OriginNotAllowed,
    /// The token is genuine and its origin allowed, but its path is not one of X's DM
    /// media paths (another API endpoint, say).
    #[error("the media URL does not point at X's DM media")]
    NotDmMedia,
}

/// What a valid media URL stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMedia {
    /// X's URL of the media, to fetch with the channel's signature.
    pub x_url: Url,
    /// The DM event the media belongs to, for logs.
    pub dm_event_id: String,
    /// When the URL stops working (unix seconds).
    pub expires: u64,
}

/// Makes and checks the signed media URLs of one bridge: its key, its public address,
/// the URLs' lifetime and the X origins media may come from.
pub struct MediaLinks {
    key: SecretString,
    public_base_url: Option<Url>,
    ttl: Duration,
    allowed_origins: Vec<String>,
}

impl fmt::Debug for MediaLinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaLinks")
            .field("key", &"[REDACTED]")
            .field(
                "public_base_url",
                &self.public_base_url.as_ref().map(Url::as_str),
            )
            .field("ttl", &self.ttl)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

impl MediaLinks {
    /// Links signed with `key`, under `public_base_url` (the prefix the CRM reaches the
    /// bridge's HTTP server with; `None` when there is none, and attachments then go out
    /// without URLs), valid for `ttl`, for media on `allowed_origins`
    /// (`scheme://host[:port]`, as [`url::Origin::ascii_serialization`] writes them).
    pub fn new(
        key: SecretString,
        public_base_url: Option<Url>,
        ttl: Duration,
        allowed_origins: Vec<String>,
    ) -> MediaLinks {
        let public_base_url = public_base_url.map(|mut url| {
            // A prefix: `media/…` is joined under it.
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            url
        });
        MediaLinks {
            key,
            public_base_url,
            ttl,
            allowed_origins,
        }
    }

    /// A fresh random 256-bit key, for a bridge configured without one: its URLs die with
    /// the process, and other replicas refuse them.
    pub fn random_key() -> SecretString {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        SecretString::from(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Where the CRM reaches the media proxy, if known.
    pub fn public_base_url(&self) -> Option<&Url> {
        self.public_base_url.as_ref()
    }

    /// Whether X's `url` may be fetched for a DM's media: the one check behind both
    /// making links and serving them. Its origin must be allowed and its path one of X's
    /// DM media paths ([`is_dm_media`]); nothing else is fetched, whatever the signature.
    pub fn check(&self, url: &Url) -> Result<(), LinkError> {
        let origin = url.origin().ascii_serialization();
        if !self.allowed_origins.contains(&origin) {
            return Err(LinkError::OriginNotAllowed);
        }
        if !is_dm_media(url) {
            return Err(LinkError::NotDmMedia);
        }
        Ok(())
    }

    /// Whether [`MediaLinks::check`] lets `url` through.
    pub fn is_allowed(&self, url: &Url) -> bool {
        self.check(url).is_ok()
    }

    /// The bridge URL of X's `x_url` for `channel`'s DM `dm_event_id`, valid for the
    /// configured lifetime from now; `None` when the bridge has no public URL or `x_url` is
    /// not on an allowed origin (the proxy would refuse it).
    pub fn link(&self, channel: &str, dm_event_id: &str, x_url: &str) -> Option<String> {
        self.link_at(channel, dm_event_id, x_url, SystemTime::now())
    }

    /// [`MediaLinks::link`] as if made at `issued_at` (tests, and tools that re-issue
    /// URLs for old events).
    pub fn link_at(
        &self,
        channel: &str,
        dm_event_id: &str,
        x_url: &str,
        issued_at: SystemTime,
    ) -> Option<String> {
        let base = self.public_base_url.as_ref()?;
        let parsed = Url::parse(x_url).ok()?;
        if let Err(error) = self.check(&parsed) {
            tracing::warn!(
                channel,
                dm_event_id,
                origin = %parsed.origin().ascii_serialization(),
                %error,
                "DM media X named is not fetched by the media proxy; published without a URL"
            );
            return None;
        }
        let expires = unix_seconds(issued_at).saturating_add(self.ttl.as_secs());
        let token = self.token(channel, dm_event_id, parsed.as_str(), expires);
        let url = base.join(&format!("media/{channel}/{token}")).ok()?;
        Some(url.into())
    }

    /// Fills the bridge URLs of every attachment of `dm`, a DM of `channel`.
    pub fn complete(&self, channel: &str, dm: &mut DirectMessage) {
        let event_id = dm.event_id.clone();
        for attachment in &mut dm.attachments {
            attachment.url = self.link(channel, event_id.as_str(), &attachment.x_url);
            attachment.preview_url = attachment
                .x_preview_url
                .as_deref()
                .and_then(|x_url| self.link(channel, event_id.as_str(), x_url));
        }
    }

    fn token(&self, channel: &str, dm_event_id: &str, x_url: &str, expires: u64) -> String {
        let expires = expires.to_string();
        let url = URL_SAFE_NO_PAD.encode(x_url);
        let signature = self.mac(channel, &expires, dm_event_id, &url).finalize();
        format!(
            "{VERSION}.{expires}.{dm_event_id}.{url}.{}",
            URL_SAFE_NO_PAD.encode(signature.into_bytes())
        )
    }

    fn mac(&self, channel: &str, expires: &str, dm_event_id: &str, url: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length");
        // NUL-separated: no segment can contain one (channel names and base64url cannot,
        // the expiry and event id are digits).
        for part in [
            CONTEXT,
            channel.as_bytes(),
            expires.as_bytes(),
            dm_event_id.as_bytes(),
            url.as_bytes(),
        ] {
            mac.update(part);
            mac.update(b"\0");
        }
        mac
    }

    /// Checks a media URL's `token` for `channel` at `now`; `query` is the request's query
    /// string, which a URL the bridge made never has.
    ///
    /// The signature is checked first (in constant time), so an altered URL is
    /// [`LinkError::Invalid`] whatever else is wrong with it; then the expiry; then
    /// whether X's URL is DM media ([`MediaLinks::check`]).
    pub fn verify(
        &self,
        channel: &str,
        token: &str,
        query: Option<&str>,
        now: SystemTime,
    ) -> Result<SignedMedia, LinkError> {
        if query.is_some() {
            return Err(LinkError::Invalid);
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [version, expires, dm_event_id, url, signature] = parts.as_slice() else {
            return Err(LinkError::Invalid);
        };
        if *version != VERSION {
            return Err(LinkError::Invalid);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| LinkError::Invalid)?;
        self.mac(channel, expires, dm_event_id, url)
            .verify_slice(&signature)
            .map_err(|_| LinkError::Invalid)?;
        // Genuine from here on: the bridge wrote these segments.
        let expires: u64 = expires.parse().map_err(|_| LinkError::Invalid)?;
        if unix_seconds(now) >= expires {
            return Err(LinkError::Expired);
        }
        let x_url = URL_SAFE_NO_PAD
            .decode(url)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| Url::parse(&text).ok())
            .ok_or(LinkError::Invalid)?;
        self.check(&x_url)?;
        Ok(SignedMedia {
            x_url,
            dm_event_id: (*dm_event_id).to_owned(),
            expires,
        })
    }
}

/// The first path segments of X's DM video and GIF renditions and their previews
/// (`video.twimg.com/dm_video/<media id>/vid/avc1/1280x720/<name>.mp4`,
/// `pbs.twimg.com/dm_video_thumb/<media id>/img/<name>.jpg`, `…/dm_gif/…`,
/// `…/dm_gif_thumb/…`).
const RENDITIONS: [&str; 4] = ["dm_video", "dm_video_thumb", "dm_gif", "dm_gif_thumb"];

/// Whether `url`'s path is one X serves a DM's media at: a TON URL
/// `/1.1/ton/data/dm/<dm id>/<media id>/<name>`, its OAuth 2 twin
/// `/2/dm_conversations/media/<dm id>/<media id>/<name>`, or a rendition
/// `/<dm_video|dm_video_thumb|dm_gif|dm_gif_thumb>/<media id>/…` (at most six more
/// segments). Ids are digits; no segment is empty, dots only, or an encoded slash, so no
/// reading of the path by X's servers reaches another endpoint. The query is not looked
/// at (renditions carry `?tag=…`): it cannot change which endpoint answers.
pub fn is_dm_media(url: &Url) -> bool {
    let Some(segments) = url.path_segments() else {
        return false;
    };
    let segments: Vec<&str> = segments.collect();
    match segments.as_slice() {
        ["1.1", "ton", "data", "dm", dm_id, media_id, name]
        | ["2", "dm_conversations", "media", dm_id, media_id, name] => {
            is_id(dm_id) && is_id(media_id) && is_name(name)
        }
        [kind, media_id, rest @ ..] if RENDITIONS.contains(kind) => {
            is_id(media_id) && (1..=6).contains(&rest.len()) && rest.iter().all(|s| is_name(s))
        }
        _ => false,
    }
}

/// An X id: 1 to 19 digits.
fn is_id(segment: &str) -> bool {
    (1..=19).contains(&segment.len()) && segment.bytes().all(|b| b.is_ascii_digit())
}

/// A file-like segment, as X names its media files (`OwIPMAFC.png`, `1280x720`): after
/// percent-decoding, letters, digits, `-`, `_`, `~`, `.` and spaces, with no `..`
/// anywhere. So nothing a server may read as a path step survives: no `/` or `\`
/// (raw or encoded), no dot segments (`..`, `%2e%2e`), no `..;` (read as `..` by some
/// servers), no NUL or other control characters.
fn is_name(segment: &str) -> bool {
    let Ok(decoded) = percent_encoding::percent_decode_str(segment).decode_utf8() else {
        return false;
    };
    // A `%` not followed by two hex digits is left as is by the decoder: refused too.
    !decoded.is_empty()
        && !decoded.contains("..")
        && !decoded.bytes().all(|b| b == b'.')
        && decoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'.' | b' '))
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TON: &str = "https://ton.twitter.com/1.1/ton/data/dm/1221092871941558276/1221092866912550912/OwIPMAFC.png";

    fn links() -> MediaLinks {
        MediaLinks::new(
            SecretString::from("k".repeat(32)),
            Some(Url::parse("https://bridge.example.com/xb").unwrap()),
            Duration::from_secs(3600),
            vec!["https://ton.twitter.com".into()],
        )
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// The channel and token of a bridge URL.
    fn split(url: &str) -> (String, String) {
        let path = url
            .strip_prefix("https://bridge.example.com/xb/media/")
            .unwrap();
        let (channel, token) = path.split_once('/').unwrap();
        (channel.to_owned(), token.to_owned())
    }

    #[test]
    fn a_link_verifies_until_it_expires() {
        let links = links();
        let url = links
            .link_at("acme", "1221092871941558276", TON, at(1_000_000))
            .unwrap();
        assert!(url.starts_with(
            "https://bridge.example.com/xb/media/acme/v1.1003600.1221092871941558276."
        ));
        let (channel, token) = split(&url);
        let media = links.verify(&channel, &token, None, at(1_003_599)).unwrap();
        assert_eq!(media.x_url.as_str(), TON);
        assert_eq!(media.dm_event_id, "1221092871941558276");
        assert_eq!(media.expires, 1_003_600);
        assert_eq!(
            links.verify(&channel, &token, None, at(1_003_600)),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn any_altered_bit_is_invalid() {
        let links = links();
        let url = links.link_at("acme", "12", TON, at(1_000_000)).unwrap();
        let (channel, token) = split(&url);
        let now = at(1_000_001);
        // Flip every bit of every character of the token in turn (keeping it ASCII).
        for i in 0..token.len() {
            for bit in 0..7 {
                let mut bytes = token.clone().into_bytes();
                bytes[i] ^= 1 << bit;
                let Ok(altered) = String::from_utf8(bytes) else {
                    continue;
                };
                assert!(
                    links.verify(&channel, &altered, None, now).is_err(),
                    "{altered} accepted"
                );
            }
        }
        // A longer lifetime written in, with or without leading zeros, is not signed.
        let later = token.replacen("v1.1003600.", "v1.9003600.", 1);
        assert_eq!(
            links.verify(&channel, &later, None, now),
            Err(LinkError::Invalid)
        );
        let padded = token.replacen("v1.1003600.", "v1.01003600.", 1);
        assert_eq!(
            links.verify(&channel, &padded, None, now),
            Err(LinkError::Invalid)
        );
        // Another channel, an added query, another key.
        assert_eq!(
            links.verify("other", &token, None, now),
            Err(LinkError::Invalid)
        );
        assert_eq!(
            links.verify(&channel, &token, Some("x=1"), now),
            Err(LinkError::Invalid)
        );
        let other_key = MediaLinks::new(
            MediaLinks::random_key(),
            None,
            Duration::from_secs(3600),
            vec!["https://ton.twitter.com".into()],
        );
        assert_eq!(
            other_key.verify(&channel, &token, None, now),
            Err(LinkError::Invalid)
        );
        for junk in [
            "",
            "v1",
            "v1.1.2.3",
            "v2.1003600.12.aGk.aGk",
            "v1.x.12.aGk.aGk.x",
        ] {
            assert_eq!(
                links.verify(&channel, junk, None, now),
                Err(LinkError::Invalid)
            );
        }
    }

    #[test]
    fn only_allowed_origins_are_linked_or_fetched() {
        let links = links();
        assert_eq!(
            links.link_at("acme", "12", "https://evil.example/x.png", at(1)),
            None
        );
        // A genuine token for an origin no longer allowed (the list changed) is refused.
        let wider = MediaLinks::new(
            SecretString::from("k".repeat(32)),
            Some(Url::parse("https://bridge.example.com/xb/").unwrap()),
            Duration::from_secs(3600),
            vec![
                "https://ton.twitter.com".into(),
                "https://evil.example".into(),
            ],
        );
        let url = wider
            .link_at(
                "acme",
                "12",
                "https://evil.example/1.1/ton/data/dm/12/34/x.png",
                at(1),
            )
            .unwrap();
        let (channel, token) = split(&url);
        assert_eq!(
            links.verify(&channel, &token, None, at(2)),
            Err(LinkError::OriginNotAllowed)
        );
        // Same host, other scheme or port: another origin.
        assert!(!links.is_allowed(&Url::parse("http://ton.twitter.com/x").unwrap()));
        assert!(!links.is_allowed(&Url::parse("https://ton.twitter.com:444/x").unwrap()));
    }

    #[test]
    fn only_x_dm_media_paths_are_linked_or_fetched() {
        let x = |path: &str| Url::parse(&format!("https://api.x.com{path}")).unwrap();
        for path in [
            "/1.1/ton/data/dm/1221092871941558276/1221092866912550912/OwIPMAFC.png",
            "/2/dm_conversations/media/1221092871941558276/1221092866912550912/OwIPMAFC.png",
            "/dm_video/1583157113245011970/vid/avc1/1280x720/AbCd-_9.mp4",
            "/dm_video/1583157113245011970/vid/avc1/1280x720/AbCd.mp4?tag=12",
            "/dm_video/1583157113245011970/vid/1280x720/AbCd.mp4",
            "/dm_video_thumb/1583157113245011970/img/AbCd.jpg",
            "/dm_gif/1583157113245011970/AbCd.mp4",
            "/dm_gif_thumb/1583157113245011970/AbCd.jpg",
            "/1.1/ton/data/dm/1/2/receipt%20photo.png",
        ] {
            assert!(is_dm_media(&x(path)), "{path} refused");
        }
        for path in [
            "/2/users/me",
            "/2/dm_events",
            "/2/dm_events?dm_event.fields=text",
            "/2/users/12",
            "/2/dm_conversations/with/12/messages",
            "/2/dm_conversations/media/12/34",
            "/1.1/ton/data/dm/12/34",
            "/1.1/ton/data/dm/12/34/",
            "/1.1/ton/data/dm/12/34/x.png/more",
            "/1.1/ton/data/dm/ab/34/x.png",
            "/1.1/ton/data/dm/12/34/../../../../../2/users/me",
            "/1.1/ton/data/dm/12/34/%2e%2e/%2E%2E/x",
            "/1.1/ton/data/dm/12/34/..%2F..%2F..%2F2%2Fusers%2Fme",
            "/1.1/ton/data/dm/12/34/..%5C2%5Cusers%5Cme",
            "/dm_video/12/..;/..;/2/users/me",
            "/dm_video/12/a;b/x.mp4",
            "/dm_video/12/x%00.mp4",
            "/dm_video/12/x%zz.mp4",
            "/dm_video/12/a..b/x.mp4",
            "/1.1/ton/data/dm/12/34/x%2e%2e",
            "/dm_video/12",
            "/dm_video/12/",
            "/dm_video/x/vid/a.mp4",
            "/dm_video/12/1/2/3/4/5/6/7.mp4",
            "/dm_video/12/../../2/users/me",
            "/media/12/x.png",
            "/",
        ] {
            assert!(!is_dm_media(&x(path)), "{path} accepted");
        }

        // The same check when links are made and when they are served.
        let links = MediaLinks::new(
            SecretString::from("k".repeat(32)),
            Some(Url::parse("https://bridge.example.com/xb/").unwrap()),
            Duration::from_secs(3600),
            vec!["https://api.x.com".into(), "https://ton.twitter.com".into()],
        );
        assert_eq!(
            links.link_at("acme", "12", "https://api.x.com/2/users/me", at(1)),
            None
        );
        assert_eq!(links.check(&x("/2/dm_events")), Err(LinkError::NotDmMedia));
        // A token signed with the key, for an API endpoint on an allowed origin.
        let token = links.token("acme", "12", "https://api.x.com/2/users/me", 100);
        assert_eq!(
            links.verify("acme", &token, None, at(2)),
            Err(LinkError::NotDmMedia)
        );
    }

    #[test]
    fn without_a_public_url_there_are_no_links() {
        let links = MediaLinks::new(
            SecretString::from("k".repeat(32)),
            None,
            Duration::from_secs(60),
            vec!["https://ton.twitter.com".into()],
        );
        assert_eq!(links.link("acme", "12", TON), None);
    }

    #[test]
    fn the_key_is_never_printed_and_random_keys_differ() {
        let printed = format!("{:?}", links());
        assert!(!printed.contains("kkkk"), "{printed}");
        let (a, b) = (MediaLinks::random_key(), MediaLinks::random_key());
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
    }
}
