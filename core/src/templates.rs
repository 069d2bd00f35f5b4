//! Runbook templates: YAML files (templates/*.yaml) checked here and applied into the database,
//! where each change becomes a new version.

use crate::steps;
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A template file as written. Only `name` stays out of the stored spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    lane: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    backoff_base_ms: Option<u64>,
    #[serde(default)]
    max_crashes: Option<u32>,
    /// JSON Schema of the params (`secret: true` on a property masks its value in events).
    #[serde(default)]
    params: Option<Value>,
    steps: Value,
}

/// A checked template, ready for `apply_template(name, spec)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub spec: Value,
    pub source: PathBuf,
}

/// Parses and checks one template file's text.
pub fn parse_template(text: &str, source: &Path) -> Result<Template, String> {
    let at = source.display();
    let file: TemplateFile = serde_yaml_ng::from_str(text).map_err(|e| format!("{at}: {e}"))?;
    steps::parse_steps(&file.steps).map_err(|e| format!("{at}: {e}"))?;
    if let Some(lane) = &file.lane {
        lane.parse::<crate::model::Lane>().map_err(|e| format!("{at}: {e}"))?;
    }
    if let Some(params) = &file.params
        && params.get("type").and_then(Value::as_str) != Some("object")
    {
        return Err(format!("{at}: params must be a JSON Schema with type: object"));
    }
    let mut spec = serde_json::Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            spec.insert(k.to_string(), v);
        }
    };
    put("description", file.description.map(Value::from));
    put("lane", file.lane.map(|l| Value::from(l.to_ascii_uppercase())));
    put("priority", file.priority.map(Value::from));
    put("timeout_ms", file.timeout_ms.map(Value::from));
    put("max_attempts", file.max_attempts.map(Value::from));
    put("backoff_base_ms", file.backoff_base_ms.map(Value::from));
    put("max_crashes", file.max_crashes.map(Value::from));
    put("params", file.params);
    put("steps", Some(file.steps));
    Ok(Template { name: file.name, spec: Value::Object(spec), source: source.to_path_buf() })
}

/// Every `*.yaml` / `*.yml` file in a directory, parsed and checked, in name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Template>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())).and_then(|t| parse_template(&t, p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_template_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let templates = load_dir(&dir).expect("templates/ parses");
        assert!(templates.len() >= 3, "found {}", templates.len());
        let mut names: Vec<_> = templates.iter().map(|t| t.name.clone()).collect();
        names.dedup();
        assert_eq!(names.len(), templates.len(), "template names are unique");
    }

    #[test]
    fn mistakes_are_named_with_the_file() {
        let p = Path::new("t.yaml");
        let err = parse_template("name: x\nstepz: []\n", p).expect_err("unknown key");
        assert!(err.contains("t.yaml") && err.contains("stepz"), "{err}");
        let err = parse_template("name: x\nsteps:\n  - {name: a, kind: shell}\n", p).expect_err("no command");
        assert!(err.contains("command"), "{err}");
        let err = parse_template("name: x\nlane: Z\nsteps:\n  - {name: a, kind: noop}\n", p).expect_err("lane");
        assert!(err.contains("unknown lane 'Z'"), "{err}");
    }
}
