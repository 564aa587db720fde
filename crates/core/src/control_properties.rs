//! Property tests of the control commands' parser (`contract/control`): whoever can
//! publish to the control exchange, the parser answers with a classified outcome, never a
//! panic; a refusal stays small and never carries a credential of the body; a valid
//! command reads back exactly what was sent.

use proptest::prelude::*;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use xbridge_arbitrary as arbitrary;

use crate::config::{is_valid_channel_name, InboundMode};
use crate::contract::control::{MAX_COMMAND_ID_BYTES, MAX_SECRET_BYTES};
use crate::contract::{ChannelCommand, CommandRefused, ControlCommand, RefusalReason};

/// The longest refusal text: it is the `detail` of `command.refused`.
const MAX_DETAIL_BYTES: usize = 600;

/// The credentials of the templates: no refusal may contain one.
const SECRETS: [&str; 5] = [
    "ckTEMPLATEkey0001",
    "csTEMPLATEsecret02",
    "atTEMPLATEtoken003",
    "atsTEMPLATEsecret4",
    "btTEMPLATEbearer05",
];

/// Valid commands of every kind, for the mutations to start from.
fn commands() -> Vec<Value> {
    let mut all = vec![
        json!({"command": "channel.upsert", "command_id": "c-1", "channel": "acme",
               "consumer_key": SECRETS[0], "consumer_secret": SECRETS[1],
               "access_token": SECRETS[2], "access_token_secret": SECRETS[3],
               "bearer_token": SECRETS[4]}),
        json!({"command": "channel.upsert", "command_id": "c-2", "channel": "beta_2",
               "consumer_key": SECRETS[0], "consumer_secret": SECRETS[1],
               "access_token": SECRETS[2], "access_token_secret": SECRETS[3],
               "bearer_token": SECRETS[4], "weight": 2, "url": "https://x.com/beta",
               "inbound": "poll", "user_id": "2244994945"}),
    ];
    for name in &ControlCommand::NAMES[1..] {
        all.push(json!({"command": name, "command_id": "c-3", "channel": "acme"}));
    }
    all
}

/// What every accepted command guarantees the runtime.
fn assert_valid(command: &ControlCommand) -> Result<(), TestCaseError> {
    prop_assert!(!command.command_id.trim().is_empty());
    prop_assert!(command.command_id.len() <= MAX_COMMAND_ID_BYTES);
    prop_assert!(is_valid_channel_name(command.command.channel()));
    if let ChannelCommand::Upsert(settings) = &command.command {
        for secret in [
            &settings.consumer_key,
            &settings.consumer_secret,
            &settings.access_token,
            &settings.access_token_secret,
            &settings.bearer_token,
        ] {
            let secret = secret.expose_secret();
            prop_assert!(!secret.is_empty() && secret.len() <= MAX_SECRET_BYTES);
        }
        prop_assert!(settings.weight != Some(0));
        prop_assert!(!settings.inbound.polls() || settings.user_id.is_some());
    }
    Ok(())
}

/// A refusal as the CRM may be shown it: bounded, and without any of `secrets`.
fn assert_refusal(refusal: &CommandRefused, secrets: &[&str]) -> Result<(), TestCaseError> {
    prop_assert!(!refusal.detail.is_empty());
    prop_assert!(
        refusal.detail.len() <= MAX_DETAIL_BYTES,
        "{}",
        refusal.detail.len()
    );
    let json = serde_json::to_string(refusal).expect("a refusal serialises");
    for secret in secrets {
        prop_assert!(!json.contains(secret), "{secret} in {json}");
    }
    if let Some(id) = &refusal.command_id {
        prop_assert!(!id.trim().is_empty() && id.len() <= MAX_COMMAND_ID_BYTES);
    }
    Ok(())
}

/// Parses `body` as delivered with its own `command` as the routing key (any key when
/// it names none).
fn parse(body: &[u8]) -> Result<ControlCommand, CommandRefused> {
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let routing_key = value
        .as_ref()
        .and_then(|v| v.get("command"))
        .and_then(Value::as_str)
        .unwrap_or("channel.upsert")
        .to_owned();
    ControlCommand::parse(body, &routing_key)
}

fn check(body: &[u8], secrets: &[&str]) -> Result<(), TestCaseError> {
    match parse(body) {
        Ok(command) => {
            let debug = format!("{command:?}");
            for secret in secrets {
                prop_assert!(!debug.contains(secret), "Debug shows {secret}");
            }
            assert_valid(&command)
        }
        Err(refusal) => assert_refusal(&refusal, secrets),
    }
}

