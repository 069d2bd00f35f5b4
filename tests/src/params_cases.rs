//! One params schema per JSON-Schema keyword runlane enforces, each with params that pass and
//! params that fail, and what the refusal must say (the param and the rule). The SQL, API and CLI
//! tests run the same table, so every way in is held to the same answers.

use crate::TestDb;
use serde_json::{Value, json};

/// One keyword's case. `template` holds `schema` as its params.
#[derive(Debug, Clone)]
pub struct KeywordCase {
    pub keyword: &'static str,
    pub template: &'static str,
    pub schema: Value,
    pub good: Value,
    pub bad: Value,
    /// In the refusal of `bad`: the param's name (with its path) and the rule it broke.
    pub says: &'static str,
}

fn case(
    keyword: &'static str,
    template: &'static str,
    schema: Value,
    good: Value,
    bad: Value,
    says: &'static str,
) -> KeywordCase {
    let mut schema = schema;
    schema["type"] = json!("object");
    KeywordCase { keyword, template, schema, good, bad, says }
}

/// Every keyword of docs/SQL.md's list.
pub fn keyword_cases() -> Vec<KeywordCase> {
    vec![
        case(
            "type",
            "kw-type",
            json!({"properties": {"port": {"type": "integer"}}}),
            json!({"port": 5432}),
            json!({"port": 5432.5}),
            "param 'port' must be integer, got number",
        ),
        case(
            "type (a list)",
            "kw-type-list",
            json!({"properties": {"tag": {"type": ["string", "null"]}}}),
            json!({"tag": null}),
            json!({"tag": 7}),
            "param 'tag' must be string or null, got number",
        ),
        case(
            "required",
            "kw-required",
            json!({"required": ["service"], "properties": {"service": {"type": "string"}}}),
            json!({"service": "api"}),
            json!({}),
            "missing required param 'service'",
        ),
        case(
            "properties",
            "kw-properties",
            json!({"properties": {"db": {"type": "object", "required": ["host"],
                                          "properties": {"host": {"type": "string"},
                                                         "port": {"type": "integer", "maximum": 65535}}}}}),
            json!({"db": {"host": "pg1", "port": 5432}}),
            json!({"db": {"host": "pg1", "port": 70000}}),
            "param 'db.port' must be at most 65535, got 70000",
        ),
        case(
            "additionalProperties: false",
            "kw-additional-false",
            json!({"additionalProperties": false, "properties": {"service": {"type": "string"}}}),
            json!({"service": "api"}),
            json!({"service": "api", "colour": "red"}),
            "unknown param 'colour'",
        ),
        case(
            "additionalProperties: a schema",
            "kw-additional-schema",
            json!({"properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}}}),
            json!({"labels": {"team": "ops"}}),
            json!({"labels": {"team": 7}}),
            "param 'labels.team' must be string, got number",
        ),
        case(
            "enum",
            "kw-enum",
            json!({"properties": {"env": {"enum": ["staging", "prod"]}}}),
            json!({"env": "prod"}),
            json!({"env": "dev"}),
            r#"param 'env' must be one of "staging", "prod", got "dev""#,
        ),
        case(
            "const",
            "kw-const",
            json!({"properties": {"confirm": {"const": "yes"}}}),
            json!({"confirm": "yes"}),
            json!({"confirm": "no"}),
            r#"param 'confirm' must be "yes", got "no""#,
        ),
        case(
            "pattern",
            "kw-pattern",
            json!({"properties": {"service": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$"}}}),
            json!({"service": "billing-api"}),
            json!({"service": "Billing_API"}),
            r#"param 'service' must match the pattern '^[a-z][a-z0-9-]*$', got "Billing_API""#,
        ),
        case(
            "minimum",
            "kw-minimum",
            json!({"properties": {"replicas": {"type": "integer", "minimum": 1}}}),
            json!({"replicas": 1}),
            json!({"replicas": 0}),
            "param 'replicas' must be at least 1, got 0",
        ),
        case(
            "maximum",
            "kw-maximum",
            json!({"properties": {"port": {"type": "integer", "maximum": 65535}}}),
            json!({"port": 65535}),
            json!({"port": 70000}),
            "param 'port' must be at most 65535, got 70000",
        ),
        case(
            "exclusiveMinimum",
            "kw-exclusive-minimum",
            json!({"properties": {"ratio": {"type": "number", "exclusiveMinimum": 0}}}),
            json!({"ratio": 0.01}),
            json!({"ratio": 0}),
            "param 'ratio' must be greater than 0, got 0",
        ),
        case(
            "exclusiveMaximum",
            "kw-exclusive-maximum",
            json!({"properties": {"ratio": {"type": "number", "exclusiveMaximum": 1}}}),
            json!({"ratio": 0.99}),
            json!({"ratio": 1}),
            "param 'ratio' must be less than 1, got 1",
        ),
        // Characters, not bytes: "äöü" is 6 bytes.
        case(
            "minLength",
            "kw-min-length",
            json!({"properties": {"name": {"type": "string", "minLength": 3}}}),
            json!({"name": "äöü"}),
            json!({"name": "ab"}),
            "param 'name' must be at least 3 characters long, got 2",
        ),
        case(
            "maxLength",
            "kw-max-length",
            json!({"properties": {"code": {"type": "string", "maxLength": 4}}}),
            json!({"code": "ÄÖÜß"}),
            json!({"code": "abcde"}),
            "param 'code' must be at most 4 characters long, got 5",
        ),
        case(
            "items",
            "kw-items",
            json!({"properties": {"hosts": {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9.]+$"}}}}),
            json!({"hosts": ["db1.internal", "db2.internal"]}),
            json!({"hosts": ["db1.internal", "DB2!"]}),
            r#"param 'hosts[1]' must match the pattern '^[a-z0-9.]+$', got "DB2!""#,
        ),
        case(
            "minItems",
            "kw-min-items",
            json!({"properties": {"hosts": {"type": "array", "minItems": 1}}}),
            json!({"hosts": ["a"]}),
            json!({"hosts": []}),
            "param 'hosts' must have at least 1 items, got 0",
        ),
        case(
            "maxItems",
            "kw-max-items",
            json!({"properties": {"hosts": {"type": "array", "maxItems": 2}}}),
            json!({"hosts": ["a", "b"]}),
            json!({"hosts": ["a", "b", "c"]}),
            "param 'hosts' must have at most 2 items, got 3",
        ),
        // An absent param gets its default (which then passes); a null is a value, not an absence.
        case(
            "default",
            "kw-default",
            json!({"required": ["replicas"], "properties": {"replicas": {"type": "integer", "minimum": 1, "default": 2}}}),
            json!({}),
            json!({"replicas": null}),
            "param 'replicas' must be integer, got null",
        ),
        // A secret's value is never repeated in a refusal.
        case(
            "secret",
            "kw-secret",
            json!({"properties": {"password": {"type": "string", "secret": true, "minLength": 12,
                                                "description": "the database password", "title": "Password",
                                                "examples": ["correct horse battery staple"]}}}),
            json!({"password": "correct horse battery"}),
            json!({"password": "hunter2"}),
            "param 'password' must be at least 12 characters long, got 7",
        ),
    ]
}

/// Applies every case's template.
pub async fn apply_keyword_templates(t: &TestDb) {
    for c in keyword_cases() {
        t.apply(c.template, json!({"params": c.schema, "steps": [{"name": "s", "kind": "noop"}]})).await;
    }
}

/// Schemas apply_template must refuse, each with what the refusal names (the keyword and where).
pub fn refused_schemas() -> Vec<(Value, &'static str)> {
    let prop = |schema: Value| json!({"type": "object", "properties": {"email": schema}});
    vec![
        (
            prop(json!({"type": "string", "format": "email"})),
            "unsupported keyword 'format' in the schema of param 'email'",
        ),
        (
            json!({"type": "object", "properties": {"db": {"type": "object", "properties": {"port": {"oneOf": [{"type": "integer"}]}}}}}),
            "unsupported keyword 'oneOf' in the schema of param 'db.port'",
        ),
        (prop(json!({"$ref": "#/definitions/email"})), "unsupported keyword '$ref' in the schema of param 'email'"),
        (
            prop(json!({"type": "array", "uniqueItems": true})),
            "unsupported keyword 'uniqueItems' in the schema of param 'email'",
        ),
        (
            prop(json!({"type": "array", "items": {"type": "string", "minimum": 1, "format": "x"}})),
            "unsupported keyword 'format' in the schema of param 'email[]'",
        ),
        (json!({"type": "object", "minProperties": 1}), "unsupported keyword 'minProperties' at the root of params"),
        (
            json!({"type": "object", "properties": {"tags": {"type": "object", "additionalProperties": {"not": {}}}}}),
            "unsupported keyword 'not' in the schema of param 'tags.*'",
        ),
        (
            prop(json!({"type": "string", "pattern": "(unclosed"})),
            "'pattern' in the schema of param 'email' is not a valid regular expression",
        ),
        (
            prop(json!({"type": "integer", "pattern": "^[0-9]+$"})),
            "'pattern' in the schema of param 'email' can never apply",
        ),
        (
            prop(json!({"type": "string", "maxLength": -1})),
            "'maxLength' in the schema of param 'email' must be a whole number >= 0",
        ),
        (prop(json!({"type": "strin"})), "'type' in the schema of param 'email' must be one of"),
        (
            prop(json!({"type": "integer", "minimum": 1, "default": 0})),
            "the default of param 'email' breaks its own schema: param 'email' must be at least 1, got 0",
        ),
        (
            json!({"type": "object", "properties": {"db": {"type": "object", "properties": {"pw": {"type": "string", "secret": true}}}}}),
            "only top-level params can be secret",
        ),
        (json!({"type": "object", "enum": [{}]}), "at the root of params only type, properties, required"),
        (json!({"type": "array"}), "params must be a JSON Schema with type: object"),
    ]
}
