//! `[[channels]]`: the X accounts the deployment serves, their credentials and
//! how their customers' DMs arrive.

use std::collections::HashSet;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;
use xbridge_x_api::UserCredentials;

use crate::secret::SecretSource;

/// One X account, as in the CRM's channel form.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    /// Channel name: the routing key of its replies and part of queue names.
    pub name: String,
    /// The X App's API key.
    pub consumer_key: SecretString,
    /// The X App's API secret: signs requests and verifies webhooks.
    pub consumer_secret: SecretString,
    /// The account's OAuth 1.0a access token (must have DM permission); empty for an
    /// OAuth 2.0 channel ([`ChannelSettings::oauth2`]).
    pub access_token: SecretString,
    /// The OAuth 1.0a access token's secret; empty for an OAuth 2.0 channel.
    pub access_token_secret: SecretString,
    /// App-only token for webhook management (never accepted for DMs).
    pub bearer_token: SecretString,
    /// Optional weight from the CRM's channel form (kept for the CRM's sake).
    pub weight: Option<u32>,
    /// Optional URL from the CRM's channel form (e.g. the account's profile).
    pub url: Option<Url>,
    /// How customers' DMs reach the bridge.
    pub inbound: InboundMode,
    /// The account's X user id: needed to poll (to tell its own DMs from the
    /// customers'); the webhook learns it from each delivery.
    pub user_id: Option<String>,
    /// Which of X's webhook APIs `xbridge webhook subscribe` subscribes the account
    /// through, and `xbridge check` checks. The webhook server takes both either way.
    pub webhook_api: WebhookApi,
    /// With [`WebhookApi::Xaa`], the X Activity events to subscribe besides
    /// `dm.received`; `None` follows `[inbound]` ([`ChannelSettings::xaa_event_types`]).
    pub xaa_events: Option<Vec<XaaEvent>>,
    /// OAuth 2.0 user context instead of the OAuth 1.0a access token pair: the account's
    /// DMs are read and sent with a Bearer access token refreshed from a grant kept in
    /// the state store. The consumer key and secret stay (the webhook's CRC and
    /// signatures use the App's secret), and so does the bearer token (webhook management).
    pub oauth2: Option<OAuth2Channel>,
}

/// A channel's OAuth 2.0 client (from X's developer console) and, optionally, the refresh
/// token to start from. Without one, `xbridge oauth2 authorize --channel NAME` stores the
/// grant. `Debug` prints no secret ([`SecretString`] redacts itself).
#[derive(Debug, Clone)]
pub struct OAuth2Channel {
    /// The App's OAuth 2.0 Client ID (public: it is in the authorize URL).
    pub client_id: String,
    /// The Client Secret of a confidential client (Web App, Automated App or bot).
    pub client_secret: Option<SecretString>,
    /// The refresh token of a grant made elsewhere, used only while the state store has
    /// no grant for the channel: X rotates refresh tokens, so after the first refresh
    /// the stored grant is the one that counts.
    pub refresh_token: Option<SecretString>,
}

/// The longest OAuth 2.0 client id accepted (X's are about 34 characters).
pub const MAX_OAUTH2_CLIENT_ID_CHARS: usize = 256;

/// What is wrong with an OAuth 2.0 client id, if anything. Shared with the CRM's
/// `channel.upsert`; the id is not secret, but it is not quoted either.
pub fn oauth2_client_id_problem(client_id: &str) -> Option<String> {
    if client_id.is_empty() {
        Some("must not be empty".to_owned())
    } else if client_id.len() > MAX_OAUTH2_CLIENT_ID_CHARS {
        Some(format!(
            "must be at most {MAX_OAUTH2_CLIENT_ID_CHARS} characters"
        ))
    } else if !client_id.bytes().all(|b| b.is_ascii_graphic()) {
        Some("must be printable ASCII without spaces, as X's client ids are".to_owned())
    } else {
        None
    }
}

/// Which of X's webhook APIs delivers a channel's DMs: both POST to the App's one
/// webhook, signed alike, and the bridge reads both bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookApi {
    /// The Account Activity API: one subscription per account brings all its DM
    /// activity (Pay Per Use allows 3 per App). X calls it "being deprecated".
    #[default]
    Aaa,
    /// The X Activity API, AAA's successor: one subscription per account and DM event
    /// type (`dm.received`, …; 1,500 per App self-serve).
    Xaa,
}

