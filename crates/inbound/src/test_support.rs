//! What the unit tests share: X's recorded bodies and the contract's schemas.

use serde_json::Value;

/// A recorded X body from `tests/fixtures/x-api/`, embedded at compile time.
macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/x-api/",
            $name
        ))
        .as_slice()
    };
}
pub(crate) use fixture;

fn validator(schema: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/../../docs/schemas/{schema}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema_value: Value = serde_json::from_str(&text).expect("schemas are JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema_value)
        .unwrap_or_else(|e| panic!("{path} is not a valid schema: {e}"))
}

/// Panics unless `instance` is valid against `docs/schemas/<schema>.json`, so the
/// documents and the code cannot drift.
pub(crate) fn assert_valid(schema: &str, instance: &Value) {
    let errors: Vec<String> = validator(schema)
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{instance} is not valid against {schema}: {errors:?}"
    );
}

/// Whether `instance` is valid against `docs/schemas/<schema>.json`: for checking that
/// the schemas refuse what they should.
pub(crate) fn is_valid(schema: &str, instance: &Value) -> bool {
    validator(schema).is_valid(instance)
}

/// The JSON pointer of every value inside `value` (not the root itself).
pub(crate) fn paths(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        let children: Vec<(String, &Value)> = match value {
            Value::Object(object) => object
                .iter()
                .map(|(key, v)| (key.replace('~', "~0").replace('/', "~1"), v))
                .collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => return,
        };
        for (key, child) in children {
            let path = format!("{at}/{key}");
            out.push(path.clone());
            walk(child, path, out);
        }
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}
