//! The control contract's Rust side and its JSON Schemas agree: every schema example
//! parses, the bridge's answers are valid against their schemas, and the parser and the
//! schemas accept the same bodies over a sweep of wrong values.

use serde_json::{json, Value};
use xbridge_arbitrary as arbitrary;

use super::{CommandRefused, ControlCommand};

fn validator(name: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/../../docs/schemas/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn examples(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/../../docs/schemas/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    schema["examples"].as_array().unwrap().clone()
}

/// Parses `body` as delivered with its own `command` as the routing key.
fn parse(bytes: &[u8]) -> Result<ControlCommand, CommandRefused> {
    let body: Option<Value> = serde_json::from_slice(bytes).ok();
    let routing_key = body
        .as_ref()
        .and_then(|b| b.get("command"))
        .and_then(Value::as_str)
        .unwrap_or("channel.upsert")
        .to_owned();
    ControlCommand::parse(bytes, &routing_key)
}

/// The shared hostile samples, plus the ones where a parser and JSON Schema most easily
/// part: an integral float (`integer` in JSON Schema) and characters of two bytes
/// (`maxLength` counts characters).
fn samples() -> Vec<Value> {
    let mut samples = arbitrary::samples();
    samples.push(json!(10.0));
    samples.push(json!("é".repeat(100)));
    samples.push(json!("https://user:pw@x.com/acme"));
    samples.push(json!(" https://x.com/acme"));
    samples.push(json!("https://x.com/ac\tme"));
    samples
}

/// The schema a command body is checked against, by its `command`.
fn schema_for(body: &Value) -> &'static str {
    match body.get("command").and_then(Value::as_str) {
        Some("channel.upsert") => "channel-upsert",
        _ => "channel-command",
    }
}

#[test]
fn the_schemas_examples_parse() {
    for name in ["channel-upsert", "channel-command"] {
        let validator = validator(name);
        for example in examples(name) {
            assert!(validator.is_valid(&example), "{example}");
            parse(example.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{example}: {}", e.detail));
        }
    }
}

#[test]
fn refusals_are_valid_command_refused_events() {
    let validator = validator("command-refused");
    for example in examples("command-refused") {
        assert!(validator.is_valid(&example), "{example}");
    }
    let templates = examples("channel-upsert");
    for body in arbitrary::each_field(&templates[0], &samples()) {
        if let Err(refused) = parse(&arbitrary::to_bytes(&body)) {
            let event = serde_json::to_value(&refused).unwrap();
            assert!(validator.is_valid(&event), "{event}");
        }
    }
    let unread: CommandRefused = parse(b"[]").unwrap_err();
    assert!(validator.is_valid(&serde_json::to_value(unread).unwrap()));
}

/// Every field of the examples replaced by each hostile sample: the parser accepts
/// exactly what the schema accepts. (Nulls for optional fields are the one leniency:
/// the parser takes them as absent, as for replies.)
#[test]
fn the_parser_and_the_schemas_agree() {
    let mut templates = examples("channel-upsert");
    templates.extend(examples("channel-command"));
    templates.push(
        json!({"command": "channel.upsert", "command_id": "c", "channel": "a",
        "consumer_key": "k", "consumer_secret": "s", "access_token": "t",
        "access_token_secret": "u", "bearer_token": "b"}),
    );
    templates.push(
        json!({"command": "channel.upsert", "command_id": "c", "channel": "a",
        "consumer_key": "k", "consumer_secret": "s", "bearer_token": "b",
        "oauth2_client_id": "i"}),
    );
    for template in templates {
        for body in arbitrary::each_field(&template, &samples()) {
            // The body as the parser sees it (the samples' bare numbers written out).
            let bytes = arbitrary::to_bytes(&body);
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            let optional_null = [
                "weight",
                "url",
                "inbound",
                "user_id",
                "webhook_api",
                "xaa_events",
                "oauth2_client_id",
                "oauth2_client_secret",
                "oauth2_refresh_token",
            ]
            .iter()
            .any(|field| body.get(*field) == Some(&Value::Null));
            if optional_null {
                continue;
            }
            let schema_ok = validator(schema_for(&body)).is_valid(&body);
            let parsed = parse(&bytes);
            let shown: String = body.to_string().chars().take(300).collect();
            assert_eq!(
                schema_ok,
                parsed.is_ok(),
                "schema says {schema_ok}, parser says {:?} for {shown}",
                parsed.map(|_| ()).map_err(|e| e.detail)
            );
        }
    }
}
