//! A CRM channel as the registry stores it and as the bridge serves it: the settings
//! that are not secret as JSON text, the five credentials sealed under
//! `state.credentials_key`, and back.

use std::sync::Arc;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;
use xbridge_core::config::{ChannelSettings, InboundMode, OAuth2Channel, WebhookApi, XaaEvent};
use xbridge_core::live_channels::{LiveChannel, Origin};
use xbridge_store::{ChannelOrigin, ChannelRecord, CredentialsKey, SealError, SealedCredentials};

/// The settings of a record that are not secret, as stored (`ChannelRecord::settings`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSettings {
    weight: Option<u32>,
    url: Option<Url>,
    inbound: StoredInbound,
    user_id: Option<String>,
    /// Absent in records written before X Activity API support: `aaa`, as before.
    #[serde(default)]
    webhook_api: StoredWebhookApi,
    /// Absent in those records too: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    xaa_events: Option<Vec<String>>,
    /// The `channel.upsert` that made this revision: a redelivered command finds
    /// itself here and answers again without a new revision.
    command_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredInbound {
    Webhook,
    Poll,
    Both,
    Stream,
}

impl From<InboundMode> for StoredInbound {
    fn from(mode: InboundMode) -> Self {
        match mode {
            InboundMode::Webhook => StoredInbound::Webhook,
            InboundMode::Poll => StoredInbound::Poll,
            InboundMode::Both => StoredInbound::Both,
            InboundMode::Stream => StoredInbound::Stream,
        }
    }
}

