//! The OpenAPI 3.0 document, built from the route table (routes/mod.rs): a path per route, and
//! component schemas derived with `schemars` from the types the routes name (core's `wire` module
//! and the records that travel as they are), as each deserializes, since both the API (requests)
//! and the worker's HTTP broker (answers) read them so. The state keeps it for `/openapi.json`.

use crate::routes::{Auth, Body, Route, SchemaOf, table};
use runlane_core::wire::ErrorReply;
use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

const DESCRIPTION: &str = "Runs, workers over HTTP, events (JSON pages and SSE), artifacts. \
    Errors: {\"error\": {\"code\", \"message\", \"details\"}} (the `Error` schema).";

/// The whole document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let error = schema_of(&mut generator, SchemaGenerator::subschema_for::<ErrorReply>);
    let mut paths = Map::new();
    for route in table() {
        let item = paths.entry(route.path).or_insert_with(|| json!({}));
        item[route.method] = operation(&route, &error, &mut generator);
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "runlane executor API", "version": env!("CARGO_PKG_VERSION"), "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": generator.take_definitions(true),
        },
    })
}

/// A type's schema (a `$ref` for a named type) in OpenAPI 3.0's dialect: the generator's transforms
/// (`nullable` and the like) applied, as `take_definitions` applies them to the components.
fn schema_of(generator: &mut SchemaGenerator, schema: SchemaOf) -> Value {
    let mut schema = schema(generator);
    for transform in generator.transforms_mut() {
        transform.transform(&mut schema);
    }
    schema.to_value()
}

fn operation(r: &Route, error: &Value, generator: &mut SchemaGenerator) -> Value {
    let mut params = path_params(r.path);
    if let Some(query) = r.query {
        params.extend(query_params(&schema_of(generator, query)));
    }
    let mut op = json!({
        "summary": r.summary,
        "operationId": format!("{}{}", r.method, r.path.replace(['/', '{', '}', '-', '.'], "_")),
        "parameters": params,
        "responses": {
            r.status.to_string(): response(r.response, generator),
            "default": {"description": "an error", "content": content("application/json", error.clone())},
        },
    });
    if let Some((status, body)) = r.also {
        op["responses"][status.to_string()] = response(body, generator);
    }
    op["security"] = match r.auth {
        Auth::Bearer => json!([{"bearer": []}]),
        Auth::Signed | Auth::Public => json!([]),
    };
    let (required, media, schema) = match r.request {
        Body::Json(schema) => (true, "application/json", schema_of(generator, schema)),
        Body::OptionalJson(schema) => (false, "application/json", schema_of(generator, schema)),
        Body::Binary => (true, "application/octet-stream", binary()),
        Body::Text | Body::EventStream | Body::Empty => return op,
    };
    op["requestBody"] = json!({"required": required, "content": content(media, schema)});
    op
}

/// A body's `content`: one media type and its schema.
fn content(media: &str, schema: Value) -> Value {
    json!({ media: {"schema": schema} })
}

fn binary() -> Value {
    json!({"type": "string", "format": "binary"})
}