impl WebhookApi {
    /// Its name in configuration and commands: `aaa` or `xaa`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookApi::Aaa => "aaa",
            WebhookApi::Xaa => "xaa",
        }
    }

    /// The value named `name`, if any.
    pub fn from_name(name: &str) -> Option<WebhookApi> {
        [WebhookApi::Aaa, WebhookApi::Xaa]
            .into_iter()
            .find(|api| api.as_str() == name)
    }
}

/// An X Activity DM event type a channel can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum XaaEvent {
    /// A DM the account received: always subscribed.
    #[serde(rename = "dm.received")]
    Received,
    /// A DM the account sent (from X's app, or through the API): `message.echo`.
    #[serde(rename = "dm.sent")]
    Sent,
    /// A read receipt: `message.read`.
    #[serde(rename = "dm.read")]
    Read,
    /// A typing indicator: `conversation.typing`.
    #[serde(rename = "dm.indicate_typing")]
    IndicateTyping,
}

impl XaaEvent {
    /// Every one, in the order they are subscribed.
    pub const ALL: [XaaEvent; 4] = [
        XaaEvent::Received,
        XaaEvent::Sent,
        XaaEvent::Read,
        XaaEvent::IndicateTyping,
    ];

    /// X's `event_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            XaaEvent::Received => "dm.received",
            XaaEvent::Sent => "dm.sent",
            XaaEvent::Read => "dm.read",
            XaaEvent::IndicateTyping => "dm.indicate_typing",
        }
    }

    /// The value named `name` (X's `event_type`), if any.
    pub fn from_name(name: &str) -> Option<XaaEvent> {
        XaaEvent::ALL
            .into_iter()
            .find(|event| event.as_str() == name)
    }
}

impl ChannelSettings {
    /// The X Activity event types the channel's account is subscribed to with
    /// [`WebhookApi::Xaa`]: always `dm.received`; then the channel's `xaa_events`, or by
    /// default what `[inbound]` publishes — `dm.sent` when `publish_echoes` (the account's
    /// own DMs, which AAA delivers too), `dm.read` and `dm.indicate_typing` when
    /// `publish_activity`.
    pub fn xaa_event_types(&self, publish_echoes: bool, publish_activity: bool) -> Vec<XaaEvent> {
        let wanted = |event: XaaEvent| match (&self.xaa_events, event) {
            (_, XaaEvent::Received) => true,
            (Some(chosen), event) => chosen.contains(&event),
            (None, XaaEvent::Sent) => publish_echoes,
            (None, _) => publish_activity,
        };
        XaaEvent::ALL.into_iter().filter(|e| wanted(*e)).collect()
    }
}

/// How a channel receives its customers' DMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// X's Account Activity webhook only.
    #[default]
    Webhook,
    /// Polling `GET /2/dm_events` only.
    Poll,
    /// The webhook for speed, and a slow poll that fills any gap it left.
    Both,
    /// The App's X Activity API stream (`GET /2/activity/stream`): real time without a
    /// public URL. One replica holds each App's stream; needs `user_id` (its events are
    /// routed by it) and uses XAA subscriptions whatever `webhook_api` says.
    Stream,
}

impl InboundMode {
    /// Whether the channel is polled.
    pub fn polls(self) -> bool {
        matches!(self, InboundMode::Poll | InboundMode::Both)
    }

    /// Whether X's webhook delivers the channel's DMs.
    pub fn uses_webhook(self) -> bool {
        matches!(self, InboundMode::Webhook | InboundMode::Both)
    }

    /// Whether the App's activity stream delivers the channel's DMs.
    pub fn streams(self) -> bool {
        self == InboundMode::Stream
    }

    /// Whether the mode needs the account's `user_id` in the settings: polling tells the
    /// account's own DMs by it, the stream routes its events by it.
    pub fn needs_user_id(self) -> bool {
        self.polls() || self.streams()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    pub(super) name: Option<String>,
    pub(super) consumer_key: Option<SecretSource>,
    pub(super) consumer_secret: Option<SecretSource>,
    pub(super) access_token: Option<SecretSource>,
    pub(super) access_token_secret: Option<SecretSource>,
    pub(super) bearer_token: Option<SecretSource>,
    pub(super) weight: Option<u32>,
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) inbound: InboundMode,
    pub(super) user_id: Option<String>,
    #[serde(default)]
    pub(super) webhook_api: WebhookApi,
    pub(super) xaa_events: Option<Vec<XaaEvent>>,
    pub(super) oauth2_client_id: Option<String>,
    pub(super) oauth2_client_secret: Option<SecretSource>,
    pub(super) oauth2_refresh_token: Option<SecretSource>,
}

