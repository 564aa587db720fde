//! A command from the CRM (`docs/schemas/channel-upsert.json`,
//! `docs/schemas/channel-command.json`), read from the control exchange and validated
//! whole, so a refused command is never half-applied.
//!
//! The policy is the replies': strict on every field the bridge reads, lenient on
//! unknown extra fields (ignored, so the CRM can add fields without breaking the
//! bridge). Credentials are read into [`SecretString`]s at once and no refusal quotes
//! one: a refusal names the field and what is wrong with it, never its value.

use secrecy::SecretString;
use serde_json::{Map, Value};
use url::Url;

use super::refusal::{CommandRefused, RefusalReason};
use super::MAX_COMMAND_ID_BYTES;
use crate::config::{
    is_valid_channel_name, oauth2_client_id_problem, xaa_events_problem, ChannelSettings,
    InboundMode, OAuth2Channel, WebhookApi, XaaEvent,
};
use crate::contract::json_kind::kind;
use crate::contract::reply::is_user_id;
use crate::excerpt::quoted;

/// The exchange the CRM publishes commands to (topic, durable; routing key = the
/// command's name).
pub const CONTROL_EXCHANGE: &str = "xbridge.control";
/// Upper bound on a command body: five credentials and a few settings fit in far less;
/// a larger body is refused unparsed.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Upper bound on one credential: X's keys and tokens are well under 200 bytes.
pub const MAX_SECRET_BYTES: usize = 1024;
/// Upper bound on the channel form's URL, in characters as the schema's `maxLength`
/// counts them.
pub const MAX_CHANNEL_URL_CHARS: usize = 2048;

/// The five credentials of `channel.upsert`, in the order of the CRM's form.
const CREDENTIALS: [&str; 5] = [
    "consumer_key",
    "consumer_secret",
    "access_token",
    "access_token_secret",
    "bearer_token",
];

/// A command, validated.
#[derive(Debug, Clone)]
pub struct ControlCommand {
    /// The CRM's id for the command, echoed in its answer.
    pub command_id: String,
    /// What to do.
    pub command: ChannelCommand,
}

/// What a command asks for, with the channel it names.
#[derive(Debug, Clone)]
pub enum ChannelCommand {
    /// `channel.upsert`: create the channel, or replace all its settings and
    /// credentials (every credential is given each time: nothing is merged with the
    /// stored ones, so the command alone says what the channel becomes).
    Upsert(Box<ChannelSettings>),
    /// `channel.remove`: stop serving the channel.
    Remove(String),
    /// `channel.check`: check the credentials against X again and answer the state.
    Check(String),
    /// `channel.pause`: hold its replies; DMs keep coming in.
    Pause(String),
    /// `channel.resume`: send its replies again.
    Resume(String),
}

impl ChannelCommand {
    /// The command's wire name, also its routing key on the control exchange.
    pub fn name(&self) -> &'static str {
        match self {
            ChannelCommand::Upsert(_) => "channel.upsert",
            ChannelCommand::Remove(_) => "channel.remove",
            ChannelCommand::Check(_) => "channel.check",
            ChannelCommand::Pause(_) => "channel.pause",
            ChannelCommand::Resume(_) => "channel.resume",
        }
    }

    /// The channel the command is about.
    pub fn channel(&self) -> &str {
        match self {
            ChannelCommand::Upsert(settings) => &settings.name,
            ChannelCommand::Remove(c)
            | ChannelCommand::Check(c)
            | ChannelCommand::Pause(c)
            | ChannelCommand::Resume(c) => c,
        }
    }
}

impl ControlCommand {
    /// Every command name of the contract.
    pub const NAMES: [&'static str; 5] = [
        "channel.upsert",
        "channel.remove",
        "channel.check",
        "channel.pause",
        "channel.resume",
    ];

