//! Runbook templates: YAML files (templates/*.yaml) read here and applied into the database, where
//! each change becomes a new version.
//!
//! The rules a template must meet live in one place, the database's `template_problems` (which
//! `apply_template` enforces), so psql, the API and the CLI meet the same ones. This module only reads
//! files (YAML, the template's `name`) and says on which line of a file a field the database names is
//! written. docs/TEMPLATES.md describes every field.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A template file read: its name and its spec (every other field), ready for
/// `apply_template(name, spec)` or `template_problems(name, spec)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub spec: Value,
    pub source: PathBuf,
    /// The line (1-based) of each top-level field written in block style, for messages.
    pub lines: BTreeMap<String, usize>,
}

impl Template {
    /// `path:line` where the file writes `field`, or the path alone when it is not on a line of its own
    /// (or is about the template as a whole).
    pub fn locate(&self, field: &str) -> String {
        match self.lines.get(field) {
            Some(line) => format!("{}:{line}", self.source.display()),
            None => self.source.display().to_string(),
        }
    }
}

/// Reads one template file's text. Only what the database cannot see is checked here: the YAML
/// itself and the `name`.
pub fn parse_template(text: &str, source: &Path) -> Result<Template, String> {
    let at = source.display();
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("{at}: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err(format!("{at}: a template file must be a mapping of fields (name, steps, …)"));
    };
    let lines = top_level_lines(text);
    let name = match fields.remove("name") {
        Some(Value::String(name)) => name,
        Some(other) => {
            let line = lines.get("name").map(|l| format!(":{l}")).unwrap_or_default();
            return Err(format!("{at}{line}: name must be a string, got {other}"));
        }
        None => return Err(format!("{at}: name is missing: a template file names its template")),
    };
    // A file may write its lane in lowercase; the database knows lanes A–D.
    if let Some(Value::String(lane)) = fields.get_mut("lane") {
        *lane = lane.to_ascii_uppercase();
    }
    Ok(Template { name, spec: Value::Object(fields), source: source.to_path_buf(), lines })
}

/// Every `*.yaml` / `*.yml` file in a directory, read, in name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Template>, String> {
    read_paths(&[dir.to_path_buf()]).into_iter().collect()
}

/// Each file named, and each `*.yaml` / `*.yml` file of each directory named (in name order), read on
/// its own: one answer per file, so a caller can report every bad file at once.
pub fn read_paths(paths: &[PathBuf]) -> Vec<Result<Template, String>> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(read_file(path));
            continue;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) => {
                out.push(Err(format!("{}: {e}", path.display())));
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        if files.is_empty() {
            out.push(Err(format!("{}: no *.yaml or *.yml file in this directory", path.display())));
        }
        out.extend(files.iter().map(|f| read_file(f)));
    }
    out
}

fn read_file(path: &Path) -> Result<Template, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_template(&text, path)
}

/// The line of each top-level key written at the start of a line (`key: …`), first one kept.
fn top_level_lines(text: &str) -> BTreeMap<String, usize> {
    let mut lines = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with([' ', '\t', '#', '-', '{', '[']) || line.starts_with("---") {
            continue;
        }
        if let Some((key, _)) = line.split_once(':') {
            let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
            if !key.is_empty() {
                lines.entry(key.to_string()).or_insert(i + 1);
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::parse_steps;

    #[test]
    fn every_shipped_template_reads_and_its_steps_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let templates = load_dir(&dir).expect("templates/ reads");
        assert!(templates.len() >= 3, "found {}", templates.len());
        let mut names: Vec<_> = templates.iter().map(|t| t.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), templates.len(), "template names are unique");
        for t in &templates {
            parse_steps(&t.spec["steps"]).unwrap_or_else(|e| panic!("{}: {e}", t.source.display()));
        }
    }

    #[test]
    fn mistakes_are_named_with_the_file_and_fields_with_their_line() {
        let p = Path::new("t.yaml");
        let err = parse_template("name: x\nsteps: [\n", p).expect_err("bad YAML");
        assert!(err.starts_with("t.yaml: ") && err.contains("line"), "{err}");
        let err = parse_template("steps: []\n", p).expect_err("no name");
        assert_eq!(err, "t.yaml: name is missing: a template file names its template");
        let err = parse_template("# a runbook\nname: [x]\n", p).expect_err("name not a string");
        assert_eq!(err, "t.yaml:2: name must be a string, got [\"x\"]");
        let err = parse_template("- name: x\n", p).expect_err("a list");
        assert!(err.contains("mapping of fields"), "{err}");

        let text = "# hello\nname: x\nlane: b\n\"timeout_ms\": 5\nsteps:\n  - name: a\n    kind: noop\n";
        let t = parse_template(text, p).expect("reads");
        assert_eq!(t.spec["lane"], "B", "a lane may be written in lowercase");
        assert_eq!(
            (t.locate("timeout_ms"), t.locate("steps"), t.locate("")),
            ("t.yaml:4".into(), "t.yaml:5".into(), "t.yaml".into())
        );
        assert!(t.spec.get("name").is_none(), "the name is not part of the spec");
    }
}