/// Validates every `[[channels]]` entry, then what they must agree on.
pub(super) fn validate(raw: Vec<RawChannel>, errors: &mut Vec<String>) -> Vec<ChannelSettings> {
    if raw.is_empty() {
        errors.push("channels: at least one channel is required".into());
    }
    let mut names = HashSet::new();
    let mut channels = Vec::with_capacity(raw.len());
    for (i, raw_channel) in raw.into_iter().enumerate() {
        if let Some(channel) = validate_channel(i, raw_channel, &mut names, errors) {
            channels.push(channel);
        }
    }
    check_shared_apps(&channels, errors);
    channels
}

/// Whether a channel name is usable in routing keys and queue names: no dots
/// (they separate topic words) and nothing a shell or URL would mangle.
pub fn is_valid_channel_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Channels with one consumer key are one X App, whose single webhook brings all
/// their accounts' events: they must agree on the App's secret (it checks every
/// body's signature), and no account may be two channels of one App (a body
/// for it could not be routed).
fn check_shared_apps(channels: &[ChannelSettings], errors: &mut Vec<String>) {
    for (i, channel) in channels.iter().enumerate() {
        let Some(first) = channels[..i]
            .iter()
            .find(|c| c.consumer_key.expose_secret() == channel.consumer_key.expose_secret())
        else {
            continue;
        };
        if first.consumer_secret.expose_secret() != channel.consumer_secret.expose_secret() {
            errors.push(format!(
                "channel {}: consumer_secret differs from channel {}'s, which has the same consumer_key (one X App has one secret)",
                channel.name, first.name
            ));
        }
        if let Some(twin) = channels[..i].iter().find(|c| {
            c.consumer_key.expose_secret() == channel.consumer_key.expose_secret()
                && c.user_id.is_some()
                && c.user_id == channel.user_id
        }) {
            errors.push(format!(
                "channel {}: user_id is channel {}'s too, on the same X App (consumer_key); configure each account once",
                channel.name, twin.name
            ));
        }
    }
}

/// One channel checked field by field, every problem recorded in `errors`
/// (so one run of the loader names them all); `None` when any was found.
fn validate_channel(
    i: usize,
    raw: RawChannel,
    names: &mut HashSet<String>,
    errors: &mut Vec<String>,
) -> Option<ChannelSettings> {
    let before = errors.len();
    let name = channel_name(i, raw.name, names, errors);
    let label = channel_label(i, &name);
    let consumer_key = secret(&label, "consumer_key", raw.consumer_key, errors);
    let consumer_secret = secret(&label, "consumer_secret", raw.consumer_secret, errors);
    let oauth2 = oauth2_channel(
        &label,
        OAuth2Fields {
            client_id: raw.oauth2_client_id,
            client_secret: raw.oauth2_client_secret,
            refresh_token: raw.oauth2_refresh_token,
            access_token: raw.access_token.is_some(),
            access_token_secret: raw.access_token_secret.is_some(),
        },
        errors,
    );
    let (access_token, access_token_secret) = if oauth2.is_some() {
        (SecretString::from(""), SecretString::from(""))
    } else {
        (
            secret(&label, "access_token", raw.access_token, errors),
            secret(
                &label,
                "access_token_secret",
                raw.access_token_secret,
                errors,
            ),
        )
    };
    let bearer_token = secret(&label, "bearer_token", raw.bearer_token, errors);
    let url = channel_url(&label, raw.url, errors);
    if raw.weight == Some(0) {
        errors.push(format!("{label}.weight: must be at least 1"));
    }
    check_user_id(
        &label,
        raw.user_id.as_deref(),
        raw.inbound.needs_user_id(),
        errors,
    );
    if let Some(problem) = xaa_events_problem(raw.webhook_api, raw.xaa_events.as_deref()) {
        errors.push(format!("{label}.xaa_events: {problem}"));
    }
    (errors.len() == before).then_some(ChannelSettings {
        name,
        consumer_key,
        consumer_secret,
        access_token,
        access_token_secret,
        bearer_token,
        weight: raw.weight,
        url,
        inbound: raw.inbound,
        user_id: raw.user_id,
        webhook_api: raw.webhook_api,
        xaa_events: raw.xaa_events,
        oauth2,
    })
}