    /// Parses and validates a command delivered with `routing_key` on the control
    /// exchange: a body larger than [`MAX_COMMAND_BYTES`] is refused unparsed; then its
    /// id (so every later refusal names it), its name, which must be the routing key (the
    /// broker's topic permissions bind what the bridge runs), its channel and its fields.
    pub fn parse(body: &[u8], routing_key: &str) -> Result<ControlCommand, CommandRefused> {
        if body.len() > MAX_COMMAND_BYTES {
            return Err(CommandRefused::unread(
                RefusalReason::TooLarge,
                format!(
                    "the command is {} bytes; the bridge takes at most {MAX_COMMAND_BYTES}",
                    body.len()
                ),
            ));
        }
        ControlCommand::parse_body(body, routing_key)
    }

    /// [`ControlCommand::parse`] after the size check.
    fn parse_body(body: &[u8], routing_key: &str) -> Result<ControlCommand, CommandRefused> {
        let object = json_object(body)?;
        let command_id = command_id(&object)?;
        let mut refused = CommandRefused {
            command_id: Some(command_id.clone()),
            ..CommandRefused::unread(RefusalReason::UnknownCommand, String::new())
        };
        let name = command_name(&object).map_err(|detail| CommandRefused {
            detail,
            ..refused.clone()
        })?;
        refused.command = Some(name.to_owned());
        refused.reason = RefusalReason::InvalidField;
        let fail = |detail: String| CommandRefused {
            detail,
            ..refused.clone()
        };
        same_as_routing_key(name, routing_key).map_err(fail)?;
        let channel = channel(&object).map_err(fail)?;
        refused.channel = Some(channel.clone());
        let fail = |detail: String| CommandRefused {
            detail,
            ..refused.clone()
        };
        let command = match name {
            "channel.upsert" => {
                ChannelCommand::Upsert(Box::new(settings(&object, channel).map_err(fail)?))
            }
            "channel.remove" => ChannelCommand::Remove(channel),
            "channel.check" => ChannelCommand::Check(channel),
            "channel.pause" => ChannelCommand::Pause(channel),
            _ => ChannelCommand::Resume(channel),
        };
        Ok(ControlCommand {
            command_id,
            command,
        })
    }
}