/// Every field of every template replaced by each hostile sample, and each left out.
#[test]
fn every_field_of_a_command_may_be_wrong() {
    for template in commands() {
        for body in arbitrary::each_field(&template, &arbitrary::samples()) {
            if let Err(failure) = check(&arbitrary::to_bytes(&body), &SECRETS) {
                let shown: String = body.to_string().chars().take(300).collect();
                panic!("{failure} for {shown}");
            }
        }
    }
}

/// A valid `channel.upsert` as the CRM would send it, with random credentials.
fn valid_upsert() -> impl Strategy<Value = Value> {
    (
        "[a-z0-9][a-z0-9_-]{0,62}",
        "[!-~]{1,128}",
        prop::collection::vec("[A-Za-z0-9]{16,64}", 5),
        prop::option::of(1u32..),
        prop_oneof![Just("webhook"), Just("poll"), Just("both")],
        "[0-9]{1,19}",
    )
        .prop_map(|(channel, id, secrets, weight, inbound, user_id)| {
            json!({"command": "channel.upsert", "command_id": id, "channel": channel,
                   "consumer_key": secrets[0], "consumer_secret": secrets[1],
                   "access_token": secrets[2], "access_token_secret": secrets[3],
                   "bearer_token": secrets[4], "weight": weight, "inbound": inbound,
                   "user_id": user_id, "url": "https://x.com/someone"})
        })
        .prop_filter("a command id is not blank", |body| {
            !body["command_id"].as_str().unwrap_or("").trim().is_empty()
        })
}

fn secrets_of(body: &Value) -> Vec<String> {
    [
        "consumer_key",
        "consumer_secret",
        "access_token",
        "access_token_secret",
        "bearer_token",
    ]
    .iter()
    .filter_map(|field| body[field].as_str().map(str::to_owned))
    .collect()
}

proptest! {
    #![proptest_config(arbitrary::config(256))]

    /// Any body: accepted and valid, or refused with a bounded reason and no credential.
    #[test]
    fn a_command_body_is_accepted_valid_or_refused_without_secrets(
        body in arbitrary::body(commands()),
    ) {
        check(&body, &SECRETS)?;
    }

    /// A valid upsert reads back what was sent, field for field.
    #[test]
    fn a_valid_upsert_round_trips(body in valid_upsert()) {
        let command = parse(body.to_string().as_bytes())
            .map_err(|e| TestCaseError::fail(e.detail))?;
        prop_assert_eq!(command.command_id.as_str(), body["command_id"].as_str().unwrap());
        let ChannelCommand::Upsert(settings) = command.command else {
            return Err(TestCaseError::fail("not an upsert"));
        };
        prop_assert_eq!(settings.name.as_str(), body["channel"].as_str().unwrap());
        let read = [&settings.consumer_key, &settings.consumer_secret, &settings.access_token,
                    &settings.access_token_secret, &settings.bearer_token]
            .map(|s| s.expose_secret().to_owned());
        prop_assert_eq!(read.to_vec(), secrets_of(&body));
        prop_assert_eq!(settings.weight.map(u64::from), body["weight"].as_u64());
        let inbound: InboundMode = serde_json::from_value(body["inbound"].clone()).unwrap();
        prop_assert_eq!(settings.inbound, inbound);
        prop_assert_eq!(settings.user_id.as_deref(), body["user_id"].as_str());
    }

    /// A valid upsert with one other field made wrong: the refusal names the command
    /// and its channel but none of the (random) credentials it carried.
    #[test]
    fn a_refused_upsert_never_echoes_its_credentials(
        body in valid_upsert(),
        field in prop::sample::select(vec!["weight", "url", "inbound", "user_id", "channel",
                                           "consumer_key", "bearer_token"]),
        wrong in prop::sample::select(arbitrary::samples()),
    ) {
        let secrets = secrets_of(&body);
        let mut body = body;
        body[field] = wrong;
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        match parse(&arbitrary::to_bytes(&body)) {
            Ok(command) => assert_valid(&command)?,
            Err(refusal) => {
                prop_assert_ne!(refusal.reason, RefusalReason::Malformed);
                assert_refusal(&refusal, &secrets)?;
            }
        }
    }
}
