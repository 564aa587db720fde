//! Checks what the bridge emits against the JSON Schemas the contract
//! documents in `docs/schemas/`, so the documents and the code cannot drift.

use serde_json::Value;

/// Panics unless `instance` is valid against `docs/schemas/<schema>.json`.
pub fn assert_valid(schema: &str, instance: &Value) {
    let errors = schema_errors(schema, instance);
    assert!(
        errors.is_empty(),
        "{instance} is not valid against {schema}: {errors:?}"
    );
}

/// What is wrong with `instance` against `docs/schemas/<schema>.json`; empty
/// when it is valid. For callers that gather every failure (the documents'
/// examples) or accept one of several schemas, instead of stopping at the first.
pub fn schema_errors(schema: &str, instance: &Value) -> Vec<String> {
    let path = format!(
        "{}/../docs/schemas/{schema}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema_value: Value = serde_json::from_str(&text).expect("schemas are JSON");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema_value)
        .unwrap_or_else(|e| panic!("{path} is not a valid schema: {e}"));
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}