/// The body as a JSON object; nothing of it can be read before this.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, CommandRefused> {
    let malformed = |detail: String| CommandRefused::unread(RefusalReason::Malformed, detail);
    let text = std::str::from_utf8(body).map_err(|e| {
        malformed(format!(
            "body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    // serde_json's syntax errors give a position, never the text around it.
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(malformed("body must be a JSON object".into())),
        Err(e) => Err(malformed(format!("body is not valid JSON: {e}"))),
    }
}

/// `command_id`: required, so every answer can be correlated; printable ASCII without
/// spaces, 1 to [`MAX_COMMAND_ID_BYTES`], as the schemas' pattern says (it goes into the
/// answer's AMQP `message_id` and `correlation_id`).
fn command_id(object: &Map<String, Value>) -> Result<String, CommandRefused> {
    let invalid = |detail: String| CommandRefused::unread(RefusalReason::InvalidField, detail);
    match object.get("command_id") {
        Some(Value::String(id)) if id.is_empty() => {
            Err(invalid("command_id must not be empty".into()))
        }
        Some(Value::String(id)) if !id.bytes().all(|b| b.is_ascii_graphic()) => Err(invalid(
            "command_id must be printable ASCII without spaces or control characters".into(),
        )),
        Some(Value::String(id)) if id.len() > MAX_COMMAND_ID_BYTES => Err(invalid(format!(
            "command_id must be at most {MAX_COMMAND_ID_BYTES} characters"
        ))),
        Some(Value::String(id)) => Ok(id.clone()),
        Some(other) => Err(invalid(format!(
            "command_id must be a string, not {}",
            kind(other)
        ))),
        None => Err(invalid("command_id is missing".into())),
    }
}

/// `command`: one of [`ControlCommand::NAMES`].
fn command_name(object: &Map<String, Value>) -> Result<&'static str, String> {
    match object.get("command") {
        Some(Value::String(name)) => ControlCommand::NAMES
            .into_iter()
            .find(|known| known == name)
            .ok_or_else(|| {
                format!(
                    "command {} is not one of {}",
                    quoted(name),
                    ControlCommand::NAMES.join(", ")
                )
            }),
        Some(other) => Err(format!("command must be a string, not {}", kind(other))),
        None => Err("command is missing".into()),
    }
}

/// The command must be the routing key it was published with, so the broker's topic
/// permissions on `xbridge.control` bind what the bridge runs.
fn same_as_routing_key(name: &str, routing_key: &str) -> Result<(), String> {
    if name == routing_key {
        return Ok(());
    }
    Err(format!(
        "command {name} was published with routing key {}; they must be the same",
        quoted(routing_key)
    ))
}

/// `channel`: the channel's name, by the config file's rule (it is a routing key word
/// and part of queue names).
fn channel(object: &Map<String, Value>) -> Result<String, String> {
    match object.get("channel") {
        Some(Value::String(name)) if is_valid_channel_name(name) => Ok(name.clone()),
        Some(Value::String(name)) => Err(format!(
            "channel {} must be 1 to 63 of a-z, 0-9, _ and -, starting with a letter or digit",
            quoted(name)
        )),
        Some(other) => Err(format!("channel must be a string, not {}", kind(other))),
        None => Err("channel is missing".into()),
    }
}

/// The settings of `channel.upsert`, as a `[[channels]]` entry of the config file
/// would give them, checked by the same rules.
fn settings(object: &Map<String, Value>, name: String) -> Result<ChannelSettings, String> {
    let oauth2 = oauth2(object)?;
    let [consumer_key, consumer_secret, access_token, access_token_secret, bearer_token] =
        CREDENTIALS.map(|field| match (&oauth2, field) {
            (Some(_), "access_token" | "access_token_secret") => {
                match object.get(field) {
                    None | Some(Value::Null) => Ok(SecretString::from("")),
                    Some(_) => Err(format!(
                        "{field} is not used with oauth2_client_id (an OAuth 2.0 channel has no OAuth 1.0a access token)"
                    )),
                }
            }
            _ => secret(object, field),
        });
    let inbound = inbound(object)?;
    let user_id = user_id(object, inbound)?;
    let webhook_api = webhook_api(object)?;
    let xaa_events = xaa_events(object)?;
    if let Some(problem) = xaa_events_problem(webhook_api, xaa_events.as_deref()) {
        return Err(format!("xaa_events {problem}"));
    }
    Ok(ChannelSettings {
        name,
        consumer_key: consumer_key?,
        consumer_secret: consumer_secret?,
        access_token: access_token?,
        access_token_secret: access_token_secret?,
        bearer_token: bearer_token?,
        weight: weight(object)?,
        url: channel_url(object)?,
        inbound,
        user_id,
        webhook_api,
        xaa_events,
        oauth2,
    })
}

/// The OAuth 2.0 fields of `channel.upsert`, by the config file's rules: with
/// `oauth2_client_id` the channel uses OAuth 2.0 (`oauth2_client_secret` and
/// `oauth2_refresh_token` optional); without it the other two are refused.
fn oauth2(object: &Map<String, Value>) -> Result<Option<OAuth2Channel>, String> {
    let given = |field: &str| !matches!(object.get(field), None | Some(Value::Null));
    let optional_secret = |field: &str| -> Result<Option<SecretString>, String> {
        if given(field) {
            secret(object, field).map(Some)
        } else {
            Ok(None)
        }
    };
    let client_id = match object.get("oauth2_client_id") {
        None | Some(Value::Null) => {
            for field in ["oauth2_client_secret", "oauth2_refresh_token"] {
                if given(field) {
                    return Err(format!("{field} only applies with oauth2_client_id"));
                }
            }
            return Ok(None);
        }
        Some(Value::String(id)) => match oauth2_client_id_problem(id) {
            Some(problem) => return Err(format!("oauth2_client_id {problem}")),
            None => id.clone(),
        },
        Some(other) => {
            return Err(format!(
                "oauth2_client_id must be a string, not {}",
                kind(other)
            ))
        }
    };
    Ok(Some(OAuth2Channel {
        client_id,
        client_secret: optional_secret("oauth2_client_secret")?,
        refresh_token: optional_secret("oauth2_refresh_token")?,
    }))
}

/// A credential. Its value is never quoted: only its field, type and length are.
fn secret(object: &Map<String, Value>, field: &str) -> Result<SecretString, String> {
    match object.get(field) {
        Some(Value::String(value)) if value.is_empty() => Err(format!("{field} must not be empty")),
        Some(Value::String(value)) if value.len() > MAX_SECRET_BYTES => Err(format!(
            "{field} is {} bytes; a credential is at most {MAX_SECRET_BYTES}",
            value.len()
        )),
        Some(Value::String(value)) if !value.bytes().all(|b| b.is_ascii_graphic()) => Err(format!(
            "{field} must be printable ASCII without spaces, as X's keys and tokens are"
        )),
        Some(Value::String(value)) => Ok(SecretString::from(value.clone())),
        Some(other) => Err(format!("{field} must be a string, not {}", kind(other))),
        None => Err(format!("{field} is missing")),
    }
}

/// `weight`: optional, at least 1, as in the config file. An integral float such as
/// `10.0` is a whole number, as JSON Schema's `integer` says.
fn weight(object: &Map<String, Value>) -> Result<Option<u32>, String> {
    match object.get("weight") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match whole(n).map(u32::try_from) {
            Some(Ok(weight)) if weight >= 1 => Ok(Some(weight)),
            _ => Err(format!(
                "weight must be a whole number from 1 to {}, not {n}",
                u32::MAX
            )),
        },
        Some(other) => Err(format!("weight must be a number, not {}", kind(other))),
    }
}