/// A channel's OAuth 2.0 fields: with `oauth2_client_id` the channel uses OAuth 2.0 and
/// must not also carry the OAuth 1.0a pair (which one would count is not obvious);
/// without it, the other `oauth2_` fields mean nothing and are refused.
fn oauth2_channel(
    label: &str,
    raw: OAuth2Fields,
    errors: &mut Vec<String>,
) -> Option<OAuth2Channel> {
    let Some(client_id) = raw.client_id else {
        for (field, given) in [
            ("oauth2_client_secret", raw.client_secret.is_some()),
            ("oauth2_refresh_token", raw.refresh_token.is_some()),
        ] {
            if given {
                errors.push(format!(
                    "{label}.{field}: only applies with oauth2_client_id"
                ));
            }
        }
        return None;
    };
    if let Some(problem) = oauth2_client_id_problem(&client_id) {
        errors.push(format!("{label}.oauth2_client_id: {problem}"));
    }
    for (field, given) in [
        ("access_token", raw.access_token),
        ("access_token_secret", raw.access_token_secret),
    ] {
        if given {
            errors.push(format!(
                "{label}.{field}: not used with oauth2_client_id (an OAuth 2.0 channel has no OAuth 1.0a access token)"
            ));
        }
    }
    let optional = |field: &str, source: Option<SecretSource>, errors: &mut Vec<String>| {
        source.map(|source| secret(label, field, Some(source), errors))
    };
    Some(OAuth2Channel {
        client_id,
        client_secret: optional("oauth2_client_secret", raw.client_secret, errors),
        refresh_token: optional("oauth2_refresh_token", raw.refresh_token, errors),
    })
}

/// A `[[channels]]` entry's OAuth 2.0 fields, and whether it gave the OAuth 1.0a pair.
struct OAuth2Fields {
    client_id: Option<String>,
    client_secret: Option<SecretSource>,
    refresh_token: Option<SecretSource>,
    access_token: bool,
    access_token_secret: bool,
}

/// What is wrong with a channel's `xaa_events`, if anything: they only mean something
/// with `webhook_api = "xaa"`. Shared with the CRM's `channel.upsert`.
pub fn xaa_events_problem(api: WebhookApi, events: Option<&[XaaEvent]>) -> Option<String> {
    (api != WebhookApi::Xaa && events.is_some())
        .then(|| "only applies with webhook_api = \"xaa\"".to_owned())
}

/// How errors name the channel: by position, and by name once it has one, so
/// a reader finds the entry even when the name is what is wrong.
fn channel_label(i: usize, name: &str) -> String {
    if name.is_empty() {
        format!("channels[{i}]")
    } else {
        format!("channels[{i}] ({name})")
    }
}

/// A credential resolved from its source; a missing or unreadable one is
/// recorded and stands in as empty so the other fields are still checked.
fn secret(
    label: &str,
    field: &str,
    source: Option<SecretSource>,
    errors: &mut Vec<String>,
) -> SecretString {
    match source {
        Some(source) => source.resolve().unwrap_or_else(|e| {
            errors.push(format!("{label}.{field}: {e}"));
            SecretString::from("")
        }),
        None => {
            errors.push(format!("{label}.{field}: missing"));
            SecretString::from("")
        }
    }
}

/// The channel's optional X base URL, recorded as an error when malformed.
fn channel_url(label: &str, url: Option<String>, errors: &mut Vec<String>) -> Option<Url> {
    match url.map(|u| Url::parse(&u)) {
        None => None,
        Some(Ok(url)) => Some(url),
        Some(Err(e)) => {
            errors.push(format!("{label}.url: {e}"));
            None
        }
    }
}

/// The channel's name: present, well formed and not another channel's.
fn channel_name(
    i: usize,
    name: Option<String>,
    names: &mut HashSet<String>,
    errors: &mut Vec<String>,
) -> String {
    match name {
        Some(name) if is_valid_channel_name(&name) => {
            if !names.insert(name.clone()) {
                errors.push(format!("channels[{i}].name: {name:?} is used twice"));
            }
            name
        }
        Some(name) => {
            errors.push(format!(
                "channels[{i}].name: {name:?} must be 1 to 63 of a-z, 0-9, _ and -, starting with a letter or digit"
            ));
            name
        }
        None => {
            errors.push(format!("channels[{i}].name: missing"));
            String::new()
        }
    }
}

/// `user_id`: X's id of the account, 1 to 19 digits; a polling channel needs it.
fn check_user_id(label: &str, user_id: Option<&str>, polls: bool, errors: &mut Vec<String>) {
    match user_id {
        Some(id) if id.is_empty() || id.len() > 19 || !id.bytes().all(|b| b.is_ascii_digit()) => {
            errors.push(format!("{label}.user_id: must be the account's X user id (1 to 19 digits)"));
        }
        None if polls => errors.push(format!(
            "{label}.user_id: required when inbound is \"poll\", \"both\" or \"stream\" (the account's X user id)"
        )),
        _ => {}
    }
}