impl From<StoredInbound> for InboundMode {
    fn from(mode: StoredInbound) -> Self {
        match mode {
            StoredInbound::Webhook => InboundMode::Webhook,
            StoredInbound::Poll => InboundMode::Poll,
            StoredInbound::Both => InboundMode::Both,
            StoredInbound::Stream => InboundMode::Stream,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredWebhookApi {
    #[default]
    Aaa,
    Xaa,
}

impl From<WebhookApi> for StoredWebhookApi {
    fn from(api: WebhookApi) -> Self {
        match api {
            WebhookApi::Aaa => StoredWebhookApi::Aaa,
            WebhookApi::Xaa => StoredWebhookApi::Xaa,
        }
    }
}

impl From<StoredWebhookApi> for WebhookApi {
    fn from(api: StoredWebhookApi) -> Self {
        match api {
            StoredWebhookApi::Aaa => WebhookApi::Aaa,
            StoredWebhookApi::Xaa => WebhookApi::Xaa,
        }
    }
}

/// Stored event names back as events; a name this version does not know fails the
/// decode rather than silently subscribing less.
fn stored_events(names: Option<Vec<String>>) -> Result<Option<Vec<XaaEvent>>, ()> {
    names
        .map(|names| {
            names
                .iter()
                .map(|name| XaaEvent::from_name(name).ok_or(()))
                .collect()
        })
        .transpose()
}

/// The five credentials, sealed together as one JSON object; an OAuth 2.0 channel's
/// client and initial refresh token with them (absent from records written before
/// OAuth 2.0 channels, which therefore read as OAuth 1.0a channels; its access token
/// pair is then empty).
#[derive(Serialize, Deserialize)]
struct StoredCredentials {
    consumer_key: String,
    consumer_secret: String,
    access_token: String,
    access_token_secret: String,
    bearer_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth2_client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth2_client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth2_refresh_token: Option<String>,
}

/// Why a stored record cannot be served. Never quotes a credential.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The credentials do not open (another key, an altered blob).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The settings or the opened credentials are not what this version writes.
    #[error("channel {channel}: the stored {what} do not decode")]
    Decode {
        /// The channel.
        channel: String,
        /// `settings` or `credentials`.
        what: &'static str,
    },
}

/// The record of `settings` at `revision`, made by `command_id`, its credentials
/// sealed with `key`.
pub fn to_record(
    key: &CredentialsKey,
    settings: &ChannelSettings,
    paused: bool,
    revision: u64,
    command_id: Option<&str>,
) -> Result<ChannelRecord, SealError> {
    let stored = StoredSettings {
        weight: settings.weight,
        url: settings.url.clone(),
        inbound: settings.inbound.into(),
        user_id: settings.user_id.clone(),
        webhook_api: settings.webhook_api.into(),
        xaa_events: settings
            .xaa_events
            .as_ref()
            .map(|events| events.iter().map(|e| e.as_str().to_owned()).collect()),
        command_id: command_id.map(str::to_owned),
    };
    let credentials = StoredCredentials {
        consumer_key: settings.consumer_key.expose_secret().to_owned(),
        consumer_secret: settings.consumer_secret.expose_secret().to_owned(),
        access_token: settings.access_token.expose_secret().to_owned(),
        access_token_secret: settings.access_token_secret.expose_secret().to_owned(),
        bearer_token: settings.bearer_token.expose_secret().to_owned(),
        oauth2_client_id: settings.oauth2.as_ref().map(|o| o.client_id.clone()),
        oauth2_client_secret: settings
            .oauth2
            .as_ref()
            .and_then(|o| o.client_secret.as_ref())
            .map(|s| s.expose_secret().to_owned()),
        oauth2_refresh_token: settings
            .oauth2
            .as_ref()
            .and_then(|o| o.refresh_token.as_ref())
            .map(|s| s.expose_secret().to_owned()),
    };
    let clear = SecretString::from(serde_json::to_string(&credentials).expect("strings serialize"));
    Ok(ChannelRecord {
        name: settings.name.clone(),
        origin: ChannelOrigin::Crm,
        settings: serde_json::to_string(&stored).expect("settings serialize"),
        credentials: key.seal(&settings.name, &clear)?,
        revision,
        paused,
        updated_at: Utc::now(),
    })
}

/// The `channel.upsert` that made `record`, if the record says.
pub fn command_id(record: &ChannelRecord) -> Option<String> {
    serde_json::from_str::<StoredSettings>(&record.settings)
        .ok()
        .and_then(|s| s.command_id)
}

/// `record` with another pause and revision, its sealed credentials as they are.
pub fn with_pause(record: &ChannelRecord, paused: bool, revision: u64) -> ChannelRecord {
    ChannelRecord {
        paused,
        revision,
        updated_at: Utc::now(),
        credentials: SealedCredentials::clone(&record.credentials),
        ..record.clone()
    }
}

/// The channel `record` stands for, its credentials opened with `key`.
pub fn to_live(key: &CredentialsKey, record: &ChannelRecord) -> Result<LiveChannel, RecordError> {
    let decode = |what| RecordError::Decode {
        channel: record.name.clone(),
        what,
    };
    let stored: StoredSettings =
        serde_json::from_str(&record.settings).map_err(|_| decode("settings"))?;
    let xaa_events = stored_events(stored.xaa_events).map_err(|()| decode("settings"))?;
    let clear = key.open(&record.name, &record.credentials)?;
    let credentials: StoredCredentials =
        serde_json::from_str(clear.expose_secret()).map_err(|_| decode("credentials"))?;
    let oauth2 = credentials.oauth2_client_id.map(|client_id| OAuth2Channel {
        client_id,
        client_secret: credentials.oauth2_client_secret.map(SecretString::from),
        refresh_token: credentials.oauth2_refresh_token.map(SecretString::from),
    });
    let settings = ChannelSettings {
        name: record.name.clone(),
        consumer_key: credentials.consumer_key.into(),
        consumer_secret: credentials.consumer_secret.into(),
        access_token: credentials.access_token.into(),
        access_token_secret: credentials.access_token_secret.into(),
        bearer_token: credentials.bearer_token.into(),
        weight: stored.weight,
        url: stored.url,
        inbound: stored.inbound.into(),
        user_id: stored.user_id,
        webhook_api: stored.webhook_api.into(),
        xaa_events,
        oauth2,
    };
    Ok(LiveChannel {
        settings: Arc::new(settings),
        origin: Origin::Crm,
        paused: record.paused,
        revision: record.revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ChannelSettings {
        ChannelSettings {
            name: "acme".into(),
            consumer_key: "ck-secret-1".into(),
            consumer_secret: "cs-secret-2".into(),
            access_token: "at-secret-3".into(),
            access_token_secret: "ats-secret-4".into(),
            bearer_token: "bt-secret-5".into(),
            weight: Some(3),
            url: Some(Url::parse("https://x.com/acme").unwrap()),
            inbound: InboundMode::Poll,
            user_id: Some("42".into()),
            webhook_api: WebhookApi::Xaa,
            xaa_events: Some(vec![XaaEvent::Read]),
            oauth2: None,
        }
    }

    #[test]
    fn a_record_keeps_no_credential_in_the_clear_and_opens_to_the_same_channel() {
        let key = CredentialsKey::derive(&SecretString::from("ab".repeat(32))).unwrap();
        let record = to_record(&key, &settings(), true, 7, Some("cmd-1")).unwrap();
        for secret in [
            "ck-secret-1",
            "cs-secret-2",
            "at-secret-3",
            "ats-secret-4",
            "bt-secret-5",
        ] {
            assert!(!record.settings.contains(secret));
            let blob = record.credentials.as_bytes();
            assert!(!blob.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
        assert_eq!(command_id(&record).as_deref(), Some("cmd-1"));
        let live = to_live(&key, &record).unwrap();
        assert_eq!(live.settings.access_token.expose_secret(), "at-secret-3");
        assert_eq!(live.settings.inbound, InboundMode::Poll);
        assert_eq!(
            (live.paused, live.revision, live.origin),
            (true, 7, Origin::Crm)
        );
        assert_eq!(live.settings.user_id.as_deref(), Some("42"));
        assert_eq!(live.settings.webhook_api, WebhookApi::Xaa);
        assert_eq!(live.settings.xaa_events, Some(vec![XaaEvent::Read]));
    }

    #[test]
    fn a_record_written_before_xaa_reads_as_aaa() {
        let key = CredentialsKey::derive(&SecretString::from("ab".repeat(32))).unwrap();
        let mut record = to_record(&key, &settings(), false, 1, None).unwrap();
        record.settings =
            r#"{"weight":3,"url":null,"inbound":"webhook","user_id":"42","command_id":"c"}"#
                .to_owned();
        let live = to_live(&key, &record).unwrap();
        assert_eq!(live.settings.webhook_api, WebhookApi::Aaa);
        assert_eq!(live.settings.xaa_events, None);
    }

    #[test]
    fn an_oauth2_channel_keeps_its_client_sealed_and_opens_to_it() {
        let key = CredentialsKey::derive(&SecretString::from("ab".repeat(32))).unwrap();
        let mut oauth2 = settings();
        oauth2.access_token = "".into();
        oauth2.access_token_secret = "".into();
        oauth2.oauth2 = Some(OAuth2Channel {
            client_id: "client-id-6".into(),
            client_secret: Some("o2cs-secret-7".into()),
            refresh_token: Some("o2rt-secret-8".into()),
        });
        let record = to_record(&key, &oauth2, false, 2, None).unwrap();
        for secret in ["client-id-6", "o2cs-secret-7", "o2rt-secret-8"] {
            assert!(!record.settings.contains(secret));
            let blob = record.credentials.as_bytes();
            assert!(!blob.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
        let live = to_live(&key, &record).unwrap();
        let opened = live.settings.oauth2.as_ref().expect("still OAuth 2.0");
        assert_eq!(opened.client_id, "client-id-6");
        assert_eq!(
            opened.refresh_token.as_ref().map(|s| s.expose_secret()),
            Some("o2rt-secret-8")
        );
        // A record written before OAuth 2.0 channels opens as an OAuth 1.0a channel.
        let old = to_record(&key, &settings(), false, 1, None).unwrap();
        assert!(to_live(&key, &old).unwrap().settings.oauth2.is_none());
    }
}