/// A JSON number as a non-negative whole number, whether written `10` or `10.0`.
fn whole(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        // u64::MAX as f64 rounds up to 2^64, so the bound is exclusive.
        (f.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&f)).then_some(f as u64)
    })
}

/// `url`: optional, the channel form's URL: absolute, exactly as written (no
/// surrounding spaces, no tab or newline, which a URL parser would silently drop) and
/// without a user name or password (the bridge keeps no secret outside the credentials).
fn channel_url(object: &Map<String, Value>) -> Result<Option<Url>, String> {
    let url = match object.get("url") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(url)) => url,
        Some(other) => return Err(format!("url must be a string, not {}", kind(other))),
    };
    let chars = url.chars().count();
    if chars > MAX_CHANNEL_URL_CHARS {
        return Err(format!(
            "url is {chars} characters; at most {MAX_CHANNEL_URL_CHARS}"
        ));
    }
    if url.trim() != url || url.contains(['\t', '\n', '\r']) {
        return Err("url must not have surrounding spaces, tabs or newlines".into());
    }
    // The URL's own parse error names the problem without the URL, which may hold
    // a password.
    let parsed = Url::parse(url).map_err(|e| format!("url is not a URL: {e}"))?;
    if has_userinfo(url) || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not carry a user name or password".into());
    }
    Ok(Some(parsed))
}

/// Whether the URL as written has an `@` in its authority (`https://user:pw@host`, also
/// `https://@host`, which a parser reads as no user at all): the schema's pattern.
fn has_userinfo(url: &str) -> bool {
    url.split_once("://").is_some_and(|(_, rest)| {
        rest.split(['/', '?', '#'])
            .next()
            .is_some_and(|authority| authority.contains('@'))
    })
}

/// `inbound`: optional, `webhook` unless given, as in the config file.
fn inbound(object: &Map<String, Value>) -> Result<InboundMode, String> {
    match object.get("inbound") {
        None | Some(Value::Null) => Ok(InboundMode::default()),
        Some(Value::String(mode)) => {
            serde_json::from_value(Value::String(mode.clone())).map_err(|_| {
                format!(
                    "inbound {} is not one of webhook, poll, both, stream",
                    quoted(mode)
                )
            })
        }
        Some(other) => Err(format!("inbound must be a string, not {}", kind(other))),
    }
}

/// `webhook_api`: optional, `aaa` unless given, as in the config file.
fn webhook_api(object: &Map<String, Value>) -> Result<WebhookApi, String> {
    match object.get("webhook_api") {
        None | Some(Value::Null) => Ok(WebhookApi::default()),
        Some(Value::String(name)) => WebhookApi::from_name(name)
            .ok_or_else(|| format!("webhook_api {} is not one of aaa, xaa", quoted(name))),
        Some(other) => Err(format!("webhook_api must be a string, not {}", kind(other))),
    }
}