/// A channel's X client signs its requests with the channel's account.
impl From<&ChannelSettings> for UserCredentials {
    fn from(channel: &ChannelSettings) -> UserCredentials {
        UserCredentials {
            consumer_key: channel.consumer_key.clone(),
            consumer_secret: channel.consumer_secret.clone(),
            access_token: channel.access_token.clone(),
            access_token_secret: channel.access_token_secret.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, VALID};

    #[test]
    fn duplicate_channel_names_are_refused() {
        let toml = format!("{VALID}\n{}", &VALID[VALID.find("[[channels]]").unwrap()..]);
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(err.contains("\"acme\" is used twice"), "{err}");
    }

    #[test]
    fn channels_of_one_app_share_its_secret_and_are_distinct_accounts() {
        let second = VALID[VALID.find("[[channels]]").unwrap()..].replace("acme", "beta");
        let shared = format!("{VALID}\nuser_id = \"1\"\n{second}\nuser_id = \"2\"");
        assert_eq!(Settings::from_toml(&shared).unwrap().channels.len(), 2);

        let other_secret = second.replace("\"cs\"", "\"cs2\"");
        let err = Settings::from_toml(&format!("{VALID}\n{other_secret}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("channel beta: consumer_secret differs from channel acme's"),
            "{err}"
        );
        assert!(!err.contains("cs2"), "{err}");

        let twice = format!("{VALID}\nuser_id = \"1\"\n{second}\nuser_id = \"1\"");
        let err = Settings::from_toml(&twice).unwrap_err().to_string();
        assert!(
            err.contains("channel beta: user_id is channel acme's too"),
            "{err}"
        );

        // Another App may hold the same account.
        let other_app = second
            .replace("\"ck\"", "\"ck2\"")
            .replace("\"cs\"", "\"cs2\"");
        let toml = format!("{VALID}\nuser_id = \"1\"\n{other_app}\nuser_id = \"1\"");
        assert!(Settings::from_toml(&toml).is_ok());
    }

    #[test]
    fn polling_needs_the_accounts_user_id() {
        let toml = format!("{VALID}\ninbound = \"poll\"");
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        assert!(
            err.contains("channels[0] (acme).user_id: required"),
            "{err}"
        );
        let toml = format!("{VALID}\ninbound = \"both\"\nuser_id = \"1553086854915936256\"");
        let settings = Settings::from_toml(&toml).unwrap();
        assert!(settings.channels[0].inbound.polls());
        assert_eq!(
            settings.inbound.listen, None,
            "no webhook unless configured"
        );
        let toml = format!("{VALID}\nuser_id = \"12ab\"");
        assert!(Settings::from_toml(&toml).is_err());
    }

    #[test]
    fn channel_names_must_fit_routing_keys() {
        assert!(is_valid_channel_name("acme-support_2"));
        assert!(!is_valid_channel_name("acme.support"));
        assert!(!is_valid_channel_name(""));
        assert!(!is_valid_channel_name("-acme"));
        assert!(!is_valid_channel_name(&"a".repeat(64)));
    }
}

#[cfg(test)]
mod webhook_api_tests {
    use super::*;
    use crate::config::Settings;

    fn channel(extra: &str) -> String {
        format!(
            r#"
            [[channels]]
            name = "acme"
            consumer_key = "ck"
            consumer_secret = "cs"
            access_token = "at"
            access_token_secret = "ats"
            bearer_token = "bt"
            {extra}
            "#
        )
    }

    #[test]
    fn a_channel_uses_aaa_unless_it_chooses_xaa_whose_events_follow_inbound_by_default() {
        let aaa = &Settings::from_toml(&channel("")).unwrap().channels[0];
        assert_eq!(aaa.webhook_api, WebhookApi::Aaa);
        let settings = Settings::from_toml(&channel(r#"webhook_api = "xaa""#)).unwrap();
        let xaa = &settings.channels[0];
        assert_eq!(xaa.webhook_api, WebhookApi::Xaa);
        assert_eq!(xaa.xaa_event_types(false, false), [XaaEvent::Received]);
        assert_eq!(
            xaa.xaa_event_types(true, true),
            XaaEvent::ALL,
            "echoes bring dm.sent, activity dm.read and dm.indicate_typing"
        );
        let chosen = channel(
            r#"webhook_api = "xaa"
            xaa_events = ["dm.indicate_typing"]"#,
        );
        let chosen = &Settings::from_toml(&chosen).unwrap().channels[0];
        assert_eq!(
            chosen.xaa_event_types(true, false),
            [XaaEvent::Received, XaaEvent::IndicateTyping],
            "the channel's choice wins over [inbound]"
        );
    }

    #[test]
    fn xaa_events_without_xaa_and_unknown_values_are_refused() {
        let error = Settings::from_toml(&channel(r#"xaa_events = ["dm.sent"]"#))
            .unwrap_err()
            .to_string();
        assert!(
            error
                .contains("channels[0] (acme).xaa_events: only applies with webhook_api = \"xaa\""),
            "{error}"
        );
        assert!(Settings::from_toml(&channel(r#"webhook_api = "xaaa""#)).is_err());
        assert!(Settings::from_toml(&channel(
            r#"webhook_api = "xaa"
            xaa_events = ["dm.all"]"#
        ))
        .is_err());
    }
}

#[cfg(test)]
mod oauth2_tests {
    use super::*;
    use crate::config::Settings;

    fn channel(credentials: &str) -> String {
        format!(
            r#"
            [[channels]]
            name = "acme"
            consumer_key = "ck"
            consumer_secret = "cs"
            bearer_token = "bt"
            {credentials}
            "#
        )
    }

    #[test]
    fn a_channel_carries_an_oauth2_client_instead_of_the_access_token_pair() {
        let toml = channel(
            r#"oauth2_client_id = "Y2xpZW50LWlk"
            oauth2_client_secret = "o2cs-secret"
            oauth2_refresh_token = "o2rt-secret""#,
        );
        let settings = Settings::from_toml(&toml).unwrap();
        let oauth2 = settings.channels[0].oauth2.as_ref().unwrap();
        assert_eq!(oauth2.client_id, "Y2xpZW50LWlk");
        assert_eq!(
            oauth2.refresh_token.as_ref().unwrap().expose_secret(),
            "o2rt-secret"
        );
        assert!(!format!("{:?}", settings.channels[0]).contains("o2rt-secret"));
        let public = Settings::from_toml(&channel(r#"oauth2_client_id = "Y2xpZW50LWlk""#)).unwrap();
        let oauth2 = public.channels[0].oauth2.as_ref().unwrap();
        assert!(oauth2.client_secret.is_none() && oauth2.refresh_token.is_none());
        let oauth1 = Settings::from_toml(&channel(
            r#"access_token = "at"
            access_token_secret = "ats""#,
        ))
        .unwrap();
        assert!(oauth1.channels[0].oauth2.is_none());
    }

    /// Every subscription takes the account's OAuth 2.0 token (XAA's, the stream's and,
    /// since X added OAuth 2.0 to AAA v2, AAA's), so an OAuth 2.0 channel may stream, or
    /// take the webhook through either API, like any other.
    #[test]
    fn an_oauth2_channel_can_stream_or_take_the_webhook_through_aaa() {
        for (name, mode) in [
            ("stream", InboundMode::Stream),
            ("webhook", InboundMode::Webhook),
        ] {
            let settings = Settings::from_toml(&channel(&format!(
                "oauth2_client_id = \"Y2xpZW50LWlk\"\ninbound = \"{name}\"\nuser_id = \"42\""
            )))
            .unwrap();
            assert!(settings.channels[0].oauth2.is_some(), "{name}");
            assert_eq!(settings.channels[0].inbound, mode);
        }
    }

    #[test]
    fn mixed_or_stray_oauth2_fields_are_refused_by_name_never_by_value() {
        for (credentials, says) in [
            (
                r#"oauth2_client_id = "cid"
                access_token = "at-secret""#,
                "channels[0] (acme).access_token: not used with oauth2_client_id",
            ),
            (
                r#"access_token = "at"
                access_token_secret = "ats"
                oauth2_refresh_token = "o2rt-secret""#,
                "channels[0] (acme).oauth2_refresh_token: only applies with oauth2_client_id",
            ),
            (
                r#"oauth2_client_id = "c id""#,
                "channels[0] (acme).oauth2_client_id: must be printable ASCII",
            ),
            ("", "channels[0] (acme).access_token: missing"),
        ] {
            let error = Settings::from_toml(&channel(credentials))
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{error}");
            assert!(
                !error.contains("o2rt-secret") && !error.contains("at-secret"),
                "{error}"
            );
        }
    }
}
