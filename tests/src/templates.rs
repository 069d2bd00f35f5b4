//! Template specs for tests through SQL, the API and the CLI alike.

use serde_json::{Value, json};

/// (fields, the field named, the problem in full): one bad value of every policy field, and the
/// limits of each bound.
pub fn bad_policies() -> Vec<(Value, &'static str, &'static str)> {
    vec![
        (json!({"description": 7}), "description", "description must be a string, got 7"),
        (
            json!({"description": "x".repeat(1001)}),
            "description",
            "description must be at most 1000 characters, got 1001",
        ),
        (json!({"lane": "E"}), "lane", "lane must be one of A, B, C, D, got \"E\""),
        (json!({"lane": null}), "lane", "lane must be a string, got null"),
        (json!({"priority": 101}), "priority", "priority must be between -100 and 100, got 101"),
        (json!({"priority": 1.5}), "priority", "priority must be a whole number, got 1.5"),
        (json!({"timeout_ms": 999}), "timeout_ms", "timeout_ms must be between 1000 and 2147483647, got 999"),
        (json!({"timeout_ms": "1h"}), "timeout_ms", "timeout_ms must be a whole number >= 0, got \"1h\""),
        (json!({"max_attempts": 0}), "max_attempts", "max_attempts must be between 1 and 1000, got 0"),
        (json!({"max_attempts": 1001}), "max_attempts", "max_attempts must be between 1 and 1000, got 1001"),
        (json!({"backoff_base_ms": -1}), "backoff_base_ms", "backoff_base_ms must be a whole number >= 0, got -1"),
        (
            json!({"backoff_base_ms": 604800001}),
            "backoff_base_ms",
            "backoff_base_ms must be between 0 and 604800000, got 604800001",
        ),
        (
            json!({"backoff_multiplier": 0.5}),
            "backoff_multiplier",
            "backoff_multiplier must be between 1 and 10, got 0.5",
        ),
        (
            json!({"backoff_multiplier": 11}),
            "backoff_multiplier",
            "backoff_multiplier must be between 1 and 10, got 11",
        ),
        (json!({"backoff_multiplier": "2"}), "backoff_multiplier", "backoff_multiplier must be a number, got \"2\""),
        (json!({"backoff_max_ms": 1.5}), "backoff_max_ms", "backoff_max_ms must be a whole number >= 0, got 1.5"),
        (
            json!({"backoff_base_ms": 5000, "backoff_max_ms": 4000}),
            "backoff_base_ms",
            "backoff_base_ms (5000) must not be above backoff_max_ms (4000)",
        ),
        (
            json!({"backoff_base_ms": 7200000}),
            "backoff_base_ms",
            "backoff_base_ms (7200000) must not be above backoff_max_ms (3600000, the default)",
        ),
        (
            json!({"backoff_max_ms": 500}),
            "backoff_max_ms",
            "backoff_base_ms (1000, the default) must not be above backoff_max_ms (500)",
        ),
        (json!({"backoff_jitter": 1.01}), "backoff_jitter", "backoff_jitter must be between 0 and 1, got 1.01"),
        (json!({"backoff_jitter": -0.1}), "backoff_jitter", "backoff_jitter must be between 0 and 1, got -0.1"),
        (json!({"max_crashes": 101}), "max_crashes", "max_crashes must be between 0 and 100, got 101"),
        (json!({"max_crashes": true}), "max_crashes", "max_crashes must be a whole number >= 0, got true"),
        (json!({"requires": "gpu"}), "requires", "requires must be a list of strings, got \"gpu\""),
        (
            json!({"requires": ["gpu", "Big GPU"]}),
            "requires",
            "requires: \"Big GPU\" is not a capability name (lowercase letters, digits, '.', '_' and '-', starting \
             with a letter or digit, at most 63 characters)",
        ),
        (json!({"requires": ["gpu", "fra1", "gpu"]}), "requires", "requires names \"gpu\" more than once"),
        (
            json!({"requires": (0..17).map(|i| format!("c{i}")).collect::<Vec<_>>()}),
            "requires",
            "requires must name at most 16 capabilities, got 17",
        ),
        (json!({"retention_s": 59}), "retention_s", "retention_s must be between 60 and 315360000, got 59"),
        (
            json!({"retention_s": 315360001}),
            "retention_s",
            "retention_s must be between 60 and 315360000, got 315360001",
        ),
        (json!({"params": {"type": "array"}}), "params", "params must be a JSON Schema with type: object"),
        (json!({"steps": []}), "steps", "steps must be a non-empty list"),
        (
            json!({"backof_base_ms": 10}),
            "backof_base_ms",
            "unknown field 'backof_base_ms' (did you mean 'backoff_base_ms'?)",
        ),
        (
            json!({"owner": "ops"}),
            "owner",
            "unknown field 'owner' (a template has: name, description, lane, priority, timeout_ms, max_attempts, \
             backoff_base_ms, backoff_multiplier, backoff_max_ms, backoff_jitter, max_crashes, requires, \
             retention_s, params, steps)",
        ),
    ]
}