/// `xaa_events`: optional, X Activity DM event types (each at most once); unset, the
/// bridge's `[inbound]` settings choose.
fn xaa_events(object: &Map<String, Value>) -> Result<Option<Vec<XaaEvent>>, String> {
    let items = match object.get("xaa_events") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("xaa_events must be an array, not {}", kind(other))),
    };
    let names = XaaEvent::ALL.map(XaaEvent::as_str).join(", ");
    let mut events = Vec::new();
    for item in items {
        let event = match item {
            Value::String(name) => XaaEvent::from_name(name)
                .ok_or_else(|| format!("xaa_events: {} is not one of {names}", quoted(name)))?,
            other => return Err(format!("xaa_events must hold strings, not {}", kind(other))),
        };
        if events.contains(&event) {
            return Err(format!("xaa_events names {} twice", event.as_str()));
        }
        events.push(event);
    }
    Ok(Some(events))
}

/// `user_id`: the account's X id; required when the channel polls, as in the config
/// file (polling tells the account's own DMs from the customers' by it).
fn user_id(object: &Map<String, Value>, inbound: InboundMode) -> Result<Option<String>, String> {
    match object.get("user_id") {
        None | Some(Value::Null) if inbound.polls() => {
            Err("user_id is required when inbound is poll or both (the account's X user id)".into())
        }
        None | Some(Value::Null) if inbound.streams() => Err(
            "user_id is required when inbound is stream (the stream's events are routed by it)"
                .into(),
        ),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if is_user_id(id) => Ok(Some(id.clone())),
        Some(Value::String(id)) => Err(format!(
            "user_id {} is not an X user id (1 to 19 digits)",
            quoted(id)
        )),
        Some(other) => Err(format!(
            "user_id must be a string of digits, not {}",
            kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;
    use serde_json::json;

    use super::*;

    fn upsert() -> Value {
        json!({
            "command": "channel.upsert", "command_id": "c-1", "channel": "acme",
            "consumer_key": "ck-1234", "consumer_secret": "cs-5678",
            "access_token": "at-abcd", "access_token_secret": "ats-efgh",
            "bearer_token": "bt-ijkl", "weight": 3, "url": "https://x.com/acme",
            "inbound": "both", "user_id": "1553086854915936256", "extra": true
        })
    }

    /// Parses `body` as delivered with its own `command` as the routing key.
    fn parse(body: &Value) -> Result<ControlCommand, CommandRefused> {
        let routing_key = body["command"].as_str().unwrap_or("channel.upsert");
        ControlCommand::parse(body.to_string().as_bytes(), routing_key)
    }

    fn refusal(body: &Value) -> CommandRefused {
        parse(body).unwrap_err()
    }

    fn with(field: &str, value: Value) -> Value {
        let mut body = upsert();
        body[field] = value;
        body
    }

    #[test]
    fn an_upsert_gives_the_channels_settings() {
        let command = parse(&upsert()).unwrap();
        assert_eq!(command.command_id, "c-1");
        assert_eq!(command.command.name(), "channel.upsert");
        let ChannelCommand::Upsert(settings) = command.command else {
            panic!("not an upsert")
        };
        assert_eq!(settings.name, "acme");
        assert_eq!(settings.access_token.expose_secret(), "at-abcd");
        assert_eq!(settings.bearer_token.expose_secret(), "bt-ijkl");
        assert_eq!(settings.weight, Some(3));
        assert_eq!(settings.inbound, InboundMode::Both);
        assert_eq!(settings.webhook_api, WebhookApi::Aaa, "aaa unless given");
        assert_eq!(settings.xaa_events, None);
        assert_eq!(settings.user_id.as_deref(), Some("1553086854915936256"));
        assert!(
            !format!("{settings:?}").contains("at-abcd"),
            "Debug shows no credential"
        );
    }

    #[test]
    fn the_channel_commands_name_only_a_channel() {
        for name in &ControlCommand::NAMES[1..] {
            let body = json!({"command": name, "command_id": "c", "channel": "acme"});
            let command = parse(&body).unwrap();
            assert_eq!(command.command.name(), *name);
            assert_eq!(command.command.channel(), "acme");
        }
    }

    #[test]
    fn too_large() {
        let body = format!(
            r#"{{"command_id":"c","pad":"{}"}}"#,
            "x".repeat(MAX_COMMAND_BYTES)
        );
        let refused = ControlCommand::parse(body.as_bytes(), "channel.upsert").unwrap_err();
        assert_eq!(refused.reason, RefusalReason::TooLarge);
        assert_eq!(refused.command_id, None);
    }

    #[test]
    fn malformed() {
        for (body, detail) in [
            (&b"not json"[..], "not valid JSON"),
            (&[0xff, b'{'][..], "not valid UTF-8"),
            (&b"[1]"[..], "must be a JSON object"),
        ] {
            let refused = ControlCommand::parse(body, "channel.upsert").unwrap_err();
            assert_eq!(refused.reason, RefusalReason::Malformed);
            assert!(refused.detail.contains(detail), "{}", refused.detail);
        }
    }

    #[test]
    fn unknown_command() {
        for (command, detail) in [
            (json!("channel.delete"), "is not one of channel.upsert"),
            (json!(1), "command must be a string"),
            (Value::Null, "command must be a string"),
        ] {
            let refused = refusal(&with("command", command));
            assert_eq!(refused.reason, RefusalReason::UnknownCommand);
            assert_eq!(refused.command_id.as_deref(), Some("c-1"));
            assert!(refused.detail.contains(detail), "{}", refused.detail);
        }
        let mut body = upsert();
        body.as_object_mut().unwrap().remove("command");
        assert_eq!(refusal(&body).detail, "command is missing");
    }

    #[test]
    fn invalid_command_id() {
        for (id, detail) in [
            (json!(""), "command_id must not be empty"),
            (json!("x".repeat(129)), "at most 128 characters"),
            (json!("a\nb"), "control characters"),
            (json!("é".repeat(10)), "printable ASCII"),
            (json!("a b"), "without spaces"),
            (json!(7), "command_id must be a string, not a number"),
        ] {
            let refused = refusal(&with("command_id", id));
            assert_eq!(refused.reason, RefusalReason::InvalidField);
            assert_eq!(refused.command_id, None);
            assert!(refused.detail.contains(detail), "{}", refused.detail);
        }
    }

    #[test]
    fn invalid_field_names_the_field_and_never_a_credential() {
        let cases = [
            (
                "channel",
                json!("Acme.Support"),
                "channel \"Acme.Support\" must be 1 to 63",
            ),
            ("consumer_key", json!(""), "consumer_key must not be empty"),
            (
                "consumer_secret",
                json!(12),
                "consumer_secret must be a string, not a number",
            ),
            (
                "access_token",
                json!("has space-at-abcd"),
                "access_token must be printable ASCII",
            ),
            (
                "access_token_secret",
                json!("s".repeat(1025)),
                "access_token_secret is 1025 bytes",
            ),
            (
                "bearer_token",
                Value::Null,
                "bearer_token must be a string, not null",
            ),
            ("weight", json!(0), "weight must be a whole number from 1"),
            (
                "weight",
                json!("3"),
                "weight must be a number, not a string",
            ),
            ("url", json!("not a url"), "url is not a URL"),
            (
                "inbound",
                json!("push"),
                "inbound \"push\" is not one of webhook, poll, both",
            ),
            (
                "user_id",
                json!("12ab"),
                "user_id \"12ab\" is not an X user id",
            ),
            (
                "user_id",
                Value::Null,
                "user_id is required when inbound is poll or both",
            ),
        ];
        for (field, value, detail) in cases {
            let refused = refusal(&with(field, value));
            assert_eq!(refused.reason, RefusalReason::InvalidField, "{field}");
            assert_eq!(refused.command.as_deref(), Some("channel.upsert"));
            assert!(
                refused.detail.contains(detail),
                "{field}: {}",
                refused.detail
            );
            for secret in ["ck-1234", "cs-5678", "at-abcd", "ats-efgh", "bt-ijkl"] {
                assert!(!refused.detail.contains(secret), "{}", refused.detail);
            }
        }
        let mut body = upsert();
        body.as_object_mut().unwrap().remove("access_token");
        assert_eq!(refusal(&body).detail, "access_token is missing");
        assert_eq!(refusal(&body).channel.as_deref(), Some("acme"));
    }

    #[test]
    fn a_refusal_serialises_to_its_event() {
        let json = serde_json::to_value(refusal(&with("weight", json!(0)))).unwrap();
        assert_eq!(json["type"], "command.refused");
        assert_eq!(json["reason"], "invalid_field");
        assert_eq!(json["command_id"], "c-1");
        assert_eq!(json["channel"], "acme");
    }

    #[test]
    fn a_command_must_match_its_routing_key() {
        let body = json!({"command": "channel.remove", "command_id": "c-9", "channel": "acme"});
        let refused =
            ControlCommand::parse(body.to_string().as_bytes(), "channel.check").unwrap_err();
        assert_eq!(refused.reason, RefusalReason::InvalidField);
        assert_eq!(refused.command_id.as_deref(), Some("c-9"));
        assert!(refused.detail.contains("routing key"), "{}", refused.detail);
        assert!(ControlCommand::parse(body.to_string().as_bytes(), "channel.remove").is_ok());
    }

    #[test]
    fn an_integral_float_weight_is_a_whole_number() {
        let ChannelCommand::Upsert(settings) = parse(&with("weight", json!(10.0))).unwrap().command
        else {
            panic!("not an upsert")
        };
        assert_eq!(settings.weight, Some(10));
        for weight in [json!(10.5), json!(0.0), json!(4294967296.0), json!(-1.0)] {
            assert!(
                refusal(&with("weight", weight.clone()))
                    .detail
                    .contains("whole number"),
                "{weight}"
            );
        }
    }

    #[test]
    fn a_url_is_taken_only_as_written_and_without_userinfo() {
        for (url, detail) in [
            (" https://x.com/acme", "surrounding spaces"),
            ("https://x.com/acme\n", "surrounding spaces"),
            ("https://x.com/ac\tme", "tabs or newlines"),
            ("https://user:pw-secret@x.com/acme", "user name or password"),
            ("https://user@x.com/acme", "user name or password"),
            ("https://@x.com/acme", "user name or password"),
        ] {
            let refused = refusal(&with("url", json!(url)));
            assert!(
                refused.detail.contains(detail),
                "{url:?}: {}",
                refused.detail
            );
            assert!(!refused.detail.contains("pw-secret"));
        }
        let long = format!("https://x.com/{}", "é".repeat(2048 - 14));
        assert!(
            parse(&with("url", json!(long))).is_ok(),
            "2048 characters fit"
        );
        let refused = refusal(&with("url", json!(format!("{long}é"))));
        assert!(
            refused.detail.contains("2049 characters"),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn an_upsert_chooses_xaa_and_its_events() {
        let mut body = with("webhook_api", json!("xaa"));
        body["xaa_events"] = json!(["dm.read", "dm.indicate_typing"]);
        let ChannelCommand::Upsert(settings) = parse(&body).unwrap().command else {
            panic!("not an upsert")
        };
        assert_eq!(settings.webhook_api, WebhookApi::Xaa);
        assert_eq!(
            settings.xaa_events,
            Some(vec![XaaEvent::Read, XaaEvent::IndicateTyping])
        );
        for (field, value, says) in [
            ("webhook_api", json!("aaaa"), "is not one of aaa, xaa"),
            ("webhook_api", json!(1), "must be a string"),
            ("xaa_events", json!("dm.read"), "must be an array"),
            ("xaa_events", json!(["dm.everything"]), "is not one of"),
            ("xaa_events", json!(["dm.read", "dm.read"]), "twice"),
        ] {
            let mut body = body.clone();
            body[field] = value;
            let refused = refusal(&body);
            assert!(refused.detail.contains(says), "{field}: {}", refused.detail);
        }
        let aaa_with_events = with("xaa_events", json!(["dm.sent"]));
        assert!(refusal(&aaa_with_events)
            .detail
            .contains("only applies with webhook_api"));
    }

    /// An OAuth 2.0 upsert: the client id instead of the access token pair.
    fn oauth2_upsert() -> Value {
        let mut body = upsert();
        let object = body.as_object_mut().unwrap();
        object.remove("access_token");
        object.remove("access_token_secret");
        object.insert("oauth2_client_id".into(), json!("Y2xpZW50LWlk"));
        object.insert("oauth2_client_secret".into(), json!("o2cs-secret-77"));
        object.insert("oauth2_refresh_token".into(), json!("o2rt-secret-88"));
        body
    }

    #[test]
    fn an_upsert_may_carry_an_oauth2_client_instead_of_the_access_token_pair() {
        let ChannelCommand::Upsert(settings) = parse(&oauth2_upsert()).unwrap().command else {
            panic!("not an upsert")
        };
        let oauth2 = settings.oauth2.as_ref().expect("an OAuth 2.0 channel");
        assert_eq!(oauth2.client_id, "Y2xpZW50LWlk");
        assert_eq!(
            oauth2.client_secret.as_ref().map(|s| s.expose_secret()),
            Some("o2cs-secret-77")
        );
        assert_eq!(
            oauth2.refresh_token.as_ref().map(|s| s.expose_secret()),
            Some("o2rt-secret-88")
        );
        assert!(settings.access_token.expose_secret().is_empty());
        assert_eq!(settings.consumer_secret.expose_secret(), "cs-5678");

        // A public client authorised later: only the client id.
        let mut public = oauth2_upsert();
        public
            .as_object_mut()
            .unwrap()
            .remove("oauth2_client_secret");
        public
            .as_object_mut()
            .unwrap()
            .remove("oauth2_refresh_token");
        let ChannelCommand::Upsert(settings) = parse(&public).unwrap().command else {
            panic!("not an upsert")
        };
        let oauth2 = settings.oauth2.unwrap();
        assert!(oauth2.client_secret.is_none() && oauth2.refresh_token.is_none());
        // An OAuth 1.0a upsert has none.
        let ChannelCommand::Upsert(settings) = parse(&upsert()).unwrap().command else {
            panic!("not an upsert")
        };
        assert!(settings.oauth2.is_none());
    }

    /// The stream subscribes the account with its OAuth 2.0 token, so the CRM may make an
    /// OAuth 2.0 channel a stream channel.
    #[test]
    fn an_oauth2_upsert_may_stream() {
        let mut streaming = oauth2_upsert();
        streaming["inbound"] = json!("stream");
        streaming["user_id"] = json!("42");
        let ChannelCommand::Upsert(settings) = parse(&streaming).unwrap().command else {
            panic!("not an upsert")
        };
        assert!(settings.oauth2.is_some());
        assert_eq!(settings.inbound, InboundMode::Stream);
    }

    #[test]
    fn oauth2_fields_are_refused_by_name_and_never_quoted() {
        let mut both = oauth2_upsert();
        both["access_token"] = json!("at-abcd");
        let mut secret_without_client = upsert();
        secret_without_client["oauth2_refresh_token"] = json!("o2rt-secret-88");
        let mut bad_secret = oauth2_upsert();
        bad_secret["oauth2_client_secret"] = json!("o2cs secret 77");
        let mut empty_id = oauth2_upsert();
        empty_id["oauth2_client_id"] = json!("");
        let mut number_id = oauth2_upsert();
        number_id["oauth2_client_id"] = json!(7);
        for (body, says) in [
            (both, "access_token is not used with oauth2_client_id"),
            (
                secret_without_client,
                "oauth2_refresh_token only applies with oauth2_client_id",
            ),
            (bad_secret, "oauth2_client_secret must be printable ASCII"),
            (empty_id, "oauth2_client_id must not be empty"),
            (number_id, "oauth2_client_id must be a string"),
        ] {
            let refused = refusal(&body);
            assert_eq!(refused.reason, RefusalReason::InvalidField);
            assert!(refused.detail.contains(says), "{}", refused.detail);
            for secret in ["o2rt-secret-88", "o2cs", "at-abcd"] {
                assert!(!refused.detail.contains(secret), "{}", refused.detail);
            }
        }
    }
}