fn response(body: Body, generator: &mut SchemaGenerator) -> Value {
    let (description, media, schema) = match body {
        Body::Json(schema) | Body::OptionalJson(schema) => ("ok", "application/json", schema_of(generator, schema)),
        Body::Text => ("ok", "text/plain", json!({"type": "string"})),
        Body::EventStream => ("Server-Sent Events", "text/event-stream", json!({"type": "string"})),
        Body::Binary => ("the bytes", "application/octet-stream", binary()),
        Body::Empty => return json!({"description": "done"}),
    };
    json!({"description": description, "content": content(media, schema)})
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let schema = match name {
                "name" => json!({"type": "string", "minLength": 1}),
                "lane" => json!({"type": "string", "enum": ["A", "B", "C", "D"]}),
                _ => json!({"type": "string", "format": "uuid"}),
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

/// One query parameter per property of a query type's (object) schema. A parameter is absent or
/// has a value, never null: an `Option`'s null is dropped. A description moves up to the parameter.
fn query_params(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let properties = schema.get("properties").and_then(Value::as_object).into_iter().flatten();
    properties
        .map(|(name, property)| {
            let mut property = property.clone();
            let description = property.as_object_mut().and_then(|p| p.remove("description"));
            let mut param = json!({"name": name, "in": "query", "required": required.contains(&name.as_str()),
                                   "schema": not_null(property)});
            if let Some(description) = description {
                param["description"] = description;
            }
            param
        })
        .collect()
}

/// An `Option<T>`'s schema as `T`'s: `nullable` removed, or of `anyOf: [T, null]` the `T`.
fn not_null(mut schema: Value) -> Value {
    let Some(object) = schema.as_object_mut() else { return schema };
    object.remove("nullable");
    let Some(Value::Array(mut any_of)) = object.remove("anyOf") else { return schema };
    any_of.retain(|s| s.get("nullable") != Some(&Value::Bool(true)));
    match <[Value; 1]>::try_from(any_of) {
        Ok([only]) => only,
        Err(any_of) => {
            object.insert("anyOf".into(), Value::Array(any_of));
            schema
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` under `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(o) => {
                if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                o.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    fn json_schema<'a>(op: &'a Value, part: &str) -> &'a Value {
        &op[part]["content"]["application/json"]["schema"]
    }

    #[test]
    fn every_routes_json_names_a_schema_that_resolves() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r} is not a component"));
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
        for route in table() {
            let op = &doc["paths"][route.path][route.method];
            let mut named = Vec::new();
            if matches!(route.request, Body::Json(_) | Body::OptionalJson(_)) {
                named.push(json_schema(op, "requestBody"));
            }
            if matches!(route.response, Body::Json(_)) {
                named.push(json_schema(&op["responses"], &route.status.to_string()));
            }
            if let Some((status, Body::Json(_))) = route.also {
                named.push(json_schema(&op["responses"], &status.to_string()));
            }
            for schema in named {
                let name = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/"));
                assert!(
                    name.is_some_and(|n| schemas.contains_key(n)),
                    "{} {}: {schema} names no component",
                    route.method,
                    route.path
                );
            }
        }
        assert!(schemas.contains_key("Error"), "the error shape stays documented");
    }

    #[test]
    fn query_types_become_parameters() {
        let doc = document();
        let params = doc["paths"]["/v1/runs"]["get"]["parameters"].as_array().expect("parameters");
        let limit = params.iter().find(|p| p["name"] == "limit").expect("limit");
        assert_eq!(limit["in"], "query");
        assert_eq!(limit["required"], false);
        assert_eq!(limit["schema"]["maximum"], 500);
        assert!(limit["schema"].get("nullable").is_none());
        let lane = params.iter().find(|p| p["name"] == "lane").expect("lane");
        assert_eq!(lane["schema"], json!({"$ref": "#/components/schemas/Lane"}), "an Option's null is not a value");
        let upload = doc["paths"]["/v1/runs/{run_id}/artifacts/{name}"]["put"]["parameters"].as_array().expect("put");
        let lease = upload.iter().find(|p| p["name"] == "lease").expect("lease");
        assert_eq!(lease["required"], true);
        assert_eq!(upload.iter().filter(|p| p["in"] == "path").count(), 2);
    }

    #[test]
    fn a_dry_run_is_a_documented_query_with_its_own_answer() {
        let doc = document();
        let create = &doc["paths"]["/v1/runs"]["post"];
        let params = create["parameters"].as_array().expect("parameters");
        let dry_run = params.iter().find(|p| p["name"] == "dry_run").expect("dry_run");
        assert_eq!(
            (&dry_run["in"], &dry_run["required"], &dry_run["schema"]["type"]),
            (&json!("query"), &json!(false), &json!("boolean"))
        );
        assert_eq!(json_schema(&create["responses"], "201")["$ref"], "#/components/schemas/RunCreated");
        assert_eq!(json_schema(&create["responses"], "200")["$ref"], "#/components/schemas/RunDryRun");
    }
}
